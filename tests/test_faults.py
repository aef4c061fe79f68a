"""Fault injection, one dependency at a time (issue 6).

The world: two DynamoDB lock tables (A and B) and, where the S3 lock-file store
exists, a bucket of ``.tflock`` files, all in moto_server over HTTP; each holds
one stale lock whose holder is dead, one fresh lock and state digests. Audit
records go to S3, alerts to SNS, EventBridge and Powertools metrics. The reaper
runs in enforce mode with the production retry mode (adaptive) but short
timeouts and backoff, so the suite stays fast.

Each fault is injected into exactly one dependency (tests/faults.py): error
responses in the service's own protocol and connection errors through a
botocore ``before-send`` hook, real connection resets and read timeouts
through a TCP proxy. For every fault:
- the run completes;
- the failure is in the run report and in the Errors metric;
- the other stores are still processed (their stale lock is reaped);
- no lock is deleted on the strength of a failed check;
- a failed audit write prevents the delete;
- a failed alert does not undo a correct delete, and is reported;
- bursts of throttling / resets / timeouts are absorbed by the retries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from devtools.locks import LOCK_TABLE_SCHEMA, digest_item, info_json, lock_item
from faults import BotoFault, FaultProxy, ok_response
from reaper.alerts import EventBridgeAlertSink, MetricsAlertSink, SnsAlertSink
from reaper.audit import S3AuditSink
from reaper.policy import Policy
from reaper.engine import Reaper
from reaper.models import Liveness, LivenessFact, LockRecord, Outcome
from reaper.report import METRICS, RunReport
from reaper.stores.dynamodb import DynamoDBLockStore

pytestmark = pytest.mark.e2e

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
BUCKET = "corp-tfstate"
LOCK_BUCKET = "corp-tfstate-lockfiles"
AUDIT_BUCKET = "lock-reaper-audit"
TABLES = ("locks-a", "locks-b")
POLICY = Policy.model_validate(
    {
        "mode": "enforce",
        "max_deletes_per_run": 50,
        "min_age": "15m",
        # stale locks are 5h old: past max_age, before hard_max_age, so only a dead holder gets them reaped
        "rules": [{"name": "all", "match": "*", "max_age": "3h", "hard_max_age": "2d"}],
        "audit": {"local_dir": "unused"},
    }
)


def fast_config(**kw: Any) -> Config:
    """The production retry mode (adaptive, as reaper.wiring uses) with test-sized timeouts.

    botocore's ``max_attempts`` counts retries: a request is tried 1 + max_attempts times."""
    retries = {"mode": "adaptive", "max_attempts": kw.pop("max_attempts", 6)}
    return Config(retries=retries, connect_timeout=kw.pop("connect_timeout", 1), read_timeout=kw.pop("read_timeout", 1),
                  region_name="us-east-1", **kw)


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep botocore's retry backoff and adaptive rate limiter, but make their waits tiny."""
    from botocore.retries import adaptive, bucket, standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0.01)
    real_acquire = bucket.TokenBucket.acquire

    def acquire(self: Any, amount: int = 1, block: bool = True) -> bool:
        self._min_rate = max(self._min_rate, 50)
        self._fill_rate = max(self._fill_rate or 0, 50)
        return real_acquire(self, amount, block)

    monkeypatch.setattr(bucket.TokenBucket, "acquire", acquire)
    assert adaptive  # imported so the module's classes are the patched ones


class DeadLiveness:
    """Every holder is dead (as a CI API would prove); counts its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        self.calls.append(lock.key)
        return LivenessFact(state=Liveness.DEAD, reason="the run finished (fake CI)", checkers=("fake-ci",))

    def stats(self) -> dict[str, Any]:
        return {}


@dataclass
class World:
    endpoint: str
    admin: dict[str, Any] = field(default_factory=dict)  # clients that arrange and inspect, never faulty
    topic: str = ""
    queue: str = ""
    has_s3_store: bool = False

    def client(self, service: str, endpoint: str | None = None, **cfg: Any) -> Any:
        return boto3.client(service, endpoint_url=endpoint or self.endpoint, config=fast_config(**cfg))

    # -- what is there ----------------------------------------------------
    def lock_path(self, table: str, name: str) -> str:
        return f"{BUCKET}/{table}/{name}/terraform.tfstate"

    def dynamo_has(self, table: str, name: str) -> bool:
        item = self.admin["dynamodb"].get_item(TableName=table, Key={"LockID": {"S": self.lock_path(table, name)}},
                                              ConsistentRead=True).get("Item")
        return bool(item and "Info" in item)

    def digests_intact(self) -> bool:
        for table in TABLES:
            for name in ("stale", "fresh"):
                key = self.lock_path(table, name) + "-md5"
                if "Item" not in self.admin["dynamodb"].get_item(TableName=table, Key={"LockID": {"S": key}}):
                    return False
        return True

    def s3_lock_exists(self, name: str) -> bool:
        try:
            self.admin["s3"].head_object(Bucket=LOCK_BUCKET, Key=f"{name}/terraform.tfstate.tflock")
            return True
        except self.admin["s3"].exceptions.ClientError:
            return False

    def audit_keys(self) -> list[str]:
        resp = self.admin["s3"].list_objects_v2(Bucket=AUDIT_BUCKET)
        return [o["Key"] for o in resp.get("Contents", [])]

    def sns_messages(self) -> list[dict[str, Any]]:
        sqs = self.admin["sqs"]
        out = []
        for _ in range(3):
            msgs = sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
            if not msgs:
                break
            out += [json.loads(m["Body"]) for m in msgs]
        return out

    # -- the reaper -----------------------------------------------------------
    def stores(self, clients: dict[str, Any]) -> list[Any]:
        stores: list[Any] = [DynamoDBLockStore(clients.get(t) or self.client("dynamodb"), t) for t in TABLES]
        if self.has_s3_store:
            from reaper.stores.s3 import S3LockFileStore

            stores.append(S3LockFileStore(clients.get("s3-store") or self.client("s3"), LOCK_BUCKET))
        return stores

    def run(self, clients: dict[str, Any] | None = None, liveness: Any = None,
            policy: Policy | None = None) -> tuple[RunReport, dict[str, float]]:
        """One enforce cycle; ``clients`` replaces a dependency's client by a faulty one."""
        from aws_lambda_powertools import Metrics

        clients = clients or {}
        metrics = Metrics(namespace="LockReaperFaults", service="lock-reaper")
        metrics.clear_metrics()
        try:
            reaper = Reaper(
                policy or POLICY,
                self.stores(clients),
                lambda: NOW,
                liveness=liveness or DeadLiveness(),
                audit=S3AuditSink(clients.get("audit") or self.client("s3"), AUDIT_BUCKET),
                alerts=[
                    SnsAlertSink(clients.get("sns") or self.client("sns"), self.topic),
                    EventBridgeAlertSink(clients.get("events") or self.client("events")),
                    MetricsAlertSink(metrics),
                ],
            )
            report = reaper.run()
            emf = metrics.serialize_metric_set()
            values = {}
            for name in METRICS.values():
                v = emf.get(name)
                values[name] = float(v[0] if isinstance(v, list) else v)
            return report, values
        finally:
            metrics.clear_metrics()


@pytest.fixture
def world(moto_env: Any) -> World:
    w = World(endpoint=moto_env.endpoint)
    for service in ("dynamodb", "s3", "sns", "sqs", "events"):
        w.admin[service] = boto3.client(service, endpoint_url=w.endpoint, region_name="us-east-1")
    ddb, s3 = w.admin["dynamodb"], w.admin["s3"]
    for table in TABLES:
        ddb.create_table(TableName=table, **LOCK_TABLE_SCHEMA)
        for name, age in (("stale", 5 * H), ("fresh", 1 * H)):
            path = w.lock_path(table, name)
            ddb.put_item(TableName=table, Item=lock_item(path, info_json(path, age, NOW)))
            ddb.put_item(TableName=table, Item=digest_item(path))
    s3.create_bucket(Bucket=AUDIT_BUCKET)
    try:
        import reaper.stores.s3  # noqa: F401  (issue 5)

        w.has_s3_store = True
    except ImportError:
        w.has_s3_store = False
    if w.has_s3_store:
        s3.create_bucket(Bucket=LOCK_BUCKET)
        for name, age in (("stale", 5 * H), ("fresh", 1 * H)):
            key = f"{name}/terraform.tfstate"
            s3.put_object(Bucket=LOCK_BUCKET, Key=key, Body=b'{"version": 4}')
            s3.put_object(Bucket=LOCK_BUCKET, Key=key + ".tflock", Body=info_json(f"{LOCK_BUCKET}/{key}", age, NOW).encode())
    w.topic = w.admin["sns"].create_topic(Name="lock-reaper")["TopicArn"]
    w.queue = w.admin["sqs"].create_queue(QueueName="alerts")["QueueUrl"]
    qarn = w.admin["sqs"].get_queue_attributes(QueueUrl=w.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    w.admin["sns"].subscribe(TopicArn=w.topic, Protocol="sqs", Endpoint=qarn)
    return w


# ---------------------------------------------------------------------------
# assertions shared by every fault
def outcomes(report: RunReport) -> dict[str, str]:
    out = {}
    for e in report.locks:
        name = e.lock_path.split("/")[-2]
        where = e.store.split(":", 1)[1]
        out[f"{where}/{name}"] = e.outcome.value
    return out


def store(report: RunReport, name: str) -> Any:
    return next(s for s in report.stores if s.name == name)


def assert_healthy_parts_processed(world: World, report: RunReport, broken: set[str]) -> None:
    """Every store not in ``broken`` scanned fine and had its stale lock reaped, its fresh one kept."""
    got = outcomes(report)
    healthy = [t for t in TABLES if t not in broken]
    for t in healthy:
        assert store(report, f"dynamodb:{t}").status == "ok"
        assert got[f"{t}/stale"] == "reaped" and got[f"{t}/fresh"] == "kept", got
        assert not world.dynamo_has(t, "stale") and world.dynamo_has(t, "fresh")
    if world.has_s3_store and "s3" not in broken:
        assert got[f"{LOCK_BUCKET}/stale"] == "reaped" and not world.s3_lock_exists("stale"), got
    assert world.digests_intact(), "state digests are never touched"


def assert_reported(report: RunReport, metrics: dict[str, float], text: str) -> None:
    assert report.errors >= 1 and report.exit_code == 1
    assert metrics[METRICS["errors"]] == report.errors >= 1, "the Errors metric carries the failure"
    blob = report.to_json()
    assert text in blob, f"{text!r} not in the run report"


# ---------------------------------------------------------------------------
# the baseline: without faults, everything stale is reaped and nothing is an error
def test_baseline_without_faults(world: World) -> None:
    report, metrics = world.run()
    assert report.errors == 0 and metrics[METRICS["errors"]] == 0
    assert_healthy_parts_processed(world, report, broken=set())
    assert len(world.audit_keys()) == 2 + world.has_s3_store
    assert [a.status for a in report.alerts] == ["sent", "sent", "sent"]


# ---------------------------------------------------------------------------
# DynamoDB: throttling bursts are absorbed by adaptive retries
@pytest.mark.parametrize(
    "operation,code",
    [
        ("DescribeTable", "ThrottlingException"),
        ("Scan", "ProvisionedThroughputExceededException"),
        ("Scan", "ThrottlingException"),
        ("DeleteItem", "ProvisionedThroughputExceededException"),
        ("DeleteItem", "ThrottlingException"),
    ],
)
def test_dynamodb_throttling_burst_recovers(world: World, operation: str, code: str) -> None:
    client = world.client("dynamodb")
    fault = BotoFault(client, operation, status=400, code=code, message="Rate of requests exceeds the allowed throughput",
                      table="locks-a", times=3)
    report, metrics = world.run({"locks-a": client})
    assert fault.fired == 3 and fault.passed >= 1, "the burst happened and the retry got through"
    assert report.errors == 0 and metrics[METRICS["errors"]] == 0, report.to_json()
    assert_healthy_parts_processed(world, report, broken=set())


def test_dynamodb_throttling_that_never_ends_is_a_store_error(world: World) -> None:
    client = world.client("dynamodb", max_attempts=3)
    fault = BotoFault(client, "Scan", status=400, code="ProvisionedThroughputExceededException", message="slow down",
                      table="locks-a")
    report, metrics = world.run({"locks-a": client})
    assert fault.fired == 1 + 3, "every attempt was throttled (max_attempts counts retries)"
    assert store(report, "dynamodb:locks-a").status == "error"
    assert world.dynamo_has("locks-a", "stale"), "a failed scan deletes nothing"
    assert_reported(report, metrics, "ProvisionedThroughputExceededException")
    assert_healthy_parts_processed(world, report, broken={"locks-a"})


# ---------------------------------------------------------------------------
# DynamoDB: 500s
def test_dynamodb_500_burst_recovers(world: World) -> None:
    client = world.client("dynamodb")
    fault = BotoFault(client, "Scan", status=500, code="InternalServerError", table="locks-a", times=2)
    report, _ = world.run({"locks-a": client})
    assert fault.fired == 2 and report.errors == 0
    assert_healthy_parts_processed(world, report, broken=set())


def test_dynamodb_500_on_scan(world: World) -> None:
    client = world.client("dynamodb", max_attempts=3)
    BotoFault(client, "Scan", status=500, code="InternalServerError", table="locks-a")
    report, metrics = world.run({"locks-a": client})
    a = store(report, "dynamodb:locks-a")
    assert a.status == "error" and "InternalServerError" in (a.error or "")
    assert world.dynamo_has("locks-a", "stale") and world.dynamo_has("locks-a", "fresh")
    assert not [e for e in report.locks if e.store == "dynamodb:locks-a"], "no lock of a failed scan is acted on"
    assert_reported(report, metrics, "InternalServerError")
    assert_healthy_parts_processed(world, report, broken={"locks-a"})


def test_dynamodb_500_on_delete(world: World) -> None:
    client = world.client("dynamodb", max_attempts=3)
    fault = BotoFault(client, "DeleteItem", status=500, code="InternalServerError", table="locks-a")
    report, metrics = world.run({"locks-a": client})
    assert fault.fired == 1 + 3
    got = outcomes(report)
    assert got["locks-a/stale"] == "error" and got["locks-a/fresh"] == "kept"
    entry = next(e for e in report.locks if e.key == world.lock_path("locks-a", "stale"))
    assert any(r.startswith("delete failed") and "InternalServerError" in r for r in entry.reasons)
    assert entry.audit_ref and entry.audit_ref.startswith(f"s3://{AUDIT_BUCKET}/"), "the record was written first"
    assert world.dynamo_has("locks-a", "stale")
    assert_reported(report, metrics, "delete failed")
    assert_healthy_parts_processed(world, report, broken={"locks-a"})


# ---------------------------------------------------------------------------
# DynamoDB: connection resets and read timeouts (real sockets, through a proxy)
@pytest.fixture
def proxy(world: World) -> Iterator[FaultProxy]:
    target = urlsplit(world.endpoint)
    p = FaultProxy((target.hostname or "127.0.0.1", target.port or 80), stall_seconds=2.0)
    yield p
    p.close()


def test_connection_reset_burst_recovers(world: World, proxy: FaultProxy) -> None:
    proxy.plan = ["reset", "reset"]
    client = world.client("dynamodb", endpoint=proxy.endpoint)
    report, _ = world.run({"locks-a": client})
    assert proxy.seen[:3] == ["reset", "reset", "pass"]
    assert report.errors == 0, report.to_json()
    assert_healthy_parts_processed(world, report, broken=set())


def test_connection_reset_persistent(world: World, proxy: FaultProxy) -> None:
    proxy.default = "reset"
    client = world.client("dynamodb", endpoint=proxy.endpoint, max_attempts=3)
    report, metrics = world.run({"locks-a": client})
    assert proxy.seen.count("reset") >= 1 + 3
    a = store(report, "dynamodb:locks-a")
    assert a.status == "error" and ("Connection" in (a.error or "") or "connection" in (a.error or "")), a.error
    assert world.dynamo_has("locks-a", "stale")
    assert_reported(report, metrics, "dynamodb:locks-a")
    assert_healthy_parts_processed(world, report, broken={"locks-a"})


def test_read_timeout_burst_recovers(world: World, proxy: FaultProxy) -> None:
    proxy.plan = ["stall"]
    client = world.client("dynamodb", endpoint=proxy.endpoint, read_timeout=0.5)
    report, _ = world.run({"locks-a": client})
    assert proxy.seen[:2] == ["stall", "pass"]
    assert report.errors == 0, report.to_json()
    assert_healthy_parts_processed(world, report, broken=set())


def test_read_timeout_persistent(world: World, proxy: FaultProxy) -> None:
    proxy.default = "stall"
    client = world.client("dynamodb", endpoint=proxy.endpoint, read_timeout=0.3, max_attempts=2)
    report, metrics = world.run({"locks-a": client})
    a = store(report, "dynamodb:locks-a")
    assert a.status == "error" and "timeout" in (a.error or "").lower(), a.error
    assert world.dynamo_has("locks-a", "stale")
    assert_reported(report, metrics, "dynamodb:locks-a")
    assert_healthy_parts_processed(world, report, broken={"locks-a"})


@pytest.mark.parametrize("exc", [ConnectionClosedError, ReadTimeoutError, EndpointConnectionError])
def test_connection_errors_on_delete_keep_the_lock(world: World, exc: type[Exception]) -> None:
    """The delete itself never gets through: the lock stays, the entry is an error, the record exists."""
    client = world.client("dynamodb", max_attempts=2)
    fault = BotoFault(client, "DeleteItem", exc=exc, table="locks-a")
    report, metrics = world.run({"locks-a": client})
    assert fault.fired == 1 + 2
    assert outcomes(report)["locks-a/stale"] == "error" and world.dynamo_has("locks-a", "stale")
    assert_reported(report, metrics, f"delete failed: {exc.__name__}")
    assert_healthy_parts_processed(world, report, broken={"locks-a"})


# ---------------------------------------------------------------------------
# DynamoDB: AccessDenied on one table only
def test_access_denied_on_one_table(world: World) -> None:
    client = world.client("dynamodb")  # one client for both tables: only table A is denied
    msg = ("User: arn:aws:sts::123456789012:assumed-role/lock-reaper/run is not authorized to perform: "
           "dynamodb:DescribeTable on resource: arn:aws:dynamodb:us-east-1:123456789012:table/locks-a")
    for op in ("DescribeTable", "Scan", "DeleteItem"):
        BotoFault(client, op, status=400, code="AccessDeniedException", message=msg, table="locks-a")
    report, metrics = world.run({"locks-a": client, "locks-b": client})
    a = store(report, "dynamodb:locks-a")
    assert a.status == "error" and "AccessDeniedException" in (a.error or "")
    assert world.dynamo_has("locks-a", "stale")
    assert_reported(report, metrics, "AccessDeniedException")
    assert_healthy_parts_processed(world, report, broken={"locks-a"})


def test_delete_denied_on_one_table(world: World) -> None:
    """Scan allowed, DeleteItem denied (a common IAM slip): reported per lock, never retried into a delete."""
    client = world.client("dynamodb")
    fault = BotoFault(client, "DeleteItem", status=400, code="AccessDeniedException",
                      message="not authorized to perform: dynamodb:DeleteItem", table="locks-a")
    report, metrics = world.run({"locks-a": client, "locks-b": client})
    assert fault.fired == 1, "AccessDenied is not retried"
    assert outcomes(report)["locks-a/stale"] == "error" and world.dynamo_has("locks-a", "stale")
    assert_reported(report, metrics, "AccessDeniedException")
    assert_healthy_parts_processed(world, report, broken={"locks-a"})


# ---------------------------------------------------------------------------
# S3: the audit bucket
def test_audit_write_failure_prevents_every_delete(world: World) -> None:
    audit = world.client("s3", max_attempts=2)
    fault = BotoFault(audit, "PutObject", status=500, code="InternalError", message="We encountered an internal error.")
    report, metrics = world.run({"audit": audit})
    stale = [e for e in report.locks if e.lock_path.endswith("/stale/terraform.tfstate")]
    assert stale and all(e.outcome is Outcome.ERROR for e in stale)
    assert all(any("audit write failed, not deleted" in r for r in e.reasons) for e in stale)
    assert fault.fired == (1 + 2) * len(stale)
    for t in TABLES:
        assert world.dynamo_has(t, "stale")
    if world.has_s3_store:
        assert world.s3_lock_exists("stale")
    assert world.audit_keys() == []
    assert_reported(report, metrics, "InternalError")
    assert world.sns_messages() == [], "nothing was reaped, so SNS stays quiet"


def test_audit_access_denied_prevents_the_delete(world: World) -> None:
    audit = world.client("s3")
    BotoFault(audit, "PutObject", status=403, code="AccessDenied", message="Access Denied")
    report, metrics = world.run({"audit": audit})
    assert all(world.dynamo_has(t, "stale") for t in TABLES)
    assert report.count(Outcome.REAPED) == 0
    assert_reported(report, metrics, "AccessDenied")


def test_audit_slowdown_burst_recovers(world: World) -> None:
    audit = world.client("s3")
    fault = BotoFault(audit, "PutObject", status=503, code="SlowDown", message="Please reduce your request rate.", times=2)
    report, _ = world.run({"audit": audit})
    assert fault.fired == 2 and report.errors == 0
    assert_healthy_parts_processed(world, report, broken=set())
    assert len(world.audit_keys()) == 2 + world.has_s3_store


# ---------------------------------------------------------------------------
# S3: the lock-file store (issue 5)
def _needs_s3_store(world: World) -> None:
    if not world.has_s3_store:
        pytest.skip("reaper.stores.s3 (issue 5) is not present")


def test_s3_store_list_failure(world: World) -> None:
    _needs_s3_store(world)
    client = world.client("s3", max_attempts=2)
    BotoFault(client, "ListObjectsV2", status=500, code="InternalError", message="We encountered an internal error.")
    report, metrics = world.run({"s3-store": client})
    s = store(report, f"s3:{LOCK_BUCKET}")
    assert s.status == "error" and "InternalError" in (s.error or "")
    assert world.s3_lock_exists("stale")
    assert_reported(report, metrics, "InternalError")
    assert_healthy_parts_processed(world, report, broken={"s3"})


def test_s3_store_slowdown_burst_recovers(world: World) -> None:
    _needs_s3_store(world)
    client = world.client("s3")
    faults = [BotoFault(client, op, status=503, code="SlowDown", message="Please reduce your request rate.", times=2)
              for op in ("ListObjectsV2", "GetObject", "DeleteObject")]
    report, _ = world.run({"s3-store": client})
    assert [f.fired for f in faults] == [2, 2, 2]
    assert report.errors == 0, report.to_json()
    assert_healthy_parts_processed(world, report, broken=set())


def test_s3_store_delete_denied(world: World) -> None:
    _needs_s3_store(world)
    client = world.client("s3")
    BotoFault(client, "DeleteObject", status=403, code="AccessDenied", message="Access Denied")
    report, metrics = world.run({"s3-store": client})
    assert outcomes(report)[f"{LOCK_BUCKET}/stale"] == "error" and world.s3_lock_exists("stale")
    assert_reported(report, metrics, "AccessDenied")
    assert_healthy_parts_processed(world, report, broken={"s3"})


def test_s3_store_read_failure_keeps_the_lock(world: World) -> None:
    """GetObject fails on the lock file: its content is unknown, so it is never deleted."""
    _needs_s3_store(world)
    client = world.client("s3", max_attempts=2)
    BotoFault(client, "GetObject", status=500, code="InternalError", message="We encountered an internal error.")
    report, metrics = world.run({"s3-store": client})
    assert world.s3_lock_exists("stale")
    s3_entries = [e for e in report.locks if e.store == f"s3:{LOCK_BUCKET}"]
    s3_store = store(report, f"s3:{LOCK_BUCKET}")
    assert all(e.outcome is not Outcome.REAPED for e in s3_entries)
    assert s3_store.status == "error" or any(e.outcome in (Outcome.ERROR, Outcome.KEPT) for e in s3_entries)
    assert "InternalError" in report.to_json()
    assert_healthy_parts_processed(world, report, broken={"s3"})


# ---------------------------------------------------------------------------
# SNS and EventBridge
@pytest.mark.parametrize("status,code", [(500, "InternalError"), (403, "AuthorizationError"), (400, "KMSAccessDenied")])
def test_sns_failure_does_not_undo_deletes(world: World, status: int, code: str) -> None:
    sns = world.client("sns", max_attempts=2)
    fault = BotoFault(sns, "Publish", status=status, code=code, message="injected")
    report, metrics = world.run({"sns": sns})
    assert fault.fired >= 1
    assert_healthy_parts_processed(world, report, broken=set())  # the deletes stand
    sns_result = next(a for a in report.alerts if a.sink == "sns")
    assert sns_result.status == "error" and code in sns_result.detail
    assert [a.status for a in report.alerts if a.sink != "sns"] == ["sent", "sent"], "the other sinks still ran"
    assert report.summary.alert_errors == 1
    assert_reported(report, metrics, code)
    assert world.sns_messages() == []


def test_eventbridge_failure_does_not_undo_deletes(world: World) -> None:
    events = world.client("events", max_attempts=2)
    BotoFault(events, "PutEvents", status=500, code="InternalException", message="injected")
    report, metrics = world.run({"events": events})
    assert_healthy_parts_processed(world, report, broken=set())
    eb = next(a for a in report.alerts if a.sink == "eventbridge")
    assert eb.status == "error" and "InternalException" in eb.detail
    assert len(world.sns_messages()) == 1, "SNS was still told"
    assert_reported(report, metrics, "InternalException")


def test_eventbridge_partial_failure_is_reported(world: World) -> None:
    events = world.client("events")

    def partial(request: Any) -> Any:
        n = len(json.loads(request.body)["Entries"])
        entries = [{"EventId": f"e-{i}"} for i in range(n - 1)] + [{"ErrorCode": "InternalFailure", "ErrorMessage": "boom"}]
        return ok_response(request.url, {"FailedEntryCount": 1, "Entries": entries})

    BotoFault(events, "PutEvents", response=partial)
    report, metrics = world.run({"events": events})
    assert_healthy_parts_processed(world, report, broken=set())
    eb = next(a for a in report.alerts if a.sink == "eventbridge")
    assert eb.status == "error" and "were not accepted" in eb.detail
    assert_reported(report, metrics, "were not accepted")


# ---------------------------------------------------------------------------
# a liveness checker that fails: unknown, never dead
def test_failing_liveness_check_deletes_nothing(world: World) -> None:
    class Broken:
        def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
            raise ConnectionError("CI API unreachable")

        def stats(self) -> dict[str, Any]:
            return {}

    report, metrics = world.run(liveness=Broken())
    assert report.count(Outcome.REAPED) == 0
    assert all(world.dynamo_has(t, "stale") for t in TABLES)
    stale = [e for e in report.locks if e.lock_path.endswith("/stale/terraform.tfstate")]
    assert stale and all(e.liveness == "unknown" and e.outcome is Outcome.KEPT for e in stale)
    assert all(any("CI API unreachable" in r for r in e.reasons) for e in stale)
    assert metrics[METRICS["kept_unknown"]] == len(stale)


# ---------------------------------------------------------------------------
# CI APIs (issue 4's checkers against devtools/fake_ci.py): 403 rate limit, 500, slow, malformed JSON
GH_TOKEN = "ghp_faultTestToken000000000000000000000"
GL_TOKEN = "glpat-faultTestToken0000"
GH_RUNS = r"/api/v3/repos/acme/infra/actions/runs"


def ci_policy(fake: Any) -> Policy:
    """Table A's locks are taken by GitHub Actions in acme/infra; table B's and the lock files' by GitLab project 42."""
    return Policy.model_validate(
        {
            "mode": "enforce",
            "max_deletes_per_run": 50,
            "min_age": "15m",
            "rules": [
                {"name": "github", "match": f"{BUCKET}/locks-a/*", "max_age": "3h", "hard_max_age": "2d",
                 "liveness": {"github_repos": ["acme/infra"]}},
                {"name": "gitlab", "match": ["*"], "max_age": "3h", "hard_max_age": "2d",
                 "liveness": {"gitlab_projects": [42]}},
            ],
            "audit": {"local_dir": "unused"},
            "liveness": {
                "state_activity": {"enabled": False},
                "http": {"timeout": "1s", "max_retry_wait": "2s"},
                "providers": [
                    {"type": "github", "api_url": fake.github_api, "token_env": "GH_TOKEN"},
                    {"type": "gitlab", "api_url": fake.gitlab_api, "token_env": "GL_TOKEN"},
                ],
            },
        }
    )


@pytest.fixture
def fake_ci() -> Iterator[Any]:
    fake_ci = pytest.importorskip("devtools.fake_ci")
    with fake_ci.FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN) as fake:
        started = NOW - 20 * H
        # finished long ago: no active run / live job, so the stale locks' holders are dead
        fake.add_github_run("acme/infra", 9001, status="completed", conclusion="cancelled", started_at=started,
                            updated_at=started + H)
        fake.add_gitlab_job(42, 7001, status="failed", started_at=started, finished_at=started + H)
        yield fake


def ci_run(world: World, fake: Any, sleeps: list[float] | None = None) -> tuple[RunReport, dict[str, float]]:
    from reaper.wiring import build_liveness
    from reaper.http.client import EtagCache

    policy = ci_policy(fake)
    checker = build_liveness(policy, lambda service, region=None: world.client(service),
                             env={"GH_TOKEN": GH_TOKEN, "GL_TOKEN": GL_TOKEN}, etags=EtagCache(),
                             sleep=(sleeps.append if sleeps is not None else lambda s: None))
    return world.run(liveness=checker, policy=policy)


def entry(report: RunReport, where: str, name: str = "stale") -> Any:
    return next(e for e in report.locks if e.store.endswith(":" + where) and e.lock_path.split("/")[-2] == name)


def assert_github_lock_kept(world: World, report: RunReport, metrics: dict[str, float], why: str | tuple[str, ...],
                            status: str | None = None) -> None:
    e = entry(report, "locks-a")
    assert e.outcome is Outcome.KEPT and e.liveness == "unknown", (e.outcome, e.liveness, e.reasons)
    assert world.dynamo_has("locks-a", "stale"), "no lock is deleted on the strength of a failed check"
    text = " ".join(e.reasons) + " " + " ".join(ev.detail for ev in e.evidence)
    whys = (why,) if isinstance(why, str) else why
    assert any(w in text for w in whys), f"none of {whys!r} in {text!r}"
    assert metrics[METRICS["kept_unknown"]] == 1.0, "the metrics show the lock kept for want of evidence"
    if status is not None:  # the run report counts the CI calls by status
        assert report.liveness_api_calls.get("by_status", {}).get(status, 0) >= 1, report.liveness_api_calls
    # the other stores, checked through GitLab, are processed as usual
    assert entry(report, "locks-b").outcome is Outcome.REAPED and not world.dynamo_has("locks-b", "stale")
    if world.has_s3_store:
        assert entry(report, LOCK_BUCKET).outcome is Outcome.REAPED
    assert report.stores and all(s.status == "ok" for s in report.stores)


def test_ci_baseline_without_faults(world: World, fake_ci: Any) -> None:
    report, metrics = ci_run(world, fake_ci)
    for where in ("locks-a", "locks-b") + ((LOCK_BUCKET,) if world.has_s3_store else ()):
        e = entry(report, where)
        assert e.outcome is Outcome.REAPED and e.liveness == "dead", (where, e.reasons)
    assert report.errors == 0 and metrics[METRICS["kept_unknown"]] == 0
    assert fake_ci.count(GH_RUNS) >= 1


def test_ci_rate_limited_403(world: World, fake_ci: Any) -> None:
    from devtools.fake_ci import rate_limited

    fake_ci.faults.append(rate_limited(GH_RUNS, retry_after=3600))
    report, metrics = ci_run(world, fake_ci)
    assert_github_lock_kept(world, report, metrics, "rate limited", status="403")
    assert fake_ci.count(GH_RUNS, status=403) >= 1


def test_ci_rate_limit_with_short_retry_after_recovers(world: World, fake_ci: Any) -> None:
    from devtools.fake_ci import rate_limited

    fake_ci.faults.append(rate_limited(GH_RUNS, retry_after=1, times=1))
    sleeps: list[float] = []
    report, _ = ci_run(world, fake_ci, sleeps)
    assert entry(report, "locks-a").outcome is Outcome.REAPED
    assert 1.0 in sleeps, "the client waited as Retry-After asked, then asked again"


@pytest.mark.parametrize("status", [500, 404, 401])
def test_ci_error_status(world: World, fake_ci: Any, status: int) -> None:
    fake_ci.fault(GH_RUNS, status=status)
    report, metrics = ci_run(world, fake_ci)
    assert_github_lock_kept(world, report, metrics, f"HTTP {status}", status=str(status))


def test_ci_502_once_is_retried(world: World, fake_ci: Any) -> None:
    fake_ci.fault(GH_RUNS, status=502, times=1)
    report, _ = ci_run(world, fake_ci)
    assert entry(report, "locks-a").outcome is Outcome.REAPED
    assert fake_ci.count(GH_RUNS, status=502) == 1


def test_ci_slow_reply(world: World, fake_ci: Any) -> None:
    fake_ci.fault(GH_RUNS, delay=1.5, passthrough=True)
    report, metrics = ci_run(world, fake_ci)
    assert_github_lock_kept(world, report, metrics, "timed out", status="error")


@pytest.mark.parametrize("body", [b'{"total_count": 1, "workflow_runs": [', b"<html>504 Gateway Time-out</html>", b"\xff\xfe"])
def test_ci_malformed_json(world: World, fake_ci: Any, body: bytes) -> None:
    fake_ci.fault(GH_RUNS, status=200, body=body)
    report, metrics = ci_run(world, fake_ci)
    assert_github_lock_kept(world, report, metrics, "malformed JSON")


@pytest.mark.parametrize("body", [b'{"total_count": 1, "workflow_runs": "nope"}', b'["not", "runs"]', b"null"])
def test_ci_wrong_shape(world: World, fake_ci: Any, body: bytes) -> None:
    """Valid JSON of the wrong shape is no evidence either (whichever layer notices it)."""
    fake_ci.fault(GH_RUNS, status=200, body=body)
    report, metrics = ci_run(world, fake_ci)
    assert_github_lock_kept(world, report, metrics, ("unexpected response shape", "checker failed"))


def test_ci_active_run_with_a_garbled_start_time_keeps_the_lock(world: World, fake_ci: Any) -> None:
    """An active run whose start time cannot be read may be the holder: kept (as alive), never reaped."""
    fake_ci.fault(GH_RUNS, status=200, body=b'{"total_count": 1, "workflow_runs": [{"id": 1, "status": "in_progress", '
                                            b'"run_started_at": 5}]}')
    report, _ = ci_run(world, fake_ci)
    e = entry(report, "locks-a")
    assert e.outcome is Outcome.KEPT and e.liveness in ("alive", "unknown") and world.dynamo_has("locks-a", "stale")


def test_gitlab_down_github_fine(world: World, fake_ci: Any) -> None:
    """The mirror image: GitLab fails, the GitHub-checked table is still reaped."""
    fake_ci.fault(r"/api/v4/projects/42/jobs", status=500)
    report, metrics = ci_run(world, fake_ci)
    assert entry(report, "locks-a").outcome is Outcome.REAPED
    b = entry(report, "locks-b")
    assert b.outcome is Outcome.KEPT and b.liveness == "unknown" and world.dynamo_has("locks-b", "stale")
    assert "HTTP 500" in " ".join(ev.detail for ev in b.evidence)
