"""Real Terraform against moto_server: the lock a killed `apply` leaves behind.

For each Terraform binary (the cached 1.0.3, plus a ``terraform`` >= 1.11 on PATH
when there is one) and for the default and a non-default workspace:

1. init and apply once, so the state and its ``-md5`` digest exist;
2. start ``apply`` with a changed output, wait until it holds the lock at its
   approval prompt, then SIGKILL its whole process group: a stale lock;
3. ``terraform plan -lock-timeout=0s`` fails with "Error acquiring the state lock";
4. the reaper (enforce mode, injected clock) keeps the lock while it is young or
   only past max_age (liveness is unknown), reaps it past hard_max_age, and plan
   succeeds again;
5. ``python -m reaper restore`` puts the exact lock back from its audit record and
   plan fails again; a second restore is refused; the lock is reaped again.
Throughout, the ``-md5`` digest item is untouched by the reaper.

A second test keeps an apply alive at its prompt: the reaper, told the holder is
alive, keeps the lock even far past hard_max_age, and the apply then completes.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import create_lock_table
from devtools.terraform import LOCK_ERROR, S3Backend, TerraformWorkdir, get_item
from reaper.policy import load_policy
from reaper.engine import Reaper
from reaper.models import Liveness, LivenessFact, LockRecord, parse_created
from reaper.wiring import build_audit, build_stores
import terraform_kit
from terraform_kit import assert_applied, assert_plan_blocked, entry_for, reap_at, reaper_cli, restore_lock

pytestmark = pytest.mark.terraform

BUCKET = "tf-state"
TABLE = "terraform-locks"
KEY = "prod/network/terraform.tfstate"

@pytest.fixture
def backend(moto_env) -> S3Backend:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(ddb, TABLE)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return S3Backend(endpoint=moto_env.endpoint, bucket=BUCKET, key=KEY, table=TABLE)


@pytest.fixture
def ddb(backend: S3Backend) -> Any:
    return boto3.client("dynamodb", region_name="us-east-1")


def write_policy(tmp_path: Path) -> Path:
    return terraform_kit.write_policy(tmp_path / "policy.yaml", TABLE, tmp_path / "audit")


@pytest.mark.parametrize("workspace", ["default", "staging"])
def test_killed_apply_lock_is_reaped_restored_and_reaped_again(
    terraform_binary: Path, workspace: str, backend: S3Backend, ddb: Any, tmp_path: Path
) -> None:
    tf = TerraformWorkdir(terraform_binary, tmp_path / "tf", backend)
    lock_id, digest_id = backend.lock_id(workspace), backend.digest_id(workspace)
    if workspace != "default":
        assert lock_id == f"{BUCKET}/env:/{workspace}/{KEY}"

    # (1) init, apply once: the state and its digest exist, no lock is left.
    tf.init()
    if workspace != "default":
        tf.workspace_new(workspace)
        assert tf.current_workspace() == workspace
    tf.apply("v1")
    assert tf.output_value() == "v1"
    digest = get_item(ddb, TABLE, digest_id)
    assert digest is not None and "Digest" in digest and "Info" not in digest
    assert get_item(ddb, TABLE, lock_id) is None

    # (2) apply with a change waits at its prompt holding the lock; kill -9 the group.
    held = tf.hold_lock("v2", ddb, workspace=workspace)
    assert held.info["Path"] == lock_id
    assert held.info["Operation"] == "OperationTypeApply"
    assert held.info["Version"] == ".".join(map(str, tf.version or ()))
    running = held.group_pids()
    if tf.version == (1, 0, 3):
        assert len(running) == 2, f"Terraform 1.0.3 runs as two processes, found {running}"
    assert held.kill() == -9
    assert held.survivors == [], "no Terraform process may survive the kill (its child holds the lock)"
    stale = get_item(ddb, TABLE, lock_id)
    assert stale is not None and stale["Info"]["S"] == held.raw_info, "the killed apply must leave its lock behind"

    # (3) Terraform itself is now blocked.
    assert_plan_blocked(tf, held, "v2")

    # (4) the reaper in enforce mode: young -> kept; past max_age, holder unknown -> kept;
    #     past hard_max_age -> reaped (audited first).
    policy_path = write_policy(tmp_path)
    created = parse_created(held.info["Created"])

    young = entry_for(reap_at(policy_path, created + timedelta(minutes=5)), lock_id)
    assert young.outcome.value == "kept" and any("min_age" in r for r in young.reasons)
    stale_unknown = entry_for(reap_at(policy_path, created + timedelta(minutes=90)), lock_id)
    assert stale_unknown.outcome.value == "kept"
    assert stale_unknown.liveness == "unknown" and "kept_unknown" in stale_unknown.flags
    assert get_item(ddb, TABLE, lock_id) == stale
    assert not (tmp_path / "audit").exists() or not list((tmp_path / "audit").rglob("*.json"))

    report = reap_at(policy_path, created + timedelta(hours=3))
    reaped = entry_for(report, lock_id)
    assert reaped.outcome.value == "reaped", reaped.reasons
    assert reaped.liveness == "unknown"
    assert any("hard_max_age" in r for r in reaped.reasons)
    assert reaped.lock_id == held.info["ID"]
    assert reaped.audit_ref and Path(reaped.audit_ref).is_file()
    record = json.loads(Path(reaped.audit_ref).read_text())
    assert record["item"]["Info"]["S"] == held.raw_info and record["lock_path"] == lock_id
    assert get_item(ddb, TABLE, lock_id) is None
    assert get_item(ddb, TABLE, digest_id) == digest
    plan = tf.plan("v2")
    assert plan.returncode == 0, plan.stdout
    assert LOCK_ERROR not in plan.stdout

    # (5) restore from the audit record (the CLI): Terraform sees the same lock again.
    restore_lock(policy_path, reaped.audit_ref, ddb, TABLE, lock_id, stale)
    assert_plan_blocked(tf, held, "v2")

    # A second restore never overwrites the lock that is there now.
    again = reaper_cli("restore", "--config", str(policy_path), "--json", reaped.audit_ref)
    assert again.returncode == 1
    assert json.loads(again.stdout)["status"] == "refused"

    # ... and the reaper removes it again; the digest is still untouched.
    second = entry_for(reap_at(policy_path, created + timedelta(hours=3)), lock_id)
    assert second.outcome.value == "reaped"
    assert get_item(ddb, TABLE, lock_id) is None
    assert get_item(ddb, TABLE, digest_id) == digest
    assert tf.plan("v2").returncode == 0

    # Terraform works normally afterwards: the change applies, the lock is released.
    tf.apply("v2")
    assert tf.output_value() == "v2"
    assert get_item(ddb, TABLE, lock_id) is None


class ProcessLiveness:
    """Test stand-in for a CI checker: the lock's holder is alive while its process runs."""

    def __init__(self, lock_id: str, proc: subprocess.Popen[bytes]):
        self.lock_id = lock_id
        self.proc = proc
        self.calls = 0

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        self.calls += 1
        if lock.key == self.lock_id and self.proc.poll() is None:
            return LivenessFact(state=Liveness.ALIVE, reason=f"terraform pid {self.proc.pid} is still running")
        return LivenessFact.unknown("not our process")

    def stats(self) -> dict[str, Any]:
        return {}


def test_live_holder_at_prompt_is_kept_and_apply_completes(
    terraform_binary: Path, backend: S3Backend, ddb: Any, tmp_path: Path
) -> None:
    tf = TerraformWorkdir(terraform_binary, tmp_path / "tf", backend)
    lock_id, digest_id = backend.lock_id(), backend.digest_id()
    tf.init()
    tf.apply("v1")
    digest = get_item(ddb, TABLE, digest_id)
    assert digest is not None

    with tf.hold_lock("v2", ddb) as held:
        lock = get_item(ddb, TABLE, lock_id)
        policy = load_policy(write_policy(tmp_path))
        checker = ProcessLiveness(lock_id, held.proc)
        far_future = parse_created(held.info["Created"]) + timedelta(days=3)
        reaper = Reaper(policy, stores=build_stores(policy), clock=lambda: far_future,
                        liveness=checker, audit=build_audit(policy), alerts=[])
        report = reaper.run(mode="enforce")
        entry = entry_for(report, lock_id)
        assert checker.calls == 1
        assert entry.outcome.value == "kept" and entry.liveness == "alive"
        assert "alive_past_hard_max" in entry.flags
        assert any("never reaped while the holder is alive" in r for r in entry.reasons)
        assert get_item(ddb, TABLE, lock_id) == lock
        assert get_item(ddb, TABLE, digest_id) == digest
        assert not (tmp_path / "audit").exists() or not list((tmp_path / "audit").rglob("*.json"))
        assert held.alive()

        # The holder finishes its own work: it applies and releases its lock.
        assert held.answer("yes") == 0, held.output
    assert_applied(tf, held, ddb, TABLE, lock_id, "v2")
