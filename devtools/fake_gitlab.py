"""A fake GitLab (the Terraform-state parts Lock Reaper uses).

Behaviour follows GitLab's own code (lib/api/terraform/state.rb and
Terraform::RemoteStateHandler):
- ``POST /api/graphql`` answers ``project(fullPath:) { id terraformStates(first:, after:)
  { count nodes { id name lockedAt updatedAt lockedByUser { username }
  latestVersion { serial createdAt } } pageInfo { hasNextPage endCursor } } }``;
  an unknown project is ``{"data": {"project": null}}``; its times are GraphQL
  ``Time`` scalars (app/graphql/types/time_type.rb: ``value.iso8601``), whole
  seconds with ``Z`` in a UTC GitLab: ``2026-11-22T12:00:00Z``;
- ``POST /api/v4/projects/:id/terraform/state/:name/lock`` (Maintainer) takes the
  lock if it is free (200) or answers 409; either way the body is the lock info
  with the state's current ``ID``, ``Who`` (username) and ``Created`` (locked_at);
  ``Created`` is ``locked_at`` through ``to_json``, i.e. ActiveSupport's JSON time
  (``xmlschema`` with ``time_precision`` 3): milliseconds and ``Z``,
  ``2026-11-22T12:00:00.123Z``; like GitLab, it creates a missing state;
- ``DELETE .../lock?ID=<id>`` (Maintainer) unlocks when the ID matches; 409 when it
  differs or the state is not locked; without ``ID`` it force-unlocks;
- ``:id`` is a numeric project ID or the URL-encoded full path;
- auth by ``PRIVATE-TOKEN`` or ``Authorization: Bearer``; 401 without a known token,
  403 for lock calls by a user below Maintainer.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
import re
from urllib.parse import unquote

from .fakehttp import FakeServer, Reply, Request, iso

MAINTAINER, DEVELOPER = 40, 30


def graphql_time(dt: datetime) -> str:
    """GitLab's GraphQL ``Time``: ISO 8601, whole seconds, ``Z`` for UTC."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeGitLab(FakeServer):
    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.tokens: dict[str, tuple[str, int]] = {}  # token -> (username, access level)
        self.projects: dict[str, dict[str, Any]] = {}  # full path -> {"id": int, "states": {name: state}}
        self._next_project = 41
        self._next_state = 1

    # -- arranging the world ---------------------------------------------------------
    def add_token(self, token: str, username: str, level: int = MAINTAINER) -> None:
        self.tokens[token] = (username, level)

    def add_project(self, path: str) -> int:
        self._next_project += 1
        self.projects[path] = {"id": self._next_project, "states": {}}
        return self._next_project

    def add_state(self, project: str, name: str, updated_at: datetime | None = None, serial: int = 3) -> None:
        at = updated_at or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._next_state += 1
        self.projects[project]["states"][name] = {
            "gid": f"gid://gitlab/Terraform::State/{self._next_state}", "lock_xid": None, "locked_by": None,
            "locked_at": None, "updated_at": at, "serial": serial,
        }

    def lock(self, project: str, name: str, lock_id: str, username: str, at: datetime) -> None:
        self.projects[project]["states"][name].update(lock_xid=lock_id, locked_by=username, locked_at=at)

    def state(self, project: str, name: str) -> dict[str, Any] | None:
        return self.projects.get(project, {}).get("states", {}).get(name)

    # -- routes --------------------------------------------------------------------------
    def _user(self, req: Request) -> tuple[str, int] | None:
        token = req.header("private-token")
        if not token and req.header("authorization").startswith("Bearer "):
            token = req.header("authorization")[7:]
        return self.tokens.get(token)

    def route(self, req: Request) -> Reply:
        user = self._user(req)
        if user is None:
            return Reply(status=401, body={"message": "401 Unauthorized"})
        if req.path == "/api/graphql" and req.method == "POST":
            return self._graphql(req)
        m = re.fullmatch(r"/api/v4/projects/([^/]+)/terraform/state/([^/]+)/lock", req.raw_path)
        if m:
            project = self._project(unquote(m.group(1)))
            if project is None:
                return Reply(status=404, body={"message": "404 Project Not Found"})
            if user[1] < MAINTAINER:
                return Reply(status=403, body={"message": "403 Forbidden"})
            name = unquote(m.group(2))
            if req.method == "POST":
                return self._take_lock(project, name, req, user[0])
            if req.method == "DELETE":
                return self._release_lock(project, name, req)
        return Reply(status=404, body={"message": "404 Not Found"})

    def _project(self, ref: str) -> dict[str, Any] | None:
        if ref.isdigit():
            return next((p for p in self.projects.values() if p["id"] == int(ref)), None)
        return self.projects.get(ref)

    def _graphql(self, req: Request) -> Reply:
        body = req.body if isinstance(req.body, dict) else {}
        query, variables = str(body.get("query", "")), body.get("variables") or {}
        if "terraformStates" not in query or "project" not in query:
            return Reply(body={"errors": [{"message": "this fake only knows project.terraformStates"}]})
        path = variables.get("fullPath")
        project = self.projects.get(path) if isinstance(path, str) else None
        if project is None:
            return Reply(body={"data": {"project": None}})
        first = int(variables.get("first") or 100)
        if first > 100:
            return Reply(body={"errors": [{"message": "Records per page must be at most 100"}]})
        after = variables.get("after")
        start = int(base64.b64decode(after).decode()) + 1 if after else 0
        names = sorted(project["states"])
        page = names[start:start + first]
        nodes = []
        for name in page:
            s = project["states"][name]
            nodes.append({
                "id": s["gid"], "name": name,
                "lockedAt": graphql_time(s["locked_at"]) if s["locked_at"] else None,
                "updatedAt": graphql_time(s["updated_at"]),
                "lockedByUser": {"username": s["locked_by"]} if s["locked_by"] else None,
                "latestVersion": {"serial": s["serial"], "createdAt": graphql_time(s["updated_at"])},
            })
        last = start + len(page) - 1
        return Reply(body={"data": {"project": {
            "id": f"gid://gitlab/Project/{project['id']}",
            "terraformStates": {
                "count": len(names), "nodes": nodes,
                "pageInfo": {"hasNextPage": last + 1 < len(names),
                             "endCursor": base64.b64encode(str(last).encode()).decode() if page else None},
            },
        }}})

    def _take_lock(self, project: dict[str, Any], name: str, req: Request, username: str) -> Reply:
        params = req.body if isinstance(req.body, dict) else {}
        missing = [k for k in ("ID", "Operation", "Info", "Who", "Version", "Created", "Path") if k not in params]
        if missing:
            return Reply(status=400, body={"error": f"{', '.join(missing)} is missing"})
        if name not in project["states"]:  # GitLab's create_or_find_by
            project["states"][name] = {"gid": f"gid://gitlab/Terraform::State/{self._next_state + 100}", "lock_xid": None,
                                       "locked_by": None, "locked_at": None, "updated_at": self.clock(), "serial": 0}
        s = project["states"][name]
        status = 409
        if s["lock_xid"] is None:
            s.update(lock_xid=params["ID"], locked_by=username, locked_at=self.clock())
            status = 200
        info = {"Operation": params["Operation"], "Info": params["Info"], "Version": params["Version"],
                "Path": params["Path"], "ID": s["lock_xid"], "Who": s["locked_by"],
                "Created": iso(s["locked_at"])}  # Rails JSON time: milliseconds, Z
        return Reply(status=status, body=info)

    def _release_lock(self, project: dict[str, Any], name: str, req: Request) -> Reply:
        s = project["states"].get(name)
        if s is None:
            project["states"][name] = s = {"gid": "gid://gitlab/Terraform::State/0", "lock_xid": None, "locked_by": None,
                                           "locked_at": None, "updated_at": self.clock(), "serial": 0}
        lock_id = req.query.get("ID")
        if lock_id is not None and (s["lock_xid"] or "") != lock_id:
            return Reply(status=409, body=None)
        s.update(lock_xid=None, locked_by=None, locked_at=None)
        return Reply(status=200, body=None)
