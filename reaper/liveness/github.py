"""GitHub Actions evidence (github.com or a GitHub Enterprise Server ``api_url``).

Three kinds of evidence, each conservative:

- **claims** (``GitHubClaimVerifier``): the claimed run attempt's jobs. Jobs
  still queued/in progress/waiting mean alive; all completed means dead once the
  grace period after the last ``completed_at`` has passed. A job that finished
  before the lock was created is not its holder (unknown).
- **self-hosted runners** (``GitHubRunnersChecker``): for hostnames the policy
  names as runners of an org or repo (the runner name defaults to the hostname),
  busy means alive; online and idle, or gone from every listed scope, means dead;
  offline means unknown.
- **repo mapping** (``GitHubReposChecker``): a rule says its locks are only
  taken by CI in some repos. Any active run there that started before the lock
  was created means alive. None (with every list complete) means dead only when
  no completed run that could be the holder (created before the lock) finished
  within the grace period: those are read from the completed runs created within
  ``max_run_duration`` + grace (``created=>=…``); one that finished within the
  grace, a list cut short or failing means unknown.

API answers are memoised per run (one runners list per org or repo, one jobs
list per run attempt, one runs list per repo and status, one completed-runs
list per repo).
"""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from ..durations import format_duration
from ..http.client import ApiError, JsonApi
from ..models import LivenessFact, LockRecord
from ..policy.liveness import RuleLiveness, RunnerScope
from ..policy.schema import Policy, Rule
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

GITHUB_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
ACTIVE_JOB_STATUSES = {"queued", "in_progress", "waiting", "requested", "pending"}


def web_url(api_url: str) -> str:
    """https://api.github.com -> https://github.com; https://ghe.example.com/api/v3 -> https://ghe.example.com"""
    api_url = api_url.rstrip("/")
    if api_url.startswith("https://api.github.com"):
        return "https://github.com"
    if api_url.endswith("/api/v3"):
        return api_url[: -len("/api/v3")]
    return api_url


class GitHubApi:
    """The few GitHub REST calls the checkers need, memoised for one run."""

    def __init__(self, api: JsonApi, label: str = "github"):
        self.api = api
        self.label = label
        self.memo = Memo(api.counter)
        self.web = web_url(api.base_url)

    def attempt_jobs(self, repo: str, run_id: int, attempt: int) -> tuple[list[dict[str, Any]], bool]:
        path = f"repos/{repo}/actions/runs/{run_id}/attempts/{attempt}/jobs"
        return self.memo.get("github.attempt_jobs", (repo, run_id, attempt),
                             lambda: self.api.get_all(path, kind="github.attempt_jobs", params={"per_page": 100},
                                                      items_key="jobs"))

    def job(self, repo: str, job_id: int) -> dict[str, Any]:
        return self.memo.get("github.job", (repo, job_id),
                             lambda: self.api.get_object(f"repos/{repo}/actions/jobs/{job_id}", kind="github.job"))

    def runners(self, org: str | None, repo: str | None) -> tuple[list[dict[str, Any]], bool]:
        if org:
            path, kind, key = f"orgs/{quote(org)}/actions/runners", "github.runners.org", org
        else:
            path, kind, key = f"repos/{repo}/actions/runners", "github.runners.repo", str(repo)
        return self.memo.get(kind, key, lambda: self.api.get_all(path, kind=kind, params={"per_page": 100}, items_key="runners"))

    def runs(self, repo: str, status: str) -> tuple[list[dict[str, Any]], bool]:
        path = f"repos/{repo}/actions/runs"
        return self.memo.get("github.runs", (repo, status), lambda: self.api.get_all(
            path, kind="github.runs", params={"status": status, "per_page": 100, "exclude_pull_requests": "true"},
            items_key="workflow_runs"))

    def finished_runs(self, repo: str, since: datetime) -> tuple[list[dict[str, Any]], bool]:
        """Every completed run of ``repo`` created at or after ``since`` (``created=>=…``, GitHub's
        search date syntax), all pages. ``since`` is whole UTC midnight, so the URL (and its ETag)
        stays the same all day; a list longer than ``max_pages`` or GitHub's 1,000-result cap
        comes back incomplete."""
        path = f"repos/{repo}/actions/runs"
        created = ">=" + since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self.memo.get("github.finished_runs", (repo, created), lambda: self.api.get_all(
            path, kind="github.finished_runs",
            params={"status": "completed", "created": created, "per_page": 100, "exclude_pull_requests": "true"},
            items_key="workflow_runs"))


def _job_label(job: dict[str, Any]) -> str:
    return f"job {job.get('name')!r} ({job.get('id')})"


class GitHubClaimVerifier:
    """Is the claimed GitHub Actions job still running?"""

    source = "github-claim"
    provider_type = "github"

    def __init__(self, gh: GitHubApi, grace: timedelta, skew: timedelta):
        self.gh = gh
        self.grace = grace
        self.skew = skew

    def verify(self, claim: Claim, lock: LockRecord, now: datetime) -> LivenessFact:
        src = self.source
        created = created_at(lock)
        if not claim.repo or not claim.run_id:
            return unknown(src, f"claim by {claim.who} has no repo/run id")
        try:
            if claim.job_id:
                jobs = [self.gh.job(claim.repo, claim.job_id)]
                scope = f"{claim.describe()}"
            else:
                all_jobs, complete = self.gh.attempt_jobs(claim.repo, claim.run_id, claim.run_attempt or 1)
                mine = [j for j in all_jobs if claim.runner_name and j.get("runner_name") == claim.runner_name]
                if mine and not complete and all(j.get("status") == "completed" for j in mine):
                    # a truncated list may hide a later job on the same runner (the claimer): proves nothing
                    return unknown(src, f"{claim.describe()}: the job list is longer than the page limit",
                                   ev(src, "job list incomplete", claim.url))
                if mine:
                    jobs, scope = mine, f"{claim.describe()}"
                else:
                    if not complete:
                        return unknown(src, f"{claim.describe()}: the job list is longer than the page limit",
                                       ev(src, "job list incomplete", claim.url))
                    jobs, scope = all_jobs, f"GitHub {claim.repo} run {claim.run_id} attempt {claim.run_attempt or 1} (all jobs)"
        except ApiError as exc:
            return from_error(src, claim.describe(), exc)
        if not jobs:
            return unknown(src, f"{scope}: no jobs reported", ev(src, "no jobs in the run attempt", claim.url))
        active = [j for j in jobs if j.get("status") != "completed"]
        if not active:
            lag = host_clock_lags(src, scope, claim.claimed_at, [ts(j.get("started_at")) for j in jobs], self.skew, claim.url)
            if lag is not None:
                return lag
        if active:
            j = active[0]
            started = ts(j.get("started_at"))
            if j.get("status") not in ACTIVE_JOB_STATUSES:
                return unknown(src, f"{scope}: {_job_label(j)} has status {j.get('status')!r}",
                               ev(src, f"unrecognised status {j.get('status')!r}", j.get("html_url") or claim.url,
                                  str(j.get("status"))))
            detail = f"{scope}: {_job_label(j)} is {j.get('status')}"
            return alive(src, detail, ev(src, detail, j.get("html_url") or claim.url, str(j.get("status")), started))
        ended = [(ts(j.get("completed_at")), j) for j in jobs]
        known = [(at, j) for at, j in ended if at is not None]
        if len(known) < len(ended):
            return unknown(src, f"{scope}: a completed job has no completed_at", ev(src, "completed_at missing", claim.url))
        last_at, last = max(known, key=lambda pair: pair[0])
        status = f"completed/{last.get('conclusion') or 'none'}"
        return judge_finished(src, f"{scope}: {_job_label(last)}", last_at, created, now, self.grace,
                              last.get("html_url") or claim.url, status, skew=self.skew)


class GitHubRunnersChecker:
    """Self-hosted runners named after the lock's hostname, for locks held by the runner's service user.

    A runner speaks only for its own service user (``users``, default ``runner``): a
    person's lock on a runner host (``alice@gh-runner-9``) is not the runner's. A name
    missing from a scope's list proves the runner gone only where the scope says every
    runner of its ``hosts`` registers there (``absent_means_gone``); otherwise it may be
    registered in a scope the policy does not list, and the answer is unknown.
    """

    name = "github-runners"

    def __init__(self, gh: GitHubApi, scopes: list[RunnerScope], own_evidence: frozenset[str] = frozenset()):
        self.gh = gh
        self.scopes = scopes
        self.own_evidence = own_evidence  # stores whose locks only their own checker judges (HCP Terraform)

    def _matching(self, lock: LockRecord) -> tuple[str, list[RunnerScope]]:
        """The lock's hostname and the scopes that speak for it ("", [] when none)."""
        if lock.info is None or lock.store in self.own_evidence or "@" not in lock.info.Who:
            return "", []  # an HCP Terraform user or run, a GitLab username: a runner name proves nothing there
        who = parse_who(lock.info.Who)
        if not who.host:
            return "", []
        scopes = [s for s in self.scopes if any(fnmatch.fnmatchcase(who.host, g) for g in s.hosts)
                  and any(fnmatch.fnmatchcase(who.user, u) for u in s.users)]
        return who.host, scopes

    def applies(self, lock: LockRecord) -> bool:
        return bool(self._matching(lock)[1])

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact | None:
        host, scopes = self._matching(lock)
        if not scopes:
            return None
        evidence: list[Any] = []
        idle: list[str] = []
        uncertain = False
        for scope in scopes:
            seen = self._scope(scope, host, evidence)
            if isinstance(seen, LivenessFact):
                return seen
            if seen == "idle":
                idle.append(scope.label)
            uncertain = uncertain or seen == "uncertain"
        src = self.name
        if uncertain:  # idle in one scope proves nothing while another scope could hold it busy
            return unknown(src, f"self-hosted runner {host!r}: no proof either way", *evidence)
        if idle:
            return _authoritative(dead(src, f"self-hosted runner {host!r} is online and idle ({', '.join(idle)})", *evidence))
        labels = ", ".join(s.label for s in scopes)
        return _authoritative(dead(src, f"self-hosted runner {host!r} is gone (not registered in {labels}, which "
                                        "register every runner of their hosts)", *evidence))

    def _scope(self, scope: RunnerScope, host: str, evidence: list[Any]) -> LivenessFact | str:
        """One scope's list: the alive fact if a runner of that name is busy, else "idle", "gone" or
        "uncertain" (evidence appended)."""
        src = self.name
        page = (f"{self.gh.web}/organizations/{scope.org}/settings/actions/runners" if scope.org
                else f"{self.gh.web}/{scope.repo}/settings/actions/runners")
        try:
            runners, complete = self.gh.runners(scope.org, scope.repo)
        except ApiError as exc:
            evidence.append(ev(src, f"runners of {scope.label}: {exc.reason}", exc.url, str(exc.status or "error")))
            return "uncertain"
        names = {host.casefold(), host.split(".")[0].casefold()}  # the runner name defaults to the short hostname
        found = [r for r in runners if str(r.get("name", "")).casefold() in names]
        for r in found:  # a runner listed twice (short and full hostname): busy anywhere means alive
            if r.get("busy") is True:
                detail = f"self-hosted runner {r.get('name')!r} ({scope.label}) is busy"
                return alive(src, detail, *evidence, ev(src, detail, page, f"{r.get('status')}, busy"))
        if not complete:  # another entry of that name may be on a page not read
            evidence.append(ev(src, f"runners of {scope.label}: list longer than the page limit", page, "incomplete"))
            return "uncertain"
        if not found:
            detail = f"no runner named {host!r} among {len(runners)} runners of {scope.label}"
            if scope.absent_means_gone:
                evidence.append(ev(src, detail, page, "gone"))
                return "gone"
            evidence.append(ev(src, f"{detail}: it may be registered in a scope not listed (set absent_means_gone "
                                    "where every runner of these hosts registers here)", page, "not-found"))
            return "uncertain"
        verdict = "idle"
        for r in found:
            state = f"{r.get('status')}, {'busy' if r.get('busy') else 'idle'}"
            said = f"self-hosted runner {r.get('name')!r} ({scope.label}) is"
            if r.get("status") == "online" and r.get("busy") is False:
                evidence.append(ev(src, f"{said} online and idle", page, state))
            else:
                verdict = "uncertain"
                evidence.append(ev(src, f"{said} {state}: proves nothing", page, state))
        return verdict


def _authoritative(fact: LivenessFact) -> LivenessFact:
    return fact.model_copy(update={"authoritative": True})


class GitHubReposChecker:
    """A rule's repo mapping: active runs that started before the lock was created, then runs that
    could be the holder and completed within the grace period."""

    name = "github-repos"

    def __init__(self, apis: dict[str, tuple[GitHubApi, list[str]]], policy: Policy,
                 own_evidence: frozenset[str] = frozenset()):
        self.apis = apis  # provider label -> (api, active run statuses)
        self.policy = policy
        self.own_evidence = own_evidence  # stores whose locks only their own checker judges (HCP Terraform)

    def _mapping(self, lock: LockRecord) -> tuple[Rule, RuleLiveness] | None:
        if lock.info is None or lock.store in self.own_evidence:
            return None
        rule = self.policy.rule_for(lock.lock_path, lock.info.Operation)
        m = rule.liveness if rule is not None else None
        if rule is None or m is None or not m.github_repos or not m.applies_to(lock.info.Who):
            return None
        return rule, m

    def applies(self, lock: LockRecord) -> bool:
        return self._mapping(lock) is not None

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact | None:
        found = self._mapping(lock)
        if found is None:
            return None
        rule, m = found
        src = self.name
        provider = self.policy.liveness.provider("github", m.github_provider)
        entry = self.apis.get(provider.label) if provider is not None else None
        if entry is None:
            return unknown(src, f"rule {rule.label}: no GitHub provider for its repo mapping")
        gh, statuses = entry
        evidence: list[Any] = []
        first = self._active(gh, statuses, m.github_repos, lock, evidence)
        if first is not None:
            return first
        # No active run that could be the holder: the holder's run may have completed a moment ago, its
        # runner still stopping Terraform (SIGINT, SIGTERM, kill). Dead only once every run that could
        # be the holder finished at least `grace` ago.
        later = self._recent(gh, m.github_repos, lock, now, evidence)
        if later is not None:
            return later
        grace = self.policy.liveness.grace
        repos = ", ".join(m.github_repos)
        detail = (f"no {'/'.join(statuses)} run in {repos}, and none that could hold it completed within the "
                  f"{format_duration(grace)} grace (rule {rule.label} maps these repos)")
        return dead(src, detail, *evidence, *(ev(src, f"{r}: no active run, no completion within the last "
                                                 f"{format_duration(grace)}", f"{gh.web}/{r}/actions", "none")
                                             for r in m.github_repos))

    def _active(self, gh: GitHubApi, statuses: list[str], repos: list[str], lock: LockRecord,
                evidence: list[Any]) -> LivenessFact | None:
        """Alive for an active run that started before the lock (by its ``Created`` + skew); contested for
        one that started after it (the holder's clock may lag beyond the skew); unknown for a list that
        failed or was cut short; None when no run is active."""
        src = self.name
        created = created_at(lock)
        skew = self.policy.clock_skew
        later: list[Any] = []
        uncertain = False
        for repo in repos:
            for status in statuses:
                try:
                    runs, complete = gh.runs(repo, status)
                except ApiError as exc:
                    uncertain = True
                    evidence.append(ev(src, f"{repo} {status} runs: {exc.reason}", exc.url, str(exc.status or "error")))
                    continue
                if not complete:
                    uncertain = True
                    evidence.append(ev(src, f"{repo} {status} runs: more than the page limit", None, "incomplete"))
                for run in runs:
                    started = ts(run.get("run_started_at")) or ts(run.get("created_at"))
                    label = f"{repo}: run {run.get('id')} ({run.get('name')!r})"
                    if started is None or started <= created + skew:
                        detail = (f"{label} is {run.get('status')}, started "
                                  f"{started.isoformat() if started else 'at an unknown time'}, before the lock")
                        return alive(src, detail, *evidence,
                                     ev(src, detail, run.get("html_url"), str(run.get("status")), started))
                    later.append(live_after_created(src, label, str(run.get("status")), started, created, run.get("html_url")))
        if later:
            return contested(src, later[0].detail, *evidence, *later)
        if uncertain:
            return unknown(src, "could not list every active run", *evidence)
        return None

    def _recent(self, gh: GitHubApi, repos: list[str], lock: LockRecord, now: datetime,
                evidence: list[Any]) -> LivenessFact | None:
        """Contested when a completed run finished within the grace period, unknown when a list failed or was
        cut short, None when every completed run that could matter finished long enough ago."""
        src = self.name
        created = created_at(lock)
        grace = self.policy.liveness.grace
        horizon = finished_horizon(now, grace, self.policy.liveness.max_run_duration)
        since = horizon.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        recent: list[Any] = []
        uncertain = False
        for repo in repos:
            page = f"{gh.web}/{repo}/actions"
            try:
                runs, complete = gh.finished_runs(repo, since)
            except ApiError as exc:
                uncertain = True
                evidence.append(ev(src, f"{repo} completed runs since {since.date().isoformat()}: {exc.reason}", exc.url,
                                   str(exc.status or "error")))
                continue
            if not complete:
                uncertain = True
                evidence.append(ev(src, f"{repo}: more completed runs since {since.date().isoformat()} than the page "
                                   "limit (or GitHub's 1,000-result cap): a recently finished one may be unread",
                                   page, "incomplete"))
                continue
            for run in runs:
                label = f"{repo}: run {run.get('id')} ({run.get('name')!r})"
                seen = recent_finish(src, label, ts(run.get("created_at")), ts(run.get("updated_at")), created, now,
                                     grace, self.policy.clock_skew, run.get("html_url") or page,
                                     f"completed/{run.get('conclusion') or 'none'}")
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
            return unknown(src, "could not list every recently completed run", *evidence)
        return None
