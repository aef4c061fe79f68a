"""Every liveness path through the real checkers (fake CI over HTTP, moto for AWS) and the decision.

Each test builds the composite exactly as the Lambda does (reaper.wiring),
asks it about one lock and feeds the answer to the pure decision.
"""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest

from devtools.fake_ci import FakeCI, rate_limited
from devtools.locks import create_claims_table, info_json
from reaper.policy import parse_policy
from reaper.decision import decide
from reaper.wiring import build_liveness
from reaper.liveness.claims import Claim, ClaimStore
from reaper.liveness.composite import CompositeChecker
from reaper.liveness.facts import alive as alive_fact
from reaper.http.client import EtagCache
from reaper.liveness.state_activity import StateActivityChecker
from reaper.models import Action, Flag, Liveness, LockInfo, LockRecord

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
GH_TOKEN = "ghp_checkerTestToken000000000000000000"
GL_TOKEN = "glpat-checkerTestToken0"
PATH = "tfstate/prod/network.tfstate"
HOSTED = "runner@fv-az581-229"


def make_lock(path: str = PATH, who: str = HOSTED, age: timedelta = timedelta(hours=4), store: str = "dynamodb:locks",
              op: str = "OperationTypeApply", now: datetime = NOW) -> LockRecord:
    raw = info_json(path, age, now, operation=op, who=who)
    return LockRecord(store=store, key=path, lock_path=path, token=raw, raw={"LockID": {"S": path}}, info=LockInfo.parse(raw))


def created(lock: LockRecord) -> datetime:
    assert lock.info is not None
    return lock.info.Created


POLICY = """\
mode: report
min_age: 15m
rules:
  - name: mapped
    match: "tfstate/mapped/*"
    max_age: 2h
    hard_max_age: 2d
    liveness:
      github_repos: [acme/mapped]
      gitlab_projects: [77]
      who: ["runner@*", "root@*"]
  - name: default
    match: "*"
    max_age: 2h
    hard_max_age: 1d
liveness:
  grace: 5m
  claims: {{table: claims}}
  providers:
    - type: github
      api_url: {gh}
      token_env: TEST_GH_TOKEN
      runners:
        - org: acme
          hosts: ["gh-runner-*"]
          users: [ci]
          absent_means_gone: true
        - repo: acme/solo
          hosts: ["solo-*"]
    - type: gitlab
      api_url: {gl}
      token_env: TEST_GL_TOKEN
      runner_hosts: ["runner-*-project-*-concurrent-*"]
  state_activity: {{enabled: false}}
  http: {{timeout: 1s, max_retry_wait: 1s}}
"""


class World:
    """Fake CI + moto claims table + the composite built from the policy."""

    def __init__(self, fake: FakeCI, policy_text: str | None = None, env: dict[str, str] | None = None):
        self.fake = fake
        self.policy = parse_policy(textwrap.dedent(policy_text or POLICY.format(gh=fake.github_api, gl=fake.gitlab_api)))
        self.ddb = boto3.client("dynamodb", region_name="us-east-1")
        if "claims" not in self.ddb.list_tables()["TableNames"]:
            create_claims_table(self.ddb, "claims")
        self.env = env if env is not None else {"TEST_GH_TOKEN": GH_TOKEN, "TEST_GL_TOKEN": GL_TOKEN}
        self.rebuild()

    def rebuild(self) -> None:
        self.checker: CompositeChecker = build_liveness(
            self.policy, lambda service, region=None: boto3.client(service, region_name=region or "us-east-1"),
            env=self.env, etags=EtagCache(), sleep=lambda s: None)

    def claim(self, who: str, at: datetime, **kw: Any) -> Claim:
        c = Claim(who=who, claimed_at=at, **kw)
        ClaimStore(self.ddb, "claims").put(c)
        return c

    def gh_claim(self, lock: LockRecord, run_id: int, **kw: Any) -> Claim:
        kw.setdefault("runner_name", "GitHub Actions 2")
        return self.claim(lock.info.Who, created(lock) - timedelta(seconds=40), provider="github", api_url=self.fake.github_api,
                          repo="acme/infra", run_id=run_id, run_attempt=kw.pop("attempt", 1), **kw)

    def gl_claim(self, lock: LockRecord, job_id: int, project_id: int = 42) -> Claim:
        return self.claim(lock.info.Who, created(lock) - timedelta(seconds=30), provider="gitlab", api_url=self.fake.gitlab_api,
                          project_id=project_id, run_id=6, job_id=job_id)

    def decide(self, lock: LockRecord, now: datetime = NOW):
        first = decide(lock, self.policy, now)
        assert first.needs_liveness, first.reasons
        detailed = self.checker.check_detailed(lock, now)
        return detailed, decide(lock, self.policy, now, detailed.fact)


@pytest.fixture
def fake():
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN) as f:
        yield f


@pytest.fixture
def world(aws, fake: FakeCI) -> World:
    return World(fake)


def answer(detailed, checker: str):
    [a] = [a for a in detailed.answers if a.checker == checker]
    return a.fact


# ====================================================================== claims: GitHub
def test_claimed_job_in_progress_is_alive_and_kept(world: World) -> None:
    lock = make_lock()
    world.gh_claim(lock, 500)
    world.fake.add_github_job("acme/infra", 500, 5001, status="in_progress", started_at=created(lock) - timedelta(minutes=1))
    detailed, d = world.decide(lock)
    assert detailed.fact.state is Liveness.ALIVE and d.action is Action.KEEP
    assert "in_progress" in detailed.fact.reason
    urls = [e.url for e in detailed.fact.evidence]
    assert f"{world.fake.web}/acme/infra/actions/runs/500/job/5001" in urls
    assert detailed.fact.checkers == ("claims",)


def test_claimed_job_completed_ten_minutes_ago_is_dead_and_reaped(world: World) -> None:
    lock = make_lock()
    world.gh_claim(lock, 501)
    world.fake.add_github_job("acme/infra", 501, 5011, status="completed", conclusion="cancelled",
                              started_at=created(lock) - timedelta(minutes=1), completed_at=NOW - timedelta(minutes=10))
    detailed, d = world.decide(lock)
    assert detailed.fact.state is Liveness.DEAD and d.action is Action.REAP
    assert "finished 10m ago (completed/cancelled)" in detailed.fact.reason
    assert any(e.at == NOW - timedelta(minutes=10) for e in detailed.fact.evidence)


@pytest.mark.parametrize("finished_ago,state,action", [
    (timedelta(minutes=2), Liveness.ALIVE, Action.KEEP),  # inside the 5m grace: still shutting down
    (timedelta(minutes=4, seconds=59), Liveness.ALIVE, Action.KEEP),
    (timedelta(minutes=5), Liveness.DEAD, Action.REAP),
    (timedelta(minutes=30), Liveness.DEAD, Action.REAP),
])
def test_grace_period_after_completed_at(world: World, finished_ago: timedelta, state: Liveness, action: Action) -> None:
    lock = make_lock()
    world.gh_claim(lock, 502)
    world.fake.add_github_job("acme/infra", 502, 5021, status="completed", conclusion="cancelled",
                              started_at=created(lock), completed_at=NOW - finished_ago)
    detailed, d = world.decide(lock)
    assert (detailed.fact.state, d.action) == (state, action)
    if state is Liveness.ALIVE:
        assert "within the 5m grace period" in detailed.fact.reason


def test_configured_grace_is_used(aws, fake: FakeCI) -> None:
    w = World(fake, POLICY.format(gh=fake.github_api, gl=fake.gitlab_api).replace("grace: 5m", "grace: 30m"))
    lock = make_lock()
    w.gh_claim(lock, 503)
    w.fake.add_github_job("acme/infra", 503, 5031, status="completed", conclusion="failure",
                          started_at=created(lock), completed_at=NOW - timedelta(minutes=10))
    detailed, d = w.decide(lock)
    assert detailed.fact.state is Liveness.ALIVE and d.action is Action.KEEP and "30m grace" in detailed.fact.reason


def test_job_that_ended_before_the_lock_is_not_its_holder(world: World) -> None:
    lock = make_lock(age=timedelta(hours=4))
    world.gh_claim(lock, 504)
    world.fake.add_github_job("acme/infra", 504, 5041, status="completed", conclusion="success",
                              started_at=created(lock) - timedelta(hours=1), completed_at=created(lock) - timedelta(minutes=30))
    detailed, d = world.decide(lock)
    assert detailed.fact.state is Liveness.UNKNOWN and "not this lock's holder" in detailed.fact.reason
    assert d.action is Action.KEEP and Flag.KEPT_UNKNOWN in d.flags


def test_unknown_past_hard_max_age_is_reaped_only_because_the_policy_says_so(world: World) -> None:
    lock = make_lock(age=timedelta(hours=25))  # default rule: hard_max_age 1d
    world.fake.fault("attempts", 500)
    world.gh_claim(lock, 505)
    detailed, d = world.decide(lock)
    assert detailed.fact.state is Liveness.UNKNOWN
    assert d.action is Action.REAP and any("policy allows reaping an unknown holder" in r for r in d.reasons)


@pytest.mark.parametrize("fault,words", [
    (dict(status=500), "HTTP 500"),
    (dict(status=502), "HTTP 502"),
    (dict(status=404), "HTTP 404"),
    (dict(status=403), "HTTP 403"),
    (dict(status=401), "HTTP 401"),
    (dict(status=200, body=b"{not json"), "malformed JSON"),
    (dict(status=200, delay=2.5, passthrough=True), "timed out"),
])
def test_api_failures_are_unknown_never_dead(world: World, fault: dict[str, Any], words: str) -> None:
    lock = make_lock()
    world.gh_claim(lock, 506)
    world.fake.add_github_job("acme/infra", 506, 5061, status="completed", conclusion="cancelled",
                              started_at=created(lock), completed_at=NOW - timedelta(hours=1))
    world.fake.fault("attempts", **fault)
    detailed, d = world.decide(lock)
    assert detailed.fact.state is Liveness.UNKNOWN, detailed.fact
    assert words in detailed.fact.reason
    assert d.action is Action.KEEP and Flag.KEPT_UNKNOWN in d.flags


@pytest.mark.parametrize("wrap,shape", [
    (lambda job: [job], "the response is a list of 1, expected an object"),  # the jobs themselves, unwrapped
    (lambda job: {"total_count": 1, "jobs": job}, "its 'jobs' is an object, expected a list"),
    (lambda job: {"total_count": 2, "jobs": [str(job["id"]), job]}, "item 0 of the list is a string, expected an object"),
])
def test_answers_of_another_shape_are_unknown_never_dead(world: World, wrap: Any, shape: str) -> None:
    lock = make_lock()
    world.gh_claim(lock, 507)
    job = world.fake.add_github_job("acme/infra", 507, 5071, status="completed", conclusion="cancelled",
                                    started_at=created(lock), completed_at=NOW - timedelta(hours=1))  # dead if read
    world.fake.fault("attempts", 200, body=json.dumps(wrap(job)).encode())
    detailed, d = world.decide(lock)
    assert detailed.fact.state is Liveness.UNKNOWN, detailed.fact
    url = f"{world.fake.github_api}/repos/acme/infra/actions/runs/507/attempts/1/jobs?per_page=100"
    assert f"unexpected response shape from {url}: {shape}" in detailed.fact.reason
    assert "AttributeError" not in detailed.fact.reason
    assert d.action is Action.KEEP and Flag.KEPT_UNKNOWN in d.flags


@pytest.mark.parametrize("claim_job,pattern,shape", [
    (True, r"/jobs/7002$", "the response is a list of 1, expected an object"),  # one job, as a list
    (False, r"/projects/42/jobs\?", "the response is an object, expected a list"),  # a jobs list, as an object
])
def test_gitlab_answers_of_another_shape_are_unknown(world: World, claim_job: bool, pattern: str, shape: str) -> None:
    # a claimed job is asked on its own; a runner hostname makes the project's live jobs asked
    lock = make_lock(who="root@somehost" if claim_job else "root@runner-abcd1234-project-42-concurrent-0")
    job = world.fake.add_gitlab_job(42, 7002, status="success", started_at=created(lock) - timedelta(minutes=1),
                                    finished_at=NOW - timedelta(hours=1))  # dead if read
    if claim_job:
        world.gl_claim(lock, 7002)
    world.fake.fault(pattern, 200, body=json.dumps([job] if claim_job else job).encode())
    detailed, d = world.decide(lock)
    checker = "claims" if claim_job else "gitlab-jobs"
    fact = answer(detailed, checker)
    assert fact.state is Liveness.UNKNOWN, fact
    said = " ".join([fact.reason, *(e.detail for e in fact.evidence)])  # the jobs checker words it in its evidence
    assert f"unexpected response shape from {world.fake.gitlab_api}/projects/42/jobs" in said
    assert shape in said and "AttributeError" not in said
    assert detailed.fact.state is Liveness.UNKNOWN and d.action is Action.KEEP


def test_rate_limited_is_unknown_and_stops_further_calls(world: World) -> None:
    locks = [make_lock(path=f"tfstate/a{i}.tfstate", who=f"runner@fv-az1-{i}") for i in range(3)]
    for i, lock in enumerate(locks):
        world.gh_claim(lock, 600 + i)
    world.fake.faults.append(rate_limited("attempts", retry_after=600))
    for lock in locks:
        detailed, d = world.decide(lock)
        assert detailed.fact.state is Liveness.UNKNOWN and d.action is Action.KEEP
    assert world.fake.count("attempts") == 1, "after a long Retry-After the provider is paused for the run"
    assert world.checker.stats()["skipped"] == {"github.attempt_jobs": 2}


def test_bad_token_is_unknown(aws, fake: FakeCI) -> None:
    w = World(fake, env={"TEST_GH_TOKEN": "wrong", "TEST_GL_TOKEN": GL_TOKEN})
    lock = make_lock()
    w.gh_claim(lock, 507)
    detailed, d = w.decide(lock)
    assert detailed.fact.state is Liveness.UNKNOWN and "401" in detailed.fact.reason and d.action is Action.KEEP


def test_missing_token_is_unknown(aws, fake: FakeCI) -> None:
    w = World(fake, env={})
    lock = make_lock()
    w.gh_claim(lock, 508)
    detailed, _ = w.decide(lock)
    assert detailed.fact.state is Liveness.UNKNOWN and "TEST_GH_TOKEN is not set" in detailed.fact.reason


def test_claim_with_job_id_asks_for_that_job(world: World) -> None:
    lock = make_lock()
    world.gh_claim(lock, 509, job_id=5092, runner_name=None)
    world.fake.add_github_job("acme/infra", 509, 5091, status="in_progress", started_at=created(lock))
    world.fake.add_github_job("acme/infra", 509, 5092, status="completed", conclusion="success",
                              started_at=created(lock), completed_at=NOW - timedelta(minutes=20))
    detailed, d = world.decide(lock)
    assert detailed.fact.state is Liveness.DEAD and d.action is Action.REAP
    assert world.fake.count(r"/actions/jobs/5092") == 1 and world.fake.count("attempts") == 0


def test_runner_name_picks_the_claiming_job(world: World) -> None:
    lock = make_lock()
    world.gh_claim(lock, 510, runner_name="GitHub Actions 7")
    world.fake.add_github_job("acme/infra", 510, 5101, status="completed", conclusion="cancelled", runner_name="GitHub Actions 7",
                              started_at=created(lock), completed_at=NOW - timedelta(minutes=15))
    world.fake.add_github_job("acme/infra", 510, 5102, status="in_progress", runner_name="GitHub Actions 8", started_at=created(lock))
    detailed, _ = world.decide(lock)
    assert detailed.fact.state is Liveness.DEAD and "5101" in detailed.fact.reason


def test_without_runner_match_any_active_job_of_the_run_keeps_it(world: World) -> None:
    lock = make_lock()
    world.gh_claim(lock, 511, runner_name="GitHub Actions 99")
    world.fake.add_github_job("acme/infra", 511, 5111, status="completed", conclusion="cancelled", runner_name="GitHub Actions 7",
                              started_at=created(lock), completed_at=NOW - timedelta(minutes=15))
    world.fake.add_github_job("acme/infra", 511, 5112, status="queued", runner_name=None, started_at=created(lock))
    detailed, d = world.decide(lock)
    assert detailed.fact.state is Liveness.ALIVE and d.action is Action.KEEP


def test_claim_is_joined_by_who_and_time(world: World) -> None:
    lock = make_lock()
    # an older claim (a run that finished long ago) and the right one; and a newer claim made AFTER the lock
    world.claim(HOSTED, created(lock) - timedelta(days=1), provider="github", api_url=world.fake.github_api,
                repo="acme/infra", run_id=1, run_attempt=1)
    world.gh_claim(lock, 512)
    world.claim(HOSTED, created(lock) + timedelta(minutes=5), provider="github", api_url=world.fake.github_api,
                repo="acme/infra", run_id=3, run_attempt=1)
    world.claim("runner@fv-az999-1", created(lock) - timedelta(seconds=5), provider="github", api_url=world.fake.github_api,
                repo="acme/infra", run_id=4, run_attempt=1)
    world.fake.add_github_job("acme/infra", 512, 5121, status="in_progress", started_at=created(lock))
    detailed, _ = world.decide(lock)
    assert detailed.fact.state is Liveness.ALIVE
    assert world.fake.count(r"/runs/512/") == 1 and world.fake.count(r"/runs/(1|3|4)/") == 0


def test_no_claim_is_unknown(world: World) -> None:
    detailed, d = world.decide(make_lock())
    assert detailed.fact.state is Liveness.UNKNOWN and "no claim" in answer(detailed, "claims").reason
    assert d.action is Action.KEEP


def test_claim_for_an_unconfigured_github_is_unknown(world: World) -> None:
    lock = make_lock()
    world.claim(HOSTED, created(lock) - timedelta(seconds=5), provider="github", api_url="https://ghe.other.example/api/v3",
                repo="acme/infra", run_id=9, run_attempt=1)
    detailed, _ = world.decide(lock)
    assert detailed.fact.state is Liveness.UNKNOWN and "no configured provider" in detailed.fact.reason
    assert len(world.fake.requests) == 0


# ====================================================================== claims: GitLab
@pytest.mark.parametrize("status,finished_ago,state", [
    ("running", None, Liveness.ALIVE),
    ("canceling", None, Liveness.ALIVE),  # after_script still runs
    ("pending", None, Liveness.ALIVE),
    ("success", timedelta(minutes=10), Liveness.DEAD),
    ("canceled", timedelta(minutes=10), Liveness.DEAD),
    ("failed", timedelta(minutes=1), Liveness.ALIVE),  # grace
])
def test_gitlab_claim(world: World, status: str, finished_ago: timedelta | None, state: Liveness) -> None:
    lock = make_lock(who="root@runner-abcd1234-project-42-concurrent-0")
    world.fake.add_gitlab_job(42, 7001, status=status, started_at=created(lock) - timedelta(minutes=1),
                              finished_at=NOW - finished_ago if finished_ago else None)
    world.gl_claim(lock, 7001)
    detailed, d = world.decide(lock)
    assert answer(detailed, "claims").state is state
    assert f"{world.fake.web}/group/project-42/-/jobs/7001" in [e.url for e in detailed.fact.evidence]


def test_gitlab_claim_404_is_unknown(world: World) -> None:
    lock = make_lock(who="root@somehost")
    world.gl_claim(lock, 999, project_id=5)
    detailed, d = world.decide(lock)
    assert detailed.fact.state is Liveness.UNKNOWN and "404" in detailed.fact.reason and d.action is Action.KEEP


# ====================================================================== GitHub self-hosted runners
@pytest.mark.parametrize("runner,state,words", [
    (dict(status="online", busy=True), Liveness.ALIVE, "busy"),
    (dict(status="online", busy=False), Liveness.DEAD, "online and idle"),
    (dict(status="offline", busy=False), Liveness.UNKNOWN, "no proof"),
    (None, Liveness.DEAD, "gone"),
])
def test_self_hosted_runner(world: World, runner: dict[str, Any] | None, state: Liveness, words: str) -> None:
    world.fake.add_github_runner("org:acme", "gh-runner-other", busy=True)
    if runner is not None:
        world.fake.add_github_runner("org:acme", "gh-runner-7", **runner)
    detailed, d = world.decide(make_lock(who="ci@gh-runner-7"))
    fact = answer(detailed, "github-runners")
    assert fact.state is state and words in fact.reason
    assert any(e.url == f"{world.fake.web}/organizations/acme/settings/actions/runners" for e in fact.evidence)
    assert d.action is (Action.REAP if state is Liveness.DEAD else Action.KEEP)


def test_runner_check_is_not_applicable_to_other_hosts(world: World) -> None:
    detailed, _ = world.decide(make_lock(who="alice@alice-laptop"))
    assert "github-runners" in detailed.skipped and world.fake.count("runners") == 0


def test_runner_list_error_is_unknown(world: World) -> None:
    world.fake.fault("runners", 403)
    detailed, d = world.decide(make_lock(who="ci@gh-runner-7"))
    assert answer(detailed, "github-runners").state is Liveness.UNKNOWN and d.action is Action.KEEP


def test_runner_fqdn_matches_short_runner_name(world: World) -> None:
    world.fake.add_github_runner("org:acme", "gh-runner-9", busy=True)
    detailed, _ = world.decide(make_lock(who="ci@gh-runner-9.ci.internal"))
    assert answer(detailed, "github-runners").state is Liveness.ALIVE


def test_one_runners_list_per_org_per_run(world: World) -> None:
    for i in range(5):
        world.fake.add_github_runner("org:acme", f"gh-runner-{i}", busy=i % 2 == 0)
    states = [answer(world.decide(make_lock(path=f"tfstate/s{i}.tfstate", who=f"ci@gh-runner-{i}"))[0], "github-runners").state
              for i in range(5)]
    assert states == [Liveness.ALIVE, Liveness.DEAD, Liveness.ALIVE, Liveness.DEAD, Liveness.ALIVE]
    assert world.fake.count("/orgs/acme/actions/runners") == 1
    assert world.checker.stats()["memo_hits"]["github.runners.org"] == 4


# ====================================================================== GitHub repo mapping
MAPPED = "tfstate/mapped/app.tfstate"


@pytest.mark.parametrize("runs,state", [
    ([("in_progress", -timedelta(minutes=10))], Liveness.ALIVE),   # started before the lock
    ([("queued", -timedelta(minutes=1))], Liveness.ALIVE),
    ([("waiting", -timedelta(minutes=30))], Liveness.ALIVE),
    # started after the lock: not its holder by the clocks, but the holder's clock may lag beyond clock_skew
    ([("in_progress", timedelta(minutes=30))], Liveness.UNKNOWN),
    ([("completed", -timedelta(minutes=30))], Liveness.DEAD),
    ([], Liveness.DEAD),
])
def test_repo_mapping(world: World, runs: list[tuple[str, timedelta]], state: Liveness) -> None:
    lock = make_lock(path=MAPPED)
    for i, (status, offset) in enumerate(runs):
        world.fake.add_github_run("acme/mapped", 800 + i, status=status, started_at=created(lock) + offset,
                                  conclusion="success" if status == "completed" else None)
    world.fake.gl_jobs[77] = []  # the GitLab side of the mapping has no live job
    detailed, d = world.decide(lock)
    fact = answer(detailed, "github-repos")
    assert fact.state is state
    if state is Liveness.DEAD:
        assert "acme/mapped" in fact.reason and d.action is Action.REAP
        # in_progress, queued, waiting; then, before calling it dead, the recently completed runs (one list)
        assert world.fake.count(r"/repos/acme/mapped/actions/runs\?status=(in_progress|queued|waiting)&") == 3
        assert world.fake.count(r"/repos/acme/mapped/actions/runs\?status=completed&created=") == 1
    else:
        assert d.action is Action.KEEP


def test_repo_mapping_error_is_unknown(world: World) -> None:
    world.fake.fault(r"acme/mapped/actions/runs\?status=queued", 500)
    world.fake.gl_jobs[77] = []
    detailed, d = world.decide(make_lock(path=MAPPED))
    assert answer(detailed, "github-repos").state is Liveness.UNKNOWN
    # GitLab mapping says dead, GitHub can't say: dead needs only one positive proof and no alive
    assert answer(detailed, "gitlab-jobs").state is Liveness.DEAD


def test_repo_mapping_who_filter(world: World) -> None:
    detailed, _ = world.decide(make_lock(path=MAPPED, who="alice@laptop"))
    assert "github-repos" in detailed.skipped and world.fake.count("mapped") == 0


# ====================================================================== GitLab project from hostname / mapping
GL_HOST = "root@runner-t3stt0k3n-project-42-concurrent-1-x7k2p"  # Kubernetes executor suffix


@pytest.mark.parametrize("jobs,state", [
    ([("running", -timedelta(minutes=5), None)], Liveness.ALIVE),
    ([("pending", None, None)], Liveness.ALIVE),
    ([("canceling", -timedelta(minutes=5), None)], Liveness.ALIVE),
    ([("running", timedelta(minutes=20), None)], Liveness.UNKNOWN),  # started after the lock: the holder's clock may lag
    ([("success", -timedelta(minutes=20), timedelta(minutes=30))], Liveness.DEAD),  # finished 30m ago, past the grace
    ([("success", -timedelta(minutes=20), timedelta(minutes=1))], Liveness.UNKNOWN),  # 1m ago: within the 5m grace
    ([], Liveness.DEAD),
])
def test_gitlab_project_from_runner_hostname(world: World, jobs: list[tuple[str, timedelta | None, timedelta | None]],
                                             state: Liveness) -> None:
    lock = make_lock(who=GL_HOST)
    world.fake.gl_jobs[42] = []
    for i, (status, offset, ago) in enumerate(jobs):
        world.fake.add_gitlab_job(42, 900 + i, status=status, started_at=created(lock) + offset if offset is not None else None,
                                  finished_at=NOW - ago if ago is not None else None)
    detailed, d = world.decide(lock)
    fact = answer(detailed, "gitlab-jobs")
    assert fact.state is state and "project 42" in fact.reason
    assert d.action is (Action.REAP if state is Liveness.DEAD else Action.KEEP)


def test_gitlab_project_error_is_unknown(world: World) -> None:
    world.fake.fault(r"/projects/42/jobs", 500)
    detailed, d = world.decide(make_lock(who=GL_HOST))
    assert answer(detailed, "gitlab-jobs").state is Liveness.UNKNOWN and d.action is Action.KEEP


def test_gitlab_one_jobs_list_per_project(world: World) -> None:
    world.fake.gl_jobs[42] = []
    for i in range(4):
        world.decide(make_lock(path=f"tfstate/g{i}.tfstate", who=f"root@runner-abc-project-42-concurrent-{i}"))
    # one live-jobs list, and (no live job: before calling them dead) one finished-jobs list
    assert world.fake.count(r"/projects/42/jobs\?scope%5B%5D=running") == 1
    assert world.fake.count(r"/projects/42/jobs\?scope%5B%5D=success") == 1
    assert world.checker.stats()["memo_hits"]["gitlab.finished_jobs"] == 3


def test_gitlab_pages_through_many_live_jobs(world: World) -> None:
    lock = make_lock(who=GL_HOST)
    # newest first: 129 jobs that started after the lock fill page 1; the holder (the oldest id) is on page 2
    world.fake.add_gitlab_job(42, 3000, status="running", started_at=created(lock) - timedelta(minutes=1))
    for i in range(1, 130):
        world.fake.add_gitlab_job(42, 3000 + i, status="running", started_at=created(lock) + timedelta(minutes=10))
    detailed, _ = world.decide(lock)
    fact = answer(detailed, "gitlab-jobs")
    assert fact.state is Liveness.ALIVE and "job 3000" in fact.reason, fact.reason
    assert world.fake.count(r"/projects/42/jobs\?scope%5B%5D=running") == 2


def test_gitlab_hostname_is_ignored_for_other_hosts(world: World) -> None:
    detailed, _ = world.decide(make_lock(who="root@buildkite-agent-1"))
    assert "gitlab-jobs" in detailed.skipped


# ====================================================================== composite
class Fixed:
    def __init__(self, name: str, state: Liveness | None, boom: bool = False, applies: bool = True):
        self.name, self.state, self.boom, self._applies = name, state, boom, applies
        self.asked = 0

    def applies(self, lock: LockRecord) -> bool:
        return self._applies

    def check(self, lock: LockRecord, now: datetime):
        self.asked += 1
        if self.boom:
            raise RuntimeError("checker bug")
        if self.state is None:
            return None
        from reaper.liveness.facts import fact

        return fact(self.state, self.name, f"{self.name} says {self.state.value}")


@pytest.mark.parametrize("states,expected", [
    ([Liveness.DEAD, Liveness.ALIVE], Liveness.ALIVE),
    ([Liveness.ALIVE, Liveness.UNKNOWN, Liveness.DEAD], Liveness.ALIVE),
    ([Liveness.DEAD, Liveness.UNKNOWN], Liveness.DEAD),
    ([Liveness.UNKNOWN, Liveness.UNKNOWN], Liveness.UNKNOWN),
    ([None, None], Liveness.UNKNOWN),
    ([], Liveness.UNKNOWN),
])
def test_composite_combination(states: list[Liveness | None], expected: Liveness) -> None:
    checkers = [Fixed(f"c{i}", s) for i, s in enumerate(states)]
    fact = CompositeChecker(checkers).check(make_lock(), NOW)
    assert fact.state is expected
    assert fact.checkers == tuple(c.name for c in checkers if c.state is not None)


def test_composite_checker_exception_is_unknown_not_dead() -> None:
    comp = CompositeChecker([Fixed("boom", None, boom=True), Fixed("other", Liveness.UNKNOWN)])
    detailed = comp.check_detailed(make_lock(), NOW)
    assert detailed.fact.state is Liveness.UNKNOWN
    assert "checker failed: RuntimeError" in detailed.fact.reason and "checker bug" not in detailed.fact.reason


def test_composite_is_extensible_for_other_stores() -> None:
    class HcpChecker:
        name = "hcp-run"

        def applies(self, lock: LockRecord) -> bool:
            return lock.store.startswith("hcp:")

        def check(self, lock: LockRecord, now: datetime):
            return alive_fact(self.name, "run is applying")

    comp = CompositeChecker([Fixed("claims", Liveness.UNKNOWN)])
    comp.register(HcpChecker())
    hcp = comp.check_detailed(make_lock(store="hcp:acme/prod"), NOW)
    assert hcp.fact.state is Liveness.ALIVE and hcp.fact.checkers == ("claims", "hcp-run")
    other = comp.check_detailed(make_lock(), NOW)
    assert other.fact.state is Liveness.UNKNOWN and other.skipped == ["hcp-run"]


# ====================================================================== API down means keep
def test_api_down_means_keep(aws) -> None:
    fake = FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN).start()
    w = World(fake)
    locks = [make_lock(path=f"tfstate/d{i}.tfstate", who=w_) for i, w_ in
             enumerate([HOSTED, "ci@gh-runner-1", GL_HOST, "runner@fv-az9-9"])]
    w.gh_claim(locks[0], 700)
    w.gl_claim(locks[3], 701)
    fake.stop()  # GitHub and GitLab are down: connection refused
    for lock in locks:
        detailed, d = w.decide(lock)
        assert detailed.fact.state is Liveness.UNKNOWN, detailed.fact
        assert d.action is Action.KEEP and Flag.KEPT_UNKNOWN in d.flags
        assert any("unknown means keep" in r for r in d.reasons)


# ====================================================================== state activity (S3 HeadObject)
@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="tfstate")
    return client


def test_state_written_after_the_lock_and_recently_is_alive(s3) -> None:
    s3.put_object(Bucket="tfstate", Key="prod/network.tfstate", Body=b"{}")
    now = datetime.now(timezone.utc) + timedelta(seconds=30)
    lock = make_lock(age=timedelta(hours=3), now=now)
    fact = StateActivityChecker(s3, timedelta(minutes=10)).check(lock, now)
    assert fact is not None and fact.state is Liveness.ALIVE
    assert fact.evidence[0].url == "s3://tfstate/prod/network.tfstate"


@pytest.mark.parametrize("later,age,why", [
    (timedelta(minutes=20), timedelta(hours=3), "outside the window"),   # quiet for 20 minutes
    (timedelta(seconds=30), timedelta(seconds=1), "before the lock"),     # lock taken after the last write
])
def test_quiet_state_proves_nothing(s3, later: timedelta, age: timedelta, why: str) -> None:
    s3.put_object(Bucket="tfstate", Key="prod/network.tfstate", Body=b"{}")
    now = datetime.now(timezone.utc) + later
    lock = make_lock(age=age, now=now + timedelta(seconds=2) if age.total_seconds() < 60 else now)
    fact = StateActivityChecker(s3, timedelta(minutes=10)).check(lock, now)
    assert fact is not None and fact.state is Liveness.UNKNOWN and why in fact.reason


def test_missing_state_object_proves_nothing(s3) -> None:
    fact = StateActivityChecker(s3).check(make_lock(), NOW)
    assert fact is not None and fact.state is Liveness.UNKNOWN and "proves nothing" in fact.reason


def test_state_activity_applies_only_to_s3_backed_locks(s3) -> None:
    checker = StateActivityChecker(s3)
    assert checker.applies(make_lock(store="s3:tfstate")) and checker.applies(make_lock())
    assert not checker.applies(make_lock(store="hcp:acme/prod"))
    assert checker.check(make_lock(store="hcp:acme/prod"), NOW) is None


def test_gitlab_project_by_full_path(world: World) -> None:
    from reaper.liveness.gitlab import GitLabApi

    world.fake.add_gitlab_job(77, 1, status="running", started_at=NOW - timedelta(hours=5))
    gl = next(iter(world.checker.checkers[-1].apis.values()))[0]
    assert isinstance(gl, GitLabApi)
    jobs, complete = gl.live_jobs("group/project-77")
    assert complete and [j["id"] for j in jobs] == [1]
    assert world.fake.count(r"/projects/group%2Fproject-77/jobs\?scope%5B%5D=running&scope%5B%5D=pending&scope%5B%5D=canceling") == 1
