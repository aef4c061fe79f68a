"""Safety review, round 2 (issue 9): four ways a live lock was still reaped.

Each test runs the real CLI (``reap --enforce``) over HTTP against moto_server and
the independent fake CI API in ``tests/ci_api.py`` (not the demo's fake), with a
claim written by the real ``claim`` command where the scenario has one. Each
asserts that the live holder's lock is still in the table afterwards; each failed
before its fix (the lock was deleted). Positive controls sit beside them: a lock
whose holder really is dead is still reaped.

1. A host clock that lags within ``clock_skew`` on a reused hostname, when the next
   job has no claim of its own: the previous job's claim was joined, and its end
   "after Created" proved the holder dead.
2. A host clock that lags beyond ``clock_skew``: a live job or run that started
   "after" the skewed ``Created`` was ignored by project and repo mappings, so
   "no live job" proved death.
3. A person's lock on a runner host: runner evidence spoke for any user.
4. "Gone" that only means "not where we looked": a runner registered in a scope
   the policy does not list, and a GitLab docker hostname of another instance.
"""

from __future__ import annotations

import argparse
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from ci_api import CiApi
from devtools.locks import create_claims_table, create_lock_table, lock_item
from reaper.cli import main
from reaper.commands import claim as claim_cli

pytestmark = pytest.mark.e2e

GH_TOKEN = "ghp_roundTwoSafetyToken0000000000000000"
GL_TOKEN = "glpat-roundTwoSafety000"
TABLE, CLAIMS = "tf-locks", "tf-claims"
SKEW = timedelta(minutes=5)


class World:
    def __init__(self, api: CiApi, tmp: Path) -> None:
        self.api = api
        self.tmp = tmp
        self.ddb = boto3.client("dynamodb", region_name="us-east-1")
        self.now = datetime.now(timezone.utc)

    # ---------------------------------------------------------------- inputs
    def policy(self, *, github: dict[str, Any] | None = None, gitlab: dict[str, Any] | None = None,
               mapping: dict[str, Any] | None = None) -> Path:
        rule: dict[str, Any] = {"name": "all", "match": "*", "max_age": "2h", "hard_max_age": "3d"}
        if mapping:
            rule["liveness"] = mapping
        doc = {
            "mode": "enforce", "max_deletes_per_run": 5, "clock_skew": "5m",
            "stores": [{"type": "dynamodb", "table": TABLE}],
            "rules": [rule],
            "audit": {"local_dir": str(self.tmp / "audit")},
            "alerts": {"metrics": {"enabled": False}},
            "liveness": {
                "grace": "5m", "claims": {"table": CLAIMS},
                "providers": [
                    {"type": "github", "api_url": self.api.github_api, "token_env": "R2_GH_TOKEN", **(github or {})},
                    {"type": "gitlab", "api_url": self.api.gitlab_api, "token_env": "R2_GL_TOKEN", **(gitlab or {})},
                ],
                "state_activity": {"enabled": False},
                "http": {"timeout": "2s", "max_retry_wait": "1s"},
            },
        }
        path = self.tmp / "policy.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def lock(self, key: str, who: str, created: datetime) -> None:
        """The lock as Terraform writes it, with ``Created`` from the holder's (possibly wrong) clock."""
        info = {"ID": "4f0b7d9a-1c2e-4b3a-8d5f-6e7a8b9c0d1e", "Operation": "OperationTypeApply", "Info": "", "Who": who,
                "Version": "1.5.7", "Created": created.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z", "Path": key}
        self.ddb.put_item(TableName=TABLE, Item=lock_item(key, json.dumps(info, separators=(",", ":"))))

    def claim(self, who: str, env: dict[str, str], at: datetime) -> None:
        """``python -m reaper claim`` as the CI job runs it, at ``at`` on the job host's clock."""
        p = argparse.ArgumentParser()
        claim_cli.add_arguments(p)
        out, err = io.StringIO(), io.StringIO()
        code = claim_cli.run(p.parse_args(["--who", who]), out, err, env={**env, "REAPER_CLAIMS_TABLE": CLAIMS}, now=at)
        assert code == 0, err.getvalue()

    def github_env(self, repo: str, run_id: int, job_id: int, runner: str) -> dict[str, str]:
        return {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": repo, "GITHUB_RUN_ID": str(run_id), "GITHUB_RUN_ATTEMPT": "1",
                "GITHUB_JOB": "apply", "RUNNER_NAME": runner, "GITHUB_API_URL": self.api.github_api,
                "GITHUB_SERVER_URL": "https://github.example", "REAPER_CLAIM_JOB_ID": str(job_id)}

    def gitlab_env(self, project_id: int, job_id: int, started: datetime) -> dict[str, str]:
        return {"GITLAB_CI": "true", "CI_PROJECT_ID": str(project_id), "CI_PROJECT_PATH": f"group/p{project_id}",
                "CI_JOB_ID": str(job_id), "CI_PIPELINE_ID": str(job_id // 10), "CI_JOB_NAME": "terraform:apply",
                "CI_API_V4_URL": self.api.gitlab_api, "CI_JOB_STARTED_AT": started.strftime("%Y-%m-%dT%H:%M:%SZ")}

    # ---------------------------------------------------------------- the run
    def reap(self, policy: Path) -> dict[str, Any]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["reap", "--enforce", "--config", str(policy), "--json", "--quiet"], out=out, err=err)
        assert code in (0, 1), err.getvalue()
        return json.loads(out.getvalue())

    def entry(self, report: dict[str, Any], key: str) -> dict[str, Any]:
        found = [e for e in report["locks"] if e["key"] == key]
        assert len(found) == 1, report
        return found[0]

    def exists(self, key: str) -> bool:
        return "Item" in self.ddb.get_item(TableName=TABLE, Key={"LockID": {"S": key}}, ConsistentRead=True)


@pytest.fixture
def world(moto_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("R2_GH_TOKEN", GH_TOKEN)
    monkeypatch.setenv("R2_GL_TOKEN", GL_TOKEN)
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(ddb, TABLE)
    create_claims_table(ddb, CLAIMS)
    with CiApi(github_token=GH_TOKEN, gitlab_token=GL_TOKEN) as api:
        yield World(api, tmp_path)


def assert_kept(w: World, report: dict[str, Any], key: str) -> dict[str, Any]:
    e = w.entry(report, key)
    assert w.exists(key), f"the live holder's lock was deleted: {e}"
    assert e["outcome"] == "kept" and e["liveness"] != "dead", e
    return e


def why(e: dict[str, Any]) -> str:
    """The entry's reasons and evidence, as one text to search."""
    return json.dumps({"reasons": e["reasons"], "evidence": e["evidence"]})


def sources(e: dict[str, Any]) -> set[str]:
    return {ev["source"] for ev in e["evidence"]}


def assert_reaped(w: World, report: dict[str, Any], key: str) -> dict[str, Any]:
    e = w.entry(report, key)
    assert e["outcome"] == "reaped" and not w.exists(key), e
    return e


# ---------------------------------------------------------------- 1. lag within clock_skew, reused hostname
REUSED = [
    # a self-hosted GitHub runner host that no `runners:` scope lists
    pytest.param("github", "runner@ci-reused-01", id="github-self-hosted"),
    # a GitLab shell-executor host
    pytest.param("gitlab", "gitlab-runner@build-02", id="gitlab-shell"),
]


def claimed_job_then_unclaimed_job(w: World, provider: str, who: str, j1_ended: datetime, j1_claim: datetime) -> None:
    """J1 claims on the host and ends at ``j1_ended``; J2 (no claim, still running, unknown to the reaper) follows."""
    if provider == "github":
        w.claim(who, w.github_env("acme/infra", 50, 501, who.split("@")[1]), j1_claim)
        w.api.github_job("acme/infra", 50, 501, status="completed", conclusion="success", runner_name=who.split("@")[1],
                         started_at=j1_claim - timedelta(seconds=5), completed_at=j1_ended)
    else:
        w.claim(who, w.gitlab_env(42, 4201, j1_claim - timedelta(seconds=5)), j1_claim)
        w.api.gitlab_job(42, 4201, status="success", started_at=j1_claim - timedelta(seconds=5), finished_at=j1_ended)


@pytest.mark.parametrize("provider,who", REUSED)
def test_1_a_job_that_ended_within_clock_skew_of_created_is_not_the_proven_holder(world: World, provider: str, who: str) -> None:
    w = world
    j1_ended = w.now - timedelta(hours=2, minutes=30)
    claimed_job_then_unclaimed_job(w, provider, who, j1_ended, j1_claim=j1_ended - timedelta(minutes=20))
    # J2 starts 8 s after J1 ended, takes the lock 30 s after J1 ended; the host writes Created 60 s slow
    created = j1_ended + timedelta(seconds=30) - timedelta(seconds=60)
    w.lock("tf-state/prod/app.tfstate", who, created)
    e = assert_kept(w, w.reap(w.policy()), "tf-state/prod/app.tfstate")
    assert "clock skew" in why(e) and "not provably" in why(e), e


@pytest.mark.parametrize("provider,who", REUSED)
@pytest.mark.parametrize("side", [-1, 1], ids=["ended-before-created", "ended-after-created"])
def test_1_either_side_of_created_within_skew_is_unknown(world: World, provider: str, who: str, side: int) -> None:
    w = world
    created = w.now - timedelta(hours=3)
    j1_ended = created + side * (SKEW - timedelta(seconds=1))
    claimed_job_then_unclaimed_job(w, provider, who, j1_ended, j1_claim=created - timedelta(minutes=30))
    w.lock("tf-state/prod/b.tfstate", who, created)
    assert_kept(w, w.reap(w.policy()), "tf-state/prod/b.tfstate")


@pytest.mark.parametrize("provider,who", REUSED)
def test_1_control_a_job_that_ended_well_after_created_is_still_dead(world: World, provider: str, who: str) -> None:
    w = world
    created = w.now - timedelta(hours=3)
    j1_ended = created + SKEW + timedelta(minutes=10)  # killed 15 minutes into its own lock
    claimed_job_then_unclaimed_job(w, provider, who, j1_ended, j1_claim=created - timedelta(seconds=40))
    w.lock("tf-state/prod/c.tfstate", who, created)
    assert_reaped(w, w.reap(w.policy()), "tf-state/prod/c.tfstate")


def test_1_a_claim_made_before_its_job_started_by_the_api_clock_reveals_a_lagging_host(world: World) -> None:
    # the claim step runs seconds after the job starts; a ClaimedAt (host clock) 20 minutes before the job's
    # started_at (GitHub's clock) shows the host clock lags beyond clock_skew, so its Created proves nothing
    w = world
    who = "runner@ci-reused-02"
    lag = timedelta(minutes=20)
    started = w.now - timedelta(hours=3)
    w.claim(who, w.github_env("acme/infra", 60, 601, "ci-reused-02"), started + timedelta(seconds=10) - lag)
    w.api.github_job("acme/infra", 60, 601, status="completed", conclusion="success", runner_name="ci-reused-02",
                     started_at=started, completed_at=started + timedelta(minutes=3))
    # J2 (no claim) takes the lock 1 minute after J1 ended; the host writes Created 20 minutes slow
    w.lock("tf-state/prod/d.tfstate", who, started + timedelta(minutes=4) - lag)
    e = assert_kept(w, w.reap(w.policy()), "tf-state/prod/d.tfstate")
    assert "host clock" in why(e), e


# ---------------------------------------------------------------- 2. lag beyond clock_skew, mappings
LAG = timedelta(minutes=15)  # beyond the 5m clock_skew


def test_2_gitlab_mapping_a_running_job_that_started_after_the_skewed_created_keeps_the_lock(world: World) -> None:
    w = world
    took = w.now - timedelta(hours=3)
    w.api.gitlab_job(77, 7701, status="running", started_at=took - timedelta(minutes=1))  # the holder, no claim
    w.lock("tf-state/prod/e.tfstate", "gitlab-runner@build-03", took - LAG)
    report = w.reap(w.policy(mapping={"gitlab_projects": [77]}))
    e = assert_kept(w, report, "tf-state/prod/e.tfstate")
    assert "7701" in why(e), e


def test_2_github_mapping_an_active_run_that_started_after_the_skewed_created_keeps_the_lock(world: World) -> None:
    w = world
    took = w.now - timedelta(hours=3)
    w.api.github_run("acme/infra", 7001, status="in_progress", created_at=took - timedelta(minutes=1))
    w.lock("tf-state/prod/f.tfstate", "runner@fv-az901-12", took - LAG)
    report = w.reap(w.policy(mapping={"github_repos": ["acme/infra"]}))
    e = assert_kept(w, report, "tf-state/prod/f.tfstate")
    assert "7001" in why(e), e


def test_2_a_stale_claim_on_a_lagging_host_does_not_outvote_the_live_job_a_mapping_sees(world: World) -> None:
    # J1 claimed long after it started (so the lag check cannot see the lag), ended; J2 (no claim) runs on
    # the same shell host, its clock 15 minutes slow: the claim says "dead", the mapping sees J2 running
    w = world
    who = "gitlab-runner@build-04"
    j1_ended = w.now - timedelta(hours=3)
    w.claim(who, w.gitlab_env(78, 7801, j1_ended - timedelta(hours=1)), j1_ended - timedelta(minutes=30) - LAG)
    w.api.gitlab_job(78, 7801, status="success", started_at=j1_ended - timedelta(hours=1), finished_at=j1_ended)
    w.api.gitlab_job(78, 7802, status="running", started_at=j1_ended + timedelta(seconds=8))
    w.lock("tf-state/prod/g.tfstate", who, j1_ended + timedelta(seconds=30) - LAG)
    e = assert_kept(w, w.reap(w.policy(mapping={"gitlab_projects": [78]})), "tf-state/prod/g.tfstate")
    assert "7802" in why(e), e


def test_2_control_a_mapping_with_no_live_job_still_proves_death(world: World) -> None:
    w = world
    took = w.now - timedelta(hours=3)
    w.api.gitlab_job(79, 7901, status="failed", started_at=took - timedelta(minutes=2), finished_at=took + timedelta(minutes=1))
    w.lock("tf-state/prod/h.tfstate", "gitlab-runner@build-05", took - LAG)
    assert_reaped(w, w.reap(w.policy(mapping={"gitlab_projects": [79]})), "tf-state/prod/h.tfstate")


def test_2_control_a_unique_host_claim_outvotes_an_unrelated_live_run(world: World) -> None:
    # GitHub-hosted VMs (fv-az…) run one job each: a claim by that exact Who names the only job that ever ran
    # there, so another live run in the mapped repo cannot be this lock's holder
    w = world
    who = "runner@fv-az902-34"
    created = w.now - timedelta(hours=3)
    w.claim(who, w.github_env("acme/infra", 80, 801, "GitHub Actions 3"), created - timedelta(seconds=40))
    w.api.github_job("acme/infra", 80, 801, status="completed", conclusion="cancelled", runner_name="GitHub Actions 3",
                     started_at=created - timedelta(minutes=1), completed_at=created + timedelta(minutes=20))
    w.api.github_run("acme/infra", 81, status="in_progress", created_at=w.now - timedelta(minutes=10))
    w.lock("tf-state/prod/i.tfstate", who, created)
    assert_reaped(w, w.reap(w.policy(mapping={"github_repos": ["acme/infra"]})), "tf-state/prod/i.tfstate")


# ---------------------------------------------------------------- 3. a person's lock on a runner host
RUNNERS = {"runners": [{"org": "acme", "hosts": ["gh-runner-*"]}]}


def test_3_a_persons_lock_on_a_runner_host_is_not_judged_by_the_runner(world: World) -> None:
    w = world
    w.api.github_runner("org:acme", "gh-runner-9", status="online", busy=False)
    w.lock("tf-state/prod/j.tfstate", "alice@gh-runner-9", w.now - timedelta(hours=3))
    e = assert_kept(w, w.reap(w.policy(github=RUNNERS)), "tf-state/prod/j.tfstate")
    assert "github-runners" not in sources(e), e


def test_3_control_the_runner_users_lock_on_an_idle_runner_is_dead(world: World) -> None:
    w = world
    w.api.github_runner("org:acme", "gh-runner-9", status="online", busy=False)
    w.lock("tf-state/prod/k.tfstate", "runner@gh-runner-9", w.now - timedelta(hours=3))
    assert_reaped(w, w.reap(w.policy(github=RUNNERS)), "tf-state/prod/k.tfstate")


def test_3_the_runner_user_is_a_setting(world: World) -> None:
    w = world
    w.api.github_runner("org:acme", "gh-runner-9", status="online", busy=False)
    w.lock("tf-state/prod/l.tfstate", "actions@gh-runner-9", w.now - timedelta(hours=3))
    scopes = {"runners": [{"org": "acme", "hosts": ["gh-runner-*"], "users": ["actions"]}]}
    assert_reaped(w, w.reap(w.policy(github=scopes)), "tf-state/prod/l.tfstate")


# ---------------------------------------------------------------- 4. absence that is only "not where we looked"
def test_4_a_runner_registered_in_an_unlisted_repo_scope_is_not_gone(world: World) -> None:
    w = world
    w.api.github_runner("org:acme", "gh-runner-1", status="online", busy=False)
    w.api.github_runner("repo:acme/infra", "gh-runner-7", status="online", busy=True)  # the holder, busy
    w.lock("tf-state/prod/m.tfstate", "runner@gh-runner-7", w.now - timedelta(hours=3))
    e = assert_kept(w, w.reap(w.policy(github=RUNNERS)), "tf-state/prod/m.tfstate")
    assert e["liveness"] == "unknown", e


def test_4_control_gone_from_a_scope_declared_authoritative_is_dead(world: World) -> None:
    w = world
    w.api.github_runner("org:acme", "gh-runner-1", status="online", busy=False)
    w.lock("tf-state/prod/n.tfstate", "runner@gh-runner-7", w.now - timedelta(hours=3))
    scopes = {"runners": [{"org": "acme", "hosts": ["gh-runner-*"], "absent_means_gone": True}]}
    assert_reaped(w, w.reap(w.policy(github=scopes)), "tf-state/prod/n.tfstate")


def test_4_a_docker_hostname_of_another_gitlab_instance_is_not_judged_by_this_one(world: World) -> None:
    w = world
    # project 42 of the configured instance has no live job; the lock is from another instance's project 42
    w.api.gitlab_job(42, 4299, status="success", started_at=w.now - timedelta(days=2), finished_at=w.now - timedelta(days=2))
    w.lock("tf-state/prod/o.tfstate", "root@runner-xyz789-project-42-concurrent-0", w.now - timedelta(hours=3))
    e = assert_kept(w, w.reap(w.policy()), "tf-state/prod/o.tfstate")
    assert "gitlab-jobs" not in sources(e), e


def test_4_control_an_opted_in_runner_hostname_is_judged_by_its_instance(world: World) -> None:
    w = world
    w.api.gitlab_job(42, 4299, status="success", started_at=w.now - timedelta(days=2), finished_at=w.now - timedelta(days=2))
    w.lock("tf-state/prod/p.tfstate", "root@runner-xyz789-project-42-concurrent-0", w.now - timedelta(hours=3))
    gitlab = {"runner_hosts": ["runner-*-project-*-concurrent-*"]}
    assert_reaped(w, w.reap(w.policy(gitlab=gitlab)), "tf-state/prod/p.tfstate")
