"""Concurrent judging (``liveness.http.concurrency``) decides exactly what sequential judging decides.

Only the liveness checks run on worker threads; gate -> audit -> execute stay on the scanning thread, in
scan order. So the same world gives the same report at concurrency 1 and 8: the same outcomes, reasons,
evidence and order, the same locks deleted under a cap smaller than the number of dead candidates, the
same audit records in the same order, the same double-lock pairs, even when the fake CI answers the
first candidates slowest (their checks finish last). And what the checkers share across threads holds:
the per-run call budget is never exceeded, a rate limit one call meets stops the other threads (their
holders are unknown, never dead), one answer is fetched once however many threads want it, and a secret
is read once.

In-process moto (DynamoDB lock table, S3 lock files, the claims table, Secrets Manager) and the
threaded fake CI of ``devtools.fake_ci`` (GitHub under /api/v3, GitLab under /api/v4).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devtools.fake_ci import FakeCI
from devtools.locks import create_claims_table, create_lock_table, digest_item, info_json, lock_item
from reaper.engine import Reaper
from reaper.http.client import ApiCounter, EtagCache, HttpLimits, RateGate
from reaper.http.tokens import SecretsSource, StaticToken, github_header
from reaper.liveness.claims import Claim, ClaimStore
from reaper.liveness.facts import Memo
from reaper.models import Outcome
from reaper.policy import parse_policy
from reaper.wiring import Deps, build_components
from testkit import ListAudit

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
GH_TOKEN = "ghp_concurrencyToken00000000000000000"
GL_TOKEN = "glpat-concurrency000000"
TABLE, CLAIMS, BUCKET = "terraform-locks", "lock-reaper-claims", "corp-tfstate"
ORG = "acme"
CAP = 7

POLICY = """\
mode: enforce
max_deletes_per_run: {cap}
min_age: 15m
stores:
  - {{type: dynamodb, table: {table}}}
  - {{type: s3, bucket: {bucket}}}
rules:
  - {{name: default, match: "*", max_age: 2h, hard_max_age: 2d}}
audit: {{local_dir: unused}}
alerts: {{metrics: {{enabled: false}}}}
liveness:
  grace: 5m
  claims: {{table: {claims}}}
  state_activity: {{enabled: false}}
  providers:
    - type: github
      api_url: {gh}
      token_env: CONC_GH_TOKEN
      runners: [{{org: {org}, hosts: ["{org}-runner-*"], absent_means_gone: true}}]
    - type: gitlab
      api_url: {gl}
      token_env: CONC_GL_TOKEN
      runner_hosts: ["runner-*-project-*-concurrent-*"]
  http: {{timeout: 5s, concurrency: {concurrency}, max_calls_per_run: {max_calls}}}
"""

# what holds each lock, cycled over the locks (the first candidates of each kind are the slowest to answer)
KINDS = ("gh_claim_dead", "gh_claim_alive", "gl_claim_dead", "gl_runner_dead", "gl_runner_alive", "runner_idle",
         "runner_busy", "gh_claim_broken", "laptop", "laptop_old", "young", "gl_claim_alive")
N_LOCKS = 72  # 6 of each kind: 30 dead candidates (and 6 laptops past hard_max_age) against a cap of 7


@dataclass(frozen=True)
class Lock:
    i: int
    kind: str
    path: str  # <bucket>/<state key>
    who: str
    age: timedelta
    double: bool  # also an S3 lock file (double locking)
    s3_only: bool  # only an S3 lock file (decided after the other stores)

    @property
    def lock_id(self) -> str:
        return f"00000000-0000-4000-8000-{self.i:012d}"

    @property
    def info(self) -> str:
        return info_json(self.path, self.age, NOW, who=self.who, id_=self.lock_id)


def world_locks() -> list[Lock]:
    out = []
    for i in range(N_LOCKS):
        kind = KINDS[i % len(KINDS)]
        age = {"young": timedelta(minutes=5), "laptop_old": timedelta(days=3)}.get(kind, timedelta(hours=3))
        who = {
            "gh_claim_dead": f"runner@fv-az{i}-1", "gh_claim_alive": f"runner@fv-az{i}-1",
            "gh_claim_broken": f"runner@fv-az{i}-1", "gl_claim_dead": f"root@gl-shell-{i}",
            "gl_claim_alive": f"root@gl-shell-{i}",
            "gl_runner_dead": f"root@runner-xz1ab-project-{400 + (i // 12) % 3}-concurrent-0",
            "gl_runner_alive": f"root@runner-xz1ab-project-{500 + (i // 12) % 2}-concurrent-0",
            "runner_idle": f"runner@{ORG}-runner-{i}", "runner_busy": f"runner@{ORG}-runner-{i}",
            "laptop": "alice@alice-mbp", "laptop_old": "bob@bobs-mbp", "young": f"runner@fv-az{i}-1",
        }[kind]
        out.append(Lock(i, kind, f"{BUCKET}/env{i % 4}/svc{i}/terraform.tfstate", who, age,
                        double=i % 5 == 0, s3_only=i % 11 == 3))
    return out


def serve_world(fake: FakeCI, locks: list[Lock], slow_first: bool = True) -> None:
    """What the CI systems say about each holder; the first candidates of each kind answer slowest."""
    for lock in locks:
        created = NOW - lock.age
        run, repo = 7_000_000 + lock.i, f"{ORG}/svc{lock.i}"
        if lock.kind.startswith("gh_claim"):
            done = lock.kind != "gh_claim_alive"
            fake.add_github_job(repo, run, run * 10, status="completed" if done else "in_progress",
                                conclusion="cancelled" if done else None, started_at=created - timedelta(minutes=1),
                                completed_at=created + timedelta(minutes=20) if done else None,
                                runner_name=f"GitHub Actions {lock.i}")
            if lock.kind == "gh_claim_broken":
                fake.fault(rf"/repos/{repo}/actions/", 500)
        elif lock.kind.startswith("gl_claim"):
            done = lock.kind == "gl_claim_dead"
            fake.add_gitlab_job(600 + lock.i, 9_000 + lock.i, status="canceled" if done else "running",
                                started_at=created - timedelta(minutes=1),
                                finished_at=created + timedelta(minutes=30) if done else None)
        elif lock.kind == "runner_idle":
            fake.add_github_runner(f"org:{ORG}", f"{ORG}-runner-{lock.i}", status="online", busy=False)
        elif lock.kind == "runner_busy":
            fake.add_github_runner(f"org:{ORG}", f"{ORG}-runner-{lock.i}", status="online", busy=True)
    for pid in (400, 401, 402):  # no live job; one finished long ago
        fake.add_gitlab_job(pid, pid * 100, status="success", started_at=NOW - timedelta(days=2),
                            finished_at=NOW - timedelta(days=2) + timedelta(minutes=5))
    for pid in (500, 501):  # a job running since before the locks were taken
        fake.add_gitlab_job(pid, pid * 100, status="running", started_at=NOW - timedelta(hours=4))
    if slow_first:  # the earliest locks' answers come last: a worker finishing out of order must change nothing
        for lock in (lk for lk in locks if lk.i < 24):
            fake.fault(rf"/(runs/{7_000_000 + lock.i}/|projects/{600 + lock.i}/)", delay=0.15, passthrough=True)
        fake.fault(r"/projects/40[0-2]/jobs\?", delay=0.1, passthrough=True)


def claims_for(locks: list[Lock]) -> list[Claim]:
    out = []
    for lock in locks:
        created = NOW - lock.age
        if lock.kind.startswith("gh_claim") or lock.kind == "young":
            out.append(Claim(who=lock.who, claimed_at=created - timedelta(seconds=30), provider="github",
                             repo=f"{ORG}/svc{lock.i}", run_id=7_000_000 + lock.i, run_attempt=1,
                             runner_name=f"GitHub Actions {lock.i}", started_at=created - timedelta(seconds=60)))
        elif lock.kind.startswith("gl_claim"):
            out.append(Claim(who=lock.who, claimed_at=created - timedelta(seconds=30), provider="gitlab",
                             project_id=600 + lock.i, run_id=8_000 + lock.i, job_id=9_000 + lock.i,
                             started_at=created - timedelta(seconds=60)))
    return out


def load_world(locks: list[Lock]) -> tuple[Any, Any]:
    """The lock table (items and their digests), the bucket's lock files and the claims table (inside mock_aws)."""
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    create_lock_table(ddb, TABLE)
    create_claims_table(ddb, CLAIMS)
    s3.create_bucket(Bucket=BUCKET)
    for lock in locks:
        lock_file = lock.path.split("/", 1)[1] + ".tflock"
        if lock.s3_only or lock.double:
            s3.put_object(Bucket=BUCKET, Key=lock_file, Body=lock.info.encode())
        if not lock.s3_only:
            ddb.put_item(TableName=TABLE, Item=lock_item(lock.path, lock.info))
            ddb.put_item(TableName=TABLE, Item={**digest_item(lock.path), "Digest": {"S": f"{lock.i:032x}"}})
    claims = ClaimStore(ddb, CLAIMS)
    for claim in claims_for(locks):
        claims.put(claim)
    return ddb, s3


class Overlap:
    """Wraps the composite checker: records how many checks ran at once, and on which threads."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.running = self.most = 0
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def check(self, lock: Any, now: datetime) -> Any:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            return self.inner.check(lock, now)
        finally:
            with self._lock:
                self.running -= 1

    def stats(self) -> dict[str, Any]:
        return self.inner.stats()


@dataclass
class Run:
    report: Any
    audit: ListAudit
    remaining: list[str]
    overlap: Overlap

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [e.model_dump(mode="json") for e in self.report.locks]

    def outcome(self, kind: str, locks: list[Lock]) -> set[str]:
        keys = {lk.path for lk in locks if lk.kind == kind}
        return {e.outcome.value for e in self.report.locks if e.lock_path in keys}


def run_world(fake: FakeCI, locks: list[Lock], *, concurrency: int, cap: int = CAP, max_calls: int = 1000,
              mode: str = "enforce", sleep: Any = None) -> Run:
    """One run on a fresh copy of the AWS side (the fake CI is read only), built as the Lambda builds it."""
    with mock_aws():
        ddb, s3 = load_world(locks)
        policy = parse_policy(POLICY.format(cap=cap, table=TABLE, bucket=BUCKET, claims=CLAIMS, org=ORG, gh=fake.github_api,
                                            gl=fake.gitlab_api, concurrency=concurrency, max_calls=max_calls))
        deps = Deps(client_factory=lambda service, region=None: boto3.client(service, region_name=region or "us-east-1"),
                    env={"CONC_GH_TOKEN": GH_TOKEN, "CONC_GL_TOKEN": GL_TOKEN}, etags=EtagCache(), clock=lambda: NOW,
                    sleep=sleep or (lambda s: None))
        parts = build_components(policy, deps, sinks=False)
        overlap, audit = Overlap(parts.liveness), ListAudit()
        reaper = Reaper(policy, parts.stores, clock=deps.clock, liveness=overlap, audit=audit, run_id="run-concurrency")
        assert reaper.concurrency == concurrency, "the policy's liveness.http.concurrency"
        report = reaper.run(mode=mode)  # type: ignore[arg-type]
        remaining = sorted(i["LockID"]["S"] for i in ddb.scan(TableName=TABLE)["Items"])
        remaining += sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))
        return Run(report, audit, remaining, overlap)


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Audit records without the S3 lock file's LastModified (each run writes its world afresh)."""
    return [{**r, "item": {k: v for k, v in r["item"].items() if k != "last_modified"}} if "item" in r else r
            for r in records]


@pytest.fixture
def fake() -> Iterator[FakeCI]:
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN) as ci:
        yield ci


# ---------------------------------------------------------------------------- same world, same decisions
def test_concurrency_8_decides_deletes_and_audits_exactly_as_concurrency_1(fake: FakeCI) -> None:
    locks = world_locks()
    serve_world(fake, locks)
    one = run_world(fake, locks, concurrency=1)

    # the sequential run is the reference: check it is the world described above
    r = one.report
    assert one.overlap.most == 1 and one.overlap.threads == {threading.current_thread().name}
    assert r.summary.outcomes["reaped"] == CAP, r.summary.outcomes
    assert sum(1 for e in r.locks if "cap_hit" in e.flags) > 10, "more dead candidates than the cap"
    assert one.outcome("gh_claim_alive", locks) == one.outcome("runner_busy", locks) == {"kept"}
    assert one.outcome("gl_runner_alive", locks) == one.outcome("gl_claim_alive", locks) == {"kept"}
    assert {e.liveness for e in r.locks if "fv-az" in e.who and e.lock_path in
            {lk.path for lk in locks if lk.kind == "gh_claim_broken"}} == {"unknown"}
    reaped = [e for e in r.locks if e.outcome is Outcome.REAPED]
    assert any(len(e.targets) == 2 for e in reaped), "a double lock is among the reaped: both copies deleted"
    assert any(len(e.targets) == 2 and "cap_hit" in e.flags for e in r.locks), "and one is kept by the cap"
    assert any(e.store.startswith("s3:") and not e.targets for e in r.locks), "lock files without an item: decided last"
    assert len(r.locks) == N_LOCKS, "one entry per lock, double locks once"
    calls = r.liveness_api_calls["by_kind"]
    assert calls["claims.scan"] == 1 and calls["github.runners.org"] == 1 and calls["gitlab.live_jobs"] == 5

    for attempt in range(3):
        many = run_world(fake, locks, concurrency=8)
        assert many.overlap.most > 1, f"attempt {attempt}: the checks did run at the same time"
        assert all(t.startswith("lock-reaper-judge") for t in many.overlap.threads), many.overlap.threads
        # the same entries (outcome, reasons, evidence, flags, per-copy results, audit refs), in the same order
        for a, b in zip(one.entries, many.entries, strict=True):
            assert a == b, f"attempt {attempt}: {a['key']}"
        assert comparable(many.audit.records) == comparable(one.audit.records), "the same audit records, in the same order"
        assert many.remaining == one.remaining, "the same locks deleted under the cap"
        assert many.report.summary == one.report.summary
        assert many.report.liveness_api_calls == one.report.liveness_api_calls, "no call more than sequentially"


def test_the_cap_takes_the_first_dead_candidates_in_scan_order_even_when_they_answer_last(fake: FakeCI) -> None:
    """The slowest answers belong to the first candidates: acting in completion order would spend the cap on
    later ones. Scan order it is (the audit records are written in the order the candidates are acted on)."""
    locks = [lk for lk in world_locks() if lk.kind in ("gh_claim_dead", "gl_claim_dead")]
    serve_world(fake, locks, slow_first=False)
    one = run_world(fake, locks, concurrency=1, cap=3)
    first = {e.lock_path for e in one.report.locks if e.outcome is Outcome.REAPED}
    assert len(first) == 3 and sum(1 for e in one.report.locks if e.liveness == "dead") == len(locks)
    for lk in locks:  # now the three the cap took answer last, well after every other candidate
        if lk.path in first:
            fake.fault(rf"/(runs/{7_000_000 + lk.i}/|projects/{600 + lk.i}/)", delay=0.4, passthrough=True)
    many = run_world(fake, locks, concurrency=8, cap=3)
    assert many.overlap.most > 1
    assert {e.lock_path for e in many.report.locks if e.outcome is Outcome.REAPED} == first
    assert [(r["store"], r["key"]) for r in many.audit.records] == [(r["store"], r["key"]) for r in one.audit.records]


def test_small_windows_bound_the_checks_in_flight_and_change_nothing(fake: FakeCI, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most JUDGE_WINDOW checks queued or running and PENDING_LIMIT locks between the scan and the act."""
    import reaper.engine as engine

    locks = [lk for lk in world_locks() if lk.i < 36]
    serve_world(fake, locks)
    one = run_world(fake, locks, concurrency=1)
    monkeypatch.setattr(engine, "JUDGE_WINDOW", 2)
    monkeypatch.setattr(engine, "PENDING_LIMIT", 3)
    acted_behind: list[int] = []
    real_next = engine._Judging._next

    def next_(self: Any) -> None:
        acted_behind.append(len(self._pending))
        real_next(self)

    monkeypatch.setattr(engine._Judging, "_next", next_)
    many = run_world(fake, locks, concurrency=8)
    assert many.overlap.most == 2, "two checks at a time, not eight"
    assert max(acted_behind) <= 4, "never more than PENDING_LIMIT + 1 locks waiting to be acted on"
    assert many.entries == one.entries and many.remaining == one.remaining


# ---------------------------------------------------------------------------- what the threads share
def claimed_dead(n: int) -> list[Lock]:
    return [Lock(i, "gh_claim_dead", f"{BUCKET}/budget/svc{i}/terraform.tfstate", f"runner@fv-az{i}-1",
                 timedelta(hours=3), double=False, s3_only=False) for i in range(n)]


def test_the_call_budget_is_never_exceeded_under_concurrency(fake: FakeCI) -> None:
    locks = claimed_dead(40)
    serve_world(fake, locks, slow_first=False)
    fake.fault(r"/api/v3/", delay=0.03, passthrough=True)  # every call in flight long enough to overlap
    run = run_world(fake, locks, concurrency=8, max_calls=6, mode="report")
    assert fake.count(r"^/api/v3/") == 6, "six calls sent, not one more"
    calls = run.report.liveness_api_calls
    assert calls["by_kind"]["github.attempt_jobs"] == 6 and calls["skipped"]["github.attempt_jobs"] == 34
    assert run.overlap.most > 1
    dead = [e for e in run.report.locks if e.liveness == "dead"]
    spent = [e for e in run.report.locks if any("budget of 6 API calls per run is spent" in r for r in e.reasons)]
    assert len(dead) == 6 and len(spent) == 34
    assert {e.liveness for e in spent} == {"unknown"} and {e.outcome.value for e in spent} == {"kept"}


def test_a_rate_limit_met_by_one_thread_makes_the_other_threads_holders_unknown(fake: FakeCI) -> None:
    locks = claimed_dead(40)
    serve_world(fake, locks, slow_first=False)
    fake.fault(r"/api/v3/", status=429, headers={"Retry-After": "3600"}, delay=0.05)
    run = run_world(fake, locks, concurrency=8, mode="report")
    sent = fake.count(r"^/api/v3/")
    assert 1 <= sent <= 8, f"only the calls already in flight when the first 429 came back: {sent}"
    assert run.report.liveness_api_calls["skipped"]["github.attempt_jobs"] == 40 - sent
    assert {e.liveness for e in run.report.locks} == {"unknown"}, "a rate limit is never a death"
    assert {e.outcome.value for e in run.report.locks} == {"kept"}
    paused = [e for e in run.report.locks if any("API paused for" in r for r in e.reasons)]
    assert len(paused) == 40 - sent


def test_a_short_retry_after_holds_the_other_threads_too(fake: FakeCI) -> None:
    locks = claimed_dead(24)
    serve_world(fake, locks, slow_first=False)
    fake.fault(r"/api/v3/", status=429, headers={"Retry-After": "2"}, times=1)
    fake.fault(r"/api/v3/", delay=0.02, passthrough=True)
    slept: list[tuple[str, float]] = []
    run = run_world(fake, locks, concurrency=8, mode="report",
                    sleep=lambda s: slept.append((threading.current_thread().name, s)))
    assert fake.count(r"^/api/v3/") == 24 + 1, "the limited call is retried once; no other call is lost"
    assert {e.liveness for e in run.report.locks} == {"dead"}, "a short wait, then real answers"
    assert len({t for t, _ in slept}) >= 2, f"another thread waited too before calling: {slept}"
    assert all(0 < s <= 2 for _, s in slept)


def test_memo_fetches_one_answer_once_for_threads_that_ask_at_once() -> None:
    counter = ApiCounter()
    memo, calls, start = Memo(counter), [], threading.Barrier(8)

    def fetch() -> str:
        calls.append(1)
        time.sleep(0.1)
        return "the answer"

    got: list[str] = []

    def ask() -> None:
        start.wait()
        got.append(memo.get("github.job", ("acme/infra", 1), fetch))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["the answer"] * 8 and len(calls) == 1
    assert counter.to_dict()["memo_hits"] == {"github.job": 7}


def test_rate_gate_admits_exactly_the_budget_from_many_threads() -> None:
    gate = RateGate("github", HttpLimits(max_calls=50), ApiCounter())
    admitted: list[int] = []
    start = threading.Barrier(16)

    def call() -> None:
        start.wait()
        while True:
            try:
                gate.admit("github.job", "http://127.0.0.1/x")
            except Exception:
                return
            admitted.append(1)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 50 and gate.calls == 50
    assert gate.counter.to_dict()["skipped"] == {"github.job": 16}


def test_a_secret_is_read_once_by_threads_that_need_it_at_once(aws: None) -> None:
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    sm.create_secret(Name="lock-reaper/github-token", SecretString=json.dumps({"token": GH_TOKEN}))
    reads: list[int] = []

    def slow_read(**_: Any) -> None:
        reads.append(1)
        time.sleep(0.1)  # a slow Secrets Manager: every thread that missed the cache would read it

    sm.meta.events.register("before-call.secrets-manager.GetSecretValue", slow_read)
    token = StaticToken(github_header, secret="lock-reaper/github-token",
                        secrets=SecretsSource(max_age=300, client_factory=lambda service, region=None: sm))
    start, got = threading.Barrier(8), []

    def use() -> None:
        start.wait()
        got.append(token())

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [{"Authorization": f"Bearer {GH_TOKEN}"}] * 8
    assert len(reads) == 1


def test_a_finished_jobs_list_read_for_a_later_horizon_is_read_again_for_an_earlier_one() -> None:
    """Judged concurrently, a later candidate (later ``now``) may read a project's finished jobs first, down
    to its later horizon; an earlier candidate must still see every job created since its own horizon."""
    from reaper.http.client import JsonApi, new_pool
    from reaper.liveness.gitlab import GitLabApi

    late = NOW - timedelta(days=7)
    early = late - timedelta(hours=1)
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN, per_page_max=2) as ci:
        # newest first, two a page: [6, 5] [4, 3] [2, 1]; job 2 was created after `early`, on the third page
        made = {6: late + timedelta(hours=3), 5: late + timedelta(hours=2), 4: late - timedelta(minutes=10),
                3: late - timedelta(minutes=20), 2: late - timedelta(minutes=30), 1: late - timedelta(hours=5)}
        for job_id, created in made.items():
            started = created + timedelta(seconds=20)  # the fake's created_at is started_at - 20 s
            ci.add_gitlab_job(7, job_id, status="success", started_at=started, finished_at=started + timedelta(minutes=1))
        api = JsonApi("gitlab", ci.gitlab_api, new_pool(), lambda: {"PRIVATE-TOKEN": GL_TOKEN}, limits=HttpLimits(),
                      etags=EtagCache())
        gl = GitLabApi(api)
        later, complete = gl.finished_jobs(7, late)
        assert complete and [j["id"] for j in later] == [6, 5, 4, 3], "read down to the page that reaches `late`"
        earlier, complete = gl.finished_jobs(7, early)
        assert complete and [j["id"] for j in earlier] == [6, 5, 4, 3, 2, 1], "job 2 (created after `early`) is seen"
        again, _ = gl.finished_jobs(7, late + timedelta(seconds=1))
        assert [j["id"] for j in again] == [6, 5, 4, 3], "a later horizon is covered by the first list: memo hit"
        assert ci.count(r"/projects/7/jobs") == 2 + 3


def test_the_http_pool_keeps_one_connection_per_worker_and_the_scan() -> None:
    policy = parse_policy(POLICY.format(cap=CAP, table=TABLE, bucket=BUCKET, claims=CLAIMS, org=ORG, gh="http://127.0.0.1:9/api/v3",
                                        gl="http://127.0.0.1:9/api/v4", concurrency=3, max_calls=1000))
    with mock_aws():
        parts = build_components(policy, Deps(client_factory=lambda service, region=None: boto3.client(
            service, region_name=region or "us-east-1")), sinks=False)
    claims = next(c for c in parts.liveness.checkers if c.name == "claims")
    pools = {id(v.gh.api.pool if hasattr(v, "gh") else v.gl.api.pool): (v.gh.api.pool if hasattr(v, "gh") else v.gl.api.pool)
             for v in claims.verifiers.values()}  # type: ignore[attr-defined]
    assert len(pools) == 1, "one pool for every provider"
    assert next(iter(pools.values())).connection_pool_kw["maxsize"] == 3 + 1


@pytest.mark.parametrize("value", [0, 65, "many"])
def test_a_bad_concurrency_is_refused_naming_the_field_and_its_line(value: Any) -> None:
    from reaper.policy import ConfigError

    text = POLICY.format(cap=CAP, table=TABLE, bucket=BUCKET, claims=CLAIMS, org=ORG, gh="http://127.0.0.1:9/api/v3",
                         gl="http://127.0.0.1:9/api/v4", concurrency=value, max_calls=1000)
    with pytest.raises(ConfigError) as err:
        parse_policy(text)
    line = 1 + next(i for i, t in enumerate(text.splitlines()) if "concurrency:" in t)
    assert f"line {line}: liveness.http.concurrency" in str(err.value), str(err.value)
