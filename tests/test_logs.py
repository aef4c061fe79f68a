"""The Lambda's logs (issue 14): Powertools JSON on stdout, the reaper.* loggers routed through it,
one summary line per run, one line per lock worth a look, each error once; one LOG_LEVEL."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import create_lock_table, digest_item, info_json, lock_item
from testkit import FakeLambdaContext

TABLE = "terraform-locks"
STALE = "corp-tfstate/prod/app/terraform.tfstate"
FRESH = "corp-tfstate/dev/app/terraform.tfstate"


@pytest.fixture
def env(aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(ddb, TABLE)
    for path, age in ((STALE, timedelta(days=2)), (FRESH, timedelta(minutes=2))):
        ddb.put_item(TableName=TABLE, Item=lock_item(path, info_json(path, age, now)))
        ddb.put_item(TableName=TABLE, Item=digest_item(path))
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="audit-bucket")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"stores: [{{type: dynamodb, table: {TABLE}}}, {{type: dynamodb, table: missing-table}}]\n"
        "rules: [{name: default, match: '*', max_age: 6h, hard_max_age: 1d}]\n"
        "liveness: {state_activity: {enabled: false}}\n"
    )
    monkeypatch.setenv("REAPER_POLICY_FILE", str(policy))
    monkeypatch.setenv("REAPER_AUDIT_BUCKET", "audit-bucket")
    from reaper.observability import metrics

    metrics.clear_metrics()
    yield {"ddb": ddb}
    metrics.clear_metrics()


def json_lines(stdout: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [d for d in docs if "_aws" not in d]  # not the EMF metrics document


def invoke(event: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from reaper.handler import lambda_handler

    capsys.readouterr()
    result = lambda_handler(event, FakeLambdaContext())
    out = capsys.readouterr().out
    print(out)  # shown with -s / on failure: the lines pasted in the closing note come from here
    return result, json_lines(out)


def test_one_summary_line_one_line_per_lock_worth_a_look_each_error_once(env, capsys) -> None:
    result, lines = invoke({"mode": "enforce"}, capsys)
    summaries = [d for d in lines if d["message"] == "run summary"]
    assert len(summaries) == 1
    s = summaries[0]
    assert s["level"] == "INFO" and s["service"] == "lock-reaper" and s["function_request_id"] == FakeLambdaContext.aws_request_id
    assert s["run_id"] == result["run_id"] and s["mode"] == "enforce" and s["status"] == "completed"
    assert s["outcomes"]["reaped"] == 1 and s["outcomes"]["kept"] == 1
    assert s["stores"] == [
        {"name": f"dynamodb:{TABLE}", "status": "ok", "items": 4, "locks": 2},
        {"name": "dynamodb:missing-table", "status": "error", "items": 0, "locks": 0, "error_code": "ResourceNotFoundException"},
    ]
    assert isinstance(s["api_calls"], int) and s["duration_seconds"] >= 0
    assert s["alerts"]["run_report"] == "sent"

    locks = [d for d in lines if d["message"] == "lock"]
    assert [d["lock_path"] for d in locks] == [STALE], "a young kept lock has no line"
    lock = locks[0]
    for key in ("store", "lock_path", "lock_id", "who", "age_seconds", "rule", "liveness", "decision",
                "outcome", "reasons", "reason_codes", "audit_ref", "run_id"):
        assert key in lock, key  # (evidence_url too, when there is one: Powertools drops keys that are None)
    assert lock["outcome"] == "reaped" and lock["decision"] == "reap" and lock["rule"] == "default"
    assert lock["audit_ref"].startswith("s3://audit-bucket/")
    assert "item" not in lock and "token" not in lock, "never the lock item itself"

    errors = [d for d in lines if d["level"] == "ERROR"]
    assert len(errors) == 1, errors
    assert errors[0]["message"] == "store error" and errors[0]["store"] == "dynamodb:missing-table"
    assert errors[0]["error_code"] == "ResourceNotFoundException"
    assert all(d["name"].startswith("reaper") for d in lines if "name" in d), "the reaper.* loggers, routed"


def test_report_mode_logs_the_would_reap(env, capsys) -> None:
    _, lines = invoke({}, capsys)
    (lock,) = [d for d in lines if d["message"] == "lock"]
    assert lock["outcome"] == "would_reap" and "report_mode" in lock["reason_codes"]


def test_one_log_level_controls_them_all(env, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "ERROR")
    _, lines = invoke({}, capsys)
    assert lines and all(d["level"] == "ERROR" for d in lines), [d["message"] for d in lines]
    from reaper.observability import lambda_logging

    monkeypatch.setenv("LOG_LEVEL", "debug")
    capsys.readouterr()
    with lambda_logging():
        logging.getLogger("reaper.stores.probe").debug("probe %s", 1)
    (line,) = json_lines(capsys.readouterr().out)
    assert line["level"] == "DEBUG" and line["message"] == "probe 1" and line["name"] == "reaper.stores.probe"
    monkeypatch.delenv("LOG_LEVEL")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
    _, lines = invoke({}, capsys)
    assert {d["level"] for d in lines} <= {"WARNING", "ERROR"}
    monkeypatch.delenv("POWERTOOLS_LOG_LEVEL")
    invoke({}, capsys)


def test_the_reaper_logger_is_restored_after_an_invocation(env, capsys) -> None:
    before = logging.getLogger("reaper")
    saved = (list(before.handlers), before.propagate, before.level)
    invoke({}, capsys)
    after = logging.getLogger("reaper")
    assert (list(after.handlers), after.propagate, after.level) == saved, "the CLI and other tests share the process"
