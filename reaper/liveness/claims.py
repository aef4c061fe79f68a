"""Claims: a CI job says "the next lock taken by ``Who`` is mine" before Terraform runs.

``python -m reaper claim`` writes one item to the claims table:

- ``Who`` (S, partition key): ``user@hostname`` computed exactly as Terraform does;
- ``ClaimedAt`` (S, sort key): RFC 3339 UTC with microseconds, e.g.
  ``2026-11-22T11:58:03.123456Z`` (fixed width, so string order is time order);
- ``Provider`` (github / gitlab), ``ApiUrl``, ``Repo`` or ``Project``/``ProjectId``,
  ``RunId``/``PipelineId``, ``RunAttempt``, ``JobId``, ``JobName``, ``RunnerName``,
  ``StartedAt``, ``Url`` (a link for humans);
- ``ExpiresAt`` (N): epoch seconds, the table's TTL attribute;
- with ``lock-reaper run``, the lease attributes of ``reaper.liveness.lease_fields``
  (``Provider`` is then ``none`` outside GitHub Actions and GitLab CI).

The reaper joins a lock to the latest claim with the same ``Who`` made at or
before the lock's ``Created``: from one consistent ``Scan`` of the (TTL-bounded)
table per run, or, for a table past ``ClaimStore.scan_limit`` items, with
``Query Who = :w AND ClaimedAt <= :created``, newest first, ``Limit 1``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..aws import error_code, http_status
from ..models import claim_time, parse_created
from .lease_fields import LeaseState

log = logging.getLogger("reaper.liveness.claims")

KEY_SCHEMA = [{"AttributeName": "Who", "KeyType": "HASH"}, {"AttributeName": "ClaimedAt", "KeyType": "RANGE"}]
ATTRIBUTE_DEFINITIONS = [{"AttributeName": "Who", "AttributeType": "S"}, {"AttributeName": "ClaimedAt", "AttributeType": "S"}]
TTL_ATTRIBUTE = "ExpiresAt"
DEFAULT_TTL = timedelta(days=7)


class Claim(BaseModel):
    model_config = ConfigDict(frozen=True)

    who: str = Field(min_length=1)
    claimed_at: datetime
    provider: str  # "github" | "gitlab"
    api_url: str | None = None
    repo: str | None = None  # GitHub owner/name
    project: str | None = None  # GitLab full path
    project_id: int | None = None
    run_id: int | None = None  # GitHub run id / GitLab pipeline id
    run_attempt: int | None = None
    job_id: int | None = None
    job_name: str | None = None
    runner_name: str | None = None
    started_at: datetime | None = None
    url: str | None = None
    expires_at: int | None = None
    lease: LeaseState | None = None  # written by ``lock-reaper run`` (reaper.liveness.lease_fields)

    # ---- DynamoDB mapping ------------------------------------------------
    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "Who": {"S": self.who},
            "ClaimedAt": {"S": claim_time(self.claimed_at)},
            "Provider": {"S": self.provider},
        }
        strings: dict[str, str | None] = {
            "ApiUrl": self.api_url, "Repo": self.repo, "Project": self.project, "JobName": self.job_name,
            "RunnerName": self.runner_name, "Url": self.url,
            "StartedAt": claim_time(self.started_at) if self.started_at else None,
        }
        numbers: dict[str, int | None] = {
            "ProjectId": self.project_id, "RunId": self.run_id, "RunAttempt": self.run_attempt,
            "JobId": self.job_id, TTL_ATTRIBUTE: self.expires_at,
        }
        for k, text in strings.items():
            if text:
                item[k] = {"S": str(text)}
        for k, number in numbers.items():
            if number is not None:
                item[k] = {"N": str(int(number))}
        if self.lease is not None:
            item.update(self.lease.to_item())
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Claim:
        def s(k: str) -> str | None:
            v = item.get(k)
            return v.get("S") if isinstance(v, dict) else None

        def n(k: str) -> int | None:
            v = item.get(k)
            raw = v.get("N") if isinstance(v, dict) else None
            return int(raw) if raw not in (None, "") else None

        started = s("StartedAt")
        return cls(
            who=s("Who") or "",
            claimed_at=parse_created(s("ClaimedAt") or ""),
            provider=(s("Provider") or "").lower(),
            api_url=s("ApiUrl"),
            repo=s("Repo"),
            project=s("Project"),
            project_id=n("ProjectId"),
            run_id=n("RunId"),
            run_attempt=n("RunAttempt"),
            job_id=n("JobId"),
            job_name=s("JobName"),
            runner_name=s("RunnerName"),
            started_at=parse_created(started) if started else None,
            url=s("Url"),
            expires_at=n(TTL_ATTRIBUTE),
            lease=LeaseState.from_item(item),
        )

    def describe(self) -> str:
        if self.provider == "github":
            job = f" job {self.job_id}" if self.job_id else (f" runner {self.runner_name!r}" if self.runner_name else "")
            return f"GitHub {self.repo} run {self.run_id} attempt {self.run_attempt or 1}{job}"
        if self.provider == "gitlab":
            return f"GitLab {self.project or self.project_id} pipeline {self.run_id} job {self.job_id}"
        if self.provider == "none":
            return "a run outside GitHub Actions and GitLab CI" + (" (leased)" if self.lease else "")
        return f"{self.provider} claim"


class ClaimError(Exception):
    """The environment does not describe a CI job, or a value is malformed."""


def _int(env: Mapping[str, str], key: str) -> int | None:
    v = (env.get(key) or "").strip()
    if not v:
        return None
    if not v.isdigit():
        raise ClaimError(f"{key}={v[:40]!r} is not a number")
    return int(v)


def claim_from_env(
    env: Mapping[str, str],
    who: str,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
    overrides: Mapping[str, Any] | None = None,
    allow_none: bool = False,
) -> Claim:
    """Build the claim from the CI system's own variables (GITHUB_* or CI_*). With ``allow_none``
    (``lock-reaper run``), outside GitHub Actions and GitLab CI: a ``provider="none"`` claim."""
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    expires = int((now + ttl).timestamp())
    provider = o.get("provider")
    if provider is None:
        if env.get("GITHUB_ACTIONS") == "true" or env.get("GITHUB_RUN_ID"):
            provider = "github"
        elif env.get("GITLAB_CI") == "true" or env.get("CI_JOB_ID"):
            provider = "gitlab"
        elif allow_none:
            provider = "none"
        else:
            raise ClaimError("not running in GitHub Actions or GitLab CI (no GITHUB_RUN_ID or CI_JOB_ID): "
                             "pass --provider and the ids")
    if provider == "github":
        repo = o.get("repo") or env.get("GITHUB_REPOSITORY")
        run_id = o.get("run_id") or _int(env, "GITHUB_RUN_ID")
        attempt = o.get("run_attempt") or _int(env, "GITHUB_RUN_ATTEMPT") or 1
        if not repo or not run_id:
            raise ClaimError("GitHub claim needs GITHUB_REPOSITORY and GITHUB_RUN_ID (or --repo and --run-id)")
        server = (env.get("GITHUB_SERVER_URL") or "https://github.com").rstrip("/")
        url = f"{server}/{repo}/actions/runs/{run_id}" + (f"/attempts/{attempt}" if attempt and attempt > 1 else "")
        job_id = o.get("job_id") or _int(env, "REAPER_CLAIM_JOB_ID")
        if job_id:
            url = f"{server}/{repo}/actions/runs/{run_id}/job/{job_id}"
        return Claim(
            who=who, claimed_at=now, provider="github", api_url=o.get("api_url") or env.get("GITHUB_API_URL") or "https://api.github.com",
            repo=repo, run_id=run_id, run_attempt=attempt, job_id=job_id, job_name=o.get("job_name") or env.get("GITHUB_JOB"),
            runner_name=o.get("runner_name") or env.get("RUNNER_NAME"), started_at=now, url=url, expires_at=expires,
        )
    if provider == "gitlab":
        project_id = o.get("project_id") or _int(env, "CI_PROJECT_ID")
        job_id = o.get("job_id") or _int(env, "CI_JOB_ID")
        if not project_id or not job_id:
            raise ClaimError("GitLab claim needs CI_PROJECT_ID and CI_JOB_ID (or --project-id and --job-id)")
        started_raw = env.get("CI_JOB_STARTED_AT")
        try:
            started = parse_created(started_raw) if started_raw else now
        except ValueError:
            started = now
        return Claim(
            who=who, claimed_at=now, provider="gitlab", api_url=o.get("api_url") or env.get("CI_API_V4_URL") or "https://gitlab.com/api/v4",
            project=o.get("project") or env.get("CI_PROJECT_PATH"), project_id=project_id,
            run_id=o.get("run_id") or _int(env, "CI_PIPELINE_ID"), job_id=job_id, job_name=env.get("CI_JOB_NAME"),
            runner_name=env.get("CI_RUNNER_DESCRIPTION"), started_at=started, url=env.get("CI_JOB_URL"), expires_at=expires,
        )
    if provider == "none" and allow_none:
        return Claim(who=who, claimed_at=now, provider="none", started_at=now, expires_at=expires)
    raise ClaimError(f"unknown provider {provider!r}: use github or gitlab")


class ClaimStore:
    """The claims table. The boto3 DynamoDB client is passed in.

    ``latest`` joins a lock to its claim. The table is TTL-bounded (claims live ``--ttl``,
    7 days by default), so the first join of a run reads the whole table once with a
    consistent ``Scan`` and answers every later join from memory: one read per cycle
    instead of one ``Query`` per candidate. A table larger than ``scan_limit`` items, or a
    scan that fails, falls back to one ``Query`` per (Who, Created), as before. Both give
    the same claim: the newest one by that ``Who`` with ``ClaimedAt <= Created``, compared
    as strings (``ClaimedAt`` is fixed-width RFC 3339, so string order is time order).

    A claim written after the scan cannot matter to this run: a candidate is at least
    ``min_age`` old, and its claim was made before its ``Created``.
    """

    def __init__(self, client: Any, table: str, counter: Any = None, scan_limit: int = 20000):
        self.client = client
        self.table = table
        self.counter = counter
        self.scan_limit = scan_limit
        self._memo: dict[tuple[str, str], Claim | None] = {}
        self._index: dict[str, list[tuple[str, Mapping[str, Any]]]] | None = None
        self._scanned = False
        self._lock = threading.Lock()
        self.scan_seconds = 0.0  # how long this run's scan took (the lease checker dates its sightings after it)

    def put(self, claim: Claim) -> None:
        self.client.put_item(TableName=self.table, Item=claim.to_item())

    def latest(self, who: str, created: datetime) -> Claim | None:
        """The newest claim by ``who`` made at or before ``created`` (one table scan, or one query, per run)."""
        index = self._scan_once()
        if index is None:
            return self._query(who, claim_time(created))
        if self.counter is not None:
            self.counter.memo("claims.scan")
        at = claim_time(created)
        for claimed_at, item in index.get(who, []):  # newest first
            if claimed_at <= at:
                return Claim.from_item(item)
        return None

    # ---------------------------------------------------------------- one scan per run
    def _scan_once(self) -> dict[str, list[tuple[str, Mapping[str, Any]]]] | None:
        with self._lock:
            if not self._scanned:
                self._scanned = True
                started = time.monotonic()
                self._index = self._scan()
                self.scan_seconds = time.monotonic() - started
            return self._index

    def _scan(self) -> dict[str, list[tuple[str, Mapping[str, Any]]]] | None:
        """Who -> [(ClaimedAt, item)] newest first; None when the table is too large or the scan fails."""
        index: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
        count = 0
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            try:
                page = self.client.scan(**kwargs)
            except Exception as exc:
                if self.counter is not None:
                    self.counter.call("claims.scan", http_status(exc) or "error")
                log.warning("claims table %s: scan failed (%s): one query per candidate instead", self.table,
                            error_code(exc))
                return None
            if self.counter is not None:
                self.counter.call("claims.scan", 200)
            for item in page.get("Items") or []:
                who, claimed_at = item.get("Who", {}).get("S"), item.get("ClaimedAt", {}).get("S")
                if isinstance(who, str) and isinstance(claimed_at, str):
                    index.setdefault(who, []).append((claimed_at, item))
                    count += 1
            if count > self.scan_limit:
                log.info("claims table %s holds more than %d claims: one query per candidate instead",
                         self.table, self.scan_limit)
                return None
            if not page.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        for claims in index.values():
            claims.sort(key=lambda c: c[0], reverse=True)
        return index

    # ---------------------------------------------------------------- one query per (Who, Created)
    def _query(self, who: str, at: str) -> Claim | None:
        key = (who, at)
        with self._lock:
            if key in self._memo:
                if self.counter is not None:
                    self.counter.memo("claims.query")
                return self._memo[key]
        try:
            resp = self.client.query(
                TableName=self.table,
                KeyConditionExpression="#w = :w AND #c <= :c",
                ExpressionAttributeNames={"#w": "Who", "#c": "ClaimedAt"},
                ExpressionAttributeValues={":w": {"S": who}, ":c": {"S": at}},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            )
        except Exception as exc:
            if self.counter is not None:
                self.counter.call("claims.query", http_status(exc) or "error")
            raise
        if self.counter is not None:
            self.counter.call("claims.query", 200)
        items = resp.get("Items") or []
        claim = Claim.from_item(items[0]) if items else None
        with self._lock:
            self._memo[key] = claim
        return claim
