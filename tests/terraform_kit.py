"""Helpers of the tests that drive a real Terraform binary (import as ``terraform_kit``).

The ``terraform_binary`` fixture (tests/conftest.py) is built on ``require_terraform``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.terraform import LOCK_ERROR, HeldApply, TerraformWorkdir, cached_terraform_1_0_3, get_item, terraform_on_path
from reaper.policy import load_policy
from reaper.wiring import Deps, build_reaper

ROOT = Path(__file__).resolve().parent.parent

# Enforce mode on one DynamoDB lock table: a lock is a candidate past 1h and reaped
# past 2h even when nobody can tell whether its holder is alive.
POLICY = """\
mode: enforce
max_deletes_per_run: 5
min_age: 15m
stores:
  - type: dynamodb
    table: {table}
rules:
  - name: everything
    match: "*"
    max_age: 1h
    hard_max_age: 2h
audit:
  local_dir: {audit}
alerts:
  metrics: {{enabled: false}}
"""


def write_policy(path: Path, table: str, audit: Path, extra: str = "") -> Path:
    """``POLICY`` for ``table`` with its audit records under ``audit``, plus ``extra`` YAML."""
    path.write_text(POLICY.format(table=table, audit=audit) + extra, encoding="utf-8")
    return path


def require_terraform(which: str) -> Path:
    """The Terraform binary for ``which``: "1.0.3" (the cached one; a TERRAFORM_1_0_3
    that is set but not executable fails the test) or "path" (a ``terraform`` >= 1.11
    on PATH, optional). Skips the test when there is none."""
    if which == "1.0.3":
        binary = cached_terraform_1_0_3()
        if binary is None:
            if os.environ.get("TERRAFORM_1_0_3"):
                pytest.fail(f"TERRAFORM_1_0_3={os.environ['TERRAFORM_1_0_3']} is set but is not an executable file")
            pytest.skip("Terraform 1.0.3 is not cached: run `make deps` (scripts/fetch_terraform.py)")
        return binary
    if which != "path":
        raise ValueError(f"unknown Terraform binary {which!r}")
    binary = terraform_on_path((1, 11, 0))
    if binary is None:
        pytest.skip("no terraform >= 1.11 on PATH (optional extra case)")
    return binary


def reap_at(policy_path: Path, at: datetime, env: Mapping[str, str] | None = None) -> Any:
    """One enforce-mode run of the whole production wiring with the clock at ``at``."""
    report = build_reaper(load_policy(policy_path, env=env), Deps(clock=lambda: at)).run(mode="enforce")
    assert report.summary.store_errors == 0, report.stores
    assert not [e for e in report.locks if e.key.endswith("-md5")], "digests are never locks"
    assert report.summary.digests_skipped >= 1
    return report


def entry_for(report: Any, lock_id: str) -> Any:
    """The report's one entry for ``lock_id``."""
    matching = [e for e in report.locks if e.lock_path == lock_id]
    assert len(matching) == 1, [e.lock_path for e in report.locks]
    return matching[0]


def reaper_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m reaper ARGS`` in this environment."""
    return subprocess.run([sys.executable, "-m", "reaper", *args], cwd=ROOT, env=dict(os.environ), capture_output=True,
                          text=True, timeout=120)


def restore_lock(policy_path: Path, audit_ref: str, ddb: Any, table: str, lock_id: str, item: dict[str, Any]) -> None:
    """``python -m reaper restore`` puts the exact lock ``item`` back from its audit record."""
    restored = reaper_cli("restore", "--config", str(policy_path), "--json", audit_ref)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert json.loads(restored.stdout)["status"] == "restored"
    assert get_item(ddb, table, lock_id) == item


def assert_plan_blocked(tf: TerraformWorkdir, held: HeldApply, value: str) -> None:
    """Terraform cannot plan: it reports the lock ``held`` took."""
    plan = tf.plan(value)
    assert plan.returncode != 0 and LOCK_ERROR in plan.stdout and held.info["ID"] in plan.stdout


def assert_applied(tf: TerraformWorkdir, held: HeldApply, ddb: Any, table: str, lock_id: str, value: str) -> None:
    """The apply ``held`` was told "yes": it completed, released its lock, and Terraform plans cleanly."""
    assert "Apply complete!" in held.output
    assert get_item(ddb, table, lock_id) is None
    assert tf.output_value() == value
    assert tf.plan(value).returncode == 0
