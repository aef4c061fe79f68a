"""HCP Terraform / Terraform Enterprise workspace locks.

- ``scan`` lists each configured organization's workspaces with
  ``GET /api/v2/organizations/:org/workspaces?include=locked_by`` (JSON:API
  pages) and yields one record per locked workspace. Its lock path is
  ``<organization>/<workspace>``; its lock ID is the holder's ID (``run-…``,
  ``user-…`` or ``team-…``); its token is ``<type>:<id>`` of ``locked-by``.
- Lock age (``Created``): for a run lock, when the run started planning
  (``status-timestamps.planning-at``, else ``plan-queued-at``, else
  ``queuing-at``, else the run's ``created-at``). For a user or team lock the
  API has no lock timestamp: the workspace's ``updated-at`` is used (locking
  updates the workspace and any later change only makes the lock look younger,
  so the age is never overstated); without it the age is unknown and the lock
  is kept. ``raw.age_source`` says which timestamp was used.
- ``delete`` re-reads the workspace and proceeds only if ``locked-by`` is still
  the same run/user/team, then calls ``POST /workspaces/:id/actions/force-unlock``
  (which takes no lock ID: the window between the re-read and the unlock cannot
  be closed). 409 means already unlocked (gone).
- Locks cannot be re-created: audit records say ``restorable: false``.

Its locks are judged only by their own evidence (``traits.own_evidence``): the run
checker in ``reaper.liveness.hcp_runs``, which the wiring builds on this store's API
client. Runner names and repo mappings prove nothing about them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from ..http.client import ApiError, JsonApi
from ..models import DeleteResult, DeleteStatus, LockInfo, LockRecord
from ..ports import StoreTraits
from .api_store import ApiLockStore

log = logging.getLogger("reaper.stores.hcp")

RUN_START_KEYS = ("planning-at", "plan-queued-at", "queuing-at")
RESTORE_NOTE = (
    "HCP Terraform / Terraform Enterprise workspace locks cannot be re-created by Lock Reaper: "
    "lock the workspace again in the UI or with POST /api/v2/workspaces/:id/actions/lock if needed"
)
MAX_PAGES = 1000


def run_started(attrs: dict[str, Any]) -> tuple[str | None, str]:
    """(timestamp, name of the field it came from) of when a run took its workspace's lock."""
    stamps = attrs.get("status-timestamps") or {}
    for key in RUN_START_KEYS:
        if isinstance(stamps.get(key), str) and stamps[key]:
            return stamps[key], f"run status-timestamps.{key}"
    created = attrs.get("created-at")
    return (created, "run created-at") if isinstance(created, str) and created else (None, "")


def _holder_name(type_: str, id_: str, holder: dict[str, Any] | None) -> str:
    attrs = (holder or {}).get("attributes") or {}
    if type_ == "users":
        return f"user {attrs.get('username') or id_}"
    if type_ == "teams":
        return f"team {attrs.get('name') or id_}"
    if type_ == "runs":
        source = attrs.get("source")
        return f"run {id_}" + (f" ({source})" if source else "")
    return f"{type_} {id_}"


def _locked_by(doc: dict[str, Any]) -> tuple[str, str] | None:
    data = ((doc.get("relationships") or {}).get("locked-by") or {}).get("data")
    if isinstance(data, dict) and data.get("type") and data.get("id"):
        return str(data["type"]), str(data["id"])
    return None


def _included(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(str(i.get("type")), str(i.get("id"))): i for i in body.get("included") or [] if isinstance(i, dict)}


class HCPWorkspaceStore(ApiLockStore):
    """``hcp:<host>``: locked workspaces of the configured organizations."""

    traits = StoreTraits(restorable=False, restore_note=RESTORE_NOTE, own_evidence=True)
    kind = "hcp"
    scope_kind = "organization"
    unchecked_note = " (those workspaces were not checked)"
    log = log

    def __init__(self, api: JsonApi, organizations: list[str], page_size: int = 100):
        super().__init__(api, page_size)
        self.organizations = list(organizations)

    # -- port -------------------------------------------------------------
    def delete(self, lock: LockRecord) -> DeleteResult:
        if lock.info is None or not lock.token:
            raise ValueError("refusing to delete a lock that was not parsed")
        ws_id = lock.key
        try:
            resp = self.api.request("GET", f"api/v2/workspaces/{quote(ws_id, safe='')}", kind="hcp.workspace",
                                    params={"include": "locked_by"}, conditional=False)
        except ApiError as exc:
            if exc.status == 404:
                return DeleteResult(status=DeleteStatus.GONE, detail=f"workspace {ws_id} no longer exists")
            raise
        body = resp.body if isinstance(resp.body, dict) else {}
        ws = body.get("data") or {}
        if not (ws.get("attributes") or {}).get("locked"):
            return DeleteResult(status=DeleteStatus.GONE, detail="the workspace was already unlocked")
        current = _locked_by(ws)
        if current is None or f"{current[0]}:{current[1]}" != lock.token:
            cid = current[1] if current else None
            cwho = _holder_name(current[0], current[1], _included(body).get(current)) if current else None
            return DeleteResult(status=DeleteStatus.RACED,
                                detail=f"raced: the workspace is now locked by {cwho or 'an unknown holder'}: not unlocked",
                                current_id=cid, current_who=cwho)
        seen_at = lock.raw.get("workspace_updated_at")
        now_at = (ws.get("attributes") or {}).get("updated-at")
        if current[0] in ("users", "teams") and seen_at and now_at != seen_at:
            # the same user/team may have unlocked and locked again: a different lock, same holder
            return DeleteResult(status=DeleteStatus.RACED,
                                detail=(f"raced: the workspace changed since it was read (updated-at {seen_at} -> {now_at}); "
                                        f"it may have been locked again by the same holder: not unlocked"),
                                current_id=current[1], current_who=_holder_name(current[0], current[1],
                                                                                _included(body).get(current)))
        # The re-read just showed the same holder; force-unlock takes no lock ID, so a
        # new lock taken in the few milliseconds before the next call cannot be told apart.
        try:
            self.api.request("POST", f"api/v2/workspaces/{quote(ws_id, safe='')}/actions/force-unlock",
                             kind="hcp.force_unlock", conditional=False)
        except ApiError as exc:
            if exc.status == 409:
                return DeleteResult(status=DeleteStatus.GONE, detail="the workspace was already unlocked (409)")
            raise
        return DeleteResult(status=DeleteStatus.DELETED,
                            detail=f"force-unlocked (locked-by was still {lock.token} right before the unlock)")

    # -- internals ----------------------------------------------------------
    def _scopes(self) -> list[str]:
        return self.organizations

    def _scan_scope(self, org: str, failed: list[str]) -> Iterator[LockRecord]:
        page = 1
        for _ in range(MAX_PAGES):
            resp = self.api.get(
                f"api/v2/organizations/{quote(org, safe='')}/workspaces", kind="hcp.workspaces",
                params=[("include", "locked_by"), ("page[number]", page), ("page[size]", self.page_size)],
            )
            self._stats["pages"] += 1
            body = resp.body if isinstance(resp.body, dict) else {}
            data = body.get("data")
            if not isinstance(data, list):
                raise ApiError(f"unexpected response shape for organization {org}'s workspaces", url=resp.url)
            included = _included(body)
            for ws in data:
                self._stats["items"] += 1
                if isinstance(ws, dict) and (ws.get("attributes") or {}).get("locked"):
                    self._stats["locked"] += 1
                    yield self._record(org, ws, included)
            nxt = ((body.get("meta") or {}).get("pagination") or {}).get("next-page")
            if not isinstance(nxt, int) or nxt <= page:
                return
            page = nxt
        raise ApiError(f"organization {org}: more than {MAX_PAGES} pages of workspaces")

    def _record(self, org: str, ws: dict[str, Any], included: dict[tuple[str, str], dict[str, Any]]) -> LockRecord:
        attrs = ws.get("attributes") or {}
        ws_id, ws_name = str(ws.get("id", "")), str(attrs.get("name", ""))
        lock_path = f"{org}/{ws_name}"
        raw: dict[str, Any] = {
            "organization": org,
            "workspace_id": ws_id,
            "workspace_name": ws_name,
            "locked_reason": attrs.get("locked-reason"),
            "workspace_updated_at": attrs.get("updated-at"),
        }

        def bad(reason: str, token: str = "") -> LockRecord:
            return LockRecord(store=self.name, key=ws_id, lock_path=lock_path, token=token, raw=raw, parse_error=reason)

        holder_ref = _locked_by(ws)
        if holder_ref is None:
            return bad("the workspace is locked but names no locked-by holder: holder unknown")
        type_, id_ = holder_ref
        raw["locked_by"] = {"type": type_, "id": id_}
        token = f"{type_}:{id_}"
        holder = included.get(holder_ref)
        operation = ""
        if type_ == "runs":
            found = self._run_lock(id_, holder, raw)
            if isinstance(found, str):
                return bad(found)
            created, source, operation = found
        elif type_ in ("users", "teams"):
            created, source = attrs.get("updated-at"), "workspace updated-at (the API has no lock timestamp)"
            if holder is not None:
                raw["holder"] = {k: (holder.get("attributes") or {}).get(k) for k in ("username", "name")
                                 if (holder.get("attributes") or {}).get(k)}
        else:
            return bad(f"locked by an unknown kind of holder {type_!r} ({id_}): holder unknown", token)
        who = _holder_name(type_, id_, holder)
        if not isinstance(created, str) or not created:
            return bad(f"locked by {who}, but no timestamp tells the lock's age: age unknown, kept", token)
        raw["age_source"] = source
        try:
            info = LockInfo.model_validate({
                "ID": id_[:256],
                "Operation": operation,
                "Info": str(attrs.get("locked-reason") or "")[:1024],
                "Who": who[:1024],
                "Version": str(attrs.get("terraform-version") or "")[:256],
                "Created": created,
                "Path": lock_path,
            })
        except Exception as exc:  # pydantic ValidationError: e.g. a malformed timestamp
            return bad(f"locked by {who}, but its lock could not be described: {str(exc).splitlines()[0]}", token)
        return LockRecord(store=self.name, key=ws_id, lock_path=lock_path, token=token, raw=raw, info=info)

    def _run_lock(self, id_: str, run: dict[str, Any] | None, raw: dict[str, Any]) -> tuple[str | None, str, str] | str:
        """A run lock's (Created, where it came from, Operation), with the run's summary put in ``raw``;
        or why the run could not be read."""
        if run is None:  # not in ?include= (older TFE): read the run itself
            try:
                run = (self.api.get(f"api/v2/runs/{quote(id_, safe='')}", kind="hcp.run").body or {}).get("data")
            except ApiError as exc:
                return f"locked by run {id_}, which could not be read ({exc.reason}): age unknown, kept"
        ra = (run or {}).get("attributes") or {}
        created, source = run_started(ra)
        raw["run"] = {k: ra.get(k) for k in ("status", "created-at", "status-timestamps", "plan-only", "is-destroy",
                                            "source", "trigger-reason") if k in ra}
        raw["run"]["message"] = str(ra.get("message") or "")[:200]
        return created, source, "OperationTypePlan" if ra.get("plan-only") else "OperationTypeApply"
