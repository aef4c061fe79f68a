"""The command line as a user meets it (issue 9): clear errors with the right exit code,
the audit ref where `restore` needs it, each store error once, `explain` hints and JSON
errors, tables that never cut a cell off a pipe, and the demo's own wording."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools import demo
from devtools.locks import create_lock_table, info_json, lock_item
from reaper import report as report_mod
from reaper.cli import main
from reaper.models import Liveness, LivenessFact, Outcome
from reaper.report import LockEntry, RunReport
from reaper.wiring import build_reaper

ROOT = Path(__file__).resolve().parent.parent
TABLE = "terraform-locks"
BUCKET = "corp-tfstate"
STALE = f"{BUCKET}/prod/app/terraform.tfstate"
FRESH = f"{BUCKET}/dev/app/terraform.tfstate"
COPIED = f"{BUCKET}/prod/iam/terraform.tfstate"
ALIVE = f"{BUCKET}/staging/web/terraform.tfstate"
LONG_WHO = "runner@a-self-hosted-runner-with-a-very-long-hostname-0042"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(args: list[str], out: io.StringIO | None = None, **kw: Any) -> tuple[int, str, str]:
    out = out if out is not None else io.StringIO()
    err = io.StringIO()
    code = main(args, out=out, err=err, **kw)
    return code, out.getvalue(), err.getvalue()


def policy_file(tmp_path: Path, audit: bool = True, table: str = TABLE, extra: str = "") -> str:
    f = tmp_path / "policy.yaml"
    f.write_text(
        f"stores:\n  - {{type: dynamodb, table: {table}}}\n"
        "rules:\n  - {name: default, match: '*', max_age: 6h, hard_max_age: 1d}\n"
        + (f"audit: {{local_dir: '{tmp_path / 'audit'}'}}\n" if audit else "") + extra
    )
    return str(f)


@pytest.fixture
def ddb(aws) -> Any:
    client = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(client, TABLE)
    now = datetime.now(timezone.utc)
    client.put_item(TableName=TABLE, Item=lock_item(STALE, info_json(STALE, timedelta(days=3), now, who=LONG_WHO)))
    client.put_item(TableName=TABLE, Item=lock_item(FRESH, info_json(FRESH, timedelta(minutes=3), now)))
    other = f"{BUCKET}/prod/iam-old/terraform.tfstate"  # a hand-copied item: Path differs from LockID
    client.put_item(TableName=TABLE, Item=lock_item(COPIED, info_json(other, timedelta(days=2), now)))
    return client


def lock_info(client: Any, path: str) -> str | None:
    item = client.get_item(TableName=TABLE, Key={"LockID": {"S": path}}, ConsistentRead=True).get("Item")
    return item["Info"]["S"] if item else None


def reap_one(ddb: Any, tmp_path: Path) -> tuple[str, str]:
    policy = policy_file(tmp_path)
    code, out, err = run(["reap", "--config", policy, "--enforce", "--json"])
    assert code == 0, err
    ref = next(e["audit_ref"] for e in json.loads(out)["locks"] if e["outcome"] == "reaped")
    return policy, ref


# ---------------------------------------------------------------- restore
def test_restore_missing_file_is_a_usage_error(ddb: Any, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    code, out, err = run(["restore", "--config", policy_file(tmp_path, audit=False), str(missing)])
    assert code == 2
    assert f"no audit record at {missing}: no such file" in err
    assert "FileNotFoundError" not in err and "Errno" not in err and out == ""


def test_restore_s3_ref_without_a_key_is_a_usage_error(ddb: Any, tmp_path: Path) -> None:
    for ref in ("s3://bucket-only", "s3://bucket-only/", "s3://"):
        code, _, err = run(["restore", "--config", policy_file(tmp_path), ref])
        assert code == 2, (ref, err)
        assert "names no object key" in err and "s3://<bucket>/<key>" in err, err
        assert 'Invalid bucket name ""' not in err


def test_restore_of_an_empty_object_says_it_is_not_an_audit_record(ddb: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    code, _, err = run(["restore", "--config", policy_file(tmp_path), str(empty)])
    assert code == 2
    assert f"{empty} is not a Lock Reaper audit record (it has no 'schema' field)" in err
    assert "schema None" not in err


def test_restore_of_a_yaml_file_says_it_is_not_json(ddb: Any, tmp_path: Path) -> None:
    policy = policy_file(tmp_path)
    code, _, err = run(["restore", "--config", policy, policy])
    assert code == 2
    assert f"{policy} is not an audit record: not JSON (" in err and "JSONDecodeError" not in err
    code, out, _ = run(["restore", "--config", policy, policy, "--json"])
    doc = json.loads(out)
    assert code == 2 and doc["status"] == "error" and "not JSON" in doc["message"]


def test_restore_says_restored_once(ddb: Any, tmp_path: Path) -> None:
    policy, ref = reap_one(ddb, tmp_path)
    code, out, err = run(["restore", "--config", policy, ref])
    assert code == 0, err
    assert out.strip() == f"restored {STALE} into {TABLE}"
    assert lock_info(ddb, STALE) is not None


# ---------------------------------------------------------------- reap --enforce
def test_reap_enforce_table_shows_the_audit_ref(ddb: Any, tmp_path: Path) -> None:
    code, out, err = run(["reap", "--config", policy_file(tmp_path), "--enforce"])
    assert code == 0, err
    header = out.splitlines()[0].split("  ")
    assert "AUDIT REF" in [h.strip() for h in header if h.strip()]
    refs = list((tmp_path / "audit").rglob("*.json"))
    assert len(refs) == 1
    row = next(line for line in out.splitlines() if STALE in line)
    assert str(refs[0]) in row and "reaped" in row


def test_enforce_without_an_audit_sink_fails_before_scanning(ddb: Any, tmp_path: Path) -> None:
    built: list[Any] = []

    def build(policy: Any, progress: Any = None) -> Any:
        built.append(policy)
        return build_reaper(policy, progress=progress)

    code, out, err = run(["reap", "--config", policy_file(tmp_path, audit=False), "--enforce"], build=build)
    assert code == 2
    assert "reap --enforce needs an audit sink" in err and "set `audit:` in the policy" in err
    assert built == [] and out == "", "nothing is scanned"
    assert lock_info(ddb, STALE) is not None


# ---------------------------------------------------------------- store errors
@pytest.mark.e2e
def test_a_store_error_is_printed_once(moto_env: Any, tmp_path: Path) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=moto_env.endpoint)
    create_lock_table(client, TABLE)
    f = tmp_path / "policy.yaml"
    f.write_text(f"stores:\n  - {{type: dynamodb, table: {TABLE}}}\n  - {{type: dynamodb, table: missing-table}}\n")
    env = {**os.environ, **moto_env.env(), "PYTHONPATH": str(ROOT)}
    for args in (["scan"], ["scan", "--quiet"], ["-v", "scan"]):
        proc = subprocess.run([sys.executable, "-m", "reaper", *args, "--config", str(f)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        both = proc.stdout + proc.stderr
        assert both.count("'missing-table' does not exist") == 1, (args, both)
        assert "STORE ERROR dynamodb:missing-table: table 'missing-table' does not exist" in proc.stdout
        assert "no locks found" in proc.stdout and "LOCK PATH" not in proc.stdout, "no empty table"
        if "--quiet" not in args:
            assert "dynamodb:missing-table: 0 items, 0 digests skipped, 0 locks — FAILED" in proc.stderr


# ---------------------------------------------------------------- explain
def test_explain_hints_at_the_bucket_prefix(ddb: Any, tmp_path: Path) -> None:
    code, out, err = run(["explain", "prod/app/terraform.tfstate", "--config", policy_file(tmp_path)])
    assert code == 1 and out == ""
    assert "no lock with path or key 'prod/app/terraform.tfstate'" in err
    assert f"did you mean '{STALE}'?" in err
    assert "locks' paths are <bucket>/<state key>" in err


def test_explain_of_an_unreadable_store_is_an_error(ddb: Any, tmp_path: Path) -> None:
    code, out, err = run(["explain", STALE, "--config", policy_file(tmp_path, table="missing-table")])
    assert code == 1 and out == ""
    assert "error: cannot read store dynamodb:missing-table (ResourceNotFoundException)" in err
    assert "no lock with path" not in err


def test_explain_json_errors_are_json_documents(ddb: Any, tmp_path: Path) -> None:
    code, out, _ = run(["explain", "prod/app/terraform.tfstate", "--json", "--config", policy_file(tmp_path)])
    doc = json.loads(out)
    assert code == 1 and doc["error"] == "not_found" and doc["lock_path"] == "prod/app/terraform.tfstate"
    assert doc["did_you_mean"] == [STALE] and "no lock with path" in doc["message"]
    code, out, _ = run(["explain", STALE, "--json", "--config", policy_file(tmp_path, table="missing-table")])
    doc = json.loads(out)
    assert code == 1 and doc["error"] == "store_error"
    assert doc["stores"] == [{"store": "dynamodb:missing-table", "code": "ResourceNotFoundException",
                              "message": "table 'missing-table' does not exist (check the name and region)"}]


# ---------------------------------------------------------------- tables
def test_tables_are_never_cut_off_a_terminal(ddb: Any, tmp_path: Path) -> None:
    code, out, _ = run(["scan", "--config", policy_file(tmp_path)])
    assert code == 0 and "…" not in out
    row = next(line for line in out.splitlines() if STALE in line)
    assert LONG_WHO in row and "age >= hard_max_age 1d: the policy allows reaping an unknown holder" in row


def test_wide_never_cuts_on_a_terminal(ddb: Any, tmp_path: Path) -> None:
    code, out, _ = run(["scan", "--wide", "--config", policy_file(tmp_path)], out=Tty())
    assert code == 0 and "…" not in out and LONG_WHO in out


def test_terminal_cuts_at_a_word_boundary(ddb: Any, tmp_path: Path) -> None:
    code, out, _ = run(["scan", "--config", policy_file(tmp_path)], out=Tty())
    assert code == 0
    row = next(line for line in out.splitlines() if STALE in line)
    assert "age >= hard_max_age 1d: the policy allows reaping an…" in row
    words = "age >= hard_max_age 1d: the policy allows reaping an unknown holder".split()
    cut = row.split("would_reap", 1)[1].strip().rstrip("…").split()
    assert cut == words[: len(cut)], "every word is whole"
    assert report_mod._clip("acme-tf-state/env:/staging/services/api/terraform.tfstate", 30) == "acme-tf-state/env:/staging/…"


def test_kept_locks_show_their_age_before_the_age_check(ddb: Any, tmp_path: Path) -> None:
    code, out, _ = run(["scan", "--json", "--config", policy_file(tmp_path)])
    entry = next(e for e in json.loads(out)["locks"] if e["lock_path"] == COPIED)
    assert entry["outcome"] == "kept" and entry["age_seconds"] == pytest.approx(2 * 86400, abs=120)
    code, out, _ = run(["scan", "--config", policy_file(tmp_path)])
    row = next(line for line in out.splitlines() if COPIED in line)
    assert "  2d  " in row


class AliveChecker:
    def check(self, lock: Any, now: datetime) -> LivenessFact:
        return LivenessFact(state=Liveness.ALIVE, reason="ci: job 'plan' is in_progress", checkers=("ci",))

    def stats(self) -> dict[str, Any]:
        return {}


def test_a_kept_lock_leads_with_its_keep_reason(ddb: Any, tmp_path: Path) -> None:
    def build(policy: Any, progress: Any = None) -> Any:
        return build_reaper(policy, progress=progress, liveness=AliveChecker())

    code, out, _ = run(["scan", "--config", policy_file(tmp_path)], build=build)
    row = next(line for line in out.splitlines() if STALE in line)
    assert row.endswith("holder alive: ci: job 'plan' is in_progress (past hard_max_age 1d: alert)")
    code, out, _ = run(["scan", "--config", policy_file(tmp_path)], build=build, out=Tty())
    row = next(line for line in out.splitlines() if STALE in line)
    assert row.endswith("(past hard_max_age 1d: alert)"), "the alert note is never cut off"


def test_deleted_is_said_once(ddb: Any, tmp_path: Path) -> None:
    code, out, err = run(["reap", "--config", policy_file(tmp_path), "--enforce"])
    assert code == 0, err
    assert f"dynamodb:{TABLE}: deleted {STALE} (condition Info = seen)" in err
    assert "deleted (deleted" not in err + out


def test_liveness_line_names_what_it_counts() -> None:
    rep = RunReport(run_id="r", mode="report", started_at="t", max_deletes_per_run=1, liveness_api_calls={
        "total": 14, "not_modified": 0,
        "by_kind": {"claims.query": 6, "github.attempt_jobs": 3, "gitlab.job": 1, "gitlab.live_jobs": 2,
                    "gitlab.finished_jobs": 2}})
    line = next(ln for ln in rep.render_table().splitlines() if ln.startswith("liveness:"))
    assert line == ("liveness: 8 CI API calls (github.attempt_jobs 3, gitlab.finished_jobs 2, gitlab.job 1, "
                    "gitlab.live_jobs 2; 0 answered 304 Not Modified), 6 claim-table reads")
    rep.liveness_api_calls = {"total": 2, "by_kind": {"s3.head_object": 2}, "not_modified": 0}
    assert "liveness: 2 state-file HeadObject calls" in rep.render_table()


# ---------------------------------------------------------------- the demo's wording
def _entry(**kw: Any) -> dict[str, Any]:
    base = dict(store="s", key="k", lock_path="p", lock_id="i", operation="o", who="w", created=None,
                age_seconds=None, decision="keep", outcome=Outcome.KEPT, reasons=["r"])
    base.update(kw)
    return LockEntry(**base).model_dump(mode="json")


def test_demo_gives_the_real_reason_a_lock_was_never_a_candidate() -> None:
    for flag, words in (("excluded", "excluded by the policy"), ("path_mismatch", "suspicious item"),
                        ("unparseable", "unparseable"), ("future_created", "Created is in the future")):
        text = demo.verdict(_entry(flags=[flag]))
        assert words in text, (flag, text)
        assert "past max_age" not in text
    young = demo.verdict(_entry(reasons=["age 4m is below the min_age floor 15m"]))
    assert "younger than" in young


def test_demo_uses_the_reports_generic_tails() -> None:
    assert demo.GENERIC_REASON_TAILS is report_mod.GENERIC_REASON_TAILS
    assert not hasattr(demo, "_GENERIC")
    lines = demo.why_lines(_entry(outcome=Outcome.REAPED, liveness="dead",
                                  reasons=["age 8h >= max_age 6h", "deleted (condition Info = seen)"]))
    assert not any("deleted (condition" in ln for ln in lines)


def test_demo_listing_calls_the_path_lock_path() -> None:
    now = datetime.now(timezone.utc)
    text = demo.lock_listing(demo.seed_items(now), claimed=set())
    header = text.splitlines()[0]
    assert header.startswith("LOCK PATH (bucket/state key)") and "LOCK ID" not in header
