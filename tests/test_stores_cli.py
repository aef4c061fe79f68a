"""All four lock stores in one policy, end to end through the CLI.

DynamoDB and S3 lock files on moto_server (over HTTP), HCP Terraform and GitLab on
their local fakes. Every store's lock appears in ``scan --json`` with its store
named and goes through the same rules; ``reap --enforce`` audits and removes the
stale ones; the audit records are restorable where the store allows it, and the
HCP/GitLab records say they cannot be re-created (``restore`` refuses them).
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.fake_gitlab import FakeGitLab
from devtools.fake_hcp import FakeHCP
from devtools.locks import create_lock_table, digest_item, info_json, lock_item
from reaper.cli import main

pytestmark = pytest.mark.e2e

BUCKET, TABLE = "corp-tfstate", "terraform-locks"
NOW = datetime.now(timezone.utc)  # the CLI runs on the real clock
H = timedelta(hours=1)


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def world(moto_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    s3 = boto3.client("s3", region_name="us-east-1")
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    create_lock_table(ddb, TABLE)

    def s3_lock(state: str, age: timedelta, state_object: bool = False) -> None:
        if state_object:  # written just now: the state-activity checker would call the holder alive
            s3.put_object(Bucket=BUCKET, Key=state, Body=b'{"version": 4}')
        s3.put_object(Bucket=BUCKET, Key=state + ".tflock", Body=info_json(f"{BUCKET}/{state}", age, NOW).encode())

    ddb_path = f"{BUCKET}/legacy/terraform.tfstate"
    ddb.put_item(TableName=TABLE, Item=lock_item(ddb_path, info_json(ddb_path, 30 * H, NOW)))
    ddb.put_item(TableName=TABLE, Item=digest_item(ddb_path))
    s3_lock("lockfile/terraform.tfstate", 30 * H)
    s3_lock("young/terraform.tfstate", timedelta(minutes=20), state_object=True)
    pair = f"{BUCKET}/double/terraform.tfstate"
    pair_info = info_json(pair, 30 * H, NOW)
    s3.put_object(Bucket=BUCKET, Key="double/terraform.tfstate.tflock", Body=pair_info.encode())
    ddb.put_item(TableName=TABLE, Item=lock_item(pair, pair_info))

    hcp = FakeHCP().start()
    ws = hcp.add_workspace("acme", "app-prod")
    run_id = hcp.add_run(ws, "errored", {"planning-at": NOW - 5 * H, "errored-at": NOW - 4 * H}, created_at=NOW - 5 * H)
    hcp.lock(ws, "runs", run_id)
    gl = FakeGitLab()
    gl.start()
    gl.add_token("glpat-reaper", "lock-reaper-bot")
    gl.add_project("infra/network")
    gl.add_state("infra/network", "prod")
    gl.lock("infra/network", "prod", "8d2c1a6e-3f4b-9e01-7c55-1b2a3c4d5e6f", "alice", NOW - 30 * H)
    monkeypatch.setenv("HCP_TOKEN", hcp.token)
    monkeypatch.setenv("GITLAB_TOKEN", "glpat-reaper")

    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
mode: report
rules:
  - name: default
    match: "*"
    max_age: 3h
    hard_max_age: 1d
audit:
  local_dir: {tmp_path / 'audit'}
stores:
  - type: dynamodb
    table: {TABLE}
  - type: s3
    bucket: {BUCKET}
  - type: hcp
    base_url: {hcp.url}
    organizations: [acme]
    token_env: HCP_TOKEN
  - type: gitlab
    base_url: {gl.url}
    projects: [infra/network]
    token_env: GITLAB_TOKEN
""", encoding="utf-8")
    try:
        yield {"policy": str(policy), "s3": s3, "ddb": ddb, "hcp": hcp, "gl": gl, "ws": ws}
    finally:
        hcp.stop()
        gl.stop()


def test_every_store_in_scan_json_then_reap_and_restore(world: Any) -> None:
    hcp_name, gl_name = f"hcp:{world['hcp'].url[7:]}", f"gitlab:{world['gl'].url[7:]}"
    code, out, err = run(["scan", "--json", "--config", world["policy"]])
    assert code == 0, err
    doc = json.loads(out)
    got = {(e["store"], e["lock_path"]): e for e in doc["locks"]}
    assert set(got) == {
        (f"dynamodb:{TABLE}", f"{BUCKET}/legacy/terraform.tfstate"),
        (f"s3:{BUCKET}", f"{BUCKET}/lockfile/terraform.tfstate"),
        (f"s3:{BUCKET}", f"{BUCKET}/young/terraform.tfstate"),
        (f"s3:{BUCKET}", f"{BUCKET}/double/terraform.tfstate"),
        (hcp_name, "acme/app-prod"),
        (gl_name, "infra/network/prod"),
    }
    assert {s["name"] for s in doc["stores"]} == {f"dynamodb:{TABLE}", f"s3:{BUCKET}", hcp_name, gl_name}
    assert all(s["status"] == "ok" for s in doc["stores"]), doc["stores"]
    for (store, path), e in got.items():
        assert e["rule"] == "default", (store, e["reasons"])  # the same policy rules for every store
        assert e["restorable"] is (not store.startswith(("hcp:", "gitlab:")))
    assert got[(f"s3:{BUCKET}", f"{BUCKET}/young/terraform.tfstate")]["outcome"] == "kept"
    assert [t["store"] for t in got[(f"s3:{BUCKET}", f"{BUCKET}/double/terraform.tfstate")]["targets"]] == [
        f"s3:{BUCKET}", f"dynamodb:{TABLE}"]
    hcp_entry = got[(hcp_name, "acme/app-prod")]
    assert hcp_entry["outcome"] == "would_reap" and hcp_entry["liveness"] == "dead"
    assert any(ev["source"] == "hcp-runs" for ev in hcp_entry["evidence"])
    assert world["hcp"].calls("POST") == [], "scan never unlocks"

    code, out, err = run(["reap", "--enforce", "--json", "--config", world["policy"]])
    doc = json.loads(out)
    outcomes = {(e["store"], e["lock_path"]): e["outcome"] for e in doc["locks"]}
    assert code == 0, (err, doc["locks"])
    assert outcomes == {k: ("kept" if "young" in k[1] else "reaped") for k in got}
    assert not world["hcp"].workspaces[world["ws"]]["locked"]
    assert world["gl"].state("infra/network", "prod")["lock_xid"] is None

    records = {}
    for e in doc["locks"]:
        for ref in [t["audit_ref"] for t in e["targets"]] or [e["audit_ref"]]:
            if ref:
                rec = json.loads(Path(ref).read_text())
                records[(rec["store"], rec["lock_path"])] = (ref, rec)
    assert len(records) == 6  # five reaped locks, one of them in two stores
    for (store, _), (_, rec) in records.items():
        if store.startswith(("hcp:", "gitlab:")):
            assert rec["restorable"] is False and "cannot be re-created" in rec["restore_note"]
        else:
            assert rec["restorable"] is True and "restore_note" not in rec

    ref, _ = records[(hcp_name, "acme/app-prod")]
    code, out, err = run(["restore", "--config", world["policy"], ref])
    assert code == 1 and "cannot be re-created" in err
    ref, rec = records[(f"s3:{BUCKET}", f"{BUCKET}/lockfile/terraform.tfstate")]
    code, out, err = run(["restore", "--config", world["policy"], ref])
    assert code == 0, err
    body = world["s3"].get_object(Bucket=BUCKET, Key="lockfile/terraform.tfstate.tflock")["Body"].read().decode()
    assert body == rec["item"]["body"]
