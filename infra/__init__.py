"""CDK infrastructure for Lock Reaper: the ``LockReaper`` construct and the stack that composes it."""
