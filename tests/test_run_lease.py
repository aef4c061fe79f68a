"""The run lease (reaper/lease.py): one scheduled run at a time, against moto_server.

Two invocations of ``run_scheduled`` at once, each with a slow store so that they overlap:
exactly one runs, the other exits as ``skipped`` with the RunsSkipped metric; a third,
after the first ended, runs; a lease left by a crashed run is taken over once expired.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import info_json
from reaper.engine import Reaper
from reaper.lease import LEASE_KEY, LeaseError, RunLease
from reaper.report import METRIC_RUNS_SKIPPED
from reaper.service import run_scheduled
from reaper.stores.memory import InMemoryLockStore

TABLE = "lock-reaper-run-state"


class SlowStore(InMemoryLockStore):
    def __init__(self, delay: float, started: threading.Event) -> None:
        super().__init__("memory:slow")
        self.delay = delay
        self.started = started
        now = datetime.now(timezone.utc)
        self.put_lock("tf/a", info_json("tf/a", timedelta(hours=3), now))

    def scan(self):  # type: ignore[no-untyped-def]
        self.started.set()
        time.sleep(self.delay)
        yield from super().scan()


class FakeMetrics:
    def __init__(self) -> None:
        self.added: list[tuple[str, float]] = []

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        self.added.append((name, value))


@pytest.fixture
def lease_env(moto_env, tmp_path: Path) -> dict[str, str]:
    ddb = boto3.client("dynamodb")
    ddb.create_table(TableName=TABLE, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    policy = tmp_path / "policy.yaml"
    policy.write_text("stores: [{type: dynamodb, table: unused}]\nrules: [{match: '*', max_age: 1h}]\n"
                      "liveness: {state_activity: {enabled: false}}\n")
    return {"REAPER_POLICY_FILE": str(policy), "REAPER_LEASE_TABLE": TABLE, "REAPER_LEASE_SECONDS": "900"}


def slow_build(delay: float, started: threading.Event):
    def build(policy, deps, metrics=None):  # type: ignore[no-untyped-def]
        return Reaper(policy, [SlowStore(delay, started)], clock=lambda: datetime.now(timezone.utc))
    return build


def lease_item() -> dict[str, Any] | None:
    return boto3.client("dynamodb").get_item(TableName=TABLE, Key={"pk": {"S": LEASE_KEY}}, ConsistentRead=True).get("Item")


def test_two_concurrent_runs_one_is_skipped_then_a_third_runs(lease_env: dict[str, str]) -> None:
    results: dict[str, dict[str, Any]] = {}
    metrics = {"first": FakeMetrics(), "second": FakeMetrics()}
    first_scanning = threading.Event()

    def invoke(name: str, delay: float, started: threading.Event) -> None:
        results[name] = run_scheduled({}, lease_env, metrics=metrics[name], build=slow_build(delay, started))

    first = threading.Thread(target=invoke, args=("first", 2.0, first_scanning))
    first.start()
    assert first_scanning.wait(30), "the first run started scanning"
    holder = lease_item()
    assert holder is not None and holder["holder"]["S"], "the first run holds the lease while it scans"
    second = threading.Thread(target=invoke, args=("second", 0.0, threading.Event()))
    second.start()
    second.join(30)
    first.join(30)

    assert results["first"]["status"] == "completed" and results["first"]["summary"]["locks_scanned"] == 1
    assert results["second"]["status"] == "skipped"
    assert results["second"]["locks"] == [] and results["second"]["stores"] == []
    assert holder["holder"]["S"] == results["first"]["run_id"]
    assert results["first"]["run_id"] in results["second"]["skipped_reason"]
    assert (METRIC_RUNS_SKIPPED, 1) in metrics["second"].added
    assert not any(n == METRIC_RUNS_SKIPPED for n, _ in metrics["first"].added)
    assert lease_item() is None, "released at the end"

    third = run_scheduled({}, lease_env, build=slow_build(0.0, threading.Event()))
    assert third["status"] == "completed", "a run after the first ended takes the lease"
    assert lease_item() is None


def test_an_expired_lease_is_taken_over_a_live_one_is_not(lease_env: dict[str, str]) -> None:
    ddb = boto3.client("dynamodb")
    now = int(time.time())
    ddb.put_item(TableName=TABLE, Item={"pk": {"S": LEASE_KEY}, "holder": {"S": "crashed-run"},
                                        "expires_at": {"N": str(now - 5)}})
    result = run_scheduled({}, lease_env, build=slow_build(0.0, threading.Event()))
    assert result["status"] == "completed", "a crashed run's expired lease does not block"
    assert lease_item() is None

    ddb.put_item(TableName=TABLE, Item={"pk": {"S": LEASE_KEY}, "holder": {"S": "live-run"},
                                        "expires_at": {"N": str(now + 600)}})
    result = run_scheduled({}, lease_env, build=slow_build(0.0, threading.Event()))
    assert result["status"] == "skipped" and "live-run" in result["skipped_reason"]
    assert lease_item()["holder"]["S"] == "live-run", "a skipped run leaves another run's lease alone"


def test_release_leaves_a_lease_taken_over_by_another_run(lease_env: dict[str, str]) -> None:
    clock = [1000.0]
    lease = RunLease(boto3.client("dynamodb"), TABLE, seconds=60, wall_clock=lambda: clock[0])
    assert lease.acquire("a") is None
    held = lease.acquire("b")
    assert held is not None and held.holder == "a" and held.expires_at == 1060
    clock[0] = 1061.0  # a's lease expired (a crashed or timed out)
    assert lease.acquire("b") is None
    assert lease.release("a") is False, "a's late release does not free b's lease"
    assert lease_item()["holder"]["S"] == "b"
    assert lease.release("b") is True and lease_item() is None


def test_no_lease_table_no_lease_and_a_missing_table_is_an_error(lease_env: dict[str, str]) -> None:
    env = {k: v for k, v in lease_env.items() if k != "REAPER_LEASE_TABLE"}
    assert run_scheduled({}, env, build=slow_build(0.0, threading.Event()))["status"] == "completed"
    with pytest.raises(LeaseError, match="cannot take the run lease in table nope"):
        run_scheduled({}, {**lease_env, "REAPER_LEASE_TABLE": "nope"}, build=slow_build(0.0, threading.Event()))
