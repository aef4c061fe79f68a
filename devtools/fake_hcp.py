"""A fake HCP Terraform / Terraform Enterprise API (the parts Lock Reaper uses).

Payload shapes follow the public API docs (JSON:API documents):
- ``GET /api/v2/organizations/:org/workspaces?include=locked_by&page[number]&page[size]``:
  ``data`` (workspaces with ``attributes.locked``, ``locked-reason``,
  ``updated-at``, ``relationships.locked-by``), ``included`` (the runs, users
  and teams holding locks), ``links`` and ``meta.pagination``
  (``current-page``, ``next-page``, ``prev-page``, ``total-pages``, ``total-count``);
- ``GET /api/v2/workspaces/:id[?include=locked_by]``, ``GET /api/v2/runs/:id``
  (``status``, ``status-timestamps``, ``created-at``, ``plan-only``, ``source``);
- ``POST /api/v2/workspaces/:id/actions/force-unlock``: 200 with the workspace,
  409 when it is already unlocked;
- ``Authorization: Bearer <token>`` is required (401 otherwise).
"""

from __future__ import annotations

import itertools
import re
from datetime import datetime, timezone
from typing import Any

from .fakehttp import FakeServer, Reply, Request, iso

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    n = next(_ids)
    return f"{prefix}-{n:04d}Lr{'abcdefghjkmnpqrs'[n % 16]}x{n * 7919 % 10000:04d}"


def _err(status: int, title: str, detail: str = "") -> Reply:
    return Reply(status=status, body={"errors": [{"status": str(status), "title": title, "detail": detail}]},
                 content_type="application/vnd.api+json")


class FakeHCP(FakeServer):
    def __init__(self, token: str = "hcp-test-token", organizations: tuple[str, ...] = ("acme",)) -> None:
        super().__init__()
        self.token = token
        self.orgs: dict[str, list[str]] = {o: [] for o in organizations}
        self.workspaces: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.teams: dict[str, dict[str, Any]] = {}
        self.unlocked: list[str] = []

    # -- arranging the world ------------------------------------------------------
    def add_workspace(self, org: str, name: str, updated_at: datetime | None = None, terraform_version: str = "1.9.8") -> str:
        ws_id = _id("ws")
        at = updated_at or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self.workspaces[ws_id] = {
            "id": ws_id, "org": org, "name": name, "locked": False, "locked_reason": None, "locked_by": None,
            "created_at": iso(at), "updated_at": iso(at), "terraform_version": terraform_version,
        }
        self.orgs.setdefault(org, []).append(ws_id)
        return ws_id

    def add_user(self, username: str) -> str:
        uid = _id("user")
        self.users[uid] = {"username": username}
        return uid

    def add_team(self, name: str) -> str:
        tid = _id("team")
        self.teams[tid] = {"name": name}
        return tid

    def add_run(self, ws_id: str, status: str, timestamps: dict[str, datetime], created_at: datetime,
                plan_only: bool = False, source: str = "tfe-api", message: str = "Triggered via API") -> str:
        rid = _id("run")
        self.runs[rid] = {
            "workspace": ws_id, "status": status, "created_at": iso(created_at), "plan_only": plan_only,
            "source": source, "message": message,
            "status_timestamps": {k: v.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00") for k, v in timestamps.items()},
        }
        return rid

    def lock(self, ws_id: str, holder_type: str, holder_id: str, reason: str | None = None,
             at: datetime | None = None) -> None:
        ws = self.workspaces[ws_id]
        ws.update(locked=True, locked_by=(holder_type, holder_id), locked_reason=reason)
        if at is not None:
            ws["updated_at"] = iso(at)

    def set_run_status(self, rid: str, status: str, at: datetime) -> None:
        run = self.runs[rid]
        run["status"] = status
        run["status_timestamps"][status.replace("_", "-") + "-at"] = at.strftime("%Y-%m-%dT%H:%M:%S+00:00")

    # -- documents -------------------------------------------------------------------
    def _ws_doc(self, ws_id: str) -> dict[str, Any]:
        ws = self.workspaces[ws_id]
        rel: dict[str, Any] = {"organization": {"data": {"id": ws["org"], "type": "organizations"}}}
        if ws["locked_by"]:
            t, i = ws["locked_by"]
            rel["locked-by"] = {"data": {"id": i, "type": t}, "links": {"related": f"/api/v2/{t}/{i}"}}
        return {
            "id": ws_id,
            "type": "workspaces",
            "attributes": {
                "name": ws["name"], "locked": ws["locked"], "locked-reason": ws["locked_reason"],
                "created-at": ws["created_at"], "updated-at": ws["updated_at"], "execution-mode": "remote",
                "terraform-version": ws["terraform_version"], "permissions": {"can-force-unlock": True},
            },
            "relationships": rel,
            "links": {"self": f"/api/v2/organizations/{ws['org']}/workspaces/{ws['name']}"},
        }

    def _holder_doc(self, t: str, i: str) -> dict[str, Any] | None:
        if t == "runs" and i in self.runs:
            return self._run_doc(i)
        if t == "users" and i in self.users:
            return {"id": i, "type": "users", "attributes": {"username": self.users[i]["username"]}}
        if t == "teams" and i in self.teams:
            return {"id": i, "type": "teams", "attributes": {"name": self.teams[i]["name"]}}
        return None

    def _run_doc(self, rid: str) -> dict[str, Any]:
        r = self.runs[rid]
        return {
            "id": rid,
            "type": "runs",
            "attributes": {
                "status": r["status"], "status-timestamps": dict(r["status_timestamps"]), "created-at": r["created_at"],
                "plan-only": r["plan_only"], "is-destroy": False, "source": r["source"], "message": r["message"],
                "trigger-reason": "manual",
            },
            "relationships": {"workspace": {"data": {"id": r["workspace"], "type": "workspaces"}}},
            "links": {"self": f"/api/v2/runs/{rid}"},
        }

    def _included(self, ws_ids: list[str]) -> list[dict[str, Any]]:
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for ws_id in ws_ids:
            lb = self.workspaces[ws_id]["locked_by"]
            if lb and lb not in seen:
                doc = self._holder_doc(*lb)
                if doc is not None:
                    seen[lb] = doc
        return list(seen.values())

    # -- routes ----------------------------------------------------------------------
    def route(self, req: Request) -> Reply:
        if req.header("authorization") != f"Bearer {self.token}":
            return _err(401, "unauthorized")
        p = req.path
        m = re.fullmatch(r"/api/v2/organizations/([^/]+)/workspaces", p)
        if m and req.method == "GET":
            return self._list(m.group(1), req)
        m = re.fullmatch(r"/api/v2/organizations/([^/]+)", p)
        if m and req.method == "GET":
            org = m.group(1)
            return Reply(body={"data": {"id": org, "type": "organizations", "attributes": {"name": org}}}) if org in self.orgs \
                else _err(404, "not found")
        m = re.fullmatch(r"/api/v2/workspaces/([^/]+)", p)
        if m and req.method == "GET":
            ws_id = m.group(1)
            if ws_id not in self.workspaces:
                return _err(404, "not found")
            body: dict[str, Any] = {"data": self._ws_doc(ws_id)}
            if "locked_by" in req.query.get("include", ""):
                body["included"] = self._included([ws_id])
            return Reply(body=body, content_type="application/vnd.api+json")
        m = re.fullmatch(r"/api/v2/workspaces/([^/]+)/actions/force-unlock", p)
        if m and req.method == "POST":
            ws_id = m.group(1)
            if ws_id not in self.workspaces:
                return _err(404, "not found")
            ws = self.workspaces[ws_id]
            if not ws["locked"]:
                return _err(409, "conflict", "Workspace already unlocked")
            ws.update(locked=False, locked_by=None, locked_reason=None)
            self.unlocked.append(ws_id)
            return Reply(body={"data": self._ws_doc(ws_id)}, content_type="application/vnd.api+json")
        m = re.fullmatch(r"/api/v2/runs/([^/]+)", p)
        if m and req.method == "GET":
            rid = m.group(1)
            if rid not in self.runs:
                return _err(404, "not found")
            return Reply(body={"data": self._run_doc(rid)}, content_type="application/vnd.api+json")
        return _err(404, "not found")

    def _list(self, org: str, req: Request) -> Reply:
        if org not in self.orgs:
            return _err(404, "not found")
        size = max(1, min(100, int(req.query.get("page[size]", "20"))))
        number = max(1, int(req.query.get("page[number]", "1")))
        ids = self.orgs[org]
        total_pages = max(1, (len(ids) + size - 1) // size)
        page_ids = ids[(number - 1) * size: number * size]
        base = f"{self.url}/api/v2/organizations/{org}/workspaces?page%5Bsize%5D={size}"
        body: dict[str, Any] = {
            "data": [self._ws_doc(i) for i in page_ids],
            "links": {
                "self": f"{base}&page%5Bnumber%5D={number}",
                "first": f"{base}&page%5Bnumber%5D=1",
                "prev": f"{base}&page%5Bnumber%5D={number - 1}" if number > 1 else None,
                "next": f"{base}&page%5Bnumber%5D={number + 1}" if number < total_pages else None,
                "last": f"{base}&page%5Bnumber%5D={total_pages}",
            },
            "meta": {"pagination": {
                "current-page": number, "page-size": size, "prev-page": number - 1 if number > 1 else None,
                "next-page": number + 1 if number < total_pages else None, "total-pages": total_pages, "total-count": len(ids),
            }},
        }
        if "locked_by" in req.query.get("include", ""):
            body["included"] = self._included(page_ids)
        return Reply(body=body, content_type="application/vnd.api+json")
