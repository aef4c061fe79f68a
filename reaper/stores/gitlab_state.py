"""GitLab-managed Terraform state (Terraform's ``http`` backend on GitLab).

GitLab has no endpoint that lists locks. For each configured project:

- ``scan`` lists the project's states with GraphQL ``project.terraformStates``
  (``lockedAt``, ``lockedByUser``; cursor pagination) and yields one record per
  locked state. Its lock path is ``<project path>/<state name>``.
- The lock ID is not in any read API. GitLab's own lock endpoint
  (``POST .../terraform/state/:name/lock``) answers **409 with the current
  lock's ID, holder and time** when the state is locked; Lock Reaper asks it with
  a probe ID (``read_lock_id: true``, the default). If the state was unlocked in
  the meantime, the probe *takes* the lock, so it is released at once with
  ``DELETE .../lock?ID=<probe ID>`` and the state is not reported. Where the ID
  cannot be learned (``read_lock_id: false``, 403, 429, 5xx, timeout), the lock
  is unknown: reported, never unlocked.
- ``delete`` is ``DELETE .../terraform/state/:name/lock?ID=<lock ID>``; GitLab
  compares the ID and answers 409 if it differs (raced; re-read to name the new
  holder) or if the state is no longer locked (gone).
- GitLab keeps only the lock's ID, user and time, not Terraform's operation, so
  ``Operation`` is empty and rules with ``operations:`` do not match these locks.
- Locks cannot be re-created: audit records say ``restorable: false``.

The calls need the Maintainer role on each project (``admin_terraform_state``).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import urllib3

from ..http.client import ApiError, JsonApi, RateLimited
from ..models import DeleteResult, DeleteStatus, LockInfo, LockRecord, parse_created
from ..ports import StoreTraits
from .api_store import ApiLockStore

log = logging.getLogger("reaper.stores.gitlab")

RESTORE_NOTE = (
    "GitLab-managed Terraform state locks cannot be re-created by Lock Reaper: GitLab keeps no lock "
    "history and a lock can only be taken by a Terraform run"
)
PROBE_PREFIX = "lock-reaper-probe-"
MAX_PAGES = 1000

STATES_QUERY = """
query LockReaperStates($fullPath: ID!, $first: Int!, $after: String) {
  project(fullPath: $fullPath) {
    id
    terraformStates(first: $first, after: $after) {
      count
      nodes {
        id
        name
        lockedAt
        updatedAt
        lockedByUser { username }
        latestVersion { serial createdAt }
      }
      pageInfo { hasNextPage endCursor }
    }
  }
}
""".strip()

STATE_QUERY = """
query LockReaperState($fullPath: ID!, $after: String) {
  project(fullPath: $fullPath) {
    terraformStates(first: 100, after: $after) {
      nodes { name lockedAt lockedByUser { username } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
""".strip()


_FRACTION = re.compile(r"\d{2}:\d{2}:\d{2}\.(\d+)")


def _fraction_digits(value: str) -> int:
    m = _FRACTION.search(value)
    return len(m.group(1)) if m else 0


def same_instant(a: str, b: str) -> bool:
    """Whether two timestamps denote the same instant, to the precision both carry.

    GraphQL ``lockedAt`` has whole seconds (``2026-11-22T12:00:00Z``), the lock
    endpoint's 409 answer milliseconds (``2026-11-22T12:00:00.123Z``): the finer one
    is truncated to the coarser one's digits. Unparseable: equal only as strings.
    """
    try:
        ta, tb = parse_created(a), parse_created(b)
    except ValueError:
        return a == b
    step = 10 ** (6 - min(_fraction_digits(a), _fraction_digits(b), 6))
    return ta.replace(microsecond=ta.microsecond // step * step) == tb.replace(microsecond=tb.microsecond // step * step)


def _numeric_id(gid: Any) -> str | None:
    """``gid://gitlab/Project/42`` -> ``42``."""
    if isinstance(gid, str) and gid.rsplit("/", 1)[-1].isdigit():
        return gid.rsplit("/", 1)[-1]
    return None


class GitLabStateStore(ApiLockStore):
    """``gitlab:<host>``: locked Terraform states of the configured projects."""

    traits = StoreTraits(restorable=False, restore_note=RESTORE_NOTE)
    kind = "gitlab"
    scope_kind = "project"
    stat_keys = ("items", "digests", "pages", "locked", "released_during_probe")
    log = log

    def __init__(self, api: JsonApi, projects: list[str], read_lock_id: bool = True, page_size: int = 100,
                 clock: Callable[[], datetime] | None = None):
        super().__init__(api, page_size)
        self.projects = list(projects)
        self.read_lock_id = read_lock_id
        self.clock = clock or (lambda: datetime.now(UTC))

    # -- port -------------------------------------------------------------
    def delete(self, lock: LockRecord) -> DeleteResult:
        if lock.info is None or not lock.token:
            raise ValueError("refusing to delete a lock that was not parsed")
        try:
            self.api.request("DELETE", self._lock_url(lock.raw), kind="gitlab.state_unlock",
                             params={"ID": lock.token}, conditional=False)
        except ApiError as exc:
            if exc.status == 404:
                return DeleteResult(status=DeleteStatus.GONE, detail="the state no longer exists")
            if exc.status != 409:
                raise
            return self._after_conflict(lock)
        return DeleteResult(status=DeleteStatus.DELETED, detail=f"unlocked (DELETE .../lock?ID={lock.token})")

    # -- internals ----------------------------------------------------------
    def _scopes(self) -> list[str]:
        return self.projects

    def _graphql(self, query: str, variables: dict[str, Any], what: str) -> dict[str, Any]:
        resp = self.api.request("POST", "api/graphql", kind="gitlab.graphql", body={"query": query, "variables": variables},
                                conditional=False)
        body = resp.body if isinstance(resp.body, dict) else {}
        if body.get("errors"):
            first = body["errors"][0] if isinstance(body["errors"], list) and body["errors"] else {}
            raise ApiError(f"GraphQL error for {what}: {str(first.get('message', first))[:200]}", url=resp.url)
        return body.get("data") or {}

    def _scan_scope(self, project: str, failed: list[str]) -> Iterator[LockRecord]:
        after: str | None = None
        for _ in range(MAX_PAGES):
            data = self._graphql(STATES_QUERY, {"fullPath": project, "first": self.page_size, "after": after},
                                 f"project {project}")
            proj = data.get("project")
            if not isinstance(proj, dict):
                raise ApiError("project not found, or not visible to the token")
            self._stats["pages"] += 1
            conn = proj.get("terraformStates") or {}
            for node in conn.get("nodes") or []:
                if not isinstance(node, dict):
                    continue
                self._stats["items"] += 1
                if node.get("lockedAt"):
                    self._stats["locked"] += 1
                    rec = self._record(project, _numeric_id(proj.get("id")), node, failed)
                    if rec is not None:
                        yield rec
            info = conn.get("pageInfo") or {}
            if not info.get("hasNextPage") or not info.get("endCursor") or info.get("endCursor") == after:
                return
            after = info["endCursor"]
        raise ApiError(f"more than {MAX_PAGES} pages of states")

    def _lock_url(self, raw: dict[str, Any]) -> str:
        pid = raw.get("project_id") or quote(str(raw.get("project", "")), safe="")
        return f"api/v4/projects/{pid}/terraform/state/{quote(str(raw.get('state', '')), safe='')}/lock"

    def _record(self, project: str, pid: str | None, node: dict[str, Any], failed: list[str]) -> LockRecord | None:
        name = str(node.get("name", ""))
        lock_path = f"{project}/{name}"
        user = ((node.get("lockedByUser") or {}).get("username")) or ""
        locked_at = str(node.get("lockedAt"))
        raw: dict[str, Any] = {
            "project": project, "project_id": pid, "state": name, "locked_at": locked_at,
            "locked_by": user or None, "updated_at": node.get("updatedAt"),
            "latest_serial": (node.get("latestVersion") or {}).get("serial"),
        }
        holder = f"locked by {user or 'an unknown user'} since {locked_at}"

        def unknown_id(why: str) -> LockRecord:
            return LockRecord(store=self.name, key=lock_path, lock_path=lock_path, token="", raw=raw,
                              parse_error=f"{holder}; its lock ID is unknown ({why}): reported only, never unlocked")

        if not self.read_lock_id:
            return unknown_id("read_lock_id is off")
        try:
            status, body, probe = self._probe(raw, lock_path)
        except RateLimited as exc:
            return unknown_id(exc.reason)
        except ApiError as exc:
            hint = " (the token needs the Maintainer role: admin_terraform_state)" if exc.status == 403 else ""
            return unknown_id(f"{exc.reason}{hint}")
        if status == 200:  # unlocked since the listing: the probe took the lock; give it back now
            try:
                self.api.request("DELETE", self._lock_url(raw), kind="gitlab.state_unlock", params={"ID": probe},
                                 conditional=False)
            except ApiError as exc:
                msg = (f"LOCK REAPER'S PROBE LOCK {probe} ON {lock_path} COULD NOT BE RELEASED ({exc.reason}): "
                       f"release it with DELETE /{self._lock_url(raw)}?ID={probe}")
                log.error(msg)
                failed.append(msg)
                return LockRecord(store=self.name, key=lock_path, lock_path=lock_path, token="", raw=raw, parse_error=msg)
            self._stats["released_during_probe"] += 1
            return None
        lock_id = body.get("ID") if isinstance(body, dict) else None
        if not isinstance(lock_id, str) or not lock_id:
            return unknown_id("GitLab's 409 answer named no lock ID")
        raw["lock_id_source"] = "POST .../lock answered 409 with the current lock"
        # ID, Who and Created all come from the same answer: if the state was unlocked and
        # locked again since the listing, the listing's lockedAt belongs to the old lock.
        # lockedAt has whole seconds, the 409's Created milliseconds: compared as instants.
        who = str(body.get("Who") or "") or user or "unknown"
        created = str(body.get("Created") or "") or locked_at
        if not same_instant(created, locked_at) or who != (user or who):
            raw["relocked_since_listing"] = {"locked_at": created, "locked_by": who}
        try:
            info = LockInfo.model_validate({"ID": lock_id[:256], "Operation": "", "Info": "", "Who": who[:1024],
                                            "Version": "", "Created": created, "Path": lock_path})
        except Exception as exc:
            return LockRecord(store=self.name, key=lock_path, lock_path=lock_path, token=lock_id, raw=raw,
                              parse_error=f"{holder}; its lock could not be described: {str(exc).splitlines()[0]}")
        return LockRecord(store=self.name, key=lock_path, lock_path=lock_path, token=lock_id, raw=raw, info=info)

    def _probe(self, raw: dict[str, Any], lock_path: str) -> tuple[int, Any, str]:
        """POST .../lock with a probe ID: (status, parsed body, probe ID). 409 carries the current lock.

        JsonApi turns every 4xx into an error without its body, so this one call goes
        through the same pool with the same auth headers, timeout and no redirects.
        """
        probe = PROBE_PREFIX + uuid.uuid4().hex
        now = self.clock().astimezone(UTC)
        payload = {"ID": probe, "Operation": "OperationTypeInvalid", "Info": "lock-reaper: reading the current lock ID",
                   "Who": "lock-reaper", "Version": "lock-reaper", "Created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "Path": lock_path}
        url = self.api.url(self._lock_url(raw))
        headers = {"User-Agent": "lock-reaper", "Accept": "application/json", "Content-Type": "application/json"}
        if self.api.auth is not None:
            headers.update(self.api.auth())
        try:
            resp = self.api.pool.request(
                "POST", url, body=json.dumps(payload).encode(), headers=headers,
                timeout=urllib3.Timeout(total=self.api.limits.timeout, connect=min(self.api.limits.timeout, 5.0)),
                retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=True), preload_content=True,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(f"reading the lock ID failed ({type(exc).__name__})", url=url) from None
        self.api.counter.call("gitlab.state_lock_probe", resp.status)
        if resp.status == 429:
            raise RateLimited("rate limited (HTTP 429) while reading the lock ID", url=url, status=429)
        if resp.status not in (200, 409):
            raise ApiError(f"reading the lock ID: HTTP {resp.status}", url=url, status=resp.status)
        try:
            body = json.loads(resp.data.decode("utf-8")) if resp.data else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        return resp.status, body, probe

    def _current(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        """The state's node as GraphQL shows it now (None if it no longer exists)."""
        after: str | None = None
        for _ in range(MAX_PAGES):
            data = self._graphql(STATE_QUERY, {"fullPath": raw.get("project"), "after": after}, "the re-read")
            conn = (data.get("project") or {}).get("terraformStates") or {}
            for node in conn.get("nodes") or []:
                if isinstance(node, dict) and node.get("name") == raw.get("state"):
                    return node
            info = conn.get("pageInfo") or {}
            if not info.get("hasNextPage") or not info.get("endCursor"):
                return None
            after = info["endCursor"]
        return None

    def _after_conflict(self, lock: LockRecord) -> DeleteResult:
        try:
            node = self._current(lock.raw)
        except ApiError as exc:
            return DeleteResult(status=DeleteStatus.RACED,
                                detail=f"raced (409): the lock ID differs now; the new holder could not be read: {exc.reason}")
        if node is None or not node.get("lockedAt"):
            return DeleteResult(status=DeleteStatus.GONE, detail="the state was already unlocked (409)")
        who = (node.get("lockedByUser") or {}).get("username") or "an unknown user"
        return DeleteResult(status=DeleteStatus.RACED,
                            detail=f"raced (409): a new lock by {who} since {node.get('lockedAt')} holds it now",
                            current_who=who)
