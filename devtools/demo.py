"""``make demo``: Lock Reaper against a local AWS emulator and a local CI API, with realistic locks.

What it does, in order:
1. starts ``moto_server`` and the fake CI server (devtools/fake_ci.py: GitHub- and
   GitLab-shaped REST APIs) on free 127.0.0.1 ports;
2. creates the lock table ``terraform-locks``, the claims table, an audit bucket, an
   SNS topic with an SQS queue subscribed (to show the alert actually sent) and an
   EventBridge rule that forwards ``Terraform Lock Reaped`` events to a second queue;
3. replays the CI jobs that ran earlier: each runs the real ``python -m reaper claim``
   in a GitHub Actions / GitLab CI job's environment (devtools/replay_clock sets that
   command's clock back to when the job ran), then its lock goes into the table;
4. fills the table with those locks and others (fresh, excluded, from a laptop, a
   workspace lock), an ``-md5`` digest for every state, and three suspicious items
   (malformed Info, Created in the future, Path different from LockID);
5. tells the fake CI what became of each job (cancelled, still running, failed, an
   API answering 500), writes a policy file with a ``liveness`` section into
   ``.demo/`` and runs the real CLI as subprocesses: ``python -m reaper scan``,
   ``explain`` for one lock, then ``reap --enforce``;
6. shows what was reaped and kept and why (with the evidence), the audit records,
   the SNS message and the EventBridge events; then stops both servers (also on
   Ctrl-C or errors).

Run: ``python -m devtools.demo [--workdir DIR]``. Exit 0 when the demo ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from reaper.models import Reason, ReasonCode
from reaper.report import GENERIC_REASON_TAILS

from .fake_ci import FakeCI
from .locks import create_claims_table, create_lock_table, digest_item, info_json, lock_id as new_lock_id
from .motoserver import MotoServer

ROOT = Path(__file__).resolve().parent.parent
REPLAY_CLOCK = Path(__file__).resolve().parent / "replay_clock"  # sitecustomize for the replayed claims
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
TABLE = "terraform-locks"
CLAIMS_TABLE = "lock-reaper-claims"
STATE_BUCKET = "acme-tf-state"
AUDIT_BUCKET = "acme-lock-reaper-audit"
AUDIT_PREFIX = "lock-reaper/audit/"
TOPIC = "lock-reaper-alerts"
ALERTS_QUEUE = "lock-reaper-alerts-inbox"
EVENTS_QUEUE = "lock-reaper-events-inbox"
EVENT_RULE = "lock-reaper-reaped"
DETAIL_TYPE = "Terraform Lock Reaped"
GITHUB_TOKEN_ENV = "DEMO_GITHUB_TOKEN"  # the policy's token_env: the fake CI's tokens
GITLAB_TOKEN_ENV = "DEMO_GITLAB_TOKEN"

GITHUB_AZ = "runner@fv-az581-229"  # GitHub-hosted runner (Azure VM naming)
GITLAB_4217 = "root@runner-t3zn2hkp-project-4217-concurrent-0"  # GitLab runner, docker executor
GITLAB_5120 = "root@runner-t3zn2hkp-project-5120-concurrent-1"

# Variables a CI system sets; never inherited into the demo's jobs or CLI runs (the
# demo may itself run inside CI, and `claim` reads exactly these).
_CI_PREFIXES = ("GITHUB_", "RUNNER_", "CI_", "GITLAB_", "REAPER_", "DEMO_CLOCK")

POLICY = """\
# Demo policy written by `make demo`. Same format as config/policy.yaml.
mode: report                 # the CLI's --enforce turns deletes on for one run
max_deletes_per_run: 10
min_age: 15m
clock_skew: 5m
stores:
  - type: dynamodb
    table: {table}
rules:                       # first match wins
  - name: plans
    match: "*"
    operations: [OperationTypePlan, OperationTypeRefresh]
    max_age: 1h
    hard_max_age: 4h
  - name: prod-applies
    match: "*/prod/*"
    max_age: 6h
    hard_max_age: 12h
  - name: default
    match: "*"
    max_age: 2h
    hard_max_age: 6h
exclude:
  - "*/bootstrap/*"
liveness:                    # asked only about locks past their rule's max_age
  grace: 5m                  # a job must have ended this long ago before its holder is dead
  claims:                    # written by `python -m reaper claim` in each CI job
    table: {claims}
  providers:                 # the fake CI server stands in for api.github.com and a GitLab instance
    - type: github
      api_url: {github_api}
      token_env: {github_token_env}
    - type: gitlab
      api_url: {gitlab_api}
      token_env: {gitlab_token_env}
      runner_hosts:          # opt in: these runner-<token>-project-<id>-concurrent-<n> hostnames are this instance's
        - "runner-*-project-*-concurrent-*"
  state_activity:
    enabled: false           # S3 HeadObject on the state file: the demo writes no state files
  http:
    timeout: 2s
audit:
  s3_bucket: {audit_bucket}
  prefix: {audit_prefix}
alerts:
  sns_topic_arn: arn:aws:sns:{region}:{account}:{topic}
  event_bus: default
  metrics:
    enabled: false           # in production: CloudWatch metrics and alarms (e.g. LocksAlivePastHardMax)
"""


def policy_text(fake: FakeCI) -> str:
    return POLICY.format(table=TABLE, claims=CLAIMS_TABLE, github_api=fake.github_api, gitlab_api=fake.gitlab_api,
                         github_token_env=GITHUB_TOKEN_ENV, gitlab_token_env=GITLAB_TOKEN_ENV,
                         audit_bucket=AUDIT_BUCKET, audit_prefix=AUDIT_PREFIX, region=REGION, account=ACCOUNT, topic=TOPIC)


# ---------------------------------------------------------------------------
# What the CI jobs were, and what became of them
@dataclass(frozen=True)
class GitHubJob:
    repo: str
    run_id: int
    job_id: int
    job: str  # GITHUB_JOB, the job's name
    runner: str  # RUNNER_NAME: "GitHub Actions N" on GitHub-hosted runners
    fate: str  # "cancelled" | "in_progress" | "api_500"


@dataclass(frozen=True)
class GitLabJob:
    project_id: int
    job_id: int
    status: str  # "failed" | "canceled"
    claims: bool  # the job ran `python -m reaper claim`


@dataclass(frozen=True)
class Seed:
    lock_id: str  # the table key
    note: str  # what the item stands for (shown before the run)
    info: str | None = None  # raw Info string
    who: str = ""
    operation: str = ""
    age: timedelta | None = None
    ci: GitHubJob | GitLabJob | None = None


# A CI job starts, claims 20 s later, and Terraform takes the lock 40 s after the claim.
JOB_START_BEFORE_LOCK = timedelta(minutes=1)
CLAIM_BEFORE_LOCK = timedelta(seconds=40)
# Cancelled / killed ten minutes into the apply: well past the policy's 5m clock_skew, since a job
# that ended within clock_skew of the lock's Created may have ended before the lock (unknown).
JOB_END_AFTER_LOCK = timedelta(minutes=10)


def _path(key: str) -> str:
    return f"{STATE_BUCKET}/{key}"


def seed_items(now: datetime) -> list[Seed]:
    """The demo's lock items, relative to ``now``."""
    def lock(key: str, age: timedelta, op: str, who: str, note: str, version: str = "1.5.7",
             ci: GitHubJob | GitLabJob | None = None) -> Seed:
        p = _path(key)
        return Seed(p, note, info_json(p, age, now, operation=op, who=who, version=version), who, op, age, ci)

    h = timedelta(hours=1)
    m = timedelta(minutes=1)
    apply, plan = "OperationTypeApply", "OperationTypePlan"
    seeds = [
        lock("prod/network/terraform.tfstate", 4 * m, apply, GITHUB_AZ,
             "apply running right now on a GitHub-hosted runner"),
        lock("prod/eks/terraform.tfstate", 8 * h, apply, "runner@runnervmg1sw1",
             "prod apply; its workflow run was cancelled",
             ci=GitHubJob("acme/infra", 16123456789, 45123456789, "apply", "GitHub Actions 12", "cancelled")),
        lock("staging/app/terraform.tfstate", 4 * h + 30 * m, plan, "runner@runnervm7kq2x",
             "plan whose job is still running (hung on a provider)",
             ci=GitHubJob("acme/app", 16123498765, 45123498765, "plan", "GitHub Actions 3", "in_progress")),
        lock("dev/sandbox/terraform.tfstate", 3 * h, apply, "runner@fv-az112-318",
             "dev apply; GitHub's API answers HTTP 500 for its repo",
             ci=GitHubJob("acme/sandbox", 16123411111, 45123411111, "apply", "GitHub Actions 5", "api_500")),
        lock("prod/dns/terraform.tfstate", 7 * h, apply, GITLAB_4217,
             "apply from a GitLab job that failed (runner killed)", version="1.9.8",
             ci=GitLabJob(4217, 77120, "failed", claims=False)),
        lock("env:/staging/services/api/terraform.tfstate", 5 * h, apply, GITLAB_5120,
             "workspace 'staging' lock (env:/ prefix); GitLab job cancelled", version="1.9.8",
             ci=GitLabJob(5120, 88001, "canceled", claims=True)),
        lock("dev/experiments/terraform.tfstate", 2 * 24 * h, apply, "bob@bobs-mbp",
             "apply from an engineer's laptop two days ago (no CI to ask)"),
        lock("bootstrap/org/terraform.tfstate", 5 * 24 * h, apply, "alice@laptop-7",
             "bootstrap state, excluded by the policy"),
        lock("prod/data/terraform.tfstate", -2 * h, apply, GITHUB_AZ,
             "Created 2 hours in the future (bad clock)"),
    ]
    # Info is not JSON: a truncated write.
    bad = _path("legacy/terraform.tfstate")
    seeds.append(Seed(bad, "malformed Info (truncated JSON)",
                      '{"ID":"' + new_lock_id() + '","Operation":"OperationTypeApply","Who":"runner@fv-az5'))
    # Path differs from LockID: someone copied an item by hand.
    iam = _path("prod/iam/terraform.tfstate")
    other = _path("prod/iam-old/terraform.tfstate")
    info = json.loads(info_json(other, 2 * 24 * h, now, who=GITHUB_AZ))
    seeds.append(Seed(iam, "Info.Path differs from LockID (hand-copied item)",
                      json.dumps(info, separators=(",", ":")), GITHUB_AZ, "OperationTypeApply", 2 * 24 * h))
    return seeds


STATES_WITHOUT_LOCKS = [
    "prod/vpc/terraform.tfstate",
    "prod/rds/terraform.tfstate",
    "staging/network/terraform.tfstate",
    "env:/qa/services/api/terraform.tfstate",
    "shared/iam-roles/terraform.tfstate",
]


# ---------------------------------------------------------------------------
class Out:
    """Plain, readable output: numbered headings and indented blocks."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.step = 0

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def heading(self, title: str) -> None:
        self.step += 1
        text = f"{self.step}. {title}"
        self.line()
        self.line(text)
        self.line("=" * len(text))

    def sub(self, title: str) -> None:
        self.line()
        self.line(f"-- {title}")

    def block(self, text: str, indent: str = "  ") -> None:
        for ln in text.rstrip("\n").splitlines():
            self.line((indent + ln).rstrip())

    def wrapped(self, text: str, indent: str = "  ", width: int = 100) -> None:
        for ln in textwrap.wrap(text, width=width - len(indent), break_on_hyphens=False, break_long_words=False):
            self.line(indent + ln)


def _clients(endpoint: str) -> dict[str, Any]:
    import boto3

    kw = {"region_name": REGION, "endpoint_url": endpoint,
          "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return {name: boto3.client(name, **kw) for name in ("dynamodb", "s3", "sns", "sqs", "events")}


def _age(td: timedelta | None) -> str:
    if td is None:
        return "-"
    secs = int(td.total_seconds())
    sign = "-" if secs < 0 else ""
    secs = abs(secs)
    if secs >= 86400:
        return f"{sign}{secs // 86400}d{(secs % 86400) // 3600}h"
    if secs >= 3600:
        return f"{sign}{secs // 3600}h{(secs % 3600) // 60:02d}m"
    return f"{sign}{secs // 60}m"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def lock_listing(seeds: list[Seed], claimed: set[str]) -> str:
    """The seeded locks as a table: each one's path (its LockID), operation, holder, age, claim."""
    rows = [[s.lock_id, s.operation.replace("OperationType", "") or "?", s.who or "?", _age(s.age),
             "yes" if s.lock_id in claimed else "-", s.note] for s in seeds]
    return _table(rows, ["LOCK PATH (bucket/state key)", "OP", "WHO", "AGE", "CLAIM", "WHAT IT IS"])


def _all_items(ddb: Any, table: str = TABLE) -> dict[str, dict[str, Any]]:
    items: dict[str, dict[str, Any]] = {}
    for page in ddb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for it in page["Items"]:
            key = it["LockID"]["S"] if "LockID" in it else f"{it['Who']['S']} {it['ClaimedAt']['S']}"
            items[key] = it
    return items


def _clean_env() -> dict[str, str]:
    """This process's environment without AWS profiles and CI/reaper variables."""
    return {k: v for k, v in os.environ.items()
            if k not in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE") and not k.startswith(_CI_PREFIXES)}


# ---------------------------------------------------------------------------
def setup_aws(c: dict[str, Any]) -> dict[str, str]:
    """Lock and claims tables, buckets, SNS topic -> SQS, EventBridge rule -> SQS."""
    create_lock_table(c["dynamodb"], TABLE)
    create_claims_table(c["dynamodb"], CLAIMS_TABLE)
    c["s3"].create_bucket(Bucket=AUDIT_BUCKET)
    c["s3"].create_bucket(Bucket=STATE_BUCKET)
    topic_arn = c["sns"].create_topic(Name=TOPIC)["TopicArn"]
    alerts_url = c["sqs"].create_queue(QueueName=ALERTS_QUEUE)["QueueUrl"]
    alerts_arn = c["sqs"].get_queue_attributes(QueueUrl=alerts_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    c["sns"].subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=alerts_arn)
    events_url = c["sqs"].create_queue(QueueName=EVENTS_QUEUE)["QueueUrl"]
    events_arn = c["sqs"].get_queue_attributes(QueueUrl=events_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    c["events"].put_rule(
        Name=EVENT_RULE,
        EventPattern=json.dumps({"source": ["lock-reaper"], "detail-type": [DETAIL_TYPE]}),
        State="ENABLED",
    )
    c["events"].put_targets(Rule=EVENT_RULE, Targets=[{"Id": "inbox", "Arn": events_arn}])
    return {"topic_arn": topic_arn, "alerts_url": alerts_url, "events_url": events_url}


def fill_table(ddb: Any, seeds: list[Seed]) -> int:
    """Write the seeded locks and one digest per state; returns the number of digests."""
    digests = 0
    for s in seeds:
        if s.info is not None:
            ddb.put_item(TableName=TABLE, Item={"LockID": {"S": s.lock_id}, "Info": {"S": s.info}})
    for path in sorted({s.lock_id for s in seeds} | {_path(k) for k in STATES_WITHOUT_LOCKS}):
        ddb.put_item(TableName=TABLE, Item=digest_item(path))
        digests += 1
    return digests


# ---------------------------------------------------------------------------
# The fake CI: what became of each job
def _created(seed: Seed, now: datetime) -> datetime:
    assert seed.age is not None
    return now - seed.age


def gitlab_job_env(fake: FakeCI, job: dict[str, Any]) -> dict[str, str]:
    """The variables a GitLab CI job's script sees (predefined CI/CD variables) for this fake's job."""
    project_id = job["pipeline"]["project_id"]
    path = job["web_url"].split(fake.web + "/", 1)[1].split("/-/", 1)[0]
    return {"GITLAB_CI": "true", "CI": "true", "CI_SERVER_URL": fake.web, "CI_API_V4_URL": fake.gitlab_api,
            "CI_PROJECT_ID": str(project_id), "CI_PROJECT_PATH": path, "CI_PIPELINE_ID": str(job["pipeline"]["id"]),
            "CI_JOB_ID": str(job["id"]), "CI_JOB_NAME": job["name"], "CI_JOB_URL": job["web_url"],
            "CI_JOB_STARTED_AT": job["started_at"], "CI_RUNNER_DESCRIPTION": (job.get("runner") or {}).get("description", "")}


def setup_ci(fake: FakeCI, seeds: list[Seed], now: datetime) -> dict[str, dict[str, str]]:
    """Put each seeded job in the fake CI, in the state it is in now. Returns the CI environment of
    each job that claims, keyed by lock path."""
    envs: dict[str, dict[str, str]] = {}
    for s in seeds:
        if s.ci is None:
            continue
        created = _created(s, now)
        started, ended = created - JOB_START_BEFORE_LOCK, created + JOB_END_AFTER_LOCK
        if isinstance(s.ci, GitHubJob):
            j = s.ci
            if j.fate == "cancelled":
                fake.add_github_job(j.repo, j.run_id, j.job_id, status="completed", conclusion="cancelled",
                                    started_at=started, completed_at=ended, runner_name=j.runner, name=j.job)
            elif j.fate == "in_progress":
                fake.add_github_job(j.repo, j.run_id, j.job_id, status="in_progress", started_at=started,
                                    runner_name=j.runner, name=j.job)
            else:  # the repo's API is down: every call about it answers 500
                fake.fault(rf"/repos/{j.repo}/", 500)
            envs[s.lock_id] = fake.github_job_env(j.repo, j.run_id, j.runner, job=j.job)
        else:
            g = s.ci
            job = fake.add_gitlab_job(g.project_id, g.job_id, status=g.status, started_at=started, finished_at=ended)
            if g.claims:
                envs[s.lock_id] = gitlab_job_env(fake, job)
    return envs


def describe_ci(seeds: list[Seed], now: datetime) -> list[list[str]]:
    rows = []
    for s in seeds:
        if s.ci is None:
            continue
        created = _created(s, now)
        ended_ago = _age(now - (created + JOB_END_AFTER_LOCK))
        started_ago = _age(now - (created - JOB_START_BEFORE_LOCK))
        if isinstance(s.ci, GitHubJob):
            j = s.ci
            what = f"{j.repo} run {j.run_id}"
            state = {"cancelled": f"job '{j.job}' completed/cancelled {ended_ago} ago",
                     "in_progress": f"job '{j.job}' in_progress, started {started_ago} ago",
                     "api_500": "every call about this repo answers HTTP 500"}[j.fate]
            rows.append(["GitHub", what, j.runner, state])
        else:
            g = s.ci
            rows.append(["GitLab", f"project {g.project_id} job {g.job_id}", s.who.rpartition("@")[2],
                         f"'terraform:apply' {g.status} {ended_ago} ago; no running/pending job in the project"])
    return rows


# ---------------------------------------------------------------------------
def _shown_env(env: dict[str, str], width: int = 96) -> list[str]:
    """``NAME=value`` pairs (shell-quoted), several to a line, never split inside a value."""
    lines: list[str] = []
    for pair in (f"{k}={shlex.quote(v)}" for k, v in env.items()):
        if lines and len(lines[-1]) + 1 + len(pair) <= width:
            lines[-1] += " " + pair
        else:
            lines.append(pair)
    return lines


def run_claim(out: Out, seed: Seed, ci_env: dict[str, str], base_env: dict[str, str], now: datetime,
              timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m reaper claim`` as the CI job ran it, just before its lock was taken."""
    claim_at = _created(seed, now) - CLAIM_BEFORE_LOCK
    offset = (claim_at - datetime.now(timezone.utc)).total_seconds()
    job_env = {**ci_env, "REAPER_CLAIMS_TABLE": CLAIMS_TABLE}
    env = {**base_env, **job_env, "DEMO_CLOCK_OFFSET": f"{offset:.3f}",
           "PYTHONPATH": os.pathsep.join([str(REPLAY_CLOCK), str(ROOT)])}
    args = ["claim", "--who", seed.who]
    out.line(f"$ python -m reaper {' '.join(shlex.quote(a) for a in args)}")
    for ln in _shown_env(job_env):
        out.line(f"    {ln}")
    proc = subprocess.run([sys.executable, "-m", "reaper", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.stderr.strip():
        out.block(proc.stderr, indent="  > ")
    out.block(proc.stdout)
    return proc


def run_cli(out: Out, args: list[str], env: dict[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    shown = "python -m reaper " + " ".join(args)
    out.line(f"$ {shown}")
    proc = subprocess.run([sys.executable, "-m", "reaper", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.stderr.strip():
        out.block(proc.stderr, indent="  > ")
    out.block(proc.stdout)
    out.line(f"  (exit code {proc.returncode})")
    return proc


def _receive(sqs: Any, url: str, want: int, wait: float = 5.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    while len(got) < want and time.monotonic() < deadline:
        resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        got.extend(resp.get("Messages", []))
    return got


def _report_from_sns(body: str) -> dict[str, Any] | None:
    for marker in ("--- JSON ---\n", "--- JSON (kept locks omitted) ---\n"):
        if marker in body:
            try:
                return json.loads(body.split(marker, 1)[1])
            except ValueError:
                return None
    return None


_FLAG_NOTES = {
    "alive_past_hard_max": "alive past hard_max_age: in production the LocksAlivePastHardMax alarm fires",
    "kept_unknown": "kept with liveness unknown: counted as kept_unknown in the report (LocksKeptUnknown metric)",
}


def verdict(entry: dict[str, Any]) -> str:
    """One line: what the reaper concluded about the holder, and what that meant."""
    state, outcome = entry.get("liveness", "not_checked"), entry.get("outcome")
    if state == "dead":
        return "holder DEAD, proved by the CI system: reaped"
    if state == "alive":
        return "holder ALIVE, proved by the CI system: kept"
    if state == "unknown":
        if outcome == "reaped":
            return "holder UNKNOWN: reaped only because it is past hard_max_age (the policy allows it)"
        return "holder UNKNOWN: unknown means keep"
    return f"kept without asking the CI: {_not_a_candidate(entry)}"


_NEVER_ASKED = {  # the flag the decision set, and why that lock was never a liveness candidate
    "unparseable": "unparseable Info, nothing to judge",
    "path_mismatch": "suspicious item (Info.Path differs from its LockID), never a candidate",
    "future_created": "Created is in the future, its age cannot be trusted",
    "excluded": "excluded by the policy, never a candidate",
    "no_rule": "no rule matches it",
}


_CODES = {c.value for c in ReasonCode}


def coded_reasons(entry: dict[str, Any]) -> list[Reason]:
    """An entry's reasons with their codes (``reason_codes`` in the report's JSON, in the same order)."""
    texts, codes = entry.get("reasons", []), entry.get("reason_codes", [])
    if len(codes) != len(texts) or not set(codes) <= _CODES:
        return [Reason.read(t) for t in texts]  # a report without (or with other) codes: coded from the text
    return [Reason(ReasonCode(c), t) for t, c in zip(texts, codes)]


_YOUNG = frozenset({ReasonCode.BELOW_MIN_AGE, ReasonCode.BELOW_MAX_AGE})


def _not_a_candidate(entry: dict[str, Any]) -> str:
    for flag in entry.get("flags", []):
        if flag in _NEVER_ASKED:
            return _NEVER_ASKED[flag]
    if any(r.code in _YOUNG for r in coded_reasons(entry)):
        return "younger than the min_age floor or its rule's max_age (liveness is asked only past max_age)"
    return "not a candidate"


def why_lines(entry: dict[str, Any]) -> list[str]:
    """For one lock of the run report: the verdict, every reason, the evidence (status and URL), the flags."""
    if not entry:
        return ["(not in the run report)"]
    reasons = [r for r in coded_reasons(entry) if r.code not in GENERIC_REASON_TAILS]
    lines = [verdict(entry)]
    lines += [("why:      " if i == 0 else "          ") + r for i, r in enumerate(reasons)]
    urls: dict[str, list[str]] = {}
    for e in entry.get("evidence", []):
        url = e.get("url") or ""
        if url.startswith(("http://", "https://")):
            statuses = urls.setdefault(url, [])
            if e.get("status") and e["status"] not in statuses:
                statuses.append(e["status"])
    lines += [("evidence: " if i == 0 else "          ") + f"[{', '.join(st) or '-'}] {url}"
              for i, (url, st) in enumerate(urls.items())]
    lines += [f"flag:     {f}: {_FLAG_NOTES[f]}" for f in entry.get("flags", []) if f in _FLAG_NOTES]
    return lines


# ---------------------------------------------------------------------------
@dataclass
class DemoRun:
    """What the sections of one demo run share: the output, the clients, the fake CI, the seeded
    locks, and ``result`` (the figures the test checks), filled section by section."""

    out: Out
    c: dict[str, Any]
    res: dict[str, Any]
    fake: FakeCI
    now: datetime
    seeds: list[Seed]
    result: dict[str, Any]
    shown: str = ""  # the policy file, as the commands name it
    before: dict[str, Any] = field(default_factory=dict)  # the lock table before the reap


def run_demo(out: Out, workdir: Path) -> dict[str, Any]:
    """The demo itself. Returns the figures the test checks."""
    started = time.monotonic()
    result: dict[str, Any] = {}

    out.heading("Start a local AWS emulator (moto_server) and a fake CI server")
    server = MotoServer()
    fake = FakeCI()
    out.line(f"  starting moto_server on {server.endpoint} ...")
    try:
        server.start()
        fake.start()
        c, res = _start(out, server, fake)
        now = datetime.now(timezone.utc)
        run = DemoRun(out=out, c=c, res=res, fake=fake, now=now, seeds=seed_items(now), result=result)
        base_env = _clean_env()
        base_env.update(server.env())
        base_env.update({"AWS_EC2_METADATA_DISABLED": "true", "PYTHONWARNINGS": "ignore"})
        ci_envs = _replay_claims(run, base_env)
        _fill_and_describe(run, claimed=set(ci_envs))
        run.shown = _write_policy(run, workdir)
        env = dict(base_env)
        env.update({GITHUB_TOKEN_ENV: next(iter(fake.github_tokens)), GITLAB_TOKEN_ENV: next(iter(fake.gitlab_tokens))})
        explained = _scan_explain_reap(run, env)
        alert, gone = _what_happened(run)
        _show_audit_records(run, explained)
        _show_sns(run, alert)
        _show_events(run, gone)
        result["ci_requests"] = len(fake.requests)
    finally:
        fake.stop()
        server.stop()
    result["seconds"] = round(time.monotonic() - started, 1)
    out.heading("Done")
    out.line(f"  Emulator and fake CI stopped. The demo took {result['seconds']} s.")
    out.line("  Next: edit config/policy.yaml, then `python -m reaper validate --config config/policy.yaml`;")
    out.line("  add `python -m reaper claim` to your CI jobs before `terraform` (README: Liveness).")
    return result


def _start(out: Out, server: MotoServer, fake: FakeCI) -> tuple[dict[str, Any], dict[str, Any]]:
    """The clients of the started emulator and the AWS resources created in it."""
    out.line(f"  starting the fake CI server on {fake.url} (devtools/fake_ci.py) ...")
    out.line("  ready. No AWS or CI account is used: everything below talks to these two local servers.")
    c = _clients(server.endpoint)
    res = setup_aws(c)
    out.line(f"  fake CI: GitHub's REST API at {fake.github_api} (as on GitHub Enterprise Server),")
    out.line(f"           GitLab's at {fake.gitlab_api}; same payloads as the real APIs")
    out.line(f"  created DynamoDB lock table   {TABLE} (key LockID, as Terraform's S3 backend expects)")
    out.line(f"  created DynamoDB claims table {CLAIMS_TABLE} (keys Who + ClaimedAt, written by CI jobs)")
    out.line(f"  created S3 audit bucket       s3://{AUDIT_BUCKET}/{AUDIT_PREFIX}")
    out.line(f"  created SNS topic             {res['topic_arn']}")
    out.line(f"     subscribed SQS queue       {ALERTS_QUEUE} (so we can read the alert)")
    out.line(f"  created EventBridge rule      {EVENT_RULE}: detail-type '{DETAIL_TYPE}' -> SQS {EVENTS_QUEUE}")
    return c, res


def _replay_claims(run: DemoRun, base_env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each CI job's claim, written by the real claim command; the CI environment of each claimed lock."""
    out, seeds, now = run.out, run.seeds, run.now
    by_path = {s.lock_id: s for s in seeds}
    ci_envs = setup_ci(run.fake, seeds, now)
    out.heading("Replay today's CI jobs: each claims, then Terraform takes its lock")
    out.wrapped("Before `terraform`, each CI job runs `python -m reaper claim`. It reads the job's identity "
                "from the variables the CI system sets (listed under each command) and writes one item to "
                f"{CLAIMS_TABLE}. In CI, `claim` computes Who (user@hostname) exactly as Terraform does; "
                "this demo runs every job on this one machine, so it passes the lock's Who with --who.")
    out.wrapped("These jobs ran hours ago. So that each claim carries the time its job ran, the command runs "
                "with devtools/replay_clock on PYTHONPATH and DEMO_CLOCK_OFFSET set: that moves only the "
                "claim command's clock. The reaper (scan, explain, reap) runs with the real clock.")
    claim_exits: dict[str, int] = {}
    for path, ci_env in ci_envs.items():
        s = by_path[path]
        kind = "GitHub Actions" if isinstance(s.ci, GitHubJob) else "GitLab CI"
        out.sub(f"{_age(s.age + CLAIM_BEFORE_LOCK)} ago, a {kind} job claims, then its Terraform locks {path}")
        proc = run_claim(out, s, ci_env, base_env, now)
        claim_exits[path] = proc.returncode
    run.result["claim_exits"] = claim_exits
    claims = list(_all_items(run.c["dynamodb"], CLAIMS_TABLE).values())
    run.result["claims"] = sorted((it["Who"]["S"], it["ClaimedAt"]["S"], it["Provider"]["S"]) for it in claims)
    return ci_envs


def _fill_and_describe(run: DemoRun, claimed: set[str]) -> None:
    """The lock table (kept in ``run.before``) and what the CI systems say about its holders."""
    out = run.out
    out.heading("The lock table: what those jobs, and others, left behind")
    n_digests = fill_table(run.c["dynamodb"], run.seeds)
    out.block(lock_listing(run.seeds, claimed=claimed))
    out.line(f"  + {n_digests} '-md5' state digests (one per state; never locks, never touched)")
    run.before = _all_items(run.c["dynamodb"])
    run.result["digests"] = sum(1 for v in run.before.values() if "Digest" in v)

    out.heading("What the CI systems say now (the fake CI server's answers)")
    out.block(_table(describe_ci(run.seeds, run.now), ["CI", "RUN / JOB", "RUNNER", "STATE NOW"]))
    out.wrapped("GitHub's runner_name ('GitHub Actions 12') cannot be matched to a GitHub-hosted runner's hostname "
                "(runnervm..., fv-az...): the claim is what ties such a lock to its job. A GitLab runner's "
                "hostname names its project (runner-<token>-project-<id>-concurrent-<n>): the reaper asks that "
                "project for running or pending jobs, with or without a claim.")


def _write_policy(run: DemoRun, workdir: Path) -> str:
    """The policy file; returns its name as the commands are given it."""
    out = run.out
    out.heading("Write the policy file")
    workdir.mkdir(parents=True, exist_ok=True)
    policy_path = workdir / "policy.yaml"
    policy = policy_text(run.fake)
    policy_path.write_text(policy, encoding="utf-8")
    shown = os.path.relpath(policy_path, ROOT) if policy_path.is_relative_to(ROOT) else str(policy_path)
    out.line(f"  {shown}:")
    out.block(policy, indent="  | ")
    out.wrapped("A lock is reaped when it is past its rule's max_age and the CI system proves its holder dead, "
                "or, when nothing can be proved (unknown), only past hard_max_age. A live holder is never reaped.")
    return shown


def _scan_explain_reap(run: DemoRun, env: dict[str, str]) -> str:
    """scan, explain one lock, reap --enforce; returns the explained lock's path."""
    out, result, shown = run.out, run.result, run.shown
    out.heading("Scan (read-only: lists every lock with its decision, deletes nothing)")
    scan = run_cli(out, ["scan", "--config", shown], env)
    result["scan_exit"] = scan.returncode
    after_scan = _all_items(run.c["dynamodb"])
    result["scan_deleted"] = len(run.before) - len(after_scan)

    explained = next(s.lock_id for s in run.seeds if isinstance(s.ci, GitHubJob) and s.ci.fate == "cancelled")
    out.heading("Explain one decision: the chain of evidence for a lock about to be reaped")
    exp = run_cli(out, ["explain", explained, "--config", shown], env)
    result.update(explain_exit=exp.returncode, explain_path=explained, explain_text=exp.stdout)

    out.heading("Reap (enforce mode: audit first, then a conditional delete, then alerts)")
    reap = run_cli(out, ["reap", "--config", shown, "--enforce"], env)
    result["reap_exit"] = reap.returncode
    return explained


def _what_happened(run: DemoRun) -> tuple[dict[str, Any] | None, list[str]]:
    """Ground truth from the table, reasons and evidence from the alert; returns the SNS
    message read back (or None) and the reaped locks' keys."""
    out, result, before = run.out, run.result, run.before
    after = _all_items(run.c["dynamodb"])
    sns_msgs = _receive(run.c["sqs"], run.res["alerts_url"], want=1)
    result["sns_received"] = len(sns_msgs)
    alert = json.loads(sns_msgs[0]["Body"]) if sns_msgs else None
    report = _report_from_sns(alert.get("Message", "")) if alert else None
    entries = {lk["lock_path"]: lk for lk in (report or {}).get("locks", [])}
    result["outcomes"] = {p: {"outcome": e["outcome"], "liveness": e["liveness"], "flags": sorted(e.get("flags", []))}
                          for p, e in entries.items()}
    result["summary"] = (report or {}).get("summary", {})

    gone = sorted(k for k, v in before.items() if "Info" in v and k not in after)
    kept = sorted(k for k, v in after.items() if "Info" in v)
    digests_before = {k: v for k, v in before.items() if "Digest" in v}
    digests_after = {k: v for k, v in after.items() if "Digest" in v}
    result.update(reaped=len(gone), kept=len(kept), reaped_ids=gone, kept_ids=kept,
                  digests_unchanged=digests_after == digests_before)

    out.heading("What happened, and why")
    for title, paths in ((f"Reaped ({len(gone)}): deleted from {TABLE}, each recorded in the audit bucket first", gone),
                         (f"Kept ({len(kept)}): still in {TABLE}", kept)):
        out.line(f"  {title}")
        for k in paths:
            out.line(f"    - {k}")
            for ln in why_lines(entries.get(k, {})):
                out.line(f"        {ln}")
    out.line(f"  State digests: {len(digests_before)} before, {len(digests_after)} after, "
             + ("all unchanged" if result["digests_unchanged"] else "CHANGED (this is a bug)"))
    return alert, gone


def _show_audit_records(run: DemoRun, explained: str) -> None:
    out, c = run.out, run.c
    out.heading("Audit records (written before each delete; `restore` reads them)")
    objs = c["s3"].list_objects_v2(Bucket=AUDIT_BUCKET, Prefix=AUDIT_PREFIX).get("Contents", [])
    run.result["audit_records"] = len(objs)
    for o in objs:
        out.line(f"  s3://{AUDIT_BUCKET}/{o['Key']}  ({o['Size']} bytes)")
    records = [(o["Key"], json.loads(c["s3"].get_object(Bucket=AUDIT_BUCKET, Key=o["Key"])["Body"].read())) for o in objs]
    pick = next(((k, r) for k, r in records if r.get("lock_path") == explained), records[0] if records else None)
    if pick:
        key, rec = pick
        excerpt = {k: rec.get(k) for k in ("run_id", "recorded_at", "store", "lock_path", "lock_id", "rule", "reasons")}
        liveness = rec.get("liveness") or {}
        excerpt["liveness"] = {"state": liveness.get("state"), "checkers": liveness.get("checkers"),
                               "evidence": [{k: e.get(k) for k in ("detail", "url", "status")}
                                            for e in liveness.get("evidence", [])]}
        excerpt["item"] = rec.get("item")
        run.result["audit_liveness"] = liveness.get("state")
        out.sub(f"the record of {rec.get('lock_path')} (excerpt)")
        out.block(json.dumps(excerpt, indent=2), indent="  | ")
        out.line("  To put a reaped lock back (never overwrites a newer lock):")
        out.line(f"    python -m reaper restore --config {run.shown} s3://{AUDIT_BUCKET}/{key}")


def _show_sns(run: DemoRun, alert: dict[str, Any] | None) -> None:
    out = run.out
    out.heading("The SNS alert that was sent (read back from the subscribed SQS queue)")
    if alert:
        text = alert.get("Message", "")
        readable = text.split("\n\n--- JSON", 1)[0]
        run.result["sns_subject"] = alert.get("Subject", "")
        out.line(f"  Subject: {alert.get('Subject', '')}")
        out.block(readable, indent="  | ")
        extra = len(text) - len(readable)
        if extra > 0:
            out.line(f"  | ... followed by the full run report as JSON ({extra} characters)")
    else:
        out.line("  no SNS message arrived")


def _show_events(run: DemoRun, gone: list[str]) -> None:
    out = run.out
    out.heading("EventBridge events (one per reaped lock, routed by the rule to SQS)")
    events = _receive(run.c["sqs"], run.res["events_url"], want=max(len(gone), 1), wait=5.0 if gone else 1.0)
    run.result["events"] = len(events)
    for msg in events:
        ev = json.loads(msg["Body"])
        d = ev.get("detail", {})
        out.line(f"  {ev.get('source')} / {ev.get('detail-type')}: {d.get('lock_path')} "
                 f"(lock {str(d.get('lock_id', ''))[:8]}, by {d.get('who')}, outcome {d.get('outcome')})")
    if not events:
        out.line("  no events arrived")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, stream: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(ROOT / ".demo"), help="where the demo policy is written (default .demo/)")
    args = parser.parse_args(argv)
    out = Out(stream or sys.stdout)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `kill <pid>` stops the demo like Ctrl-C does: the servers are stopped on the way out.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    out.line("Lock Reaper demo: stale Terraform locks, proved dead by the CI system and removed safely,")
    out.line("against a local AWS emulator and a local CI API.")
    try:
        result = run_demo(out, Path(args.workdir))
    except KeyboardInterrupt:
        out.line("\ninterrupted: the emulator and the fake CI were stopped.")
        return 130
    except Exception as exc:  # a readable line, no stack trace
        out.line(f"\ndemo failed: {type(exc).__name__}: {textwrap.shorten(str(exc), 400)}")
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    problems = []
    if result.get("scan_deleted") != 0:
        problems.append("scan changed the table")
    if not result.get("digests_unchanged"):
        problems.append("a state digest changed")
    if any(result.get("claim_exits", {}).values()):
        problems.append("a claim could not be written")
    if result.get("reap_exit") != 0 or result.get("scan_exit") != 0 or result.get("explain_exit") != 0:
        problems.append("the CLI reported errors")
    if problems:
        out.line("demo finished with problems: " + "; ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
