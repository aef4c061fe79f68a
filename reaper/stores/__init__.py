"""Lock stores behind the LockStore port (reaper.ports)."""
