"""The Lambda handler: Powertools decorators, event override, run report, EMF metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import create_lock_table, digest_item, info_json, lock_item
from reaper.report import METRIC_DURATION, METRICS
from testkit import FakeLambdaContext

ROOT = Path(__file__).resolve().parent.parent
TABLE = "terraform-locks"
STALE = "corp-tfstate/prod/app/terraform.tfstate"
FRESH = "corp-tfstate/dev/app/terraform.tfstate"
SCHEDULER_EVENT = {  # what an EventBridge Scheduler / rule delivers, plus our optional override
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-11-22T12:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/lock-reaper"],
    "detail": {},
}


@pytest.fixture
def lambda_env(aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(ddb, TABLE)
    for path, age in ((STALE, timedelta(days=2)), (FRESH, timedelta(minutes=2))):
        ddb.put_item(TableName=TABLE, Item=lock_item(path, info_json(path, age, now)))
        ddb.put_item(TableName=TABLE, Item=digest_item(path))
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="audit-bucket")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"stores: [{{type: dynamodb, table: {TABLE}}}]\n"
        "rules: [{name: default, match: '*', max_age: 6h, hard_max_age: 1d}]\n"
        "alerts: {metrics: {namespace: Ops/LockReaper}}\n"
    )
    monkeypatch.setenv("REAPER_POLICY_FILE", str(policy))
    monkeypatch.setenv("REAPER_AUDIT_BUCKET", "audit-bucket")  # as the stack sets it
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "lock-reaper")
    from reaper.observability import metrics

    metrics.clear_metrics()
    yield {"ddb": ddb, "s3": s3, "policy": policy}
    metrics.clear_metrics()


def lock_present(ddb: Any, path: str) -> bool:
    return "Item" in ddb.get_item(TableName=TABLE, Key={"LockID": {"S": path}})


def emf_documents(stdout: str) -> list[dict[str, Any]]:
    docs = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{") and '"_aws"' in line:
            doc = json.loads(line)
            if "CloudWatchMetrics" in doc.get("_aws", {}):
                docs.append(doc)
    return docs


def test_import_reaper_handler_in_a_clean_interpreter() -> None:
    code = "import reaper.handler as h; print(callable(h.lambda_handler))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_handler_returns_the_run_report(lambda_env, capsys: pytest.CaptureFixture[str]) -> None:
    from reaper.handler import lambda_handler

    result = lambda_handler(SCHEDULER_EVENT, FakeLambdaContext())
    assert isinstance(result, dict)
    json.dumps(result)  # a JSON-serialisable return value
    assert result["mode"] == "report"
    assert {e["lock_path"]: e["outcome"] for e in result["locks"]} == {STALE: "would_reap", FRESH: "kept"}
    assert result["summary"]["digests_skipped"] == 2
    assert lock_present(lambda_env["ddb"], STALE)


def test_event_mode_enforce_overrides_the_policy(lambda_env, capsys: pytest.CaptureFixture[str]) -> None:
    from reaper.handler import lambda_handler

    result = lambda_handler({**SCHEDULER_EVENT, "mode": "enforce"}, FakeLambdaContext())
    assert result["mode"] == "enforce"
    reaped = [e for e in result["locks"] if e["outcome"] == "reaped"]
    assert [e["lock_path"] for e in reaped] == [STALE]
    assert reaped[0]["audit_ref"].startswith("s3://audit-bucket/lock-reaper/audit/")
    assert not lock_present(lambda_env["ddb"], STALE)
    assert lock_present(lambda_env["ddb"], FRESH)
    assert lock_present(lambda_env["ddb"], f"{STALE}-md5")
    objects = [o["Key"] for o in lambda_env["s3"].list_objects_v2(Bucket="audit-bucket")["Contents"]]
    records = [k for k in objects if not k.startswith("lock-reaper/audit/runs/")]
    assert len(records) == 1, objects  # the audit record; beside the run's kept report:
    assert [k for k in objects if k.startswith("lock-reaper/audit/runs/")] == [
        f"lock-reaper/audit/runs/{result['started_at'][:10].replace('-', '/')}/{result['run_id']}.json"]


@pytest.mark.parametrize("event", [{"mode": "delete"}, {"mode": "ENFORCE"}, {"mode": 1}])
def test_invalid_mode_is_rejected_clearly(lambda_env, event: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from reaper.handler import lambda_handler
    from reaper.service import InvalidEvent

    with pytest.raises(InvalidEvent) as exc_info:
        lambda_handler({**SCHEDULER_EVENT, **event}, FakeLambdaContext())
    msg = str(exc_info.value)
    assert msg.startswith("invalid event: mode:")
    assert "'report' or 'enforce'" in msg and repr(event["mode"]) in msg
    assert "errors.pydantic.dev" not in msg
    assert lock_present(lambda_env["ddb"], STALE)


def test_bad_policy_fails_the_invocation(lambda_env, capsys: pytest.CaptureFixture[str]) -> None:
    from reaper.policy import ConfigError
    from reaper.handler import lambda_handler

    lambda_env["policy"].write_text("mode: sometimes\n")
    with pytest.raises(ConfigError, match="line 1: mode:"):
        lambda_handler(SCHEDULER_EVENT, FakeLambdaContext())


def test_handler_emits_emf_metrics(lambda_env, capsys: pytest.CaptureFixture[str]) -> None:
    from reaper.handler import lambda_handler

    capsys.readouterr()
    lambda_handler({**SCHEDULER_EVENT, "mode": "enforce"}, FakeLambdaContext())
    docs = emf_documents(capsys.readouterr().out)
    run_docs = [d for d in docs if METRICS["locks_scanned"] in d]
    assert len(run_docs) == 1, docs
    doc = run_docs[0]
    declared = doc["_aws"]["CloudWatchMetrics"][0]
    assert declared["Namespace"] == "Ops/LockReaper", "the policy's alerts.metrics.namespace"
    assert ["service"] in declared["Dimensions"] and doc["service"] == "lock-reaper"
    names = {m["Name"] for m in declared["Metrics"]}
    assert set(METRICS.values()) | {METRIC_DURATION} <= names

    def value(name: str) -> float:
        v = doc[name]
        return v[0] if isinstance(v, list) else v

    assert value(METRICS["locks_scanned"]) == 2
    assert value(METRICS["reaped"]) == 1
    assert value(METRICS["digests_skipped"]) == 2
    assert value(METRICS["errors"]) == 0


def test_logs_carry_the_lambda_context(lambda_env, capsys: pytest.CaptureFixture[str]) -> None:
    from reaper.handler import lambda_handler
    from reaper.observability import logger

    ctx = FakeLambdaContext(aws_request_id="0e5b1f3c-0000-4000-8000-000000000001")
    lambda_handler(SCHEDULER_EVENT, ctx)
    keys = logger.get_current_keys()
    assert keys["function_name"] == "lock-reaper"
    assert keys["function_request_id"] == ctx.aws_request_id
