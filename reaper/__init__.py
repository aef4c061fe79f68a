"""Lock Reaper: find stale Terraform/OpenTofu state locks and remove them safely."""

__version__ = "0.1.0"
