"""Real Terraform scenarios of issue 6 that need claims and a CI system (moto_server + fake CI).

tests/test_terraform_real.py covers the killed apply reaped past hard_max_age with
nobody to ask (unknown), restore, the default and a workspace lock, and a live
holder told alive by a stand-in checker; tests/test_liveness_e2e.py joins a killed
apply's lock to its claim. Here, with the whole production wiring
(``build_reaper``: claims table, GitHub provider, state activity) and the CI job
writing its claim with ``python -m reaper claim`` before Terraform runs:

1. a live ``apply`` waiting at its prompt, whose claimed job is in progress, is
   kept even days past hard_max_age (flagged), then completes normally;
2. in a workspace (``env:/staging/...``), a killed apply's lock is kept while
   young, reaped once old enough because the CI says its job is over (before
   hard_max_age: on evidence, not on age), ``restore`` puts it back and Terraform
   sees it again, it is reaped again, and Terraform plans and applies normally;
3. throughout, the reaper never touches the ``-md5`` digest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import create_claims_table, create_lock_table
from devtools.terraform import S3Backend, TerraformWorkdir, get_item
from reaper.models import parse_created
from terraform_kit import ROOT, assert_applied, assert_plan_blocked, entry_for, restore_lock, write_policy
from terraform_kit import reap_at as reap_with_env

pytestmark = [pytest.mark.terraform, pytest.mark.e2e]

BUCKET, TABLE, CLAIMS = "tf-scenarios", "terraform-locks", "lock-reaper-claims"
KEY = "platform/network/terraform.tfstate"
GH_TOKEN = "ghp_scenarioToken0000000000000000000000"
REPO = "acme/platform"

# terraform_kit.POLICY plus claims and a GitHub provider (the fake CI).
LIVENESS = """\
liveness:
  grace: 5m
  claims:
    table: {claims}
  providers:
    - type: github
      api_url: {api}
      token_env: SCENARIO_GITHUB_TOKEN
"""


@pytest.fixture
def world(moto_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    fake_ci = pytest.importorskip("devtools.fake_ci")
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(ddb, TABLE)
    create_claims_table(ddb, CLAIMS)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("SCENARIO_GITHUB_TOKEN", GH_TOKEN)
    with fake_ci.FakeCI(github_token=GH_TOKEN) as fake:
        policy = write_policy(tmp_path / "policy.yaml", TABLE, tmp_path / "audit",
                              LIVENESS.format(claims=CLAIMS, api=fake.github_api))
        yield fake, ddb, policy


def ci_job_env(tf: TerraformWorkdir, fake: Any, run_id: int, runner: str) -> dict[str, str]:
    """What a GitHub Actions job's step sees (plus the AWS settings the job would have)."""
    return {**tf.env(), **fake.github_job_env(REPO, run_id, runner), "REAPER_CLAIMS_TABLE": CLAIMS,
            "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"], "PYTHONPATH": str(ROOT)}


def reaper_claim(env: dict[str, str]) -> dict[str, Any]:
    """``python -m reaper claim --json`` as the CI job runs it, in the job's environment."""
    proc = subprocess.run([sys.executable, "-m", "reaper", "claim", "--json"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def reap_at(policy_path: Path, at: datetime) -> Any:
    """A run with the policy's overrides from the environment, as the Lambda reads them."""
    return reap_with_env(policy_path, at, env=os.environ)


def ci_calls(report: Any) -> int:
    return sum(v for k, v in (report.liveness_api_calls.get("by_kind") or {}).items() if k.startswith("github."))


def test_live_holder_at_prompt_with_a_claim_is_kept(terraform_binary: Path, world: Any, tmp_path: Path) -> None:
    fake, ddb, policy_path = world
    backend = S3Backend(endpoint=os.environ["AWS_ENDPOINT_URL"], bucket=BUCKET, key=KEY, table=TABLE)
    tf = TerraformWorkdir(terraform_binary, tmp_path / "tf", backend)
    lock_id, digest_id = backend.lock_id(), backend.digest_id()
    tf.init()
    tf.apply("v1")
    digest = get_item(ddb, TABLE, digest_id)
    assert digest is not None and "Digest" in digest

    # The CI job claims, then runs terraform apply, which waits at its prompt holding the lock.
    claimed = reaper_claim(ci_job_env(tf, fake, 3001, "GitHub Actions 7"))
    with tf.hold_lock("v2", ddb) as held:
        assert held.info["Who"] == claimed["who"], "the claim names the Who Terraform writes"
        created = parse_created(held.info["Created"])
        fake.add_github_job(REPO, 3001, 31, status="in_progress", runner_name="GitHub Actions 7",
                            started_at=created - timedelta(minutes=1))
        lock = get_item(ddb, TABLE, lock_id)

        # Three days later by the reaper's clock, far past hard_max_age: the claimed job is running.
        report = reap_at(policy_path, created + timedelta(days=3))
        e = entry_for(report, lock_id)
        assert e.outcome.value == "kept" and e.liveness == "alive", e.reasons
        assert "alive_past_hard_max" in e.flags
        assert any("is in_progress" in r for r in e.reasons)
        assert any("never reaped while the holder is alive" in r for r in e.reasons)
        assert f"{fake.web}/{REPO}/actions/runs/3001/job/31" in [ev.url for ev in e.evidence]
        assert ci_calls(report) == 1
        assert get_item(ddb, TABLE, lock_id) == lock and get_item(ddb, TABLE, digest_id) == digest
        assert not (tmp_path / "audit").exists() or not list((tmp_path / "audit").rglob("*.json"))
        assert held.alive()

        # The holder finishes its own work and releases its lock.
        assert held.answer("yes") == 0, held.output
    assert_applied(tf, held, ddb, TABLE, lock_id, "v2")


def test_workspace_lock_reaped_on_ci_evidence_restored_and_seen_again(
    terraform_binary: Path, world: Any, tmp_path: Path
) -> None:
    fake, ddb, policy_path = world
    workspace = "staging"
    backend = S3Backend(endpoint=os.environ["AWS_ENDPOINT_URL"], bucket=BUCKET, key=KEY, table=TABLE)
    tf = TerraformWorkdir(terraform_binary, tmp_path / "tf", backend)
    lock_id, digest_id = backend.lock_id(workspace), backend.digest_id(workspace)
    assert lock_id == f"{BUCKET}/env:/{workspace}/{KEY}"
    tf.init()
    tf.workspace_new(workspace)
    tf.apply("v1")
    digest = get_item(ddb, TABLE, digest_id)
    assert digest is not None and get_item(ddb, TABLE, lock_id) is None

    # The CI job claims and applies; the runner is killed mid-apply: a stale lock in the workspace.
    claimed = reaper_claim(ci_job_env(tf, fake, 4001, "GitHub Actions 9"))
    held = tf.hold_lock("v2", ddb, workspace=workspace)
    assert held.info["Who"] == claimed["who"] and held.info["Path"] == lock_id
    assert held.kill() == -9 and held.survivors == []
    stale = get_item(ddb, TABLE, lock_id)
    assert stale is not None and stale["Info"]["S"] == held.raw_info
    assert_plan_blocked(tf, held, "v2")
    created = parse_created(held.info["Created"])
    fake.add_github_job(REPO, 4001, 41, status="completed", conclusion="cancelled", runner_name="GitHub Actions 9",
                        started_at=created - timedelta(minutes=1), completed_at=created + timedelta(minutes=10))

    # Young (under max_age): kept without asking anyone.
    young = reap_at(policy_path, created + timedelta(minutes=30))
    e = entry_for(young, lock_id)
    assert e.outcome.value == "kept" and e.liveness == "not_checked" and ci_calls(young) == 0

    # Past max_age but before hard_max_age: reaped because the CI says the job is over.
    reaped_report = reap_at(policy_path, created + timedelta(minutes=90))
    e = entry_for(reaped_report, lock_id)
    assert e.outcome.value == "reaped" and e.liveness == "dead", e.reasons
    assert not any("hard_max_age" in r and "allows" in r for r in e.reasons), "reaped on evidence, not on age"
    assert any("completed/cancelled" in r for r in e.reasons)
    record = json.loads(Path(e.audit_ref).read_text())
    assert record["item"]["Info"]["S"] == held.raw_info and record["liveness"]["state"] == "dead"
    assert get_item(ddb, TABLE, lock_id) is None and get_item(ddb, TABLE, digest_id) == digest
    assert tf.plan("v2").returncode == 0, "Terraform works again"

    # Restore puts the exact lock back: Terraform sees it again.
    restore_lock(policy_path, e.audit_ref, ddb, TABLE, lock_id, stale)
    assert_plan_blocked(tf, held, "v2")

    # The next cycle reaps it again (same evidence); the digest is still the reaper-untouched one.
    again = entry_for(reap_at(policy_path, created + timedelta(minutes=95)), lock_id)
    assert again.outcome.value == "reaped" and again.liveness == "dead"
    assert get_item(ddb, TABLE, digest_id) == digest

    # Terraform plans and applies normally in the workspace afterwards.
    assert tf.plan("v2").returncode == 0
    tf.apply("v2")
    assert tf.output_value() == "v2" and get_item(ddb, TABLE, lock_id) is None
