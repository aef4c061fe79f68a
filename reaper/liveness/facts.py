"""Small helpers the checkers share to build facts with evidence (pure, no I/O)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ..durations import format_duration
from ..http.client import ApiError
from ..models import Evidence, Liveness, LivenessFact, LockRecord, parse_created

T = TypeVar("T")


def created_at(lock: LockRecord) -> datetime:
    """The lock's ``Created``. Checkers are asked only about parsed locks (the decision keeps an
    unparseable one before it asks); a composite turns this error into an unknown answer."""
    if lock.info is None:
        raise ValueError(f"{lock.key}: the lock's Info was not parsed, so it has no Created")
    return lock.info.Created


def ev(source: str, detail: str, url: str | None = None, status: str | None = None, at: datetime | None = None) -> Evidence:
    return Evidence(source=source, detail=detail, url=url, status=status, at=at)


def fact(state: Liveness, source: str, reason: str, *evidence: Evidence) -> LivenessFact:
    return LivenessFact(state=state, reason=reason, evidence=tuple(evidence), checkers=(source,))


def alive(source: str, reason: str, *evidence: Evidence) -> LivenessFact:
    return fact(Liveness.ALIVE, source, reason, *evidence)


def dead(source: str, reason: str, *evidence: Evidence) -> LivenessFact:
    return fact(Liveness.DEAD, source, reason, *evidence)


def unknown(source: str, reason: str, *evidence: Evidence) -> LivenessFact:
    return fact(Liveness.UNKNOWN, source, reason, *evidence)


def from_error(source: str, what: str, exc: ApiError) -> LivenessFact:
    """Any API failure is unknown, never dead."""
    status = str(exc.status) if exc.status else type(exc).__name__
    return unknown(source, f"{what}: {exc.reason}", ev(source, f"{what}: {exc.reason}", url=exc.url, status=status))


def ts(value: Any) -> datetime | None:
    """Parse an API timestamp (RFC 3339 / ISO 8601 with offset); None when absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_created(value)
    except ValueError:
        return None


def judge_finished(
    source: str,
    what: str,
    finished_at: datetime | None,
    created: datetime,
    now: datetime,
    grace: timedelta,
    url: str | None,
    status: str,
    *,
    skew: timedelta,
) -> LivenessFact:
    """A finished job/run: dead after the grace period, unless it may have ended before the lock existed.

    A job that ended within ``skew`` of ``Created``, on either side, is never taken for
    the holder: ``Created`` comes from the holder's clock, which may be that far off, so
    the job may have ended before the lock was taken. A reused hostname (a self-hosted
    runner, a GitLab shell executor, GitLab's ``runner-…-project-N-concurrent-M``) runs
    its next job seconds after the last one ended; when that job took the lock without
    a claim of its own, the previous job's claim is the latest one before ``Created``
    and must prove nothing. The skew allowance may only make an answer alive or
    unknown, never dead.
    """
    if finished_at is None:
        return unknown(source, f"{what} is {status} but reports no finish time",
                       ev(source, f"{what}: {status}, no finish time", url, status))
    if finished_at <= created:
        detail = (f"{what} finished at {finished_at.isoformat()}, before the lock was created "
                  f"({created.isoformat()}): it is not this lock's holder")
        return unknown(source, detail, ev(source, detail, url, status, finished_at))
    if finished_at <= created + skew:
        detail = (f"{what} finished at {finished_at.isoformat()}, {format_duration(finished_at - created)} after the "
                  f"lock's Created ({created.isoformat()}), within the {format_duration(skew)} clock skew of the "
                  "holder's clock: it is not provably this lock's holder")
        return unknown(source, detail, ev(source, detail, url, status, finished_at))
    ago = now - finished_at
    if ago < grace:
        detail = f"{what} finished {format_duration(ago)} ago ({status}), within the {format_duration(grace)} grace period"
        return alive(source, detail, ev(source, detail, url, status, finished_at))
    detail = f"{what} finished {format_duration(ago)} ago ({status})"
    return dead(source, detail, ev(source, detail, url, status, finished_at))


def host_clock_lags(source: str, what: str, claimed_at: datetime, started: list[datetime | None], skew: timedelta,
                    url: str | None) -> LivenessFact | None:
    """Unknown when the claim is older, by the host's clock, than its job by the CI system's clock.

    The claim step runs inside the job, so it cannot be earlier than the job's start. A
    ``ClaimedAt`` more than ``skew`` before the earliest ``started_at`` the CI API gives
    shows that the host's clock lags beyond ``clock_skew``: the lock's ``Created``, from
    the same clock, then proves no order against the job's end.
    """
    known = [s for s in started if s is not None]
    if not known or claimed_at >= min(known) - skew:
        return None
    lag = min(known) - claimed_at
    detail = (f"{what}: the claim was made at {claimed_at.isoformat()} by the host clock, {format_duration(lag)} before "
              f"the job started by the CI system's clock: the host clock lags beyond the {format_duration(skew)} clock "
              "skew, so the lock's Created proves nothing")
    return unknown(source, detail, ev(source, detail, url, "clock-lag", claimed_at))


def finished_horizon(now: datetime, grace: timedelta, max_run_duration: timedelta) -> datetime:
    """The earliest creation time of a run or job that can have finished within ``grace`` of ``now``,
    if none lasts longer than ``max_run_duration`` from its creation to its end."""
    return now - grace - max_run_duration


def recent_finish(
    source: str,
    label: str,
    began: datetime | None,
    finished: datetime | None,
    created: datetime,
    now: datetime,
    grace: timedelta,
    skew: timedelta,
    url: str | None,
    status: str,
) -> tuple[str, Evidence] | None:
    """One finished run/job, seen by a repo or project mapping that found no live one.

    Returns ``("recent", evidence)`` when it finished less than ``grace`` ago: its runner
    may still be stopping Terraform, so it proves nothing. That holds whenever it began:
    one that began "after" ``Created`` + ``skew`` may still be the holder when the host's
    clock lags further than ``skew``. ``("doubt", evidence)`` when it could be the holder
    (it began at or before ``Created`` + ``skew``) but reports no finish time. ``None``
    when it cannot matter: it finished ``grace`` or longer ago, or it began after the
    lock and reports no finish time.
    """
    after = began is not None and began > created + skew
    if finished is None:
        if after:
            return None
        return "doubt", ev(source, f"{label} is {status} but reports no finish time: proves nothing", url, status)
    ago = now - finished
    if ago >= grace:
        return None
    began_note = " (it began after the lock's Created, which a lagging host clock may have written)" if after else ""
    detail = (f"{label} finished {format_duration(max(ago, timedelta(0)))} ago ({status}), within the "
              f"{format_duration(grace)} grace period{began_note}: its runner may still be stopping Terraform")
    return "recent", ev(source, detail, url, status, finished)


def live_after_created(source: str, label: str, status: str, started: datetime, created: datetime, url: str | None) -> Evidence:
    """A live job/run that started after the lock's ``Created`` + skew: by the clocks it is not the holder,
    but the holder's clock may lag beyond ``clock_skew``, so it proves the holder neither alive nor dead."""
    return ev(source, f"{label} is {status}, started {started.isoformat()}, after the lock's Created "
                      f"({created.isoformat()}): it may be the holder if the holder's clock lags", url, status, started)


def contested(source: str, reason: str, *evidence: Evidence) -> LivenessFact:
    """Unknown, with a live or just-finished job/run that could be the holder: outvotes any dead answer
    that rests on the lock's ``Created`` (see ``LivenessFact.contested``)."""
    return LivenessFact(state=Liveness.UNKNOWN, reason=reason, evidence=tuple(evidence), checkers=(source,), contested=True)


class Memo:
    """Per-run memo of API answers, errors included (a failing endpoint is asked once).

    Thread-safe and single-flight: while one thread fetches an answer, the others that ask for the
    same one wait for it (and count as memo hits), so concurrent judging makes no more calls than
    sequential judging. An exception other than ``ApiError`` is not kept: the next caller asks again."""

    def __init__(self, counter: Any = None):
        self._data: dict[Any, tuple[bool, Any]] = {}
        self._fetching: dict[Any, threading.Event] = {}
        self._lock = threading.Lock()
        self.counter = counter

    def get(self, kind: str, key: Any, fn: Callable[[], T]) -> T:
        k = (kind, key)
        while True:
            with self._lock:
                hit = self._data.get(k)
                busy = self._fetching.get(k) if hit is None else None
                if hit is None and busy is None:
                    self._fetching[k] = threading.Event()  # this thread fetches it
            if hit is not None:
                if self.counter is not None:
                    self.counter.memo(kind)
                ok, value = hit
                if ok:
                    return value
                raise value
            if busy is None:
                break
            busy.wait()  # another thread is fetching this answer: then it is a hit (or ours to fetch)
        try:
            value = fn()
        except ApiError as exc:
            with self._lock:
                self._data[k] = (False, exc)
            raise
        else:
            with self._lock:
                self._data[k] = (True, value)
            return value
        finally:
            with self._lock:
                self._fetching.pop(k).set()

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def ago(now: datetime, then: datetime) -> str:
    return format_duration(now - then)
