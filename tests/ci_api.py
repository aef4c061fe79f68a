"""An independent fake of the GitHub Actions and GitLab CI REST APIs, for the safety tests.

Written apart from ``devtools/fake_ci.py`` (the demo's and the benchmark's fake), so a
safety test does not share the demo's assumptions: its own routes, payloads and
pagination, on the standard library's ``ThreadingHTTPServer`` on 127.0.0.1.

Shapes follow the public descriptions: GitHub's REST reference (``job``,
``workflow-run`` and ``runner`` schemas, ``{"total_count": n, "<items>": [...]}``
lists, ``Link: <…>; rel="next"``), and GitLab's Jobs API (a bare JSON array,
``X-Page``/``X-Next-Page``/``X-Total``/``X-Total-Pages`` headers, ``scope[]``
filters, ids newest first). GitHub times are whole seconds (``2026-11-22T09:58:03Z``);
GitLab's have milliseconds (``2026-11-22T09:58:03.120Z``).

GitHub is served under ``/gh`` (``api_url`` = ``<url>/gh``), GitLab under ``/gl/api/v4``.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def gh_time(at: datetime | None) -> str | None:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if at else None


def gl_time(at: datetime | None) -> str | None:
    if at is None:
        return None
    at = at.astimezone(timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class CiApi:
    """GitHub + GitLab in one server. Add state with the ``github_*`` / ``gitlab_*`` methods."""

    def __init__(self, github_token: str = "ghp_independentFake000000000000000000", gitlab_token: str = "glpat-independent0000",
                 per_page_max: int = 100) -> None:
        self.github_token, self.gitlab_token = github_token, gitlab_token
        self.per_page_max = per_page_max
        self.gh_runs: dict[str, list[dict[str, Any]]] = {}
        self.gh_jobs: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
        self.gh_runners: dict[str, list[dict[str, Any]]] = {}  # "org:acme" / "repo:acme/infra"
        self.gl_jobs: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> "CiApi":
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                api._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def github_api(self) -> str:
        return f"{self.url}/gh"

    @property
    def gitlab_api(self) -> str:
        return f"{self.url}/gl/api/v4"

    # ---------------------------------------------------------------- GitHub state
    def github_run(self, repo: str, run_id: int, *, status: str, created_at: datetime, conclusion: str | None = None,
                   updated_at: datetime | None = None, attempt: int = 1) -> dict[str, Any]:
        run = {
            "id": run_id, "name": "terraform", "node_id": f"WFR_{run_id}", "head_branch": "main", "run_number": run_id % 1000,
            "event": "push", "status": status, "conclusion": conclusion, "workflow_id": 161335, "run_attempt": attempt,
            "url": f"{self.github_api}/repos/{repo}/actions/runs/{run_id}",
            "html_url": f"https://github.example/{repo}/actions/runs/{run_id}",
            "created_at": gh_time(created_at), "updated_at": gh_time(updated_at or created_at),
            "run_started_at": gh_time(created_at),
        }
        self.gh_runs.setdefault(repo, []).insert(0, run)  # newest first
        return run

    def github_job(self, repo: str, run_id: int, job_id: int, *, status: str, started_at: datetime,
                   completed_at: datetime | None = None, conclusion: str | None = None, runner_name: str | None = None,
                   attempt: int = 1) -> dict[str, Any]:
        job = {
            "id": job_id, "run_id": run_id, "run_attempt": attempt, "node_id": f"CR_{job_id}", "head_sha": "0" * 40,
            "url": f"{self.github_api}/repos/{repo}/actions/jobs/{job_id}",
            "html_url": f"https://github.example/{repo}/actions/runs/{run_id}/job/{job_id}",
            "status": status, "conclusion": conclusion, "created_at": gh_time(started_at),
            "started_at": gh_time(started_at), "completed_at": gh_time(completed_at), "name": "apply", "steps": [],
            "labels": ["self-hosted"], "runner_id": 1 if runner_name else None, "runner_name": runner_name,
            "runner_group_id": 1 if runner_name else None, "runner_group_name": "Default" if runner_name else None,
            "workflow_name": "terraform", "head_branch": "main",
        }
        self.gh_jobs.setdefault((repo, run_id, attempt), []).append(job)
        return job

    def github_runner(self, scope: str, name: str, *, status: str = "online", busy: bool = False) -> dict[str, Any]:
        runners = self.gh_runners.setdefault(scope, [])
        runner = {"id": 100 + len(runners), "name": name, "os": "Linux", "status": status, "busy": busy, "ephemeral": False,
                  "labels": [{"id": 1, "name": "self-hosted", "type": "read-only"}]}
        runners.append(runner)
        return runner

    # ---------------------------------------------------------------- GitLab state
    def gitlab_job(self, project_id: int, job_id: int, *, status: str, started_at: datetime | None,
                   finished_at: datetime | None = None, created_at: datetime | None = None) -> dict[str, Any]:
        job = {
            "id": job_id, "status": status, "stage": "deploy", "name": "terraform:apply", "ref": "main", "tag": False,
            "allow_failure": False, "created_at": gl_time(created_at or started_at), "started_at": gl_time(started_at),
            "finished_at": gl_time(finished_at), "duration": None, "queued_duration": 1.5,
            "web_url": f"https://gitlab.example/group/p{project_id}/-/jobs/{job_id}",
            "pipeline": {"id": job_id // 10, "project_id": project_id, "ref": "main", "status": status},
            "runner": {"id": 7, "description": "shared", "active": True, "is_shared": True},
        }
        jobs = self.gl_jobs.setdefault(project_id, [])
        jobs.append(job)
        jobs.sort(key=lambda j: -j["id"])  # GitLab lists jobs by id, newest first
        return job

    def count(self, pattern: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if re.search(pattern, r))

    # ---------------------------------------------------------------- serving
    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(h.path)
        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        if parts.path.startswith("/gh/"):
            if h.headers.get("Authorization") != f"Bearer {self.github_token}":
                return self._reply(h, 401, {"message": "Bad credentials"})
            return self._github(h, parts.path[len("/gh"):], query)
        if parts.path.startswith("/gl/api/v4/"):
            if h.headers.get("PRIVATE-TOKEN") != self.gitlab_token:
                return self._reply(h, 401, {"message": "401 Unauthorized"})
            return self._gitlab(h, parts.path[len("/gl/api/v4"):], query)
        return self._reply(h, 404, {"message": "Not Found"})

    def _github(self, h: BaseHTTPRequestHandler, path: str, q: dict[str, list[str]]) -> None:
        if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/jobs/(\d+)", path):
            for jobs in self.gh_jobs.values():
                for job in jobs:
                    if job["id"] == int(m.group(2)):
                        return self._reply(h, 200, job)
            return self._reply(h, 404, {"message": "Not Found"})
        if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/runs/(\d+)/attempts/(\d+)/jobs", path):
            jobs = self.gh_jobs.get((m.group(1), int(m.group(2)), int(m.group(3))), [])
            return self._github_list(h, "jobs", jobs, q)
        if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/runs", path):
            runs = [r for r in self.gh_runs.get(m.group(1), []) if _gh_run_matches(r, q)]
            return self._github_list(h, "workflow_runs", runs, q)
        if m := re.fullmatch(r"/orgs/([^/]+)/actions/runners", path):
            return self._github_list(h, "runners", self.gh_runners.get(f"org:{m.group(1)}", []), q)
        if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/runners", path):
            return self._github_list(h, "runners", self.gh_runners.get(f"repo:{m.group(1)}", []), q)
        return self._reply(h, 404, {"message": "Not Found"})

    def _github_list(self, h: BaseHTTPRequestHandler, key: str, items: list[Any], q: dict[str, list[str]]) -> None:
        page, per = self._paging(q)
        chunk = items[(page - 1) * per: page * per]
        headers = {}
        if page * per < len(items):
            nxt = re.sub(r"([?&])page=\d+", "", h.path)
            sep = "&" if "?" in nxt else "?"
            headers["Link"] = f'<{self.url}{nxt}{sep}page={page + 1}>; rel="next"'
        self._reply(h, 200, {"total_count": len(items), key: chunk}, headers)

    def _gitlab(self, h: BaseHTTPRequestHandler, path: str, q: dict[str, list[str]]) -> None:
        if m := re.fullmatch(r"/projects/(\d+)/jobs/(\d+)", path):
            for job in self.gl_jobs.get(int(m.group(1)), []):
                if job["id"] == int(m.group(2)):
                    return self._reply(h, 200, job)
            return self._reply(h, 404, {"message": "404 Not found"})
        if m := re.fullmatch(r"/projects/(\d+)/jobs", path):
            scopes = set(q.get("scope[]", []))
            jobs = [j for j in self.gl_jobs.get(int(m.group(1)), []) if not scopes or j["status"] in scopes]
            page, per = self._paging(q)
            pages = max(1, -(-len(jobs) // per))
            headers = {"X-Page": str(page), "X-Per-Page": str(per), "X-Total": str(len(jobs)), "X-Total-Pages": str(pages),
                       "X-Next-Page": str(page + 1) if page < pages else "", "X-Prev-Page": str(page - 1) if page > 1 else ""}
            return self._reply(h, 200, jobs[(page - 1) * per: page * per], headers)
        return self._reply(h, 404, {"message": "404 Not found"})

    def _paging(self, q: dict[str, list[str]]) -> tuple[int, int]:
        page = int((q.get("page") or ["1"])[0])
        per = min(int((q.get("per_page") or ["30"])[0]), self.per_page_max)
        return page, per

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def _gh_run_matches(run: dict[str, Any], q: dict[str, list[str]]) -> bool:
    status = (q.get("status") or [None])[0]
    if status and run["status"] != status:
        return False
    created = (q.get("created") or [None])[0]
    if created and created.startswith(">="):  # GitHub's search date syntax, the only form the reaper sends
        return str(run["created_at"]) >= created[2:]
    return True
