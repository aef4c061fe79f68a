"""GitLab CI evidence (gitlab.com or a self-managed ``api_url``).

- **claims** (``GitLabClaimVerifier``): ``GET /projects/:id/jobs/:job_id``.
  Running, pending, preparing, canceling (``after_script`` still runs) and other
  not-yet-finished statuses mean alive; success/failed/canceled/skipped mean
  dead once the grace period after ``finished_at`` has passed.
- **project jobs** (``GitLabJobsChecker``): the Docker executor's hostname
  ``runner-<token>-project-<id>-concurrent-<n>`` (Kubernetes adds a suffix)
  names the project, and a rule may map its paths to projects. Any live job
  (``scope[]=running&scope[]=pending``, plus ``canceling`` by default) that
  started before the lock was created means alive. None means dead only when no
  finished job (``scope[]=success&scope[]=failed&scope[]=canceled``, newest first,
  read back to ``max_run_duration`` + grace) that started before the lock
  finished within the grace period; one that did, a list cut short or failing
  means unknown.

One live-jobs list and one finished-jobs list per project per run; pagination by
``X-Next-Page``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from ..durations import format_duration
from ..http.client import ApiError, JsonApi
from ..models import LivenessFact, LockRecord
from ..policy.schema import Policy
from .claims import Claim
from .facts import (
    Memo,
    alive,
    contested,
    created_at,
    dead,
    ev,
    finished_horizon,
    from_error,
    host_clock_lags,
    judge_finished,
    live_after_created,
    recent_finish,
    ts,
    unknown,
)
from .identity import parse_who

FINISHED = {"success", "failed", "canceled", "skipped"}
FINISHED_SCOPES = ("success", "failed", "canceled")  # jobs that ran and ended (skipped jobs never ran)
NOT_FINISHED = {"running", "pending", "preparing", "canceling", "created", "waiting_for_resource",
                "waiting_for_callback", "scheduled"}


def web_url(api_url: str) -> str:
    api_url = api_url.rstrip("/")
    return api_url[: -len("/api/v4")] if api_url.endswith("/api/v4") else api_url


def _project_ref(project: int | str) -> str:
    return str(project) if isinstance(project, int) else quote(str(project), safe="")


class GitLabApi:
    def __init__(self, api: JsonApi, label: str = "gitlab", live_scopes: list[str] | None = None):
        self.api = api
        self.label = label
        self.live_scopes = list(live_scopes or ["running", "pending", "canceling"])
        self.memo = Memo(api.counter)
        self.web = web_url(api.base_url)

    def job(self, project: int | str, job_id: int) -> dict[str, Any]:
        return self.memo.get("gitlab.job", (str(project), job_id),
                             lambda: self.api.get_object(f"projects/{_project_ref(project)}/jobs/{job_id}", kind="gitlab.job"))

    def live_jobs(self, project: int | str) -> tuple[list[dict[str, Any]], bool]:
        params = [("scope[]", s) for s in self.live_scopes] + [("per_page", 100)]
        return self.memo.get("gitlab.live_jobs", str(project), lambda: self.api.get_all(
            f"projects/{_project_ref(project)}/jobs", kind="gitlab.live_jobs", params=params))

    def finished_jobs(self, project: int | str, horizon: datetime) -> tuple[list[dict[str, Any]], bool]:
        """The project's finished jobs (success, failed, canceled), newest first (GitLab lists jobs
        by id, descending), down to the first page that reaches a job created before ``horizon``:
        job ids grow with creation, so every later page is older still. The URL carries no time,
        so its ETag holds from run to run. Cut short by ``max_pages`` before the horizon: incomplete.

        Memoised per project for the run: a list read down to an earlier horizon covers a later one.
        Judged concurrently, a later candidate (a later ``now``, a later horizon) may read it first:
        a list that stopped short of this ``horizon`` is read again down to it."""
        params = [("scope[]", s) for s in FINISHED_SCOPES] + [("order_by", "id"), ("sort", "desc"), ("per_page", 100)]

        def reaches(page: list[dict[str, Any]], to: datetime) -> bool:
            made = [ts(j.get("created_at")) for j in page]
            # a job without a readable created_at tells nothing about the horizon: read on
            return any(c is not None and c < to for c in made)

        def read(to: datetime) -> Callable[[], tuple[list[dict[str, Any]], bool, datetime | None]]:
            def go() -> tuple[list[dict[str, Any]], bool, datetime | None]:
                stopped: list[bool] = []

                def enough(page: list[dict[str, Any]]) -> bool:
                    if reaches(page, to):
                        stopped.append(True)
                    return bool(stopped)

                items, complete = self.api.get_all(f"projects/{_project_ref(project)}/jobs", kind="gitlab.finished_jobs",
                                                   params=params, enough=enough)
                return items, complete, to if stopped else None  # None: the whole list, it covers any horizon
            return go

        items, complete, read_to = self.memo.get("gitlab.finished_jobs", str(project), read(horizon))
        if read_to is not None and read_to > horizon and complete and not reaches(items, horizon):
            items, complete, _ = self.memo.get("gitlab.finished_jobs", (str(project), horizon), read(horizon))
        return items, complete


class GitLabClaimVerifier:
    source = "gitlab-claim"
    provider_type = "gitlab"

    def __init__(self, gl: GitLabApi, grace: timedelta, skew: timedelta):
        self.gl = gl
        self.grace = grace
        self.skew = skew

    def verify(self, claim: Claim, lock: LockRecord, now: datetime) -> LivenessFact:
        src = self.source
        project = claim.project_id or claim.project
        if not project or not claim.job_id:
            return unknown(src, f"claim by {claim.who} has no project/job id")
        try:
            job = self.gl.job(project, claim.job_id)
        except ApiError as exc:
            return from_error(src, claim.describe(), exc)
        status = str(job.get("status"))
        url = job.get("web_url") or claim.url
        what = f"{claim.describe()} ({job.get('name')!r})"
        if status in NOT_FINISHED:
            detail = f"{what} is {status}"
            return alive(src, detail, ev(src, detail, url, status, ts(job.get("started_at"))))
        if status in FINISHED:
            lag = host_clock_lags(src, what, claim.claimed_at, [ts(job.get("started_at")), claim.started_at], self.skew, url)
            if lag is not None:
                return lag
            created = created_at(lock)
            return judge_finished(src, what, ts(job.get("finished_at")), created, now, self.grace, url, status,
                                  skew=self.skew)
        return unknown(src, f"{what} has status {status!r}", ev(src, f"unrecognised status {status!r}", url, status))


class GitLabJobsChecker:
    """Live jobs in the project named by the runner hostname, or mapped by the lock's rule.

    A hostname names a project only on a provider that opted in with ``runner_hosts``
    (the project id in ``runner-…-project-N-concurrent-M`` means nothing on another
    GitLab instance), and only for locks held by one of its ``runner_users``.
    """

    name = "gitlab-jobs"

    def __init__(self, apis: dict[str, tuple[GitLabApi, list[str], list[str]]], policy: Policy,
                 own_evidence: frozenset[str] = frozenset()):
        self.apis = apis  # provider label -> (api, runner host globs ([] = no hostname evidence), runner users)
        self.policy = policy
        self.own_evidence = own_evidence  # stores whose locks only their own checker judges (HCP Terraform)

    def _targets(self, lock: LockRecord) -> list[tuple[GitLabApi, int | str, str]]:
        if lock.info is None or lock.store in self.own_evidence:
            return []
        out: list[tuple[GitLabApi, int | str, str]] = []
        who = parse_who(lock.info.Who)
        project = who.gitlab_project()
        if project is not None:
            for gl, hosts, users in self.apis.values():
                if (any(fnmatch.fnmatchcase(who.host, g) for g in hosts)
                        and any(fnmatch.fnmatchcase(who.user, u) for u in users)):
                    out.append((gl, project, f"runner hostname {who.host!r}"))
        rule = self.policy.rule_for(lock.lock_path, lock.info.Operation)
        m = rule.liveness if rule is not None else None
        if rule is not None and m is not None and m.gitlab_projects and m.applies_to(lock.info.Who):
            provider = self.policy.liveness.provider("gitlab", m.gitlab_provider)
            entry = self.apis.get(provider.label) if provider is not None else None
            if entry is not None:
                for p in m.gitlab_projects:
                    if not any(t[0] is entry[0] and str(t[1]) == str(p) for t in out):
                        out.append((entry[0], p, f"rule {rule.label}"))
        return out

    def applies(self, lock: LockRecord) -> bool:
        return bool(self._targets(lock))

    @staticmethod
    def _page(gl: GitLabApi, project: int | str) -> str:
        return f"{gl.web}/{project}/-/jobs" if isinstance(project, str) else gl.api.url(f"projects/{project}/jobs")

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact | None:
        targets = self._targets(lock)
        if not targets:
            return None
        evidence: list[Any] = []
        first = self._live(targets, lock, evidence)
        if first is not None:
            return first
        # No live job that could be the holder: the holder may have finished a moment ago, its runner still
        # stopping Terraform. Dead only once every job that could be the holder finished at least `grace` ago.
        later = self._recent(targets, lock, now, evidence)
        if later is not None:
            return later
        projects = ", ".join(str(t[1]) for t in targets)
        return dead(self.name, f"no live job in project {projects}, and none that could hold it finished within "
                    f"the {format_duration(self.policy.liveness.grace)} grace", *evidence)

    def _live(self, targets: list[tuple[GitLabApi, int | str, str]], lock: LockRecord,
              evidence: list[Any]) -> LivenessFact | None:
        """Alive for a live job that started before the lock (by its ``Created`` + skew) or not yet; contested
        for one that started after it (the holder's clock may lag beyond the skew); unknown for a list that
        failed or was cut short; None when no job is live."""
        src = self.name
        created = created_at(lock)
        skew = self.policy.clock_skew
        later: list[Any] = []
        uncertain = False
        for gl, project, why in targets:
            page = self._page(gl, project)
            try:
                jobs, complete = gl.live_jobs(project)
            except ApiError as exc:
                uncertain = True
                evidence.append(ev(src, f"project {project} ({why}): {exc.reason}", exc.url, str(exc.status or "error")))
                continue
            for job in jobs:
                started = ts(job.get("started_at"))
                label = f"project {project} ({why}): job {job.get('id')} ({job.get('name')!r})"
                url = job.get("web_url") or page
                if started is None or started <= created + skew:
                    when = f"started {started.isoformat()}" if started else "not started yet"
                    detail = f"{label} is {job.get('status')}, {when}"
                    return alive(src, detail, *evidence, ev(src, detail, url, str(job.get("status")), started))
                later.append(live_after_created(src, label, str(job.get("status")), started, created, url))
            if not complete:
                uncertain = True
                evidence.append(ev(src, f"project {project}: more live jobs than the page limit", page, "incomplete"))
            elif not jobs:
                evidence.append(ev(src, f"project {project} ({why}): no {'/'.join(gl.live_scopes)} job", page, "none"))
        if later:
            return contested(src, later[0].detail, *evidence, *later)
        if uncertain:
            return unknown(src, "could not list every live job", *evidence)
        return None

    def _recent(self, targets: list[tuple[GitLabApi, int | str, str]], lock: LockRecord, now: datetime,
                evidence: list[Any]) -> LivenessFact | None:
        """Contested when a job finished within the grace period, unknown when a list failed or was cut short,
        None when every finished job that could matter finished long enough ago."""
        src = self.name
        created = created_at(lock)
        grace = self.policy.liveness.grace
        horizon = finished_horizon(now, grace, self.policy.liveness.max_run_duration)
        recent: list[Any] = []
        uncertain = False
        for gl, project, why in targets:
            page = self._page(gl, project)
            try:
                jobs, complete = gl.finished_jobs(project, horizon)
            except ApiError as exc:
                uncertain = True
                evidence.append(ev(src, f"project {project} ({why}) finished jobs: {exc.reason}", exc.url,
                                   str(exc.status or "error")))
                continue
            if not complete:
                uncertain = True
                evidence.append(ev(src, f"project {project}: more finished jobs since {horizon.isoformat()} than the page "
                                   "limit: a recently finished one may be unread", page, "incomplete"))
                continue
            for job in jobs:
                label = f"project {project} ({why}): job {job.get('id')} ({job.get('name')!r})"
                began = ts(job.get("started_at")) or ts(job.get("created_at"))
                seen = recent_finish(src, label, began, ts(job.get("finished_at")), created, now, grace,
                                     self.policy.clock_skew, job.get("web_url") or page, str(job.get("status")))
                if seen is None:
                    continue
                what, e = seen
                evidence.append(e)
                if what == "recent":
                    recent.append(e)
                else:
                    uncertain = True
        if recent:
            return contested(src, recent[0].detail, *evidence)
        if uncertain:
            return unknown(src, "could not list every recently finished job", *evidence)
        return None
