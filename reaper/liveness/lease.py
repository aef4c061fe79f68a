"""Evidence ``lease``: the lease ``lock-reaper run -- terraform ...`` keeps in its claim.

The lock is joined to the latest claim by its ``Who`` made at or before its ``Created``
(the same ``ClaimStore`` instance as the claims checker: one table scan per run). The
checker applies when that claim has a lease (``reaper.liveness.lease_fields``). It reads
what the reaper itself saw of the lease in earlier runs (``lease_observations``: the
counter, when the reaper first saw that value, when it first saw ``EndedAt``, all by the
reaper's clock) and records what it sees now.

**alive**
  - the heartbeat counter moved since the reaper's last sighting; or
  - ``HeartbeatAt`` is fresher than lease + ``clock_skew`` by the writer's clock (a
    time in the future counts as fresh: the writer's clock may only make it alive); or
  - the wrapper recorded the command's exit less than ``grace`` ago.

**dead**, only when the claim says ``Exclusive`` (no other terraform of this user on the
host outside the wrapped group) and the lock was taken inside the wrapped run, by the
host's own clock (``ClaimedAt <= Created``, from the join, and the bound below: the lock,
the claim and the lease are written by the same host clock, so these comparisons are
fair), and either

  1. the wrapper recorded ``EndedAt`` (the whole command group exited), ``Created <=
     EndedAt``, and ``grace`` has passed since, measured without the writer's clock: from
     the reaper's own first sighting of ``EndedAt``. The exit record itself is the proof;
     the grace is a margin for the holder's release in flight, and measuring it on the
     reaper's clock keeps a lagging writer clock from shortening it. Only when no
     observations table is configured is it measured as ``now - EndedAt >= grace +
     clock_skew``: the writer's clock then sizes the margin within the skew allowance, it
     does not prove the exit; or
  2. the reaper itself has seen the same counter, unchanged, for at least lease + grace
     on its own clock across runs (plus ``clock_skew`` when the sighting was recorded by
     another reaper, e.g. a CLI run on a laptop, whose clock is not this one's), the
     claim says ``contained`` (the command cannot outlive the wrapper) and ``fenced``
     (the wrapper stops it before the lease can expire when it cannot renew), and
     ``Created <= HeartbeatAt + lease/3`` (the lock was taken before the wrapper's next
     renewal was due; without ``HeartbeatAt``: unknown). A live wrapper renews every
     lease/3, so a counter the reaper has watched standing still for lease + grace
     belongs to a wrapper that stopped, and its fence or its guard has ended the command.

**unknown** (keep): everything else: a heartbeat that stopped without containment or
without fencing, a lease that is not exclusive, a malformed lease, a lock taken after the
run ended, no observations table (a stopped counter is never dead then: the reaper cannot
see a counter move, only what one claim item says), a failing observations store. While
the lease has not ended and the reaper has not yet watched its counter stand still for
lease + grace, the unknown is ``contested``: the wrapper may be renewing with a lagging
clock, so it outvotes a dead answer that rests on the lock's ``Created`` (a CI API that
says "completed" while a self-hosted runner's Terraform still runs).

Any alive answer wins in the composite (``combine``), over authoritative dead answers too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from ..aws import error_code, http_status
from ..durations import format_duration
from ..models import LivenessFact, LockRecord
from .claims import Claim, ClaimStore
from .facts import alive, contested, dead, ev, unknown
from .lease_fields import LeaseState
from .lease_observations import Observation, observation_key

if TYPE_CHECKING:
    from ..ports import LeaseObservations

log = logging.getLogger("reaper.liveness.lease")

SOURCE = "lease"
OBSERVATION_TTL_MARGIN = timedelta(days=1)
DEFAULT_OBSERVATION_TTL = timedelta(days=8)

StoreState = Literal["ok", "none", "error"]


@dataclass(frozen=True)
class Seen:
    """What this run knows of the reaper's earlier sightings of one lease."""

    state: StoreState
    prior: Observation | None = None
    error: str = ""  # the error code, when state == "error"
    status: str = ""  # its HTTP status (or "error")
    why_none: str = ""  # why there is no observations table, when state == "none"


@dataclass(frozen=True)
class Verdict:
    fact: LivenessFact
    record: Observation | None  # what to store now (None: nothing new)


def describe_lease(lease: LeaseState) -> str:
    hb = f"heartbeat {lease.heartbeat}" + (f" at {lease.heartbeat_at.isoformat()}" if lease.heartbeat_at else " (no time)")
    bits = [f"lease {format_duration(lease.seconds)}", hb,
            f"containment {','.join(lease.containment) or 'none'}",
            "fenced" if lease.fenced else "not fenced", "exclusive" if lease.exclusive else "not exclusive"]
    if lease.ended_at is not None:
        bits.append(f"ended {lease.ended_at.isoformat()} (exit {lease.exit_code if lease.exit_code is not None else '?'})")
    return ", ".join(bits)


def next_observation(lease: LeaseState, seen: Seen, now: datetime, observer: str) -> Observation | None:
    """The observation to record after this sighting; None when nothing changed (or nothing can be stored)."""
    if seen.state != "ok":
        return None
    prior = seen.prior
    ended = lease.ended_at is not None
    if prior is None or prior.counter != lease.heartbeat:
        ended_seen = (prior.ended_seen_at if prior is not None else None) or (now if ended else None)
        return Observation(counter=lease.heartbeat, first_seen_at=now, ended_seen_at=ended_seen if ended else None,
                           observer=observer)
    if ended and prior.ended_seen_at is None:
        return prior.model_copy(update={"ended_seen_at": now})
    return None


def judge(claim: Claim, lease: LeaseState, created: datetime, now: datetime, seen: Seen, *, grace: timedelta,
          skew: timedelta, observer: str = "", read_at: datetime | None = None) -> Verdict:
    """The lease's answer for a lock created at ``created`` (pure: no I/O).

    ``read_at``: no earlier than when the claim was read, by the reaper's clock (default ``now``); a new
    sighting is dated then, so that a wait never counts time before the reaper saw the counter."""
    src = SOURCE
    note = ev(src, f"claim by {claim.who}: {claim.describe()}; {describe_lease(lease)}", claim.url, "lease",
              claim.claimed_at)
    record = next_observation(lease, seen, max(now, read_at or now), observer)

    def with_note(fact: LivenessFact) -> Verdict:
        return Verdict(fact.model_copy(update={"evidence": (note, *fact.evidence)}), record)

    def answer(make: Callable[..., LivenessFact], detail: str, status: str, at: datetime | None = None) -> Verdict:
        return with_note(make(src, detail, ev(src, detail, claim.url, status, at)))

    length = timedelta(seconds=lease.seconds)
    prior = seen.prior if seen.state == "ok" else None

    if seen.state == "error":
        fresh = _fresh(lease, now, length, skew)
        if fresh is not None and lease.ended_at is None:
            return answer(alive, fresh, "fresh", lease.heartbeat_at)
        detail = (f"the lease observations store failed ({seen.error}): the reaper cannot tell whether the counter "
                  "moved or how long it has seen it, so the lease proves nothing dead")
        make = contested if lease.ended_at is None else unknown
        return answer(make, detail, seen.status or "error")

    # ---------------------------------------------------------------- 1. the wrapper recorded the exit
    if lease.ended_at is not None:
        ended, code = lease.ended_at, lease.exit_code if lease.exit_code is not None else "?"
        if created > ended:
            detail = (f"the wrapped run ended at {ended.isoformat()} (exit {code}), before the lock's Created "
                      f"{created.isoformat()} by the same host clock: this lock is not that run's")
            return answer(unknown, detail, "ended-before-lock", ended)
        if seen.state == "ok":
            first = prior.ended_seen_at if prior is not None and prior.ended_seen_at is not None else now
            other = prior is not None and prior.ended_seen_at is not None and _other(prior, observer)
            waited = now - first
            how = (f"since the reaper first saw the exit at {first.isoformat()} "
                   + (f"(seen first by {prior.observer}, whose clock may differ by clock_skew)" if other and prior
                      else "(its own clock)"))
            needed = grace + (skew if other else timedelta(0))
        else:
            waited, how = now - ended, f"since EndedAt by the writer's clock ({seen.why_none})"
            needed = grace + skew
        if waited < needed:
            detail = (f"the wrapped run ended (exit {code}) {format_duration(max(waited, timedelta(0)))} {how}, "
                      f"within the {format_duration(needed)} grace period")
            return answer(alive, detail, "ended-recently", ended)
        if not lease.exclusive:
            detail = (f"the wrapped run ended (exit {code}), but the claim is not exclusive: another terraform of "
                      "this user ran on the host outside the wrapped group and may have taken this lock")
            return answer(unknown, detail, "not-exclusive", ended)
        detail = (f"the wrapped run ended at {ended.isoformat()} (exit {code}), after the lock was created, "
                  f"{format_duration(waited)} {how}")
        return answer(dead, detail, "ended", ended)

    # ---------------------------------------------------------------- the heartbeat
    if prior is not None and prior.counter != lease.heartbeat:
        detail = (f"heartbeat counter moved from {prior.counter} to {lease.heartbeat} since the reaper's sighting "
                  f"at {prior.first_seen_at.isoformat()}")
        return answer(alive, detail, "renewed")
    fresh = _fresh(lease, now, length, skew)
    if prior is not None:  # the same counter as an earlier run saw
        watched = now - prior.first_seen_at
        other = _other(prior, observer)
        needed = length + grace + (skew if other else timedelta(0))
        if watched >= needed:
            stopped = (f"heartbeat counter {lease.heartbeat} unchanged for {format_duration(watched)} by the reaper's "
                       f"clock (since {prior.first_seen_at.isoformat()}"
                       + (f", seen first by {prior.observer}" if other else "") + ")")
            missing = [w for w, ok in (("exclusive", lease.exclusive), ("contained", lease.contained),
                                       ("fenced", lease.fenced)) if not ok]
            if lease.heartbeat_at is None:
                missing.append("a heartbeat time to bound the lock's Created")
            elif created > lease.heartbeat_at + length / 3:
                detail = (f"{stopped}; the lock was created at {created.isoformat()}, after the last heartbeat "
                          f"({lease.heartbeat_at.isoformat()}) + lease/3 by the same host clock: not this run's lock")
                return answer(unknown, detail, "stopped-before-lock")
            if not missing:
                detail = (f"{stopped}, at least lease + grace ({format_duration(needed)}); the command was contained "
                          "and fenced: it cannot outlive the wrapper, which stops it before its lease expires")
                return answer(dead, detail, "expired")
            if fresh is not None:
                return answer(alive, f"{fresh} (though {stopped})", "fresh", lease.heartbeat_at)
            detail = (f"{stopped}, but the claim is not {' or '.join(missing)}: the command may still run, so a stopped "
                      "heartbeat proves nothing")
            return answer(unknown, detail, "stopped")
        if fresh is not None:
            return answer(alive, fresh, "fresh", lease.heartbeat_at)
        detail = (f"heartbeat counter {lease.heartbeat} unchanged for {format_duration(max(watched, timedelta(0)))} by "
                  f"the reaper's clock; dead needs {format_duration(needed)} (lease + grace) and a contained, fenced run")
        return answer(contested, detail, "watching")
    if fresh is not None:
        return answer(alive, fresh, "fresh", lease.heartbeat_at)
    if seen.state == "none":
        detail = (f"heartbeat {lease.heartbeat} is not fresh by the writer's clock, and {seen.why_none}: the reaper cannot "
                  "see the counter move, so a stopped heartbeat is never dead and a lagging writer clock may hide a live one")
        return answer(contested, detail, "no-observations")
    detail = (f"first sighting of heartbeat counter {lease.heartbeat}: the reaper has not yet seen whether it moves "
              f"(dead needs it unchanged for {format_duration(length + grace)}, lease + grace, by the reaper's clock)")
    return answer(contested, detail, "first-sighting")


def _other(prior: Observation, observer: str) -> bool:
    """The sighting was recorded by another reaper (a CLI run on a laptop): its clock is not this one's."""
    return bool(prior.observer) and prior.observer != observer


def _fresh(lease: LeaseState, now: datetime, length: timedelta, skew: timedelta) -> str | None:
    """Why the heartbeat time alone says alive (the writer's clock may only make it alive), or None."""
    at = lease.heartbeat_at
    if at is None or now - at >= length + skew:
        return None
    if at > now + skew:
        return (f"heartbeat time {at.isoformat()} is {format_duration(at - now)} in the future by the writer's clock "
                "(counted as fresh: a writer's clock may only make a lease alive)")
    return (f"heartbeat {format_duration(max(now - at, timedelta(0)))} ago by the writer's clock, fresher than lease + "
            f"clock_skew ({format_duration(length + skew)})")


class LeaseChecker:
    """``lease``: a ``reaper.ports.Checker`` over leased claims (see the module docstring).

    ``observations`` None: no table (``why_none`` says why, in the evidence). ``record``
    False: read-only (``explain``): the sightings are read, never written. Built once per
    run: the sightings read by the run's first look at a lease are the ones every lock
    joined to that claim is judged against, and written once.
    """

    name = SOURCE

    def __init__(self, claims: ClaimStore, observations: LeaseObservations | None, *, grace: timedelta,
                 skew: timedelta, own: frozenset[str] = frozenset(), record: bool = True, observer: str = "",
                 why_none: str = "no observations table is configured (liveness.leases.observations_table or "
                                 "REAPER_LEASE_TABLE)"):
        self.claims = claims
        self.observations = observations
        self.grace = grace
        self.skew = skew
        self.own = own
        self.record = record
        self.observer = observer
        self.why_none = why_none
        self._seen: dict[str, Seen] = {}
        self._written: set[str] = set()
        self._lock = threading.Lock()

    def applies(self, lock: LockRecord) -> bool:
        return lock.info is not None and lock.store not in self.own

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact | None:
        if lock.info is None:
            return None
        who, created = lock.info.Who, lock.info.Created
        table = f"dynamodb://{self.claims.table}"
        try:
            claim = self.claims.latest(who, created)
        except ValueError as exc:
            detail = f"the latest claim by {who!r} is malformed ({str(exc).splitlines()[0][:200]}): its lease proves nothing"
            return unknown(SOURCE, detail, ev(SOURCE, detail, table, "malformed"))
        except Exception as exc:
            detail = f"claims table read failed ({error_code(exc)}): cannot tell whether a lease holds this lock"
            return unknown(SOURCE, detail, ev(SOURCE, detail, table, "error"))
        if claim is None or claim.lease is None:
            return None
        key = observation_key(claim.who, claim.claimed_at)
        seen = self._sightings(key)
        # the claims table may have been read after ``now`` was taken (this run's one scan): date the sighting after it
        read_at = now + timedelta(seconds=self.claims.scan_seconds)
        verdict = judge(claim, claim.lease, created, now, seen, grace=self.grace, skew=self.skew, observer=self.observer,
                        read_at=read_at)
        fact = verdict.fact
        if verdict.record is not None and self.record:
            fact = self._store(key, verdict.record, seen, claim, now, fact)
        return fact

    def observation(self, lock: LockRecord) -> tuple[Claim | None, Seen | None]:
        """The leased claim of ``lock`` and the reaper's sightings of it, for ``explain`` (reads only)."""
        if lock.info is None:
            return None, None
        claim = self.claims.latest(lock.info.Who, lock.info.Created)
        if claim is None or claim.lease is None:
            return claim, None
        return claim, self._sightings(observation_key(claim.who, claim.claimed_at))

    # ---------------------------------------------------------------- the observations store
    def _sightings(self, key: str) -> Seen:
        with self._lock:
            if key in self._seen:
                return self._seen[key]
        if self.observations is None:
            seen = Seen("none", why_none=self.why_none)
        else:
            try:
                seen = Seen("ok", prior=self.observations.get(key))
            except Exception as exc:
                log.warning("lease observations %s: read failed (%s)", key, error_code(exc))
                seen = Seen("error", error=error_code(exc), status=str(http_status(exc) or "error"))
        with self._lock:
            return self._seen.setdefault(key, seen)

    def _store(self, key: str, obs: Observation, seen: Seen, claim: Claim, now: datetime,
               fact: LivenessFact) -> LivenessFact:
        with self._lock:
            if key in self._written:
                return fact
            self._written.add(key)
        assert self.observations is not None  # a record comes only from a store that answered
        expires = claim.expires_at or int((now + DEFAULT_OBSERVATION_TTL).timestamp())
        expires = max(expires + int(OBSERVATION_TTL_MARGIN.total_seconds()), int((now + OBSERVATION_TTL_MARGIN).timestamp()))
        try:
            self.observations.put(key, obs, expires, seen.prior)
            return fact
        except Exception as exc:  # the answer stands (it rests on what was read); the next run sees it first again
            log.warning("lease observations %s: write failed (%s)", key, error_code(exc))
            detail = f"could not record this sighting ({error_code(exc)}): the next run starts watching again"
            return fact.model_copy(update={"evidence": (*fact.evidence, ev(SOURCE, detail, None, "record-failed"))})


def lease_summary(claim: Claim, seen: Seen | None) -> dict[str, Any]:
    """The lease and the reaper's sightings as ``explain`` shows them (JSON-ready)."""
    lease = claim.lease
    doc: dict[str, Any] = {"claim": {"who": claim.who, "claimed_at": claim.claimed_at.isoformat(),
                                     "provider": claim.provider, "url": claim.url}}
    if lease is not None:
        doc["summary"] = describe_lease(lease).removeprefix("lease ")
        doc["lease"] = {
            "seconds": lease.seconds, "heartbeat": lease.heartbeat,
            "heartbeat_at": lease.heartbeat_at.isoformat() if lease.heartbeat_at else None,
            "containment": list(lease.containment), "contained": lease.contained, "fenced": lease.fenced,
            "exclusive": lease.exclusive, "ended_at": lease.ended_at.isoformat() if lease.ended_at else None,
            "exit_code": lease.exit_code,
        }
    if seen is not None:
        obs = seen.prior
        doc["observations"] = {
            "store": seen.state, "error": seen.error or None, "why_none": seen.why_none or None,
            "counter": obs.counter if obs else None,
            "first_seen_at": obs.first_seen_at.isoformat() if obs else None,
            "ended_seen_at": obs.ended_seen_at.isoformat() if obs and obs.ended_seen_at else None,
            "observer": (obs.observer or None) if obs else None,
        }
    return doc
