"""Adversarial safety review: paths by which a live holder could have been called DEAD.

The product's promise is that it never deletes a live lock and that unknown
means keep. The tests below reproduce the ways the evidence could prove "dead"
when it should only have said "unknown" (or "alive"); each numbered problem has
tests that failed before its fix (positive controls, e.g. a job killed after
taking the lock is still dead, sit next to them):

1. a claim whose job ended shortly BEFORE the lock was created (a reused
   self-hosted runner or GitLab docker hostname) was taken for the holder,
   because the clock-skew allowance widened the holder window;
2. a truncated job list (page limit) could "prove" the claimed runner's jobs over;
3. a runner listed twice (short and full hostname) was judged on the first only;
4. a runner idle in one scope proved death although another scope could not be
   read, or showed it offline;
5. the runner check applied to holders that are not a Terraform ``user@host``
   (HCP Terraform users, GitLab usernames) or have no host, so "no runner named
   'user alice'" proved death;
6. CI repo/project mappings overrode HCP Terraform's own evidence: a manual
   user lock was reaped at max_age instead of being governed by hard_max_age;
7. a policy could drop ``in_progress`` (GitHub) or ``running`` (GitLab) from the
   statuses a mapping asks about, so a running job proved nothing and "no live
   run" proved death;
8. a list with no next page but fewer items than the API counted (a lost ``Link``
   header, GitHub's result cap) was taken as complete, so a missing runner or job
   proved death;
9. (not a delete path) ``explain`` did not ask HCP Terraform, unlike a run;
10. repo/project mappings (and the GitLab project named by a runner hostname)
    applied no grace period: they looked only at active runs/jobs, so a run
    cancelled a minute ago, its runner still stopping Terraform, already proved
    "no active run". They now read the recently finished runs/jobs too.

Also pinned: a list cut short by the call budget proves nothing (safe already).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
import yaml

from devtools.fake_ci import FakeCI
from devtools.locks import create_claims_table, info_json
from reaper.policy import ConfigError, parse_policy
from reaper.decision import decide
from reaper.wiring import build_liveness
from reaper.liveness.claims import Claim, ClaimStore
from reaper.liveness.composite import CompositeChecker
from reaper.http.client import EtagCache
from reaper.models import Action, Liveness, LockInfo, LockRecord

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
GH_TOKEN = "ghp_safetyReviewToken00000000000000000000"
GL_TOKEN = "glpat-safetyReviewToken0"
PATH = "tfstate/prod/app.tfstate"


def make_policy(fake: FakeCI, *, runners: list[dict[str, Any]] | None = None, mapping: dict[str, Any] | None = None,
                max_pages: int = 10, stores: list[dict[str, Any]] | None = None) -> Any:
    rule: dict[str, Any] = {"name": "all", "match": "*", "max_age": "2h", "hard_max_age": "2d"}
    if mapping:
        rule["liveness"] = mapping
    doc = {
        "mode": "report",
        "rules": [rule],
        **({"stores": stores} if stores else {}),
        "liveness": {
            "grace": "5m",
            "claims": {"table": "claims"},
            "providers": [
                {"type": "github", "api_url": fake.github_api, "token_env": "TEST_GH_TOKEN", "runners": runners or []},
                {"type": "gitlab", "api_url": fake.gitlab_api, "token_env": "TEST_GL_TOKEN",
                 "runner_hosts": ["runner-*-project-*-concurrent-*"]},
            ],
            "state_activity": {"enabled": False},
            "http": {"timeout": "1s", "max_retry_wait": "1s", "max_pages": max_pages},
        },
    }
    return parse_policy(yaml.safe_dump(doc))


def make_checker(policy: Any) -> CompositeChecker:
    return build_liveness(policy, lambda service, region=None: boto3.client(service, region_name=region or "us-east-1"),
                          env={"TEST_GH_TOKEN": GH_TOKEN, "TEST_GL_TOKEN": GL_TOKEN}, etags=EtagCache(),
                          sleep=lambda s: None)


def tf_lock(who: str, age: timedelta = timedelta(hours=4), path: str = PATH) -> LockRecord:
    raw = info_json(path, age, NOW, who=who)
    return LockRecord(store="dynamodb:locks", key=path, lock_path=path, token=raw, raw={"LockID": {"S": path}},
                      info=LockInfo.parse(raw))


def api_lock(store: str, who: str, key: str, lock_path: str, token: str, age: timedelta) -> LockRecord:
    """A lock as the HCP Terraform / GitLab state stores describe it (their Who is not user@host)."""
    info = LockInfo.model_validate({"ID": token.split(":")[-1], "Operation": "", "Info": "", "Who": who, "Version": "",
                                    "Created": (NOW - age).strftime("%Y-%m-%dT%H:%M:%SZ"), "Path": lock_path})
    return LockRecord(store=store, key=key, lock_path=lock_path, token=token, raw={}, info=info)


def created(lock: LockRecord) -> datetime:
    assert lock.info is not None
    return lock.info.Created


def answers(detailed: Any) -> dict[str, Liveness]:
    return {a.checker: a.fact.state for a in detailed.answers}


def final(policy: Any, lock: LockRecord, checker: CompositeChecker) -> tuple[Any, Any]:
    first = decide(lock, policy, NOW)
    assert first.needs_liveness, first.reasons
    detailed = checker.check_detailed(lock, NOW)
    return detailed, decide(lock, policy, NOW, detailed.fact)


@pytest.fixture
def fake():
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN) as f:
        yield f


@pytest.fixture
def claims(aws):
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_claims_table(ddb, "claims")
    store = ClaimStore(ddb, "claims")

    def put(who: str, at: datetime, **kw: Any) -> Claim:
        c = Claim(who=who, claimed_at=at, **kw)
        store.put(c)
        return c

    return put


# ---------------------------------------------------------------- 1. the claim's job ended before the lock
@pytest.mark.parametrize("ended,state", [
    (-timedelta(minutes=2), Liveness.UNKNOWN),   # the runner picked up the next job (no claim) 2 minutes later
    (-timedelta(seconds=1), Liveness.UNKNOWN),
    (timedelta(minutes=2), Liveness.UNKNOWN),    # within the 5m clock_skew after Created: not provably the holder
    (timedelta(minutes=15), Liveness.DEAD),      # killed 15 minutes into its own lock: still proven dead
])
def test_a_job_that_ended_before_the_lock_was_created_is_never_its_proven_holder(
        fake: FakeCI, claims: Any, ended: timedelta, state: Liveness) -> None:
    policy = make_policy(fake)
    lock = tf_lock("runner@ci-01")  # a self-hosted runner: the hostname is reused by every job it runs
    c = created(lock)
    claims("runner@ci-01", c - timedelta(minutes=20), provider="github", api_url=fake.github_api, repo="acme/infra",
           run_id=900, run_attempt=1, job_id=9001)
    fake.add_github_job("acme/infra", 900, 9001, status="completed", conclusion="success", runner_name="ci-01",
                        started_at=c - timedelta(minutes=20), completed_at=c + ended)
    detailed, d = final(policy, lock, make_checker(policy))
    assert detailed.fact.state is state, detailed.fact.reason
    if state is Liveness.UNKNOWN:
        assert "not this lock's holder" in detailed.fact.reason or "not provably this lock's holder" in detailed.fact.reason
        assert d.action is Action.KEEP
    else:
        assert d.action is Action.REAP


def test_a_rerun_whose_claim_names_attempt_1_is_not_judged_by_attempt_1(fake: FakeCI, claims: Any) -> None:
    # attempt 1 failed; "Re-run" a minute later; attempt 2 lands on the same self-hosted runner and takes the lock,
    # but its claim was not written (the claim step failed, or an older claim without RunAttempt is the latest)
    policy = make_policy(fake)
    lock = tf_lock("runner@ci-02")
    c = created(lock)
    claims("runner@ci-02", c - timedelta(minutes=10), provider="github", api_url=fake.github_api, repo="acme/infra",
           run_id=920, run_attempt=None, runner_name="ci-02")
    fake.add_github_job("acme/infra", 920, 9201, status="completed", conclusion="failure", runner_name="ci-02",
                        started_at=c - timedelta(minutes=10), completed_at=c - timedelta(minutes=3))
    fake.add_github_job("acme/infra", 920, 9202, status="in_progress", runner_name="ci-02", attempt=2,
                        started_at=c - timedelta(minutes=1))
    detailed, d = final(policy, lock, make_checker(policy))
    assert detailed.fact.state is Liveness.UNKNOWN, detailed.fact.reason
    assert d.action is Action.KEEP


def test_gitlab_job_of_the_same_docker_hostname_that_ended_before_the_lock_is_not_its_holder(
        fake: FakeCI, claims: Any) -> None:
    # runner-<token>-project-42-concurrent-0 is the hostname of EVERY job of project 42 in slot 0
    policy = make_policy(fake)
    who = "root@runner-abcd1234-project-42-concurrent-0"
    lock = tf_lock(who)
    c = created(lock)
    claims(who, c - timedelta(minutes=6), provider="gitlab", api_url=fake.gitlab_api, project_id=42, run_id=7, job_id=7100)
    fake.add_gitlab_job(42, 7100, status="success", started_at=c - timedelta(minutes=6),
                        finished_at=c - timedelta(minutes=3))
    fake.add_gitlab_job(42, 7101, status="running", started_at=c - timedelta(minutes=2))  # the real holder, no claim
    detailed = make_checker(policy).check_detailed(lock, NOW)
    # the project's live jobs keep it alive; the stale claim alone must not say dead either
    assert answers(detailed) == {"claims": Liveness.UNKNOWN, "gitlab-jobs": Liveness.ALIVE}, \
        [a.fact.reason for a in detailed.answers]


# ---------------------------------------------------------------- 2. a truncated job list
def test_a_truncated_job_list_never_proves_the_claimed_runner_s_jobs_over(aws, claims: Any) -> None:
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN, per_page_max=1) as fake:
        policy = make_policy(fake, max_pages=1)
        lock = tf_lock("runner@fv-az100-1")
        c = created(lock)
        claims("runner@fv-az100-1", c - timedelta(seconds=40), provider="github", api_url=fake.github_api,
               repo="acme/infra", run_id=910, run_attempt=1, runner_name="GitHub Actions 2")
        # page 1: an earlier matrix leg on a runner of the same name, over; page 2 (never read): the claimer, running
        fake.add_github_job("acme/infra", 910, 9101, status="completed", conclusion="success", runner_name="GitHub Actions 2",
                            started_at=c - timedelta(minutes=5), completed_at=NOW - timedelta(minutes=30))
        fake.add_github_job("acme/infra", 910, 9102, status="in_progress", runner_name="GitHub Actions 2",
                            started_at=c - timedelta(minutes=1))
        detailed, d = final(policy, lock, make_checker(policy))
        assert detailed.fact.state is Liveness.UNKNOWN, detailed.fact.reason
        assert "page limit" in detailed.fact.reason and d.action is Action.KEEP


def test_a_page_whose_link_was_lost_never_proves_a_runner_gone(fake: FakeCI, aws) -> None:
    # a proxy in front of a GitHub Enterprise Server dropped the Link header (or GitHub capped the results):
    # the body still says there are 2 runners, only 1 came back; the missing one is the lock's, busy
    policy = make_policy(fake, runners=[{"org": "acme", "hosts": ["ci-*"]}])
    other = {"id": 1, "name": "ci-other", "os": "linux", "status": "online", "busy": False, "labels": []}
    fake.fault(r"/orgs/acme/actions/runners", 200, body=json.dumps({"total_count": 2, "runners": [other]}).encode())
    detailed, d = final(policy, tf_lock("runner@ci-09"), make_checker(policy))
    assert answers(detailed)["github-runners"] is Liveness.UNKNOWN, detailed.fact.reason
    assert d.action is Action.KEEP


def test_a_gitlab_list_shorter_than_its_x_total_never_proves_no_live_job(fake: FakeCI, aws) -> None:
    policy = make_policy(fake)
    lock = tf_lock("root@runner-abcd1234-project-43-concurrent-0")
    fake.fault(r"/projects/43/jobs\?", 200, body=b"[]", headers={"X-Total": "1", "X-Total-Pages": "1"})
    detailed, d = final(policy, lock, make_checker(policy))
    assert answers(detailed)["gitlab-jobs"] is Liveness.UNKNOWN, detailed.fact.reason
    assert d.action is Action.KEEP


def test_a_list_cut_short_by_the_call_budget_never_proves_a_runner_gone(aws) -> None:
    # judged safe already (the budget raises rather than returning a partial list); pinned here
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN, per_page_max=1) as fake:
        policy = make_policy(fake, runners=[{"org": "acme", "hosts": ["ci-*"]}])
        policy = policy.model_copy(update={"liveness": policy.liveness.model_copy(update={
            "http": policy.liveness.http.model_copy(update={"max_calls_per_run": 1})})})
        fake.add_github_runner("org:acme", "ci-other", status="online", busy=False)  # page 1: the one call allowed
        fake.add_github_runner("org:acme", "ci-10", status="online", busy=True)  # page 2: never read
        detailed, d = final(policy, tf_lock("runner@ci-10"), make_checker(policy))
        assert answers(detailed)["github-runners"] is Liveness.UNKNOWN, detailed.fact.reason
        assert "budget" in " ".join(e.detail for e in detailed.fact.evidence) and d.action is Action.KEEP


# ---------------------------------------------------------------- 3. + 4. self-hosted runners
def test_a_runner_listed_twice_is_judged_on_every_entry(fake: FakeCI, aws) -> None:
    policy = make_policy(fake, runners=[{"org": "acme", "hosts": ["ci-*"]}])
    fake.add_github_runner("org:acme", "ci-07", status="online", busy=False)  # the short hostname: idle
    fake.add_github_runner("org:acme", "ci-07.build.internal", status="online", busy=True)  # the full one: busy
    detailed, d = final(policy, tf_lock("runner@ci-07.build.internal"), make_checker(policy))
    assert answers(detailed)["github-runners"] is Liveness.ALIVE, detailed.fact.reason
    assert d.action is Action.KEEP


@pytest.mark.parametrize("second", ["error", "offline", "truncated"])
def test_idle_in_one_scope_proves_nothing_while_another_scope_is_unknown(aws, second: str) -> None:
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN, per_page_max=1) as fake:
        scopes = [{"org": "acme", "hosts": ["ci-*"]}, {"repo": "acme/infra", "hosts": ["ci-*"]}]
        policy = make_policy(fake, runners=scopes, max_pages=1)
        fake.add_github_runner("org:acme", "ci-08", status="online", busy=False)
        if second == "error":
            fake.fault(r"/repos/acme/infra/actions/runners", 500)
        elif second == "offline":
            fake.add_github_runner("repo:acme/infra", "ci-08", status="offline", busy=False)
        else:  # the repo's list is longer than the page limit: ci-08 (busy) is on page 2
            fake.add_github_runner("repo:acme/infra", "ci-other", status="online", busy=False)
            fake.add_github_runner("repo:acme/infra", "ci-08", status="online", busy=True)
        detailed, d = final(policy, tf_lock("runner@ci-08"), make_checker(policy))
        assert answers(detailed)["github-runners"] is Liveness.UNKNOWN, detailed.fact.reason
        assert d.action is Action.KEEP


# ---------------------------------------------------------------- 5. holders that are not user@host
@pytest.mark.parametrize("lock", [
    api_lock("hcp:app.terraform.io", "user alice", "ws-1", "acme/prod-network", "users:user-abc", timedelta(hours=3)),
    api_lock("gitlab:gitlab.example.com", "alice", "group/infra/prod", "group/infra/prod", "lock-1", timedelta(hours=3)),
    tf_lock("runner@"),  # os.Hostname() failed: Terraform writes an empty host
], ids=["hcp-user", "gitlab-username", "empty-host"])
def test_runner_check_needs_a_terraform_user_at_host(fake: FakeCI, aws, lock: LockRecord) -> None:
    policy = make_policy(fake, runners=[{"org": "acme", "hosts": ["*"]}])  # "every host is one of our runners"
    fake.add_github_runner("org:acme", "ci-01", status="online", busy=True)
    detailed, d = final(policy, lock, make_checker(policy))
    assert "github-runners" in detailed.skipped, [a.fact.reason for a in detailed.answers]
    assert detailed.fact.state is not Liveness.DEAD and d.action is Action.KEEP


# ---------------------------------------------------------------- 6. CI mappings and HCP Terraform locks
@pytest.mark.parametrize("mapping", [
    {"github_repos": ["acme/infra"]},
    {"gitlab_projects": [77]},
], ids=["github-repos", "gitlab-projects"])
def test_ci_mappings_do_not_judge_hcp_terraform_locks(fake: FakeCI, aws, mapping: dict[str, Any]) -> None:
    # a manual lock by a user: HCP Terraform knows no run for it, so hard_max_age (2d) governs, not max_age (2h)
    # the wiring tells the checkers which stores judge their own locks (traits.own_evidence): the HCP store
    policy = make_policy(fake, mapping=mapping, stores=[{"type": "hcp", "organizations": ["acme"], "token_env": "HCP_TOKEN"}])
    fake.gl_jobs[77] = []  # no live job in the mapped project, no run in the mapped repo
    lock = api_lock("hcp:app.terraform.io", "user alice", "ws-1", "acme/prod-network", "users:user-abc", timedelta(hours=3))
    detailed, d = final(policy, lock, make_checker(policy))
    assert {"github-repos", "gitlab-jobs"} & set(detailed.skipped), [a.fact.reason for a in detailed.answers]
    assert detailed.fact.state is Liveness.UNKNOWN and d.action is Action.KEEP


def test_ci_mappings_still_judge_terraform_locks(fake: FakeCI, aws) -> None:
    policy = make_policy(fake, mapping={"github_repos": ["acme/infra"]})
    detailed, d = final(policy, tf_lock("runner@fv-az100-2"), make_checker(policy))
    assert answers(detailed)["github-repos"] is Liveness.DEAD and d.action is Action.REAP


def test_repo_mapping_keeps_a_run_that_completed_within_the_grace_period(fake: FakeCI, aws) -> None:
    policy = make_policy(fake, mapping={"github_repos": ["acme/infra"]})
    lock = tf_lock("runner@fv-az100-3")
    # cancelled a minute ago: the runner may still be sending SIGINT/SIGTERM to terraform (the 5m grace)
    fake.add_github_run("acme/infra", 930, status="completed", conclusion="cancelled",
                        started_at=created(lock) - timedelta(minutes=2), updated_at=NOW - timedelta(minutes=1))
    detailed, d = final(policy, lock, make_checker(policy))
    assert answers(detailed)["github-repos"] is not Liveness.DEAD and d.action is Action.KEEP
    fact = next(a.fact for a in detailed.answers if a.checker == "github-repos")
    assert fact.state is Liveness.UNKNOWN and "run 930" in fact.reason and "within the 5m grace" in fact.reason
    assert any(e.url == f"{fake.web}/acme/infra/actions/runs/930" for e in fact.evidence)
    # one list of the completed runs created since midnight UTC of NOW - 7d (max_run_duration) - 5m (grace)
    assert fake.count(r"/repos/acme/infra/actions/runs\?status=completed&created=%3E%3D2026-11-15T00%3A00%3A00Z&") == 1


# ---------------------------------------------------------------- 10. the grace period for mappings
GL_RUNNER = "root@runner-abcd1234-project-44-concurrent-0"


def gitlab_case(fake: FakeCI, how: str) -> tuple[Any, LockRecord]:
    """A GitLab-held lock judged by project 44: named by its runner hostname, or by a rule's mapping."""
    if how == "hostname":
        return make_policy(fake), tf_lock(GL_RUNNER)
    return make_policy(fake, mapping={"gitlab_projects": [44]}), tf_lock("runner@gl-shell-runner-1")


@pytest.mark.parametrize("how", ["hostname", "mapping"])
def test_project_evidence_keeps_a_job_that_finished_within_the_grace_period(fake: FakeCI, aws, how: str) -> None:
    policy, lock = gitlab_case(fake, how)
    c = created(lock)
    fake.add_gitlab_job(44, 4400, status="success", started_at=c - timedelta(hours=3), finished_at=c - timedelta(hours=2))
    # the holder: started before the lock, cancelled a minute ago (after_script, SIGTERM, kill may still run)
    fake.add_gitlab_job(44, 4401, status="canceled", started_at=c - timedelta(minutes=1), finished_at=NOW - timedelta(minutes=1))
    detailed, d = final(policy, lock, make_checker(policy))
    fact = next(a.fact for a in detailed.answers if a.checker == "gitlab-jobs")
    assert fact.state is Liveness.UNKNOWN and "job 4401" in fact.reason and "within the 5m grace" in fact.reason, fact.reason
    assert d.action is Action.KEEP
    finished = r"/projects/44/jobs\?scope%5B%5D=success&scope%5B%5D=failed&scope%5B%5D=canceled&order_by=id&sort=desc"
    assert fake.count(finished) == 1


@pytest.mark.parametrize("ago,state", [
    (timedelta(minutes=4, seconds=59), Liveness.UNKNOWN),
    (timedelta(minutes=5), Liveness.DEAD),  # exactly the grace: over
    (timedelta(hours=1), Liveness.DEAD),
])
def test_repo_mapping_proves_dead_once_the_grace_has_passed(fake: FakeCI, aws, ago: timedelta, state: Liveness) -> None:
    policy = make_policy(fake, mapping={"github_repos": ["acme/infra"]})
    lock = tf_lock("runner@fv-az100-4")
    fake.add_github_run("acme/infra", 940, status="completed", conclusion="cancelled",
                        started_at=created(lock) - timedelta(minutes=2), updated_at=NOW - ago)
    detailed, d = final(policy, lock, make_checker(policy))
    assert answers(detailed)["github-repos"] is state, detailed.fact.reason
    assert d.action is (Action.REAP if state is Liveness.DEAD else Action.KEEP)


@pytest.mark.parametrize("how", ["hostname", "mapping"])
@pytest.mark.parametrize("ago,state", [
    (timedelta(minutes=4, seconds=59), Liveness.UNKNOWN),
    (timedelta(minutes=5), Liveness.DEAD),
    (timedelta(hours=1), Liveness.DEAD),
])
def test_project_evidence_proves_dead_once_the_grace_has_passed(fake: FakeCI, aws, how: str, ago: timedelta,
                                                               state: Liveness) -> None:
    policy, lock = gitlab_case(fake, how)
    fake.add_gitlab_job(44, 4410, status="failed", started_at=created(lock) - timedelta(minutes=1), finished_at=NOW - ago)
    detailed, d = final(policy, lock, make_checker(policy))
    assert answers(detailed)["gitlab-jobs"] is state, detailed.fact.reason
    assert d.action is (Action.REAP if state is Liveness.DEAD else Action.KEEP)


@pytest.mark.parametrize("ago,state", [
    (timedelta(minutes=1), Liveness.UNKNOWN),  # within the grace: the holder if its clock lags beyond clock_skew
    (timedelta(minutes=6), Liveness.DEAD),     # past the grace: over, whichever run it was
])
def test_a_run_that_began_after_the_lock_and_just_completed_waits_out_the_grace(fake: FakeCI, aws, ago: timedelta,
                                                                                state: Liveness) -> None:
    # a run created "after" the lock by the lock's Created (it waited for the lock, did something else, or the
    # lock's host clock lags beyond clock_skew) that finished a minute ago may still be stopping Terraform
    # (round 2, item 2); once the grace has passed, the mapping proves death again
    policy = make_policy(fake, mapping={"github_repos": ["acme/infra"], "gitlab_projects": [44]})
    lock = tf_lock("runner@fv-az100-5")
    c = created(lock)
    fake.add_github_run("acme/infra", 950, status="completed", conclusion="failure", started_at=c + timedelta(minutes=30),
                        updated_at=NOW - ago)
    fake.add_gitlab_job(44, 4420, status="failed", started_at=c + timedelta(minutes=30), finished_at=NOW - ago)
    detailed, d = final(policy, lock, make_checker(policy))
    got = answers(detailed)
    assert (got["github-repos"], got["gitlab-jobs"]) == (state, state), detailed.fact.reason
    assert d.action is (Action.REAP if state is Liveness.DEAD else Action.KEEP)


def test_a_finished_job_without_a_finish_time_proves_nothing(fake: FakeCI, aws) -> None:
    policy, lock = gitlab_case(fake, "hostname")
    job = fake.add_gitlab_job(44, 4430, status="canceled", started_at=created(lock) - timedelta(minutes=1),
                              finished_at=NOW - timedelta(hours=1))
    job["finished_at"] = None
    detailed, d = final(policy, lock, make_checker(policy))
    assert answers(detailed)["gitlab-jobs"] is Liveness.UNKNOWN, detailed.fact.reason
    assert any("job 4430" in e.detail and "no finish time" in e.detail for e in detailed.fact.evidence)
    assert d.action is Action.KEEP


@pytest.mark.parametrize("fault", ["500", "rate-limited", "total-count-cap"])
def test_a_failing_lookup_of_completed_runs_is_unknown(fake: FakeCI, aws, fault: str) -> None:
    from devtools.fake_ci import rate_limited

    policy = make_policy(fake, mapping={"github_repos": ["acme/infra"]})
    lock = tf_lock("runner@fv-az100-6")
    completed = r"/repos/acme/infra/actions/runs\?status=completed"
    if fault == "500":
        fake.fault(completed, 500)
    elif fault == "rate-limited":
        fake.faults.append(rate_limited(completed, retry_after=3600))
    else:  # GitHub caps a filtered list at 1,000 results: fewer items than total_count, no next page
        fake.fault(completed, 200, body=json.dumps({"total_count": 1500, "workflow_runs": []}).encode())
    detailed, d = final(policy, lock, make_checker(policy))
    assert answers(detailed)["github-repos"] is Liveness.UNKNOWN, detailed.fact.reason
    assert "recently completed run" in detailed.fact.reason and d.action is Action.KEEP


@pytest.mark.parametrize("how", ["hostname", "mapping"])
def test_a_failing_lookup_of_finished_jobs_is_unknown(fake: FakeCI, aws, how: str) -> None:
    policy, lock = gitlab_case(fake, how)
    fake.gl_jobs[44] = []
    fake.fault(r"/projects/44/jobs\?scope%5B%5D=success", 500)
    detailed, d = final(policy, lock, make_checker(policy))
    assert answers(detailed)["gitlab-jobs"] is Liveness.UNKNOWN, detailed.fact.reason
    assert "recently finished job" in detailed.fact.reason and d.action is Action.KEEP


def test_a_truncated_list_of_completed_runs_is_unknown(aws) -> None:
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN, per_page_max=1) as fake:
        policy = make_policy(fake, mapping={"github_repos": ["acme/infra"]}, max_pages=1)
        lock = tf_lock("runner@fv-az100-7")
        c = created(lock)
        # page 1 (newest): a run long over; page 2 (never read): the holder, cancelled a minute ago
        fake.add_github_run("acme/infra", 961, status="completed", conclusion="success", started_at=c - timedelta(minutes=5),
                            updated_at=c)
        fake.add_github_run("acme/infra", 960, status="completed", conclusion="cancelled",
                            started_at=c - timedelta(minutes=10), updated_at=NOW - timedelta(minutes=1))
        detailed, d = final(policy, lock, make_checker(policy))
        assert answers(detailed)["github-repos"] is Liveness.UNKNOWN, detailed.fact.reason
        assert "page limit" in " ".join(e.detail for e in detailed.fact.evidence) and d.action is Action.KEEP


@pytest.mark.parametrize("how", ["hostname", "mapping"])
def test_a_truncated_list_of_finished_jobs_is_unknown(aws, how: str) -> None:
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN, per_page_max=1) as fake:
        policy, lock = gitlab_case(fake, how)
        policy = policy.model_copy(update={"liveness": policy.liveness.model_copy(update={
            "http": policy.liveness.http.model_copy(update={"max_pages": 1})})})
        c = created(lock)
        # by id, newest first: page 1 a later job long over, page 2 (never read) the holder, cancelled a minute ago
        fake.add_gitlab_job(44, 4440, status="canceled", started_at=c - timedelta(minutes=30),
                            finished_at=NOW - timedelta(minutes=1))
        fake.add_gitlab_job(44, 4441, status="success", started_at=c - timedelta(minutes=1),
                            finished_at=c + timedelta(minutes=10))
        detailed, d = final(policy, lock, make_checker(policy))
        assert answers(detailed)["gitlab-jobs"] is Liveness.UNKNOWN, detailed.fact.reason
        assert "page limit" in " ".join(e.detail for e in detailed.fact.evidence) and d.action is Action.KEEP


def test_the_finished_jobs_list_is_read_back_to_the_horizon_only(aws) -> None:
    # GitLab lists jobs by id, newest first: once a page reaches a job created before
    # NOW - grace - max_run_duration, every later page is older still and is not asked for
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN, per_page_max=1) as fake:
        policy, lock = gitlab_case(fake, "hostname")
        c = created(lock)
        for i in range(5):  # 10, 11, ... days old: all before the 7-day horizon
            at = NOW - timedelta(days=10 + i)
            fake.add_gitlab_job(44, 4459 - i, status="success", started_at=at, finished_at=at + timedelta(minutes=5))
        fake.add_gitlab_job(44, 4460, status="success", started_at=c - timedelta(minutes=9), finished_at=c - timedelta(minutes=1))
        detailed, d = final(policy, lock, make_checker(policy))
        assert answers(detailed)["gitlab-jobs"] is Liveness.DEAD and d.action is Action.REAP
        assert fake.count(r"/projects/44/jobs\?scope%5B%5D=success") == 2  # 4460, then 4459 (10 days old): stop

        # the same jobs, with a max_run_duration reaching back past all of them: 6 pages, over max_pages (3)
        fake.requests.clear()
        longer = policy.model_copy(update={"liveness": policy.liveness.model_copy(update={
            "max_run_duration": timedelta(days=30), "http": policy.liveness.http.model_copy(update={"max_pages": 3})})})
        detailed, d = final(longer, lock, make_checker(longer))
        assert answers(detailed)["gitlab-jobs"] is Liveness.UNKNOWN and d.action is Action.KEEP
        assert fake.count(r"/projects/44/jobs\?scope%5B%5D=success") == 3


def test_the_completed_runs_lookup_respects_the_call_budget(fake: FakeCI, aws) -> None:
    policy = make_policy(fake, mapping={"github_repos": ["acme/infra"]})
    policy = policy.model_copy(update={"liveness": policy.liveness.model_copy(update={
        "http": policy.liveness.http.model_copy(update={"max_calls_per_run": 3})})})  # the 3 active-status lists
    detailed, d = final(policy, tf_lock("runner@fv-az100-8"), make_checker(policy))
    assert answers(detailed)["github-repos"] is Liveness.UNKNOWN, detailed.fact.reason
    assert "budget" in " ".join(e.detail for e in detailed.fact.evidence) and d.action is Action.KEEP
    assert fake.count(r"status=completed") == 0


def test_completed_runs_are_listed_once_per_repo_per_run_and_revalidated_by_etag(aws) -> None:
    from reaper.http.client import EtagCache

    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN) as fake:
        policy = make_policy(fake, mapping={"github_repos": ["acme/infra"]})
        fake.add_github_run("acme/infra", 970, status="completed", conclusion="success", started_at=NOW - timedelta(hours=9),
                            updated_at=NOW - timedelta(hours=8))
        etags = EtagCache()
        for _ in range(2):  # two runs of the reaper (a warm Lambda keeps its ETags)
            checker = build_liveness(
                policy, lambda service, region=None: boto3.client(service, region_name=region or "us-east-1"),
                env={"TEST_GH_TOKEN": GH_TOKEN, "TEST_GL_TOKEN": GL_TOKEN}, etags=etags, sleep=lambda s: None)
            for i in range(3):
                lock = tf_lock(f"runner@fv-az10{i}-9", path=f"tfstate/prod/app{i}.tfstate")
                assert checker.check_detailed(lock, NOW).fact.state is Liveness.DEAD
            assert checker.stats()["by_kind"]["github.finished_runs"] == 1
            assert checker.stats()["memo_hits"]["github.finished_runs"] == 2
        completed = r"/repos/acme/infra/actions/runs\?status=completed"
        assert fake.count(completed, status=200) == 1 and fake.count(completed, status=304) == 1


# ---------------------------------------------------------------- 7. statuses a mapping must ask about
@pytest.mark.parametrize("provider,needed", [
    ({"type": "github", "token_env": "T", "active_run_statuses": ["queued", "waiting"]}, "in_progress"),
    ({"type": "gitlab", "token_env": "T", "live_job_scopes": ["pending", "canceling"]}, "running"),
])
def test_a_mapping_cannot_be_told_to_ignore_running_jobs(provider: dict[str, Any], needed: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        parse_policy(yaml.safe_dump({"liveness": {"providers": [provider]}}), source="policy.yaml")
    [problem] = exc_info.value.problems
    field = "active_run_statuses" if provider["type"] == "github" else "live_job_scopes"
    assert f"liveness.providers[0].{field}" in problem and needed in problem and problem.startswith("line ")


# ---------------------------------------------------------------- explain must show what a run would decide
def test_explain_asks_the_hcp_run_status_like_a_run_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import io

    from devtools.fake_hcp import FakeHCP
    from reaper import cli, wiring

    with FakeHCP(organizations=("acme",)) as hcp:
        ws = hcp.add_workspace("acme", "app-prod")
        run = hcp.add_run(ws, "errored", {"planning-at": NOW - timedelta(hours=5), "errored-at": NOW - timedelta(hours=4)},
                          created_at=NOW - timedelta(hours=5, minutes=1))
        hcp.lock(ws, "runs", run)
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump({
            "rules": [{"name": "default", "match": "*", "max_age": "2h", "hard_max_age": "1d"}],
            "stores": [{"type": "hcp", "base_url": hcp.url, "organizations": ["acme"], "token_env": "HCP_TOKEN",
                        "timeout": "1s"}],
            "liveness": {"state_activity": {"enabled": False}},
        }))
        monkeypatch.setenv("HCP_TOKEN", hcp.token)
        monkeypatch.setattr(wiring, "utc_now", lambda: NOW)
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["explain", "acme/app-prod", "--config", str(policy), "--json"], out=out, err=err)
        assert code == 0, err.getvalue()
        doc = json.loads(out.getvalue())
        assert doc["checkers_asked"] == ["hcp-runs"] and doc["liveness"]["state"] == "dead", doc
        assert doc["decision"]["action"] == "reap"  # as `reap` decides it (report mode: nothing is deleted)
        assert hcp.unlocked == []
