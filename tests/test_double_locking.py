"""Double locking: one lock (one ID, one Path) in both the S3 lock file and the DynamoDB item.

The pair is ONE lock: one decision, one report entry listing both stores, one audit
record per copy, deletes in Terraform's order (lock file first, then the item),
each conditional. If the second delete races or fails, the run alerts loudly: the
state stays locked. In-process moto for both stores.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest

from devtools.locks import create_lock_table, digest_item, info_json, lock_item
from reaper.alerts import needs_sns, sns_message
from reaper.engine import Reaper
from reaper.models import Liveness, LivenessFact, LockRecord, Outcome
from reaper.pairing import PairIndex, pair_key
from reaper.stores.dynamodb import DynamoDBLockStore
from reaper.stores.s3 import S3LockFileStore
from testkit import InterceptDelete, ListAudit
from testkit import enforce_policy as policy

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
BUCKET, TABLE = "corp-tfstate", "terraform-locks"
STATE = "prod/app/terraform.tfstate"
PATH = f"{BUCKET}/{STATE}"
NEW_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


class CountingLiveness:
    def __init__(self, state: Liveness = Liveness.DEAD) -> None:
        self.state, self.calls = state, []

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        self.calls.append((lock.store, lock.key))
        return LivenessFact(state=self.state, reason=f"the CI run is {self.state.value}", checkers=("fake",))

    def stats(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def world(aws: None) -> dict[str, Any]:
    s3 = boto3.client("s3", region_name="us-east-1")
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    create_lock_table(ddb, TABLE)
    return {"s3": s3, "ddb": ddb}


def double_lock(w: dict[str, Any], state: str = STATE, age: timedelta = timedelta(hours=6), **kw: Any) -> str:
    """What Terraform >= 1.11 writes with use_lockfile and dynamodb_table: the same Info twice."""
    path = f"{BUCKET}/{state}"
    info = info_json(path, age, NOW, **kw)
    w["s3"].put_object(Bucket=BUCKET, Key=state + ".tflock", Body=info.encode())
    w["ddb"].put_item(TableName=TABLE, Item=lock_item(path, info))
    w["ddb"].put_item(TableName=TABLE, Item=digest_item(path))
    return info


def stores(w: dict[str, Any], log: list[str], before_ddb: Any = None, before_s3: Any = None,
           ddb_first: bool = True) -> list[Any]:
    s3 = InterceptDelete(S3LockFileStore(w["s3"], BUCKET), before_s3, log)
    ddb = InterceptDelete(DynamoDBLockStore(w["ddb"], TABLE), before_ddb, log)
    return [ddb, s3] if ddb_first else [s3, ddb]  # the policy's order must not matter


def ddb_info(w: dict[str, Any], path: str = PATH) -> str | None:
    item = w["ddb"].get_item(TableName=TABLE, Key={"LockID": {"S": path}}, ConsistentRead=True).get("Item")
    return item["Info"]["S"] if item else None


def s3_exists(w: dict[str, Any], state: str = STATE) -> bool:
    return w["s3"].list_objects_v2(Bucket=BUCKET, Prefix=state + ".tflock")["KeyCount"] == 1


# ---------------------------------------------------------------------------
def test_pair_is_one_decision_both_deleted_lock_file_first(world: dict[str, Any]) -> None:
    info = double_lock(world)
    log: list[str] = []
    liveness, audit = CountingLiveness(), ListAudit()
    report = Reaper(policy(), stores(world, log), clock=lambda: NOW, liveness=liveness, audit=audit).run()

    assert len(report.locks) == 1, [e.store for e in report.locks]
    e = report.locks[0]
    assert e.outcome is Outcome.REAPED, e.reasons
    assert log == [f"s3:{BUCKET}", f"dynamodb:{TABLE}"], "lock file first, then the item"
    assert len(liveness.calls) == 1, "one decision for the pair"
    assert e.store == f"s3:{BUCKET}" and e.lock_id == json.loads(info)["ID"]
    assert [(t.store, t.result) for t in e.targets] == [(f"s3:{BUCKET}", "deleted"), (f"dynamodb:{TABLE}", "deleted")]
    assert "double locking" in e.reasons[0]
    assert not s3_exists(world) and ddb_info(world) is None
    # the digest next to the item is untouched
    assert world["ddb"].get_item(TableName=TABLE, Key={"LockID": {"S": PATH + "-md5"}})["Item"]["Digest"]
    # one audit record per copy, both restorable, both naming the pair
    assert [r["store"] for r in audit.records] == [f"s3:{BUCKET}", f"dynamodb:{TABLE}"]
    assert all(r["restorable"] is True for r in audit.records)
    assert [r["double_lock"]["delete_order"] for r in audit.records] == [1, 2]
    assert [t.audit_ref for t in e.targets] == ["mem://1", "mem://2"] and e.audit_ref == "mem://1"
    assert report.summary.locks_scanned == 1 and report.exit_code == 0
    assert f"s3:{BUCKET} + dynamodb:{TABLE}" in report.render_table()

    # both copies come back from their audit records
    S3LockFileStore(world["s3"], BUCKET).restore(audit.records[0]["item"])
    DynamoDBLockStore(world["ddb"], TABLE).restore(audit.records[1]["item"])
    assert ddb_info(world) == info
    assert world["s3"].get_object(Bucket=BUCKET, Key=STATE + ".tflock")["Body"].read().decode() == info


def test_second_delete_raced_alerts_loudly_and_the_state_stays_locked(world: dict[str, Any]) -> None:
    double_lock(world)
    newer = info_json(PATH, timedelta(0), NOW, who="deploy@ci-runner-7", id_=NEW_ID)

    def replaced(lock: LockRecord) -> None:
        world["ddb"].put_item(TableName=TABLE, Item=lock_item(PATH, newer))

    log: list[str] = []
    audit = ListAudit()
    report = Reaper(policy(), stores(world, log, before_ddb=replaced), clock=lambda: NOW,
                    liveness=CountingLiveness(), audit=audit).run()
    e = report.locks[0]
    assert e.outcome is Outcome.ERROR
    assert "double_lock_partial" in e.flags
    loud = [r for r in e.reasons if "STAYS LOCKED" in r]
    assert loud and NEW_ID in loud[0] and "force-unlock" not in loud[0], "names the new holder, no unlock advice"
    assert [(t.store, t.result) for t in e.targets] == [(f"s3:{BUCKET}", "deleted"), (f"dynamodb:{TABLE}", "raced")]
    assert e.current_holder == {"id": NEW_ID, "who": "deploy@ci-runner-7"}
    assert not s3_exists(world) and ddb_info(world) == newer, "the new item is untouched"
    assert len(audit.audits) == 2, "both copies were recorded before any delete"
    assert [(o["store"], o["deleted"]) for o in audit.outcomes] == [(f"dynamodb:{TABLE}", False)], \
        "the raced copy's audit record has a record beside it saying it was not deleted"
    # loud: summary, exit code, SNS even without a reaped lock
    assert report.summary.double_lock_partial == 1 and report.exit_code == 1
    assert report.metric_values()["DoubleLockPartial"] == 1, "the stack's DoubleLockPartial alarm reads this metric"
    assert needs_sns(report)
    subject, body = sns_message(report)
    assert "STATE STILL LOCKED" in subject and "STILL LOCKED" in body
    assert "DOUBLE LOCKS HALF RELEASED" in report.summary_line()


def test_second_delete_failing_is_also_half_released(world: dict[str, Any]) -> None:
    double_lock(world)

    def throttled(lock: LockRecord) -> None:
        raise RuntimeError("ProvisionedThroughputExceededException")

    report = Reaper(policy(), stores(world, [], before_ddb=throttled), clock=lambda: NOW,
                    liveness=CountingLiveness(), audit=ListAudit()).run()
    e = report.locks[0]
    assert e.outcome is Outcome.ERROR and "double_lock_partial" in e.flags
    assert e.targets[1].result == "error" and "ProvisionedThroughput" in e.targets[1].detail
    assert any("STAYS LOCKED" in r and f"terraform force-unlock {e.lock_id}" in r for r in e.reasons)
    assert not s3_exists(world) and ddb_info(world) is not None


def test_second_copy_already_released_is_reaped(world: dict[str, Any]) -> None:
    double_lock(world)

    def released(lock: LockRecord) -> None:
        world["ddb"].delete_item(TableName=TABLE, Key={"LockID": {"S": PATH}})

    report = Reaper(policy(), stores(world, [], before_ddb=released), clock=lambda: NOW,
                    liveness=CountingLiveness(), audit=ListAudit()).run()
    e = report.locks[0]
    assert e.outcome is Outcome.REAPED and [t.result for t in e.targets] == ["deleted", "gone"]
    assert report.summary.double_lock_partial == 0


def test_first_delete_raced_leaves_the_item_alone(world: dict[str, Any]) -> None:
    info = double_lock(world)
    newer = info_json(PATH, timedelta(0), NOW, who="deploy@ci-runner-7", id_=NEW_ID)

    def replaced(lock: LockRecord) -> None:
        world["s3"].put_object(Bucket=BUCKET, Key=STATE + ".tflock", Body=newer.encode())

    log: list[str] = []
    report = Reaper(policy(), stores(world, log, before_s3=replaced), clock=lambda: NOW,
                    liveness=CountingLiveness(), audit=ListAudit()).run()
    e = report.locks[0]
    assert e.outcome is Outcome.RACED and e.current_holder == {"id": NEW_ID, "who": "deploy@ci-runner-7"}
    assert log == [f"s3:{BUCKET}"], "the DynamoDB item was not touched"
    assert [t.result for t in e.targets] == ["raced", "not_attempted"]
    assert ddb_info(world) == info and report.summary.double_lock_partial == 0


def test_report_mode_and_young_locks_list_both_stores_once(world: dict[str, Any]) -> None:
    double_lock(world)
    double_lock(world, "young/terraform.tfstate", age=timedelta(minutes=20))
    log: list[str] = []
    report = Reaper(policy("report"), stores(world, log, ddb_first=False), clock=lambda: NOW,
                    liveness=CountingLiveness(), audit=ListAudit()).run()
    by_path = {e.lock_path: e for e in report.locks}
    assert len(report.locks) == 2
    assert by_path[PATH].outcome is Outcome.WOULD_REAP
    assert by_path[f"{BUCKET}/young/terraform.tfstate"].outcome is Outcome.KEPT
    for e in report.locks:
        assert [t.store for t in e.targets] == [f"s3:{BUCKET}", f"dynamodb:{TABLE}"]
    assert log == [] and s3_exists(world) and ddb_info(world) is not None
    doc = json.loads(report.to_json())
    assert {t["store"] for e in doc["locks"] for t in e["targets"]} == {f"s3:{BUCKET}", f"dynamodb:{TABLE}"}


def test_different_ids_at_one_path_are_two_locks(world: dict[str, Any]) -> None:
    a = info_json(PATH, timedelta(hours=6), NOW)
    b = info_json(PATH, timedelta(hours=6), NOW, id_=NEW_ID)
    world["s3"].put_object(Bucket=BUCKET, Key=STATE + ".tflock", Body=a.encode())
    world["ddb"].put_item(TableName=TABLE, Item=lock_item(PATH, b))
    world["s3"].put_object(Bucket=BUCKET, Key="solo/terraform.tfstate.tflock",
                           Body=info_json(f"{BUCKET}/solo/terraform.tfstate", timedelta(hours=1), NOW).encode())
    report = Reaper(policy("report"), stores(world, []), clock=lambda: NOW, liveness=CountingLiveness(),
                    audit=ListAudit()).run()
    assert sorted((e.store, e.lock_path) for e in report.locks) == sorted([
        (f"dynamodb:{TABLE}", PATH), (f"s3:{BUCKET}", PATH), (f"s3:{BUCKET}", f"{BUCKET}/solo/terraform.tfstate")])
    assert all(e.targets == [] for e in report.locks)


def test_a_pair_counts_once_against_the_cap(world: dict[str, Any]) -> None:
    double_lock(world)
    double_lock(world, "second/terraform.tfstate")
    log: list[str] = []
    report = Reaper(policy(max_deletes_per_run=1), stores(world, log), clock=lambda: NOW,
                    liveness=CountingLiveness(), audit=ListAudit()).run()
    outcomes = sorted(e.outcome.value for e in report.locks)
    assert outcomes == ["kept", "reaped"] and report.summary.cap_hit
    assert len(log) == 2  # both copies of the one reaped lock


def test_pair_index_unit() -> None:
    def rec(store: str, path: str, id_: str, key: str | None = None, info_path: str | None = None) -> LockRecord:
        raw = info_json(info_path or path, timedelta(hours=1), NOW, id_=id_)
        from reaper.models import LockInfo

        return LockRecord(store=store, key=key or path, lock_path=path, token="t", raw={}, info=LockInfo.parse(raw))

    class S:
        def __init__(self, name: str) -> None:
            self.name = name

    idx = PairIndex()
    a = rec("s3:b", "b/k", "id-1", key="k.tflock")
    odd = rec("s3:b", "b/x", "id-2", info_path="b/elsewhere")
    idx.add(S("s3:b"), a)  # type: ignore[arg-type]
    idx.add(S("s3:b"), odd)  # type: ignore[arg-type]
    assert pair_key(odd) is None and len(idx) == 2
    assert idx.claim(rec("s3:b", "b/k", "id-1")) is None, "never paired with the same store"
    assert idx.claim(rec("dynamodb:t", "b/k", "id-9")) is None, "another ID is another lock"
    got = idx.claim(rec("dynamodb:t", "b/k", "id-1"))
    assert got is not None and got.lock is a
    assert idx.claim(rec("dynamodb:t", "b/k", "id-1")) is None, "claimed once"
    assert [t.lock for t in idx.leftovers()] == [odd]
