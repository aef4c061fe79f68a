"""Real Terraform >= 1.10 with ``use_lockfile = true`` against moto_server (optional).

Skipped cleanly when no such ``terraform`` is on PATH. For S3 lock files only, and
for double locking (``use_lockfile`` and ``dynamodb_table``):
1. init and apply once; then ``apply`` with a change waits at its prompt holding the
   lock and is killed with SIGKILL (its whole process group): a stale lock;
2. ``terraform plan -lock-timeout=0s`` fails with "Error acquiring the state lock";
3. Lock Reaper (enforce, injected clock past hard_max_age, holder unknown) removes
   the lock file (and, double locked, the DynamoDB item after it, as one lock);
4. plan succeeds; restoring the audit record(s) blocks Terraform again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import create_lock_table
from devtools.terraform import LOCK_ERROR, S3Backend, TerraformWorkdir, terraform_on_path
from reaper.audit import LocalDirAuditSink
from reaper.policy import parse_policy
from reaper.engine import Reaper
from reaper.models import Outcome, parse_created
from reaper.wiring import build_stores

pytestmark = [pytest.mark.terraform, pytest.mark.e2e]

BUCKET, TABLE, KEY = "tf-lockfiles", "terraform-locks", "prod/network/terraform.tfstate"


@dataclass
class LockfileBackend(S3Backend):
    """S3Backend with ``use_lockfile = true``; the DynamoDB table only when ``double``."""

    double: bool = False

    def hcl(self, version: tuple[int, int, int] | None) -> str:
        lines = []
        for line in super().hcl(version).splitlines():
            stripped = line.strip()
            if not self.double and (stripped.startswith("dynamodb_table") or stripped.startswith("dynamodb =")):
                continue
            lines.append(line)
            if stripped.startswith("bucket ="):
                lines.append("    use_lockfile = true")
        return "\n".join(lines) + "\n"


@pytest.fixture
def terraform() -> Path:
    binary = terraform_on_path((1, 10, 0))
    if binary is None:
        pytest.skip("no terraform >= 1.10 on PATH (use_lockfile needs it; optional test)")
    return binary


def hold_and_kill(tf: TerraformWorkdir, s3: Any, value: str, timeout: float = 60.0) -> str:
    """Start apply (no -auto-approve) in its own process group, wait for its lock file and
    its prompt, SIGKILL the group; return the lock file's body left behind."""
    proc = subprocess.Popen(
        [tf.binary, "apply", "-no-color", "-var", f"{tf.variable}={value}"], cwd=tf.dir, env=tf.env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(4096), b"")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + timeout
    body = None
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, b"".join(chunks).decode(errors="replace")
            if body is None:
                try:
                    body = s3.get_object(Bucket=BUCKET, Key=KEY + ".tflock")["Body"].read().decode()
                except s3.exceptions.NoSuchKey:
                    pass
            if body is not None and b"Enter a value:" in b"".join(chunks):
                break
            time.sleep(0.05)
        else:
            raise TimeoutError("apply did not hold its lock at the prompt:\n" + b"".join(chunks).decode(errors="replace"))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        reader.join(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
    assert body is not None
    return body


def reaper_for(tmp_path: Path, double: bool) -> tuple[Any, list[Any], LocalDirAuditSink]:
    stores = f"  - type: s3\n    bucket: {BUCKET}\n" + (f"  - type: dynamodb\n    table: {TABLE}\n" if double else "")
    policy = parse_policy(f"""
mode: enforce
rules:
  - match: "*"
    max_age: 1h
    hard_max_age: 2h
audit:
  local_dir: {tmp_path / 'audit'}
stores:
{stores}""")
    audit = LocalDirAuditSink(tmp_path / "audit")
    return policy, build_stores(policy), audit


@pytest.mark.parametrize("double", [False, True], ids=["lockfile", "double-locking"])
def test_stale_lockfile_from_real_terraform_is_reaped_and_restored(
    terraform: Path, moto_env: Any, tmp_path: Path, double: bool
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    if double:
        create_lock_table(ddb, TABLE)
    backend = LockfileBackend(endpoint=moto_env.endpoint, bucket=BUCKET, key=KEY, table=TABLE, double=double)
    tf = TerraformWorkdir(terraform, tmp_path / "tf", backend)
    assert "use_lockfile = true" in (tmp_path / "tf" / "main.tf").read_text()

    tf.init()
    tf.apply("v1")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=KEY + ".tflock")["KeyCount"] == 0

    body = hold_and_kill(tf, s3, "v2")
    info = json.loads(body)
    assert info["Path"] == f"{BUCKET}/{KEY}" and info["Operation"] == "OperationTypeApply"
    if double:
        item = ddb.get_item(TableName=TABLE, Key={"LockID": {"S": f"{BUCKET}/{KEY}"}}, ConsistentRead=True)["Item"]
        assert json.loads(item["Info"]["S"])["ID"] == info["ID"], "double locking: one ID in both stores"
    plan = tf.plan("v2")
    assert plan.returncode != 0 and LOCK_ERROR in plan.stdout

    policy, stores, audit = reaper_for(tmp_path, double)
    created = parse_created(info["Created"])

    class Unknown:
        def check(self, lock: Any, now: datetime) -> Any:
            from reaper.models import LivenessFact

            return LivenessFact.unknown("no CI evidence in this test")

        def stats(self) -> dict[str, Any]:
            return {}

    report = Reaper(policy, stores, clock=lambda: created + timedelta(minutes=90), liveness=Unknown(), audit=audit).run()
    assert [e.outcome for e in report.locks] == [Outcome.KEPT]  # past max_age, unknown, below hard_max_age
    report = Reaper(policy, stores, clock=lambda: created + timedelta(hours=3), liveness=Unknown(), audit=audit).run()
    assert len(report.locks) == 1, [(e.store, e.lock_path) for e in report.locks]
    entry = report.locks[0]
    assert entry.outcome is Outcome.REAPED, entry.reasons
    assert entry.store == f"s3:{BUCKET}" and entry.lock_id == info["ID"]
    if double:
        assert [(t.store, t.result) for t in entry.targets] == [(f"s3:{BUCKET}", "deleted"), (f"dynamodb:{TABLE}", "deleted")]
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=KEY + ".tflock")["KeyCount"] == 0
    assert s3.head_object(Bucket=BUCKET, Key=KEY)["ContentLength"] > 0, "the state object is untouched"
    plan = tf.plan("v2")
    assert plan.returncode == 0, plan.stdout

    refs = [t.audit_ref for t in entry.targets] if double else [entry.audit_ref]
    by_name = {s.name: s for s in stores}
    for ref in refs:
        record = audit.read(ref)  # type: ignore[arg-type]
        by_name[record["store"]].restore(record["item"])
    plan = tf.plan("v2")
    assert plan.returncode != 0 and LOCK_ERROR in plan.stdout and info["ID"] in plan.stdout
