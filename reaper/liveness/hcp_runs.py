"""HCP Terraform / Terraform Enterprise run status: the liveness evidence for ``hcp:`` locks.

The workspace's ``locked-by`` names the holder. A run in a final status is dead
once the grace period is over (``locked-by`` names the run, so it is the holder
even when it ended in the whole second its lock was taken: see
``judge_holder_run``); any other status is alive; a user or team lock has no
run, so its holder is unknown and ``hard_max_age`` governs. Every API failure
(429, 5xx, timeout) means unknown, i.e. "keep and report".

The checker asks the same HCP API client as the store (``reaper.http.client.JsonApi``,
built once by the wiring); it never sees the store.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from ..durations import format_duration
from ..http.client import ApiError, JsonApi
from ..models import LivenessFact, LockRecord
from .facts import alive, created_at, dead, ev, from_error, ts, unknown

FINAL_STATUSES = frozenset(
    {"applied", "planned_and_finished", "errored", "discarded", "canceled", "force_canceled", "policy_soft_failed"}
)


def run_finished(attrs: dict[str, Any]) -> datetime | None:
    """When a run reached its (final) status: ``status-timestamps.<status>-at``."""
    status = str(attrs.get("status") or "")
    return ts((attrs.get("status-timestamps") or {}).get(status.replace("_", "-") + "-at"))


def judge_holder_run(src: str, what: str, finished_at: datetime | None, created: datetime, now: datetime,
                     grace: timedelta, url: str, status: str) -> LivenessFact:
    """A final run that the workspace's ``locked-by`` names: it is the holder, dead once ``grace`` is over.

    Unlike a claim or a CI job found by hostname, the run cannot be another job that ended
    before this lock was taken: the lock relationship names it. HCP status timestamps have
    whole seconds, so a run that errored in the second it started planning shows
    ``finished == Created``, and one whose ``Created`` is its millisecond ``created-at`` may
    even read as finished "before" it; only a finish in an earlier second than ``Created``
    is inconsistent (unknown).
    """
    if finished_at is None:
        detail = f"{what} is {status} but reports no finish time"
        return unknown(src, detail, ev(src, f"{what}: {status}, no finish time", url, status))
    if finished_at < created.replace(microsecond=0):
        detail = (f"{what} finished at {finished_at.isoformat()}, a second or more before its lock was created "
                  f"({created.isoformat()}): inconsistent timestamps")
        return unknown(src, detail, ev(src, detail, url, status, finished_at))
    ago = max(now - finished_at, timedelta(0))
    if ago < grace:
        detail = f"{what} finished {format_duration(ago)} ago ({status}), within the {format_duration(grace)} grace period"
        return alive(src, detail, ev(src, detail, url, status, finished_at))
    detail = f"{what} finished {format_duration(ago)} ago ({status})"
    return dead(src, detail, ev(src, detail, url, status, finished_at))


class HCPRunChecker:
    """Liveness for the locks of one ``hcp:`` store: the status of the run holding the workspace.

    ``api`` is that store's HCP API client, ``store`` its name (``hcp:<host>``), ``grace`` how
    long a finished run may still hold the lock (the store config's ``grace``).
    """

    name = "hcp-runs"

    def __init__(self, api: JsonApi, store: str, grace: timedelta):
        self.api = api
        self.store = store
        self.grace = grace

    def applies(self, lock: LockRecord) -> bool:
        return lock.store == self.store

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact | None:
        if not self.applies(lock):
            return None
        src = self.name
        type_, _, id_ = lock.token.partition(":")
        if type_ in ("users", "teams"):
            who = lock.info.Who if lock.info else id_
            detail = (f"locked by {who}: a manual or CLI lock has no run to check; hard_max_age governs "
                      f"(lock age from the {lock.raw.get('age_source', 'unknown timestamp')})")
            return unknown(src, detail, ev(src, detail))
        if type_ != "runs" or lock.info is None:
            return unknown(src, f"no run to check for holder {lock.token or '?'}")
        return self._run(lock, id_, now)

    def _run(self, lock: LockRecord, id_: str, now: datetime) -> LivenessFact:
        src, api = self.name, self.api
        created = created_at(lock)
        org = lock.raw.get("organization", "")
        page = f"{api.base_url}/app/{org}/workspaces/{lock.raw.get('workspace_name', '')}/runs/{id_}"
        path = f"api/v2/runs/{quote(id_, safe='')}"
        try:
            body = api.get_object(path, kind="hcp.run", conditional=False)
            data = api.expect(body.get("data") or {}, dict, what="its data", url=api.url(path), kind="hcp.run")
            attrs = api.expect(data.get("attributes") or {}, dict, what="its data.attributes", url=api.url(path), kind="hcp.run")
        except ApiError as exc:
            return from_error(src, f"run {id_}", exc)
        status = str(attrs.get("status") or "")
        if not status:
            return unknown(src, f"run {id_} has no status", ev(src, f"run {id_}: no status", page))
        if status in FINAL_STATUSES:
            return judge_holder_run(src, f"run {id_}", run_finished(attrs), created, now, self.grace, page, status)
        detail = f"run {id_} is {status} (not final): it still owns the workspace"
        return alive(src, detail, ev(src, detail, page, status))
