"""A local fake of the GitHub and GitLab REST APIs, for tests, the demo and the benchmark.

A threaded ``http.server`` on 127.0.0.1 (free port) serving:

- GitHub (Enterprise-Server-style base ``<url>/api/v3``): workflow runs per repo,
  newest first (``?status=`` filter, and ``?created=`` in GitHub's date syntax:
  ``>=2026-11-15T00:00:00Z``, ``A..B``, ...), jobs of a run attempt, one job, org
  and repo runners, and a GitHub App's installation-token exchange (the JWT is
  verified RS256);
- GitLab (``<url>/api/v4``): a project's jobs by id, newest first (``scope[]=``
  filter, ``order_by=id``, ``sort=``) and one job.

Payloads follow GitHub's OpenAPI description (``@octokit/openapi``; a test checks
them against it) and GitLab's API documentation. Lists paginate (``per_page``,
``page``; ``Link`` headers on both, ``X-Next-Page`` etc. on GitLab). Every JSON
answer has an ``ETag``; ``If-None-Match`` gets a 304. Faults can be injected by
path regex: any status (403 rate limit with ``Retry-After``, 500, ...), extra
headers, a delay (slow replies) or a raw body (malformed JSON).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .fakehttp import ThreadedServer
from .motoserver import free_port

GITHUB_PREFIX = "/api/v3"
GITLAB_PREFIX = "/api/v4"


def iso(at: datetime | None) -> str | None:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if at else None


def iso_ms(at: datetime | None) -> str | None:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z" if at else None


# --------------------------------------------------------------------------
# GitHub payloads (shapes from api.github.com.json: job, workflow-run, runner)
# --------------------------------------------------------------------------
def _gh_user(web: str, api: str, login: str = "octocat", id_: int = 1) -> dict[str, Any]:
    u = f"{api}/users/{login}"
    return {
        "login": login, "id": id_, "node_id": "MDQ6VXNlcjE=", "avatar_url": f"{web}/images/{login}.gif", "gravatar_id": "",
        "url": u, "html_url": f"{web}/{login}", "followers_url": f"{u}/followers", "following_url": f"{u}/following{{/other_user}}",
        "gists_url": f"{u}/gists{{/gist_id}}", "starred_url": f"{u}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{u}/subscriptions", "organizations_url": f"{u}/orgs", "repos_url": f"{u}/repos",
        "events_url": f"{u}/events{{/privacy}}", "received_events_url": f"{u}/received_events", "type": "Organization",
        "site_admin": False,
    }


def gh_repo(web: str, api: str, full_name: str, id_: int = 1296269) -> dict[str, Any]:
    owner, name = full_name.split("/", 1)
    u = f"{api}/repos/{full_name}"
    templated = {
        "archive_url": "/{archive_format}{/ref}", "assignees_url": "/assignees{/user}", "blobs_url": "/git/blobs{/sha}",
        "branches_url": "/branches{/branch}", "collaborators_url": "/collaborators{/collaborator}",
        "comments_url": "/comments{/number}", "commits_url": "/commits{/sha}", "compare_url": "/compare/{base}...{head}",
        "contents_url": "/contents/{+path}", "git_commits_url": "/git/commits{/sha}", "git_refs_url": "/git/refs{/sha}",
        "git_tags_url": "/git/tags{/sha}", "issue_comment_url": "/issues/comments{/number}",
        "issue_events_url": "/issues/events{/number}", "issues_url": "/issues{/number}", "keys_url": "/keys{/key_id}",
        "labels_url": "/labels{/name}", "milestones_url": "/milestones{/number}",
        "notifications_url": "/notifications{?since,all,participating}", "pulls_url": "/pulls{/number}",
        "releases_url": "/releases{/id}", "statuses_url": "/statuses/{sha}", "trees_url": "/git/trees{/sha}",
    }
    plain = ["contributors", "deployments", "downloads", "events", "forks", "hooks", "languages", "merges", "stargazers",
             "subscribers", "subscription", "tags", "teams"]
    repo: dict[str, Any] = {
        "id": id_, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": name, "full_name": full_name,
        "owner": _gh_user(web, api, owner, 9919), "private": True, "html_url": f"{web}/{full_name}",
        "description": "Terraform for the platform", "fork": False, "url": u,
    }
    repo.update({k: u + v for k, v in templated.items()})
    repo.update({f"{p}_url": f"{u}/{p}" for p in plain})
    return repo


def gh_job(web: str, api: str, repo: str, run_id: int, job_id: int, *, status: str, conclusion: str | None = None,
           started_at: datetime, completed_at: datetime | None = None, runner_name: str | None = "GitHub Actions 2",
           name: str = "terraform", attempt: int = 1, labels: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": job_id, "run_id": run_id, "run_url": f"{api}/repos/{repo}/actions/runs/{run_id}", "run_attempt": attempt,
        "node_id": "CR_kwDOABCD", "head_sha": "f83a356604ae3c5d03e1b46ef4d1ca77d64a90b0",
        "url": f"{api}/repos/{repo}/actions/jobs/{job_id}", "html_url": f"{web}/{repo}/actions/runs/{run_id}/job/{job_id}",
        "status": status, "conclusion": conclusion, "created_at": iso(started_at - timedelta(seconds=5)),
        "started_at": iso(started_at), "completed_at": iso(completed_at), "name": name, "steps": [],
        "check_run_url": f"{api}/repos/{repo}/check-runs/{job_id}", "labels": labels or ["ubuntu-latest"],
        "runner_id": 7 if runner_name else None, "runner_name": runner_name,
        "runner_group_id": 2 if runner_name else None, "runner_group_name": "GitHub Actions" if runner_name else None,
        "workflow_name": "terraform", "head_branch": "main",
    }


def gh_run(web: str, api: str, repo: str, run_id: int, *, status: str, conclusion: str | None = None,
           started_at: datetime, updated_at: datetime | None = None, attempt: int = 1, name: str = "terraform") -> dict[str, Any]:
    u = f"{api}/repos/{repo}/actions/runs/{run_id}"
    r = gh_repo(web, api, repo)
    return {
        "id": run_id, "name": name, "node_id": "WFR_kwLOABCD", "check_suite_id": 42, "check_suite_node_id": "CS_kwDOABCD",
        "head_branch": "main", "head_sha": "acb5820ced9479c074f688cc328bf03f341a511d", "path": ".github/workflows/terraform.yml",
        "run_number": run_id % 10000, "run_attempt": attempt, "event": "push", "display_title": "Apply infrastructure",
        "status": status, "conclusion": conclusion, "workflow_id": 159038, "url": u, "html_url": f"{web}/{repo}/actions/runs/{run_id}",
        "pull_requests": [], "created_at": iso(started_at), "updated_at": iso(updated_at or started_at),
        "run_started_at": iso(started_at), "actor": _gh_user(web, api), "triggering_actor": _gh_user(web, api),
        "jobs_url": f"{u}/jobs", "logs_url": f"{u}/logs", "check_suite_url": f"{api}/repos/{repo}/check-suites/42",
        "artifacts_url": f"{u}/artifacts", "cancel_url": f"{u}/cancel", "rerun_url": f"{u}/rerun",
        "workflow_url": f"{api}/repos/{repo}/actions/workflows/159038",
        "head_commit": {
            "id": "acb5820ced9479c074f688cc328bf03f341a511d", "tree_id": "d23f6eedb1e1b9610bbc754ddb5197bfe7271223",
            "message": "Apply infrastructure", "timestamp": iso(started_at),
            "author": {"name": "Mona", "email": "mona@example.com"}, "committer": {"name": "Mona", "email": "mona@example.com"},
        },
        "repository": r, "head_repository": r,
    }


def gh_runner(id_: int, name: str, *, status: str = "online", busy: bool = False, ephemeral: bool = False) -> dict[str, Any]:
    return {
        "id": id_, "name": name, "os": "linux", "status": status, "busy": busy, "ephemeral": ephemeral, "runner_group_id": 1,
        "labels": [{"id": 5, "name": "self-hosted", "type": "read-only"}, {"id": 7, "name": "X64", "type": "read-only"},
                   {"id": 11, "name": "Linux", "type": "read-only"}],
    }


# --------------------------------------------------------------------------
# GitLab payloads (shape from the Jobs API documentation)
# --------------------------------------------------------------------------
def gl_job(web: str, project_id: int, job_id: int, *, status: str, started_at: datetime | None,
           finished_at: datetime | None = None, name: str = "terraform:apply", pipeline_id: int = 6) -> dict[str, Any]:
    created = (started_at or datetime.now(timezone.utc)) - timedelta(seconds=20)
    duration = (finished_at - started_at).total_seconds() if (finished_at and started_at) else None
    path = f"group/project-{project_id}"
    job = {
        "id": job_id, "status": status, "stage": "deploy", "name": name, "ref": "main", "tag": False, "coverage": None,
        "allow_failure": False, "archived": False, "source": "push",
        "created_at": iso_ms(created), "started_at": iso_ms(started_at), "finished_at": iso_ms(finished_at), "erased_at": None,
        "duration": duration, "queued_duration": 1.2 if started_at else None,
        "user": {"id": 1, "name": "Administrator", "username": "root", "state": "active", "avatar_url": None,
                 "web_url": f"{web}/root", "created_at": "2015-12-21T13:14:24.077Z", "bio": None, "location": None,
                 "public_email": "", "linkedin": "", "twitter": "", "website_url": "", "organization": ""},
        "commit": {"author_email": "admin@example.com", "author_name": "Administrator", "created_at": "2015-12-24T16:51:14.000+01:00",
                   "id": "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd", "message": "Apply infrastructure",
                   "short_id": "0ff3ae19", "title": "Apply infrastructure"},
        "pipeline": {"id": pipeline_id, "project_id": project_id, "ref": "main", "sha": "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd",
                     "status": "running" if status in ("running", "pending") else status, "source": "push",
                     "web_url": f"{web}/{path}/-/pipelines/{pipeline_id}"},
        "web_url": f"{web}/{path}/-/jobs/{job_id}",
        "project": {"ci_job_token_scope_enabled": False},
        "artifacts": [], "artifacts_expire_at": None, "tag_list": ["docker"],
        "runner": None if status == "pending" else {
            "id": 32, "description": "shared-runner-1", "ip_address": None, "active": True, "paused": False, "is_shared": True,
            "runner_type": "instance_type", "name": "gitlab-runner", "online": True, "status": "online"},
        "runner_manager": None,
    }
    if status == "failed":
        job["failure_reason"] = "script_failure"
    return job


# --------------------------------------------------------------------------
# GitHub's date qualifiers (search syntax), as the workflow-runs ``created`` parameter takes them
def _parse(text: str) -> datetime:
    """``2026-11-22``, ``2026-11-22T10:00:00Z`` or with an offset; a bare date is midnight UTC."""
    text = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at


def created_range(q: str) -> tuple[tuple[datetime, bool] | None, tuple[datetime, bool] | None]:
    """``>=X``, ``>X``, ``<=X``, ``<X``, ``X..Y``, ``X..*``, ``*..Y`` or a bare date (that whole day):
    (low, inclusive) and (high, inclusive) bounds, None for open."""
    q = q.strip()
    for op in (">=", "<=", ">", "<"):
        if q.startswith(op):
            at = _parse(q[len(op):])
            return ((at, op == ">="), None) if op[0] == ">" else (None, (at, op == "<="))
    if ".." in q:
        a, b = q.split("..", 1)
        return (None if a == "*" else (_parse(a), True)), (None if b == "*" else (_parse(b), True))
    day = _parse(q)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", q):
        return (day, True), (day + timedelta(days=1), False)
    return (day, True), (day, True)


def _in_range(at: datetime, lo: tuple[datetime, bool] | None, hi: tuple[datetime, bool] | None) -> bool:
    if lo is not None and (at < lo[0] or (at == lo[0] and not lo[1])):
        return False
    if hi is not None and (at > hi[0] or (at == hi[0] and not hi[1])):
        return False
    return True


# --------------------------------------------------------------------------
@dataclass
class Fault:
    pattern: str  # regex searched in the request path (with query)
    status: int = 500
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    times: int | None = None  # None: every matching request
    passthrough: bool = False  # after the delay, answer normally
    method: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and re.search(self.pattern, path) is not None


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


class FakeCI(ThreadedServer):
    """Start with ``FakeCI().start()`` (or ``with``); ``stop()`` when done. Thread-safe state."""

    methods = ("GET", "POST")
    thread_name = "fake-ci"

    def __init__(self, github_token: str = "ghp_fakeTokenForTests0000000000000000", gitlab_token: str = "glpat-fakeTokenForTests00",
                 app_id: str | None = None, app_public_key: Any = None, per_page_max: int = 100):
        super().__init__(free_port())  # the URL is known before start(): payloads embed it
        self.github_api = self.url + GITHUB_PREFIX
        self.gitlab_api = self.url + GITLAB_PREFIX
        self.web = self.url  # html_url / web_url base
        self.github_tokens = {github_token}
        self.gitlab_tokens = {gitlab_token}
        self.app_id = app_id
        self.app_public_key = app_public_key
        self.per_page_max = per_page_max
        self.rate_remaining = 4999
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.attempt_jobs: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
        self.runners: dict[str, list[dict[str, Any]]] = {}  # "org:acme" or "repo:acme/infra"
        self.gl_jobs: dict[int, list[dict[str, Any]]] = {}
        self.faults: list[Fault] = []
        self.requests: list[Seen] = []
        self.issued_tokens: list[str] = []
        self._lock = threading.RLock()

    # ---- scenario building ---------------------------------------------
    def add_github_run(self, repo: str, run_id: int, *, status: str, started_at: datetime, conclusion: str | None = None,
                       updated_at: datetime | None = None, attempt: int = 1) -> dict[str, Any]:
        run = gh_run(self.web, self.github_api, repo, run_id, status=status, conclusion=conclusion, started_at=started_at,
                     updated_at=updated_at, attempt=attempt)
        with self._lock:
            self.runs.setdefault(repo, []).append(run)
        return run

    def add_github_job(self, repo: str, run_id: int, job_id: int, *, status: str, started_at: datetime,
                       completed_at: datetime | None = None, conclusion: str | None = None, runner_name: str | None = "GitHub Actions 2",
                       attempt: int = 1, name: str = "terraform") -> dict[str, Any]:
        job = gh_job(self.web, self.github_api, repo, run_id, job_id, status=status, conclusion=conclusion, started_at=started_at,
                     completed_at=completed_at, runner_name=runner_name, attempt=attempt, name=name)
        with self._lock:
            self.attempt_jobs.setdefault((repo, run_id, attempt), []).append(job)
        return job

    def add_github_runner(self, scope: str, name: str, *, status: str = "online", busy: bool = False) -> dict[str, Any]:
        with self._lock:
            lst = self.runners.setdefault(scope, [])
            runner = gh_runner(len(lst) + 1, name, status=status, busy=busy)
            lst.append(runner)
        return runner

    def add_gitlab_job(self, project_id: int, job_id: int, *, status: str, started_at: datetime | None,
                       finished_at: datetime | None = None, name: str = "terraform:apply") -> dict[str, Any]:
        job = gl_job(self.web, project_id, job_id, status=status, started_at=started_at, finished_at=finished_at, name=name)
        with self._lock:
            self.gl_jobs.setdefault(project_id, []).append(job)
        return job

    def github_job_env(self, repo: str, run_id: int, runner: str, *, attempt: int = 1, job: str = "apply") -> dict[str, str]:
        """The variables a GitHub Actions job's step sees when this fake is its GitHub."""
        return {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": repo, "GITHUB_RUN_ID": str(run_id),
                "GITHUB_RUN_ATTEMPT": str(attempt), "GITHUB_JOB": job, "RUNNER_NAME": runner,
                "GITHUB_SERVER_URL": self.web, "GITHUB_API_URL": self.github_api}

    def fault(self, pattern: str, status: int = 500, **kw: Any) -> Fault:
        f = Fault(pattern=pattern, status=status, **kw)
        with self._lock:
            self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def count(self, pattern: str = "", method: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if re.search(pattern, r.path)
                       and (method is None or r.method == method) and (status is None or r.status == status))

    # ---- request handling -------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler) -> None:
        self._handle(h, h.command)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        seen = Seen(method=method, path=h.path, headers={k: v for k, v in h.headers.items()})
        with self._lock:
            self.requests.append(seen)
            fault = next((f for f in self.faults if f.matches(method, h.path) and (f.times is None or f.times > 0)), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if not fault.passthrough:
                body = fault.body if fault.body is not None else json.dumps({"message": f"injected HTTP {fault.status}"}).encode()
                self._send(h, seen, fault.status, body, fault.headers)
                return
        try:
            status, payload, headers = self._route(method, h)
        except Exception as exc:  # a bug in the fake: answer 500 rather than hang the client
            status, payload, headers = 500, {"message": f"fake CI error {type(exc).__name__}: {exc}"}, {}
        body = json.dumps(payload).encode()
        headers = dict(headers)
        if status == 200 and method == "GET":
            etag = 'W/"' + hashlib.sha1(body).hexdigest() + '"'
            headers["ETag"] = etag
            if h.headers.get("If-None-Match") == etag:
                self._send(h, seen, 304, b"", {"ETag": etag, **self._rate_headers(h.path, count=False)})
                return
        headers.update(self._rate_headers(h.path, count=True))
        self._send(h, seen, status, body, headers)

    def _rate_headers(self, path: str, count: bool) -> dict[str, str]:
        if not path.startswith(GITHUB_PREFIX):
            return {}
        with self._lock:
            if count:
                self.rate_remaining = max(0, self.rate_remaining - 1)
            return {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": str(self.rate_remaining),
                    "X-RateLimit-Reset": str(int(time.time()) + 3600), "X-RateLimit-Resource": "core"}

    def _send(self, h: BaseHTTPRequestHandler, seen: Seen, status: int, body: bytes, headers: dict[str, str]) -> None:
        seen.status = status
        try:
            h.send_response(status)
            if status != 304:
                h.send_header("Content-Type", "application/json; charset=utf-8")
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if body:
                h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and went away

    def _page(self, h: BaseHTTPRequestHandler, items: list[Any], query: dict[str, list[str]], gitlab: bool) -> tuple[list[Any], dict[str, str]]:
        per_page = min(int((query.get("per_page") or ["30" if not gitlab else "20"])[0]), self.per_page_max)
        page = max(1, int((query.get("page") or ["1"])[0]))
        chunk = items[(page - 1) * per_page: page * per_page]
        headers: dict[str, str] = {}
        parts = urlsplit(h.path)
        last = max(1, -(-len(items) // per_page))

        def link(p: int) -> str:
            q = [(k, v) for k, vs in query.items() for v in vs if k != "page"] + [("page", str(p))]
            return f"<{self.url}{parts.path}?{urlencode(q)}>"

        rels = []
        if page < last:
            rels.append(f'{link(page + 1)}; rel="next"')
            rels.append(f'{link(last)}; rel="last"')
        if page > 1:
            rels.append(f'{link(1)}; rel="first"')
            rels.append(f'{link(page - 1)}; rel="prev"')
        if rels:
            headers["Link"] = ", ".join(rels)
        if gitlab:
            headers.update({"X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(len(items)),
                            "X-Total-Pages": str(last), "X-Next-Page": str(page + 1) if page < last else "",
                            "X-Prev-Page": str(page - 1) if page > 1 else ""})
        return chunk, headers

    def _route(self, method: str, h: BaseHTTPRequestHandler) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(h.path)
        path, query = parts.path, parse_qs(parts.query)
        if path.startswith(GITHUB_PREFIX):
            return self._github(method, path[len(GITHUB_PREFIX):], query, h)
        if path.startswith(GITLAB_PREFIX):
            return self._gitlab(method, path[len(GITLAB_PREFIX):], query, h)
        return 404, {"message": "Not Found"}, {}

    # ---- GitHub ----------------------------------------------------------
    def _github(self, method: str, path: str, query: dict[str, list[str]], h: BaseHTTPRequestHandler) -> tuple[int, Any, dict[str, str]]:
        nf = (404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}, {})
        m = re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)
        if m and method == "POST":
            return self._app_token(h)
        auth = h.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else (auth[len("token "):] if auth.startswith("token ") else "")
        with self._lock:
            ok = token in self.github_tokens
        if not ok:
            return 401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}, {}
        if method != "GET":
            return nf
        with self._lock:
            m = re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/runs", path)
            if m:
                runs = list(self.runs.get(m.group(1), []))
                status = (query.get("status") or [None])[0]
                if status:
                    runs = [r for r in runs if r["status"] == status or r["conclusion"] == status]
                created = (query.get("created") or [None])[0]
                if created:
                    try:
                        lo, hi = created_range(created)
                    except ValueError as exc:
                        return 422, {"message": f"Validation Failed: created: {exc}",
                                     "documentation_url": "https://docs.github.com/rest", "status": "422"}, {}
                    runs = [r for r in runs if _in_range(_parse(r["created_at"]), lo, hi)]
                runs.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)  # newest first, as GitHub lists them
                chunk, headers = self._page(h, runs, query, gitlab=False)
                return 200, {"total_count": len(runs), "workflow_runs": chunk}, headers
            m = re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/runs/(\d+)/attempts/(\d+)/jobs", path)
            if m:
                key = (m.group(1), int(m.group(2)), int(m.group(3)))
                if key not in self.attempt_jobs:
                    return nf
                jobs = list(self.attempt_jobs[key])
                chunk, headers = self._page(h, jobs, query, gitlab=False)
                return 200, {"total_count": len(jobs), "jobs": chunk}, headers
            m = re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/jobs/(\d+)", path)
            if m:
                for (repo, _, _), jobs in self.attempt_jobs.items():
                    for j in jobs:
                        if repo == m.group(1) and j["id"] == int(m.group(2)):
                            return 200, j, {}
                return nf
            m = re.fullmatch(r"/orgs/([^/]+)/actions/runners", path) or re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/runners", path)
            if m:
                scope = ("org:" if path.startswith("/orgs/") else "repo:") + m.group(1)
                if scope not in self.runners:
                    return nf
                runners = list(self.runners[scope])
                chunk, headers = self._page(h, runners, query, gitlab=False)
                return 200, {"total_count": len(runners), "runners": chunk}, headers
        return nf

    def _app_token(self, h: BaseHTTPRequestHandler) -> tuple[int, Any, dict[str, str]]:
        import rsa

        auth = h.headers.get("Authorization", "")
        jwt = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        bad = (401, {"message": "A JSON web token could not be decoded", "status": "401"}, {})
        try:
            head_b64, payload_b64, sig_b64 = jwt.split(".")

            def unb64(s: str) -> bytes:
                return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

            header = json.loads(unb64(head_b64))
            payload = json.loads(unb64(payload_b64))
            rsa.verify(f"{head_b64}.{payload_b64}".encode(), unb64(sig_b64), self.app_public_key)
        except Exception:
            return bad
        now = time.time()
        if header.get("alg") != "RS256" or str(payload.get("iss")) != str(self.app_id):
            return bad
        if not (payload.get("iat", now + 999) <= now + 60 and now < payload.get("exp", 0) <= now + 660):
            return 401, {"message": "'Expiration time' claim ('exp') is too far in the future", "status": "401"}, {}
        token = "ghs_" + secrets.token_hex(18)
        with self._lock:
            self.github_tokens.add(token)
            self.issued_tokens.append(token)
        expires = datetime.now(timezone.utc) + timedelta(hours=1)
        return 201, {"token": token, "expires_at": iso(expires), "permissions": {"actions": "read"},
                     "repository_selection": "all"}, {}

    # ---- GitLab ----------------------------------------------------------
    def _gitlab(self, method: str, path: str, query: dict[str, list[str]], h: BaseHTTPRequestHandler) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            ok = h.headers.get("PRIVATE-TOKEN", "") in self.gitlab_tokens
        if not ok:
            return 401, {"message": "401 Unauthorized"}, {}
        nf = (404, {"message": "404 Project Not Found"}, {})
        with self._lock:
            m = re.fullmatch(r"/projects/(\d+|group%2Fproject-\d+)/jobs", path)  # an id or a URL-encoded full path
            if m and method == "GET":
                pid = int(m.group(1).rsplit("-", 1)[-1])
                if pid not in self.gl_jobs:
                    return nf
                scopes = query.get("scope[]") or query.get("scope") or []
                jobs = [j for j in self.gl_jobs[pid] if not scopes or j["status"] in scopes]
                if (query.get("order_by") or ["id"])[0] != "id" or (query.get("sort") or ["desc"])[0] not in ("asc", "desc"):
                    return 400, {"error": "order_by does not have a valid value"}, {}
                jobs.sort(key=lambda j: j["id"], reverse=(query.get("sort") or ["desc"])[0] == "desc")  # by id, newest first
                chunk, headers = self._page(h, jobs, query, gitlab=True)
                return 200, chunk, headers
            m = re.fullmatch(r"/projects/(\d+)/jobs/(\d+)", path)
            if m and method == "GET":
                for j in self.gl_jobs.get(int(m.group(1)), []):
                    if j["id"] == int(m.group(2)):
                        return 200, j, {}
                return 404, {"message": "404 Not found"}, {}
        return nf


def rate_limited(pattern: str, retry_after: int = 60, times: int | None = None) -> Fault:
    """GitHub's secondary rate limit: 403 with Retry-After."""
    return Fault(pattern=pattern, status=403, times=times,
                 body=json.dumps({"message": "You have exceeded a secondary rate limit.",
                                  "documentation_url": "https://docs.github.com/rest"}).encode(),
                 headers={"Retry-After": str(retry_after), "X-RateLimit-Remaining": "4000"})

