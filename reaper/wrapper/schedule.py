"""When the wrapper renews, when it fences, and how it escalates after a signal. Pure.

All times are seconds on the wrapper's boot-time clock, counted from the *send* of the
last renewal that succeeded: DynamoDB wrote it after that instant, so a reaper that saw
the counter saw it no earlier. The command is dead before ``last_ok + lease``.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_LEASE_SECONDS = 4
INTERRUPT_AT, TERMINATE_AT, KILL_AT = 0.65, 0.80, 0.90  # fractions of the lease


@dataclass(frozen=True)
class FenceSchedule:
    lease: float
    renew_every: float  # a third of the lease
    retry_every: float  # after a failed renewal
    call_timeout: float  # each of connect and read, per AWS call; no SDK retries on renewals
    interrupt_at: float  # since the last successful renewal: SIGINT to the group
    terminate_at: float  # SIGTERM
    kill_at: float  # SIGKILL; the rest of the lease is the margin for the kill to land

    @property
    def deadline(self) -> float:
        return self.lease

    def as_dict(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 3) for k in ("lease", "renew_every", "retry_every", "call_timeout",
                                                         "interrupt_at", "terminate_at", "kill_at")}


def fence_schedule(lease_seconds: float) -> FenceSchedule:
    """The schedule for a lease; ValueError for a lease too short to fence safely."""
    lease = float(lease_seconds)
    if lease < MIN_LEASE_SECONDS:
        raise ValueError(f"--lease {lease:g}s is too short to fence safely: a renewal every {lease / 3:.1f}s with "
                         f"bounded AWS calls and the SIGINT, SIGTERM, SIGKILL steps before the deadline need at "
                         f"least {MIN_LEASE_SECONDS}s (the default is 2m)")
    call = min(5.0, max(0.5, lease / 10))
    s = FenceSchedule(lease=lease, renew_every=lease / 3, retry_every=max(0.5, lease / 12), call_timeout=call,
                      interrupt_at=lease * INTERRUPT_AT, terminate_at=lease * TERMINATE_AT, kill_at=lease * KILL_AT)
    # a renewal due at a third of the lease, however slow its call, ends before the interrupt
    assert s.renew_every + 2 * s.call_timeout < s.interrupt_at, s
    return s


@dataclass(frozen=True)
class Shield:
    """After the first SIGINT/SIGTERM: one interrupt to the group, repeated signals absorbed
    for ``seconds``; then SIGTERM, and SIGKILL ``kill_after`` later."""

    seconds: float = 20.0

    @property
    def kill_after(self) -> float:
        return max(2.0, min(10.0, self.seconds / 4))
