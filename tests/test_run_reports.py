"""Kept run reports, the report command, the report-mode digest, delete-outcome records, AWS_REGION."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import create_lock_table, info_json, lock_item
from reaper.audit import OUTCOME_SCHEMA, LocalDirAuditSink, NotAnAuditRecord, validate_record
from reaper.cli import main
from reaper.engine import Reaper
from reaper.policy import parse_policy
from reaper.service import run_scheduled
from reaper.stores.memory import InMemoryLockStore

TABLE = "terraform-locks"
STALE = "corp-tfstate/prod/app/terraform.tfstate"
TOPIC = "arn:aws:sns:us-east-1:123456789012:lock-reaper"


@pytest.fixture
def setup(aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(ddb, TABLE)
    ddb.put_item(TableName=TABLE, Item=lock_item(STALE, info_json(STALE, timedelta(days=2), now)))
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="audit-bucket")
    boto3.client("sns", region_name="us-east-1").create_topic(Name="lock-reaper")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"stores: [{{type: dynamodb, table: {TABLE}}}]\n"
                      "rules: [{name: default, match: '*', max_age: 6h, hard_max_age: 1d}]\n"
                      "liveness: {state_activity: {enabled: false}}\n"
                      "alerts: {digest: {enabled: true}}\n")
    monkeypatch.setenv("REAPER_AUDIT_BUCKET", "audit-bucket")
    monkeypatch.setenv("REAPER_SNS_TOPIC_ARN", TOPIC)
    env = {"REAPER_POLICY_FILE": str(policy), "REAPER_AUDIT_BUCKET": "audit-bucket", "REAPER_SNS_TOPIC_ARN": TOPIC}
    return {"policy": policy, "env": env, "s3": s3}


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def alert(result: dict[str, Any], sink: str) -> dict[str, Any]:
    return next(a for a in result["alerts"] if a["sink"] == sink)


def test_each_run_keeps_its_report_and_report_reads_it_back(setup) -> None:
    first = run_scheduled({}, setup["env"])
    time.sleep(1.1)  # S3 LastModified has one-second steps: the second run is the latest
    second = run_scheduled({"mode": "enforce"}, setup["env"])
    day = second["started_at"][:10].replace("-", "/")
    keys = [o["Key"] for o in setup["s3"].list_objects_v2(Bucket="audit-bucket", Prefix="lock-reaper/audit/runs/")["Contents"]]
    assert f"lock-reaper/audit/runs/{day}/{first['run_id']}.json" in keys
    assert f"lock-reaper/audit/runs/{day}/{second['run_id']}.json" in keys
    assert alert(second, "run_report")["status"] == "sent"

    code, out, err = cli("report", "--config", str(setup["policy"]))
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"run {second['run_id']} (enforce mode)")
    assert STALE in out and "reaped" in out and "[enforce] 1 locks" in out
    code, out, _ = cli("report", first["run_id"], "--config", str(setup["policy"]), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["run_id"] == first["run_id"] and doc["locks"][0]["outcome"] == "would_reap"
    code, _, err = cli("report", "nosuchrun", "--config", str(setup["policy"]))
    assert code == 1 and "no run report for run nosuchrun" in err


def test_a_failed_report_write_is_reported_never_a_crash(setup) -> None:
    env = {**setup["env"], "REAPER_AUDIT_BUCKET": "no-such-bucket"}
    result = run_scheduled({"mode": "report"}, env)
    failed = alert(result, "run_report")
    assert failed["status"] == "error" and "NoSuchBucket" in failed["detail"]
    assert result["summary"]["alert_errors"] >= 1


def test_local_audit_dir_keeps_reports_too(setup, tmp_path: Path) -> None:
    policy = setup["policy"]
    policy.write_text(policy.read_text() + f"audit: {{local_dir: {tmp_path / 'audit'}}}\n")
    env = {k: v for k, v in setup["env"].items() if k != "REAPER_AUDIT_BUCKET"}
    result = run_scheduled({}, env)
    path = tmp_path / "audit" / "runs" / result["started_at"][:10].replace("-", "/") / f"{result['run_id']}.json"
    assert json.loads(path.read_text())["run_id"] == result["run_id"]


def test_the_digest_is_sent_in_report_mode_at_most_once_a_day(setup) -> None:
    first = run_scheduled({}, setup["env"])
    assert alert(first, "digest")["status"] == "sent", first["alerts"]
    marker = json.loads(setup["s3"].get_object(Bucket="audit-bucket", Key="lock-reaper/audit/runs/last-digest.json")["Body"].read())
    assert marker["run_id"] == first["run_id"] and marker["would_reap"] == 1
    second = run_scheduled({}, setup["env"])
    assert alert(second, "digest")["status"] == "skipped", "not twice in a day"
    enforce = run_scheduled({"mode": "enforce"}, setup["env"])
    assert alert(enforce, "digest")["status"] == "skipped", "report mode only"


def test_digest_message_lists_what_would_be_reaped() -> None:
    from reaper.report import RunReport
    from reaper.runs import digest_message

    store = InMemoryLockStore("memory:locks")
    now = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
    store.put_lock("tf/a", info_json("tf/a", timedelta(hours=3), now))
    policy = parse_policy("rules: [{match: '*', max_age: 1h, hard_max_age: 2h}]\nliveness: {state_activity: {enabled: false}}\n")
    report: RunReport = Reaper(policy, [store], clock=lambda: now).run(mode="report")
    subject, body = digest_message(report)
    assert "1 lock(s) would have been reaped" in subject and "tf/a" in body and "Nothing was deleted" in body


def test_a_failed_delete_leaves_an_outcome_record_beside_its_audit_record(tmp_path: Path) -> None:
    store = InMemoryLockStore("memory:locks")
    now = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
    store.put_lock("tf/a", info_json("tf/a", timedelta(hours=3), now))
    store.put_lock("tf/b", info_json("tf/b", timedelta(hours=3), now))

    def refuse(lock):  # type: ignore[no-untyped-def]
        if lock.key == "tf/a":
            raise RuntimeError("DeleteObject does not support IfMatch here")

    store.on_before_delete = refuse
    audit = LocalDirAuditSink(tmp_path)
    policy = parse_policy("rules: [{match: '*', max_age: 1h, hard_max_age: 2h}]\nliveness: {state_activity: {enabled: false}}\n")
    report = Reaper(policy, [store], clock=lambda: now, audit=audit).run(mode="enforce")
    by_key = {e.key: e for e in report.locks}
    assert by_key["tf/a"].outcome.value == "error" and by_key["tf/b"].outcome.value == "reaped"
    failed_ref = Path(by_key["tf/a"].audit_ref or "")
    outcome = failed_ref.with_name(failed_ref.name.removesuffix(".json") + ".outcome.json")
    doc = json.loads(outcome.read_text())
    assert doc["schema"] == OUTCOME_SCHEMA and doc["deleted"] is False and doc["result"] == "error"
    assert "IfMatch" in doc["detail"] and doc["audit_ref"] == str(failed_ref)
    ok_ref = Path(by_key["tf/b"].audit_ref or "")
    assert not ok_ref.with_name(ok_ref.name.removesuffix(".json") + ".outcome.json").exists(), "a deleted lock has none"
    with pytest.raises(NotAnAuditRecord, match="delete-outcome record"):
        validate_record(doc, str(outcome))


def test_aws_region_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    from reaper import aws

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert aws.client("dynamodb").meta.region_name == "eu-west-3"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert aws.client("dynamodb").meta.region_name == "eu-west-3", "AWS_REGION first, as on Lambda and in the AWS CLI"
    monkeypatch.delenv("AWS_REGION")
    assert aws.client("dynamodb").meta.region_name == "ap-south-1"
    assert aws.client("dynamodb", "us-west-2").meta.region_name == "us-west-2"
