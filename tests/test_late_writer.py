"""The late-writer watch (reaper/watch.py), and the small gaps of issue 14 that go with it.

End to end through ``run_scheduled`` (the Lambda's service) over in-process moto: an
enforce run reaps a DynamoDB lock or an S3 ``.tflock`` file of an hour-old-dead holder
(past hard_max_age, holder unknown), the watch records the state object, and the next
runs look at it again:

- the "dead" holder then writes its state: a LateWriter metric, an SNS message, a
  ``Terraform Lock Late Writer`` event naming the lock and its audit record, a
  ``late_writers`` entry in the (kept) run report and a ``late writer`` log line;
- a new run takes a new lock (seen by a scan, or in a versioned bucket only as a lock
  file version written and deleted between two runs) and writes: resolved, no LateWriter;
- no write: nothing, until the item expires after a day;
- a state object that cannot be read (not granted, AccessDenied): unknown, reported once.

Also: state activity asks no HeadObject about a state object the stack does not grant,
a skipped run keeps its report, ``validate`` warns of a digest without an SNS topic, and
the synthesized template's LateWriter alarm and least-privilege grants.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from devtools.locks import create_lock_table, info_json, lock_item
from reaper.alerts import DETAIL_TYPE_LATE_WRITER
from reaper.lease import LEASE_KEY
from reaper.report import LOG_LATE_WRITER, LOG_WATCH_UNKNOWN, METRICS
from reaper.service import run_scheduled
from reaper.watch import WATCH_PREFIX

REGION = "us-east-1"
LOCK_TABLE = "tf-locks-watch"
STATE_BUCKET = "tf-state-watch"
OTHER_BUCKET = "tf-state-not-granted"
AUDIT_BUCKET = "lock-reaper-audit-watch"
RUN_STATE = "lock-reaper-run-state-watch"
BUS = "lock-reaper-watch"
STATE_KEY = "prod/app/terraform.tfstate"
LOCK_PATH = f"{STATE_BUCKET}/{STATE_KEY}"
LATE_WRITER = METRICS["late_writers"]


class FakeMetrics:
    def __init__(self) -> None:
        self.added: list[tuple[str, float]] = []

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        self.added.append((name, value))

    def value(self, name: str) -> float | None:
        return next((v for n, v in self.added if n == name), None)


def policy_text(mode: str = "enforce", stores: str = "") -> str:
    return f"""\
mode: {mode}
stores:
  - {{type: dynamodb, table: {LOCK_TABLE}}}
  - {{type: s3, bucket: {STATE_BUCKET}}}
{stores}rules:
  - {{name: default, match: "*", max_age: 2h, hard_max_age: 1d}}
audit: {{s3_bucket: {AUDIT_BUCKET}}}
alerts:
  sns_topic_arn: arn:aws:sns:{REGION}:123456789012:lock-reaper-watch
  event_bus: {BUS}
  metrics: {{enabled: true, namespace: LockReaperWatch}}
liveness: {{state_activity: {{enabled: false}}}}
"""


class World:
    """moto: the lock table, the state bucket, the audit bucket, the run-state table, SNS and EventBridge to SQS."""

    def __init__(self, tmp_path: Path, *, versioned: bool = False, grants: str | None = None) -> None:
        self.s3 = boto3.client("s3", region_name=REGION)
        self.ddb = boto3.client("dynamodb", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        sns, events = boto3.client("sns", region_name=REGION), boto3.client("events", region_name=REGION)
        create_lock_table(self.ddb, LOCK_TABLE)
        for b in (STATE_BUCKET, AUDIT_BUCKET, OTHER_BUCKET):
            self.s3.create_bucket(Bucket=b)
        if versioned:
            self.s3.put_bucket_versioning(Bucket=STATE_BUCKET, VersioningConfiguration={"Status": "Enabled"})
        self.ddb.create_table(TableName=RUN_STATE, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
        topic = sns.create_topic(Name="lock-reaper-watch")["TopicArn"]
        self.alerts_url, alerts_arn = self._queue("watch-alerts")
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=alerts_arn, Attributes={"RawMessageDelivery": "false"})
        events.create_event_bus(Name=BUS)
        self.events_url, events_arn = self._queue("watch-events")
        events.put_rule(Name="watch-all", EventBusName=BUS, EventPattern=json.dumps({"source": ["lock-reaper"]}))
        events.put_targets(Rule="watch-all", EventBusName=BUS, Targets=[{"Id": "q", "Arn": events_arn}])
        self.policy = tmp_path / "policy.yaml"
        self.policy.write_text(policy_text(), encoding="utf-8")
        self.env = {"REAPER_POLICY_FILE": str(self.policy), "REAPER_LEASE_TABLE": RUN_STATE, "REAPER_LEASE_SECONDS": "900",
                    "REAPER_STATE_OBJECTS": f"{STATE_BUCKET}/" if grants is None else grants}

    def _queue(self, name: str) -> tuple[str, str]:
        url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        return url, self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def drain(self, url: str) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while True:
            msgs = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not msgs:
                return [json.loads(m["Body"]) for m in got]
            got += msgs
            self.sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                                 for i, m in enumerate(msgs)])

    # ----- what Terraform does -----
    def write_state(self, serial: int, key: str = STATE_KEY, bucket: str = STATE_BUCKET) -> None:
        body = json.dumps({"version": 4, "serial": serial, "lineage": "l-1", "resources": []})
        self.s3.put_object(Bucket=bucket, Key=key, Body=body.encode())

    def dead_ddb_lock(self, path: str = LOCK_PATH, age: timedelta = timedelta(days=2)) -> str:
        info = info_json(path, age, datetime.now(UTC))
        self.ddb.put_item(TableName=LOCK_TABLE, Item=lock_item(path, info))
        return str(json.loads(info)["ID"])

    def lock_file(self, age: timedelta, key: str = STATE_KEY) -> str:
        info = info_json(f"{STATE_BUCKET}/{key}", age, datetime.now(UTC))
        self.s3.put_object(Bucket=STATE_BUCKET, Key=key + ".tflock", Body=info.encode())
        return str(json.loads(info)["ID"])

    def drop_ddb_lock(self, path: str = LOCK_PATH) -> None:
        self.ddb.delete_item(TableName=LOCK_TABLE, Key={"LockID": {"S": path}})

    # ----- the reaper -----
    def run(self, mode: str = "enforce") -> tuple[dict[str, Any], FakeMetrics]:
        metrics = FakeMetrics()
        result = run_scheduled({"mode": mode}, self.env, metrics=metrics)
        assert result["status"] == "completed"
        return result, metrics

    def watch_items(self) -> list[dict[str, Any]]:
        items = self.ddb.scan(TableName=RUN_STATE, ConsistentRead=True)["Items"]
        return [i for i in items if i["pk"]["S"].startswith(WATCH_PREFIX)]

    def kept_report(self, run_id: str) -> dict[str, Any]:
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=AUDIT_BUCKET, Prefix="lock-reaper/audit/runs/")
                .get("Contents", []) if o["Key"].endswith(f"/{run_id}.json")]
        (key,) = keys
        return json.loads(self.s3.get_object(Bucket=AUDIT_BUCKET, Key=key)["Body"].read())


@pytest.fixture
def world(aws: None, tmp_path: Path) -> World:
    return World(tmp_path)


def reaped(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in result["locks"] if e["outcome"] == "reaped"]


# ----------------------------------------------------------------------------------- late writer
def test_a_reaped_holder_that_writes_state_is_a_late_writer(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.write_state(1)
    lock_id = world.dead_ddb_lock()
    first, m1 = world.run()
    (entry,) = reaped(first)
    assert entry["lock_path"] == LOCK_PATH and entry["audit_ref"]
    (item,) = world.watch_items()
    assert item["pk"]["S"] == f"{WATCH_PREFIX}{LOCK_PATH}#{lock_id}"
    assert item["bucket"]["S"] == STATE_BUCKET and item["state_key"]["S"] == STATE_KEY
    assert item["audit_ref"]["S"] == entry["audit_ref"] and item["reaped_by"]["S"] == first["run_id"]
    assert item["at_etag"]["S"] == world.s3.head_object(Bucket=STATE_BUCKET, Key=STATE_KEY)["ETag"]
    ttl = int(item["expires_at"]["N"]) - datetime.fromisoformat(item["reaped_at"]["S"]).timestamp()
    assert timedelta(days=1) < timedelta(seconds=ttl) <= timedelta(days=1, hours=3), "TTL: about a day plus"
    assert first["late_writers"] == [] and m1.value(LATE_WRITER) == 0
    assert first["watch"]["recorded"] == 1
    world.drain(world.alerts_url), world.drain(world.events_url)  # the reap's own alerts

    world.write_state(2)  # the "dead" holder was alive: it writes its state after the reap
    caplog.set_level(logging.INFO, logger="reaper")
    second, m2 = world.run(mode="report")
    (late,) = second["late_writers"]
    assert late["status"] == "late_writer"
    assert (late["lock_path"], late["lock_id"], late["audit_ref"]) == (LOCK_PATH, lock_id, entry["audit_ref"])
    assert late["reaped_by"] == first["run_id"] and late["state_object"] == f"s3://{LOCK_PATH}"
    assert late["at_reap"]["etag"] != late["now"]["etag"], "the state's own ETag changed, not another machine's clock"
    assert m2.value(LATE_WRITER) == 1
    (msg,) = world.drain(world.alerts_url)
    assert "LATE WRITER" in msg["Subject"] and entry["audit_ref"] in msg["Message"]
    events = world.drain(world.events_url)
    (event,) = [e for e in events if e["detail-type"] == DETAIL_TYPE_LATE_WRITER]
    assert event["source"] == "lock-reaper"
    assert (event["detail"]["lock_path"], event["detail"]["audit_ref"]) == (LOCK_PATH, entry["audit_ref"])
    lines = [r for r in caplog.records if r.getMessage() == LOG_LATE_WRITER]
    assert len(lines) == 1 and lines[0].__dict__["audit_ref"] == entry["audit_ref"]
    assert world.kept_report(second["run_id"])["late_writers"][0]["lock_id"] == lock_id, "in the kept run report"
    assert world.watch_items() == [], "reported once: the item is done"

    third, m3 = world.run(mode="report")
    assert third["late_writers"] == [] and m3.value(LATE_WRITER) == 0


def test_a_new_lock_seen_then_a_write_is_no_late_writer(world: World) -> None:
    world.write_state(1)
    world.dead_ddb_lock()
    first, _ = world.run()
    assert len(reaped(first)) == 1 and len(world.watch_items()) == 1
    new_id = world.dead_ddb_lock(age=timedelta(minutes=1))  # a new run takes the lock: young, kept
    second, m2 = world.run()
    assert [e["lock_id"] for e in second["locks"]] == [new_id] and second["locks"][0]["outcome"] == "kept"
    assert second["late_writers"] == [] and second["watch"]["resolved"] == 1
    assert world.watch_items() == [], "resolved: a new lock was seen for the path"
    world.write_state(2)  # the new run writes its state and releases the lock
    world.drop_ddb_lock()
    third, m3 = world.run()
    assert third["late_writers"] == [] and m3.value(LATE_WRITER) == 0


def test_no_write_nothing_then_the_item_expires(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.write_state(1)
    world.dead_ddb_lock()
    world.run()
    for _ in range(2):
        result, metrics = world.run(mode="report")
        assert result["late_writers"] == [] and result["watch"]["unknown"] == [] and metrics.value(LATE_WRITER) == 0
        assert len(world.watch_items()) == 1, "still watched"
    import reaper.wiring

    later = datetime.now(UTC) + timedelta(days=1, minutes=1)
    monkeypatch.setattr(reaper.wiring, "utc_now", lambda: later)
    world.write_state(2)  # a write after the watch's day is not looked at
    result, metrics = world.run(mode="report")
    assert result["watch"]["expired"] == 1 and result["late_writers"] == []
    assert world.watch_items() == []


def test_a_write_before_the_new_lock_is_still_the_old_holder(world: World) -> None:
    world.write_state(1)
    world.dead_ddb_lock()
    world.run()
    world.write_state(2)  # the old holder writes (S3 dates it now) ...
    world.dead_ddb_lock(age=timedelta(minutes=-30))  # ... and a lock Created well after it is then seen
    result, _ = world.run(mode="report")
    (late,) = result["late_writers"]
    assert "before the next lock was taken" in late["detail"]


# ----------------------------------------------------------------------------------- versioned bucket, lock files
def test_versioned_bucket_lock_file_version_between_runs_resolves(aws: None, tmp_path: Path) -> None:
    w = World(tmp_path, versioned=True)
    w.write_state(1)
    lock_id = w.lock_file(age=timedelta(days=2))
    first, _ = w.run()
    (entry,) = reaped(first)
    assert entry["store"] == f"s3:{STATE_BUCKET}" and entry["lock_id"] == lock_id
    (item,) = w.watch_items()
    assert item["at_version_id"]["S"] not in ("", "null") and item["lock_versions_listed"]["BOOL"]
    assert item["at_lock_version"]["S"], "the reaped lock file is the newest lock version"
    # a new run takes a lock file, writes and releases it, all between two reaper runs: no scan sees the lock
    w.lock_file(age=timedelta(0))
    w.write_state(2)
    w.s3.delete_object(Bucket=STATE_BUCKET, Key=STATE_KEY + ".tflock")
    second, m2 = w.run()
    assert second["locks"] == [] and second["late_writers"] == [] and m2.value(LATE_WRITER) == 0
    assert second["watch"]["resolved"] == 1 and w.watch_items() == []


def test_versioned_bucket_a_late_write_later_overwritten_is_caught(aws: None, tmp_path: Path) -> None:
    w = World(tmp_path, versioned=True)
    w.write_state(1)
    w.dead_ddb_lock()
    w.run()
    w.write_state(2)  # the late write ...
    w.write_state(1)  # ... overwritten by the same content as at the reap: the ETag is back to the one recorded
    assert w.s3.head_object(Bucket=STATE_BUCKET, Key=STATE_KEY)["ETag"] == w.watch_items()[0]["at_etag"]["S"]
    result, metrics = w.run(mode="report")
    (late,) = result["late_writers"]
    assert "2 version(s) written after" in late["detail"] and metrics.value(LATE_WRITER) == 1


# ----------------------------------------------------------------------------------- unknown, once
def test_a_state_object_not_granted_is_unknown_once_and_never_read(aws: None, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    w = World(tmp_path, grants=f"{OTHER_BUCKET}/")
    w.write_state(1)
    w.dead_ddb_lock()
    caplog.set_level(logging.INFO, logger="reaper")
    first, m1 = w.run()
    assert len(reaped(first)) == 1
    (unknown,) = first["watch"]["unknown"]
    assert unknown["status"] == "unknown" and "not granted" in unknown["detail"] and unknown["lock_path"] == LOCK_PATH
    assert first["late_writers"] == [] and m1.value(LATE_WRITER) == 0
    assert w.watch_items() == [], "no grant: nothing to watch, no read attempted"
    assert len([r for r in caplog.records if r.getMessage() == LOG_WATCH_UNKNOWN]) == 1
    w.write_state(2)
    second, _ = w.run()
    assert second["late_writers"] == [] and second["watch"]["unknown"] == [], "reported once"


class DeniedS3:
    """An S3 client whose reads of the state bucket are refused (AccessDenied) while ``DENY["on"]``, counting the calls."""

    DENY = {"on": True}

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in ("head_object", "list_object_versions"):
            return method

        def refused(**kw: Any) -> Any:
            self.calls.append(name)
            if kw.get("Bucket") == STATE_BUCKET and self.DENY["on"]:
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"},
                                   "ResponseMetadata": {"HTTPStatusCode": 403}}, name)
            return method(**kw)
        return refused


@pytest.mark.parametrize("denied_from", ["the reap", "the next run"])
def test_an_unreadable_state_object_is_unknown_once_never_a_late_writer(world: World, monkeypatch: pytest.MonkeyPatch,
                                                                         denied_from: str) -> None:
    import reaper.wiring
    from reaper import aws as reaper_aws

    denied: list[DeniedS3] = []
    monkeypatch.setitem(DeniedS3.DENY, "on", denied_from == "the reap")

    def factory(service: str, region: str | None = None) -> Any:
        client = reaper_aws.client(service, region)
        if service == "s3":
            denied.append(DeniedS3(client))
            return denied[-1]
        return client

    monkeypatch.setattr(reaper.wiring.Deps, "__init__", _deps_init(factory))
    world.write_state(1)
    world.dead_ddb_lock()
    first, _ = world.run()
    assert len(reaped(first)) == 1, "the S3 store's own reads are elsewhere: the lock table's lock is reaped"
    assert len(world.watch_items()) == 1
    world.write_state(2)
    DeniedS3.DENY["on"] = True
    unknowns = [*first["watch"]["unknown"]]
    for _ in range(2):
        result, metrics = world.run(mode="report")
        assert result["late_writers"] == [] and metrics.value(LATE_WRITER) == 0, "unknown is never a late writer"
        assert result["watch"]["checked"] == 1
        unknowns += result["watch"]["unknown"]
    (unknown,) = unknowns  # reported once, at the reap or at the first run that could not read it
    assert "AccessDenied" in unknown["detail"] and unknown["lock_path"] == LOCK_PATH
    assert any(d.calls for d in denied)


def _deps_init(factory: Any) -> Any:
    import reaper.wiring

    original = reaper.wiring.Deps.__init__

    def init(self: Any, *args: Any, **kw: Any) -> None:
        kw.setdefault("client_factory", factory)
        original(self, *args, **kw)
    return init


def test_a_malformed_watch_item_is_expired_not_a_crash(world: World) -> None:
    world.write_state(1)
    world.dead_ddb_lock()
    world.ddb.put_item(TableName=RUN_STATE, Item={"pk": {"S": f"{WATCH_PREFIX}broken"}, "watch_until": {"N": "1"}})
    result, _ = world.run()
    assert len(reaped(result)) == 1
    assert result["watch"]["checked"] == 1 and result["watch"]["expired"] == 1 and result["watch"]["recorded"] == 1
    assert all(a["status"] != "error" for a in result["alerts"])
    assert [i["pk"]["S"] for i in world.watch_items()] == [f"{WATCH_PREFIX}{LOCK_PATH}#{reaped(result)[0]['lock_id']}"]


def test_a_watch_table_that_cannot_be_read_is_an_error_in_the_report_not_a_crash(aws: None) -> None:
    from reaper.report import RunReport
    from reaper.watch import RunWatch, StateObjects, WatchTable

    class NoScan:
        def scan(self, **kw: Any) -> Any:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "Scan")

    watch = RunWatch(WatchTable(NoScan(), RUN_STATE), StateObjects(boto3.client("s3", region_name=REGION)), None,
                     timedelta(minutes=5), lambda: datetime.now(UTC))
    report = RunReport(run_id="r", mode="report", started_at=datetime.now(UTC).isoformat(), max_deletes_per_run=1)
    assert watch.publish(report) is not None
    assert report.watch is not None and "AccessDeniedException" in (report.watch.error or "")
    assert report.late_writers == []


# ----------------------------------------------------------------------------------- small gaps
def test_state_activity_asks_nothing_about_a_state_object_not_granted() -> None:
    from reaper.liveness.state_activity import StateActivityChecker
    from reaper.models import LockInfo, LockRecord
    from reaper.policy.env import StateObjectGrants

    class NoCalls:
        def head_object(self, **kw: Any) -> Any:
            raise AssertionError(f"HeadObject asked about {kw}")

    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    path = f"{OTHER_BUCKET}/{STATE_KEY}"
    info = info_json(path, timedelta(hours=3), now)
    lock = LockRecord(store=f"dynamodb:{LOCK_TABLE}", key=path, lock_path=path, token=info, raw={},
                      info=LockInfo.model_validate_json(info))
    grants = StateObjectGrants.from_env({"REAPER_STATE_OBJECTS": f"{STATE_BUCKET}/,{OTHER_BUCKET}/teams/"})
    fact = StateActivityChecker(NoCalls(), grants=grants).check(lock, now)
    assert fact is not None and fact.state.value == "unknown"
    assert "not granted" in fact.evidence[0].detail
    assert StateObjectGrants.from_env({"REAPER_STATE_OBJECTS": "none"}).grants == []
    assert StateObjectGrants.from_env({}) is None, "the CLI (no variable): no limit"
    assert grants.allows(STATE_BUCKET, STATE_KEY) and not grants.allows(STATE_BUCKET, "prod/app/state.json")
    assert grants.allows(OTHER_BUCKET, "teams/x/terraform.tfstate") and not grants.allows(OTHER_BUCKET, STATE_KEY)


def test_a_skipped_run_keeps_its_report_and_report_latest_shows_it(world: World) -> None:
    import io

    from reaper.cli import main

    world.ddb.put_item(TableName=RUN_STATE, Item={"pk": {"S": LEASE_KEY}, "holder": {"S": "other-run-42"},
                                                  "expires_at": {"N": str(int(datetime.now(UTC).timestamp()) + 600)}})
    result = run_scheduled({}, world.env, metrics=FakeMetrics())
    assert result["status"] == "skipped"
    kept = world.kept_report(result["run_id"])
    assert kept["status"] == "skipped" and "other-run-42" in kept["skipped_reason"] and kept["locks"] == []
    out, err = io.StringIO(), io.StringIO()
    code = main(["report", "latest", "--config", str(world.policy)], out=out, err=err)
    assert code == 0, err.getvalue()
    assert "run skipped: run other-run-42 holds the run lease" in out.getvalue()


def test_validate_warns_of_a_digest_without_an_sns_topic(tmp_path: Path) -> None:
    from reaper.policy.loader import check_policy_file

    p = tmp_path / "policy.yaml"
    p.write_text("stores: [{type: dynamodb, table: tf-locks}]\nrules: [{match: '*', max_age: 1h}]\n"
                 "alerts:\n  digest:\n    enabled: true\n", encoding="utf-8")
    _, warnings = check_policy_file(p, env={})
    (w,) = [w for w in warnings if w.field == "alerts.digest.enabled"]
    assert w.line == 5 and "no SNS topic" in w.message
    _, warnings = check_policy_file(p, env={"REAPER_SNS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:t"})
    assert not [w for w in warnings if w.field == "alerts.digest.enabled"], "the stack's topic counts"


# ----------------------------------------------------------------------------------- the template
@pytest.mark.cdk
def test_the_template_alarms_on_late_writers_to_the_topic_and_grants_least_privilege(tmp_path: Path) -> None:
    import os

    eol = "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"
    os.environ[eol] = ",".join(sorted({*os.environ.get(eol, "").split(","), "18", "20", "22"} - {""}))
    import aws_cdk as cdk
    from aws_cdk import aws_lambda as lambda_

    from infra.lock_reaper import LockReaperProps
    from infra.settings import load_checked_policy, load_settings
    from infra.stack import LockReaperStack

    root = Path(__file__).resolve().parent.parent
    ctx = json.loads((root / "cdk.json").read_text(encoding="utf-8"))["context"]
    reaper = dict(ctx["reaper"], state_buckets=[STATE_BUCKET, {"bucket": OTHER_BUCKET, "prefixes": ["teams/"]}],
                  state_activity_evidence=True)
    settings = load_settings(reaper)
    policy, path, _ = load_checked_policy(settings, root)
    app = cdk.App(context=ctx, outdir=str(tmp_path / "cdk.out"))
    stack = LockReaperStack(app, "Watch", reaper=LockReaperProps(
        settings=settings, policy=policy, policy_file=path, project_root=root,
        code=lambda_.Code.from_inline("def lambda_handler(event, context):\n    return {}\n")))
    template = app.synth().get_stack_artifact(stack.artifact_id).template
    res = template["Resources"]
    (topic,) = [k for k, v in res.items() if v["Type"] == "AWS::SNS::Topic"]
    (alarm,) = [v["Properties"] for v in res.values()
                if v["Type"] == "AWS::CloudWatch::Alarm" and v["Properties"].get("MetricName") == LATE_WRITER]
    assert alarm["Namespace"] == policy.alerts.metrics.namespace
    assert alarm["AlarmActions"] == [{"Ref": topic}] and alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and "late_writers" in alarm["AlarmDescription"]
    (fn,) = [v["Properties"] for v in res.values() if v["Type"] == "AWS::Lambda::Function"]
    assert fn["Environment"]["Variables"]["REAPER_STATE_OBJECTS"] == f"{STATE_BUCKET}/,{OTHER_BUCKET}/teams/"
    sts = [st for v in res.values() if v["Type"] == "AWS::IAM::Policy" for st in v["Properties"]["PolicyDocument"]["Statement"]]
    by_sid = {st.get("Sid"): st for st in sts}
    (run_state,) = [k for k, v in res.items() if v["Type"] == "AWS::DynamoDB::Table" and "RunState" in k]
    assert by_sid["RunWatch"]["Action"] == "dynamodb:Scan"
    assert by_sid["RunWatch"]["Resource"] == {"Fn::GetAtt": [run_state, "Arn"]}
    versions = [st for sid, st in by_sid.items() if sid and sid.startswith("StateObjectVersions")]
    assert [st["Condition"]["StringLike"]["s3:prefix"] for st in versions] == [["*.tfstate"], ["teams/*.tfstate"]]
    assert all(st["Action"] == "s3:ListBucketVersions" for st in versions)
    for st in sts:  # no write on a "*" resource; the watch writes only its own table
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if any(a.split(":")[1].startswith(("Put", "Delete", "Update", "Create")) for a in actions):
            assert "*" not in resources or all(a.startswith("xray:") for a in actions), st


# ----------------------------------------------------------------------------------- a write during the reaping run
class MemoryTable:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def items(self) -> list[dict[str, Any]]:
        return list(self.rows.values())

    def put(self, item: dict[str, Any]) -> None:
        self.rows[item["pk"]] = dict(item)

    def delete(self, pk: str) -> None:
        self.rows.pop(pk, None)


class FixedHead:
    def __init__(self, modified: datetime) -> None:
        self.modified = modified

    def head(self, bucket: str, key: str) -> Any:
        from reaper.watch import Seen

        return Seen("ok", etag='"e1"', last_modified=self.modified)

    def versions(self, bucket: str, key: str) -> Any:
        raise AssertionError("an unversioned object: no versions list")


@pytest.mark.parametrize(("after_start", "late"), [(timedelta(minutes=6), True), (timedelta(minutes=4), False)])
def test_a_write_s3_dates_after_the_reaping_run_started_by_more_than_the_skew(after_start: timedelta, late: bool) -> None:
    from reaper.models import Outcome
    from reaper.report import LockEntry, RunReport
    from reaper.watch import RunWatch

    started = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    report = RunReport(run_id="r1", mode="enforce", started_at=started.isoformat(),
                       finished_at=(started + timedelta(minutes=1)).isoformat(), max_deletes_per_run=5)
    report.locks.append(LockEntry(store=f"dynamodb:{LOCK_TABLE}", key=LOCK_PATH, lock_path=LOCK_PATH, lock_id="id-1",
                                  operation="OperationTypeApply", who="ci@runner", created=None, age_seconds=None,
                                  decision="reap", outcome=Outcome.REAPED, reasons=[], audit_ref="s3://audit/rec.json"))
    table = MemoryTable()
    watch = RunWatch(table, FixedHead(started + after_start), None, timedelta(minutes=5),  # type: ignore[arg-type]
                     lambda: started + timedelta(minutes=1))
    watch.publish(report)
    assert bool(report.late_writers) is late, "S3's date vs the reaper's, only across clock_skew"
    if late:
        assert report.late_writers[0].audit_ref == "s3://audit/rec.json" and table.rows == {}
    else:
        assert list(table.rows) == [f"{WATCH_PREFIX}{LOCK_PATH}#id-1"], "within the skew: recorded and watched"


def test_no_late_writer_while_the_lock_store_could_not_be_scanned(world: World) -> None:
    """ "No new lock seen" holds only for a complete scan: a failed lock table proves nothing."""
    world.write_state(1)
    world.dead_ddb_lock()
    world.run()
    world.write_state(2)
    world.ddb.delete_table(TableName=LOCK_TABLE)  # the store fails: a new lock there would go unseen
    result, metrics = world.run(mode="report")
    assert [s["status"] for s in result["stores"] if s["name"] == f"dynamodb:{LOCK_TABLE}"] == ["error"]
    assert result["late_writers"] == [] and metrics.value(LATE_WRITER) == 0
    assert len(world.watch_items()) == 1, "still watched, judged by the next complete scan"
    create_lock_table(world.ddb, LOCK_TABLE)
    result, metrics = world.run(mode="report")
    assert len(result["late_writers"]) == 1 and metrics.value(LATE_WRITER) == 1
