"""Liveness checkers behind the LivenessChecker port (reaper.ports)."""
