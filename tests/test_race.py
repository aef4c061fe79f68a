"""The race from the issue: a lock is replaced between scan and delete.

The engine has decided to reap a stale DynamoDB lock (moto); just before its
conditional delete, a new Terraform run takes the lock. The delete must fail
its condition, the outcome must be "raced" naming the new holder, and the new
lock must still be there.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest

from devtools.locks import create_lock_table, digest_item, info_json, lock_item
from reaper.audit import LocalDirAuditSink
from reaper.policy import Policy
from reaper.engine import Reaper
from reaper.models import LockRecord, Outcome
from reaper.stores.dynamodb import DynamoDBLockStore
from testkit import InterceptDelete

TABLE = "terraform-locks"
PATH = "corp-tfstate/prod/network/terraform.tfstate"
NEW_ID = "7c1d9e0a-5b3f-4e21-a8c4-19d0f6b2e3a7"
NEW_WHO = "runner@fv-az112-404"

POLICY = Policy.model_validate(
    {"mode": "enforce", "rules": [{"match": "*", "max_age": "1h", "hard_max_age": "2h"}], "audit": {"local_dir": "unused"}}
)


def take_lock_like_terraform(client: Any, info: str) -> None:
    """Terraform's Lock: PutItem with attribute_not_exists(LockID)."""
    client.put_item(TableName=TABLE, Item=lock_item(PATH, info), ConditionExpression="attribute_not_exists(LockID)")


def run_race(client: Any, now: datetime, clock, tmp_path, interfere) -> tuple[Any, str]:
    create_lock_table(client, TABLE)
    old = info_json(PATH, timedelta(hours=5), now, who="runner@killed-host")
    take_lock_like_terraform(client, old)
    client.put_item(TableName=TABLE, Item=digest_item(PATH))
    store = InterceptDelete(DynamoDBLockStore(client, TABLE), interfere)
    report = Reaper(POLICY, [store], clock, audit=LocalDirAuditSink(tmp_path)).run()
    return report, old


def _replace_with_new_holder(client: Any, now: datetime):
    new = info_json(PATH, timedelta(0), now, who=NEW_WHO, id_=NEW_ID, operation="OperationTypeApply", digits=9)

    def interfere(lock: LockRecord) -> None:
        # the stale holder's lock is released (e.g. `terraform force-unlock`) and a new run takes it
        client.delete_item(TableName=TABLE, Key={"LockID": {"S": lock.key}})
        take_lock_like_terraform(client, new)

    return new, interfere


def _check_raced(client: Any, report: Any, new: str) -> None:
    (entry,) = report.locks
    assert entry.outcome is Outcome.RACED
    assert entry.decision == "reap"
    assert entry.current_holder == {"id": NEW_ID, "who": NEW_WHO}
    assert any(f"raced: a new lock {NEW_ID} by {NEW_WHO}" in r for r in entry.reasons)
    assert entry.audit_ref, "the audit record was written before the attempt"
    item = client.get_item(TableName=TABLE, Key={"LockID": {"S": PATH}}, ConsistentRead=True)["Item"]
    assert item["Info"]["S"] == new, "the new holder's lock is untouched"
    assert "Item" in client.get_item(TableName=TABLE, Key={"LockID": {"S": f"{PATH}-md5"}})
    assert report.summary.outcomes["raced"] == 1 and report.summary.outcomes["reaped"] == 0
    assert report.exit_code == 0, "a race is a normal outcome, not an error"
    assert "1 raced" in report.summary_line()


def test_lock_replaced_between_scan_and_delete_is_raced(aws, now: datetime, clock, tmp_path) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1")
    new, interfere = _replace_with_new_holder(client, now)
    report, _ = run_race(client, now, clock, tmp_path, interfere)
    _check_raced(client, report, new)


@pytest.mark.e2e
def test_race_over_http_against_moto_server(moto_env, now: datetime, clock, tmp_path) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=moto_env.endpoint)
    new, interfere = _replace_with_new_holder(client, now)
    report, _ = run_race(client, now, clock, tmp_path, interfere)
    _check_raced(client, report, new)


def test_lock_released_between_scan_and_delete_is_gone(aws, now: datetime, clock, tmp_path) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1")

    def release(lock: LockRecord) -> None:
        client.delete_item(TableName=TABLE, Key={"LockID": {"S": lock.key}})

    report, _ = run_race(client, now, clock, tmp_path, release)
    (entry,) = report.locks
    assert entry.outcome is Outcome.GONE and entry.current_holder is None
    assert "Item" not in client.get_item(TableName=TABLE, Key={"LockID": {"S": PATH}})
    assert report.exit_code == 0


def test_without_interference_the_lock_is_reaped(aws, now: datetime, clock, tmp_path) -> None:
    """The control case: the same set-up reaps when nobody races."""
    client = boto3.client("dynamodb", region_name="us-east-1")
    report, _ = run_race(client, now, clock, tmp_path, lambda lock: None)
    assert report.locks[0].outcome is Outcome.REAPED
    assert "Item" not in client.get_item(TableName=TABLE, Key={"LockID": {"S": PATH}})
