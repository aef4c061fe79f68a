"""The CLI's subcommands that are more than one engine call (claim, explain)."""
