"""`python -m reaper`: scan / reap / restore, --json shape, exit codes, and one run over HTTP."""

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

from devtools.locks import create_lock_table, digest_item, info_json, lock_item
from reaper.cli import main
from reaper.models import Outcome
from reaper.wiring import Deps, build_reaper

ROOT = Path(__file__).resolve().parent.parent
TABLE = "terraform-locks"
ENTRY_KEYS = {"store", "lock_path", "lock_id", "operation", "who", "created", "age_seconds", "liveness", "decision",
              "outcome", "reasons"}
STALE = "corp-tfstate/prod/app/terraform.tfstate"
FRESH = "corp-tfstate/dev/app/terraform.tfstate"
PLAN = "corp-tfstate/env:/staging/net/terraform.tfstate"
BROKEN = "corp-tfstate/broken/terraform.tfstate"


def seed(client: Any, now: datetime) -> dict[str, str]:
    create_lock_table(client, TABLE)
    infos = {
        STALE: info_json(STALE, timedelta(days=3), now),
        FRESH: info_json(FRESH, timedelta(minutes=3), now, digits=9),
        PLAN: info_json(PLAN, timedelta(hours=1), now, operation="OperationTypePlan", who="@ci-host", digits=0),
        BROKEN: "{\"ID\": ",
    }
    for path, info in infos.items():
        client.put_item(TableName=TABLE, Item=lock_item(path, info))
        client.put_item(TableName=TABLE, Item=digest_item(path))
    return infos


def write_policy(tmp_path: Path, mode: str = "report", extra: str = "", table: str = TABLE) -> Path:
    f = tmp_path / "policy.yaml"
    f.write_text(
        f"mode: {mode}\n"
        f"stores:\n  - {{type: dynamodb, table: {table}}}\n"
        "rules:\n  - {name: default, match: '*', max_age: 6h, hard_max_age: 1d}\n"
        f"audit: {{local_dir: '{tmp_path / 'audit'}'}}\n" + extra
    )
    return f


def run(args: list[str], **kw: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(args, out=out, err=err, **kw)
    return code, out.getvalue(), err.getvalue()


def lock_info(client: Any, path: str) -> str | None:
    item = client.get_item(TableName=TABLE, Key={"LockID": {"S": path}}, ConsistentRead=True).get("Item")
    return item["Info"]["S"] if item else None


@pytest.fixture
def ddb(aws) -> Any:
    return boto3.client("dynamodb", region_name="us-east-1")


# ---------------------------------------------------------------- scan
def test_scan_json_document(ddb: Any, tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    infos = seed(ddb, now)
    code, out, err = run(["scan", "--config", str(write_policy(tmp_path)), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["mode"] == "report"
    assert {s["name"]: s["status"] for s in doc["stores"]} == {f"dynamodb:{TABLE}": "ok"}
    assert len(doc["locks"]) == 4
    for e in doc["locks"]:
        assert ENTRY_KEYS <= set(e), ENTRY_KEYS - set(e)
        assert e["store"] == f"dynamodb:{TABLE}"
        assert e["decision"] in ("keep", "reap") and e["outcome"] in {o.value for o in Outcome}
        assert isinstance(e["reasons"], list) and e["reasons"] and all(isinstance(r, str) for r in e["reasons"])
        assert e["liveness"] in ("alive", "dead", "unknown", "not_checked")
    by_path = {e["lock_path"]: e for e in doc["locks"]}
    stale = by_path[STALE]
    original = json.loads(infos[STALE])
    assert stale["lock_id"] == original["ID"] and stale["who"] == original["Who"]
    assert stale["operation"] == "OperationTypeApply" and stale["created"].startswith(original["Created"][:19])
    assert stale["age_seconds"] == pytest.approx(3 * 86400, abs=120)
    assert stale["decision"] == "reap" and stale["outcome"] == "would_reap" and stale["liveness"] == "unknown"
    assert by_path[FRESH]["outcome"] == "kept" and by_path[PLAN]["who"] == "@ci-host"
    broken = by_path[BROKEN]
    assert broken["lock_id"] == "" and broken["created"] is None and broken["age_seconds"] is None
    assert "unparseable" in broken["reasons"][0]

    summary = doc["summary"]
    assert summary["outcomes"] == {"kept": 3, "would_reap": 1, "reaped": 0, "raced": 0, "gone": 0, "error": 0}
    assert summary["locks_scanned"] == 4 and summary["digests_skipped"] == 4 and summary["unparseable"] == 1
    assert doc["alerts"] == [], "scan sends no alerts"


def test_scan_never_deletes_even_in_enforce_mode(ddb: Any, tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    infos = seed(ddb, now)
    code, out, _ = run(["scan", "--config", str(write_policy(tmp_path, mode="enforce")), "--json"])
    assert code == 0
    doc = json.loads(out)
    assert doc["mode"] == "report"
    assert {e["lock_path"]: e["outcome"] for e in doc["locks"]}[STALE] == "would_reap"
    assert all(lock_info(ddb, p) == i for p, i in infos.items())
    assert not (tmp_path / "audit").exists()


def test_scan_table_output(ddb: Any, tmp_path: Path) -> None:
    seed(ddb, datetime.now(timezone.utc))
    code, out, err = run(["scan", "--config", str(write_policy(tmp_path))])
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["STORE", "LOCK", "PATH", "LOCK", "ID", "OPERATION", "WHO", "AGE", "LIVENESS", "DECISION",
                                "OUTCOME", "REASON"]
    assert lines[-1] == "[report] 4 locks, 4 digests skipped, 3 kept, 1 would_reap"
    row = next(line for line in lines if STALE in line)
    assert "3d" in row and "would_reap" in row and "Apply" in row
    assert f"dynamodb:{TABLE}: scanning" in err, "progress goes to stderr"
    code, out, err = run(["scan", "--config", str(write_policy(tmp_path)), "--quiet"])
    assert err == ""


# ---------------------------------------------------------------- reap and restore
def test_reap_report_mode_by_default(ddb: Any, tmp_path: Path) -> None:
    infos = seed(ddb, datetime.now(timezone.utc))
    code, out, _ = run(["reap", "--config", str(write_policy(tmp_path)), "--json"])
    assert code == 0
    assert json.loads(out)["summary"]["outcomes"]["would_reap"] == 1
    assert lock_info(ddb, STALE) == infos[STALE]


def test_reap_enforce_then_restore(ddb: Any, tmp_path: Path) -> None:
    infos = seed(ddb, datetime.now(timezone.utc))
    policy = str(write_policy(tmp_path))
    code, out, err = run(["reap", "--config", policy, "--enforce", "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["mode"] == "enforce"
    reaped = [e for e in doc["locks"] if e["outcome"] == "reaped"]
    assert [e["lock_path"] for e in reaped] == [STALE]
    assert doc["summary"]["outcomes"]["reaped"] == 1
    assert lock_info(ddb, STALE) is None
    digest = ddb.get_item(TableName=TABLE, Key={"LockID": {"S": f"{STALE}-md5"}}).get("Item")
    assert digest and "Digest" in digest, "the digest is kept"
    assert all(lock_info(ddb, p) == infos[p] for p in (FRESH, PLAN, BROKEN))

    ref = reaped[0]["audit_ref"]
    record = json.loads(Path(ref).read_text())
    assert record["item"]["Info"]["S"] == infos[STALE] and record["lock_path"] == STALE

    code, out, err = run(["restore", "--config", policy, ref])
    assert code == 0, err
    assert out.startswith(f"restored {STALE} into {TABLE}")
    assert lock_info(ddb, STALE) == infos[STALE]

    # a second restore is refused and changes nothing
    code, out, err = run(["restore", "--config", policy, ref])
    assert code == 1
    assert "refused" in err and STALE in err and "not overwritten" in err
    assert lock_info(ddb, STALE) == infos[STALE]


def test_restore_never_overwrites_a_newer_lock(ddb: Any, tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    seed(ddb, now)
    policy = str(write_policy(tmp_path))
    code, out, _ = run(["reap", "--config", policy, "--enforce", "--json"])
    ref = next(e["audit_ref"] for e in json.loads(out)["locks"] if e["outcome"] == "reaped")
    newer = info_json(STALE, timedelta(0), now, who="deploy@runner-3", id_="12345678-9abc-def0-1234-56789abcdef0")
    ddb.put_item(TableName=TABLE, Item=lock_item(STALE, newer))
    code, out, err = run(["restore", "--config", policy, ref, "--json"])
    assert code == 1
    result = json.loads(out)
    assert result["status"] == "refused" and "12345678-9abc-def0-1234-56789abcdef0" in result["message"]
    assert "deploy@runner-3" in result["message"]
    assert lock_info(ddb, STALE) == newer


def test_restore_from_s3_audit(ddb: Any, tmp_path: Path) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="audit-bucket")
    infos = seed(ddb, datetime.now(timezone.utc))
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"stores: [{{type: dynamodb, table: {TABLE}}}]\n"
        "rules: [{match: '*', max_age: 6h, hard_max_age: 1d}]\n"
        "audit: {s3_bucket: audit-bucket, prefix: audit}\n"
    )
    code, out, _ = run(["reap", "--config", str(policy), "--enforce", "--json"])
    assert code == 0
    ref = next(e["audit_ref"] for e in json.loads(out)["locks"] if e["outcome"] == "reaped")
    assert ref.startswith("s3://audit-bucket/audit/")
    key = ref.removeprefix("s3://audit-bucket/")
    assert json.loads(s3.get_object(Bucket="audit-bucket", Key=key)["Body"].read())["lock_path"] == STALE
    assert lock_info(ddb, STALE) is None
    code, out, err = run(["restore", "--config", str(policy), ref])
    assert code == 0, err
    assert lock_info(ddb, STALE) == infos[STALE]

    # a local copy of the record restores too, although the policy only names the bucket
    local = tmp_path / "copy.json"
    local.write_bytes(s3.get_object(Bucket="audit-bucket", Key=key)["Body"].read())
    ddb.delete_item(TableName=TABLE, Key={"LockID": {"S": STALE}})
    code, out, err = run(["restore", "--config", str(policy), str(local)])
    assert code == 0, err
    assert lock_info(ddb, STALE) == infos[STALE]


def test_restore_bad_refs(ddb: Any, tmp_path: Path) -> None:
    seed(ddb, datetime.now(timezone.utc))
    policy = str(write_policy(tmp_path))
    code, _, err = run(["restore", "--config", policy, str(tmp_path / "missing.json")])
    assert code == 2 and "error:" in err
    junk = tmp_path / "junk.json"
    junk.write_text(json.dumps({"schema": 99}))
    code, _, err = run(["restore", "--config", policy, str(junk)])
    assert code == 1 and "schema 99 is not supported" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": 1, "store": "dynamodb:elsewhere", "lock_path": "x", "item": {}, "restorable": True}))
    code, _, err = run(["restore", "--config", policy, str(other)])
    assert code == 1 and "dynamodb:elsewhere" in err and "not in the policy's stores" in err


# ---------------------------------------------------------------- exit codes
def test_exit_1_when_a_store_errors(ddb: Any, tmp_path: Path) -> None:
    seed(ddb, datetime.now(timezone.utc))
    f = tmp_path / "policy.yaml"
    f.write_text(f"stores:\n  - {{type: dynamodb, table: {TABLE}}}\n  - {{type: dynamodb, table: missing-table}}\n")
    code, out, err = run(["scan", "--config", str(f), "--json"])
    assert code == 1
    doc = json.loads(out)
    assert [s["status"] for s in doc["stores"]] == ["ok", "error"]
    assert "missing-table" in doc["stores"][1]["error"] and "does not exist" in doc["stores"][1]["error"]
    assert doc["summary"]["store_errors"] == 1 and doc["summary"]["locks_scanned"] == 4
    code, out, _ = run(["scan", "--config", str(f)])
    assert code == 1 and "STORE ERROR dynamodb:missing-table" in out and "1 store errors" in out


def test_exit_1_when_a_lock_errors(ddb: Any, tmp_path: Path) -> None:
    seed(ddb, datetime.now(timezone.utc))
    f = tmp_path / "policy.yaml"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the audit directory should be")
    f.write_text(f"stores: [{{type: dynamodb, table: {TABLE}}}]\nrules: [{{match: '*', max_age: 6h, hard_max_age: 1d}}]\n"
                 f"audit: {{local_dir: '{blocker}'}}\n")
    code, out, _ = run(["reap", "--config", str(f), "--enforce", "--json"])  # the audit write fails: no delete
    assert code == 1
    doc = json.loads(out)
    assert doc["summary"]["outcomes"]["error"] == 1
    assert lock_info(ddb, STALE) is not None


def test_exit_2_usage_and_config(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["frobnicate"], out=io.StringIO(), err=io.StringIO())
    assert exc_info.value.code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("stores: [{type: dynamodb, tabel: x}]\n")
    code, out, err = run(["reap", "--config", str(bad)])
    assert code == 2 and out == "" and "line 1: stores[0].tabel: unknown field" in err


def test_exit_2_without_region(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, _, err = run(["scan", "--config", str(write_policy(tmp_path))])
    assert code == 2 and "region" in err and "Traceback" not in err


# ---------------------------------------------------------------- a stable report
def test_json_report_is_stable(ddb: Any, tmp_path: Path) -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    seed(ddb, now)
    for i in range(30):
        p = f"corp-tfstate/many/{i}/terraform.tfstate"
        ddb.put_item(TableName=TABLE, Item=lock_item(p, info_json(p, timedelta(hours=i), now)))
    policy = write_policy(tmp_path)
    policy.write_text(policy.read_text().replace(f"table: {TABLE}}}", f"table: {TABLE}, segments: 4}}"))

    def build(p, progress=None):
        return build_reaper(p, Deps(clock=lambda: now), progress=progress)

    docs = []
    for _ in range(3):
        code, out, _ = run(["scan", "--config", str(policy), "--json"], build=build)
        assert code == 0
        doc = json.loads(out)
        doc.pop("run_id")
        docs.append(doc)
    assert docs[0] == docs[1] == docs[2]
    assert list(docs[0]) == ["mode", "started_at", "finished_at", "duration_seconds", "max_deletes_per_run", "stores",
                             "locks", "alerts", "summary", "liveness_api_calls", "status", "skipped_reason",
                             "late_writers", "watch"]
    keys = [(e["store"], e["lock_path"]) for e in docs[0]["locks"]]
    assert keys == sorted(keys), "locks are listed in a stable order"


# ---------------------------------------------------------------- over HTTP, as a user runs it
@pytest.mark.e2e
def test_python_m_reaper_against_moto_server(moto_env, tmp_path: Path) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=moto_env.endpoint)
    infos = seed(client, datetime.now(timezone.utc))
    policy = write_policy(tmp_path)
    env = {**os.environ, **moto_env.env(), "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reaper", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    scan = cli("scan", "--config", str(policy), "--json")
    assert scan.returncode == 0, scan.stderr
    assert json.loads(scan.stdout)["summary"]["outcomes"]["would_reap"] == 1
    assert lock_info(client, STALE) == infos[STALE]

    reap = cli("reap", "--config", str(policy), "--enforce")
    assert reap.returncode == 0, reap.stderr
    assert "1 reaped" in reap.stdout.splitlines()[-1]
    assert lock_info(client, STALE) is None
    assert lock_info(client, FRESH) == infos[FRESH]

    ref = next((tmp_path / "audit").rglob("*.json"))
    restore = cli("restore", "--config", str(policy), str(ref))
    assert restore.returncode == 0, restore.stderr
    assert lock_info(client, STALE) == infos[STALE]

    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: sometimes\n")
    validate = cli("validate", "--config", str(bad))
    assert validate.returncode == 2 and "line 1: mode:" in validate.stderr
