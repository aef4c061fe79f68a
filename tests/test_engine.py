"""The reaping cycle: dry-run gate, cap, audit before delete, failures, alerts, metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import digest_item, info_json, lock_item
from reaper.alerts import DETAIL_TYPE_REAPED, EventBridgeAlertSink, MetricsAlertSink, SnsAlertSink
from reaper.audit import LocalDirAuditSink
from reaper.policy import Policy
from reaper.engine import Reaper
from reaper.models import Liveness, LivenessFact, LockRecord, Outcome
from reaper.ports import StoreError
from reaper.report import METRIC_DURATION, METRICS, RunReport
from reaper.stores.memory import InMemoryLockStore
from testkit import ListAudit

H = timedelta(hours=1)
BUCKET = "corp-tfstate"


def policy(**kw: Any) -> Policy:
    doc = {
        "min_age": "15m",
        "max_deletes_per_run": 10,
        "rules": [{"name": "default", "match": "*", "max_age": "3h", "hard_max_age": "1d"}],
        "audit": {"local_dir": "unused"},
    }
    doc.update(kw)
    return Policy.model_validate(doc)


def store_with(now: datetime, ages: dict[str, timedelta], name: str = "memory:locks", digests: bool = True) -> InMemoryLockStore:
    s = InMemoryLockStore(name=name)
    for key, age in ages.items():
        path = f"{BUCKET}/{key}"
        s.put_raw(lock_item(path, info_json(path, age, now)))
        if digests:
            s.put_raw(digest_item(path))
    return s


class FixedLiveness:
    def __init__(self, state: Liveness | None = None, exc: Exception | None = None) -> None:
        self.state, self.exc, self.calls = state, exc, []

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        self.calls.append(lock.key)
        if self.exc:
            raise self.exc
        return LivenessFact(state=self.state, reason=f"fake says {self.state.value}", checkers=("fake",))

    def stats(self) -> dict[str, Any]:
        return {}


class RecordingSink:
    order = 10

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail, self.reports = name, fail, []

    def publish(self, report: RunReport) -> str | None:
        self.reports.append(report)
        if self.fail:
            raise RuntimeError(f"{self.name} is down")
        return f"{self.name} told"


def outcomes(report: RunReport) -> dict[str, str]:
    return {e.key.removeprefix(BUCKET + "/"): e.outcome.value for e in report.locks}


# ---------------------------------------------------------------- gate and cap
def test_report_mode_never_deletes(now: datetime, clock) -> None:
    store = store_with(now, {"stale": 30 * H, "fresh": 1 * H})
    before = dict(store.items)
    audit = ListAudit()
    report = Reaper(policy(), [store], clock, audit=audit).run()
    assert report.mode == "report"
    assert outcomes(report) == {"stale": "would_reap", "fresh": "kept"}
    assert store.items == before and store.deleted == []
    assert audit.records == []
    stale = next(e for e in report.locks if e.outcome is Outcome.WOULD_REAP)
    assert stale.decision == "reap" and "report mode: not deleted" in stale.reasons
    assert report.summary.outcomes["would_reap"] == 1 and report.exit_code == 0


def test_enforce_deletes_only_the_stale(now: datetime, clock) -> None:
    store = store_with(now, {"stale": 30 * H, "fresh": 1 * H, "young": timedelta(minutes=5)})
    audit = ListAudit()
    report = Reaper(policy(mode="enforce"), [store], clock, audit=audit).run()
    assert outcomes(report) == {"stale": "reaped", "fresh": "kept", "young": "kept"}
    assert store.deleted == [f"{BUCKET}/stale"]
    assert f"{BUCKET}/stale-md5" in store.items, "digests are never deleted"
    assert report.summary.locks_scanned == 3 and report.summary.digests_skipped == 3
    assert report.summary.items_scanned == 6


def test_mode_argument_overrides_policy(now: datetime, clock) -> None:
    store = store_with(now, {"stale": 30 * H})
    report = Reaper(policy(mode="enforce"), [store], clock, audit=ListAudit()).run(mode="report")
    assert outcomes(report) == {"stale": "would_reap"} and store.deleted == []


def test_cap(aws, now: datetime, clock) -> None:
    sns = boto3.client("sns", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    topic = sns.create_topic(Name="lock-reaper")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    qarn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=qarn)

    store = store_with(now, {f"stack-{i}": (30 + i) * H for i in range(5)})
    report = Reaper(
        policy(mode="enforce", max_deletes_per_run=2), [store], clock, audit=ListAudit(), alerts=[SnsAlertSink(sns, topic)]
    ).run()
    got = sorted(outcomes(report).values())
    assert got == ["kept", "kept", "kept", "reaped", "reaped"]
    assert len(store.deleted) == 2
    capped = [e for e in report.locks if e.outcome is Outcome.KEPT]
    assert all(e.decision == "reap" and "cap of 2 deletes per run reached: kept" in e.reasons for e in capped)
    assert report.summary.cap_hit is True
    assert "delete cap 2 hit" in report.summary_line()

    msgs = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert len(msgs) == 1
    envelope = json.loads(msgs[0]["Body"])
    assert envelope["Subject"] == "Lock Reaper: 2 reaped, 0 raced, delete cap hit"
    body = envelope["Message"]
    assert "The cap of 2 deletes per run was hit" in body
    doc = json.loads(body.split("--- JSON ---\n", 1)[1])
    assert doc["summary"]["cap_hit"] is True and doc["summary"]["outcomes"]["reaped"] == 2


def test_cap_zero_deletes_nothing(now: datetime, clock) -> None:
    store = store_with(now, {"a": 30 * H})
    report = Reaper(policy(mode="enforce", max_deletes_per_run=0), [store], clock, audit=ListAudit()).run()
    assert outcomes(report) == {"a": "kept"} and report.summary.cap_hit and store.deleted == []


# ---------------------------------------------------------------- audit before delete
def test_audit_written_before_delete(now: datetime, clock, tmp_path: Path) -> None:
    store = store_with(now, {"stale": 30 * H})
    audit = LocalDirAuditSink(tmp_path)
    seen_at_delete: list[list[Path]] = []
    store.on_before_delete = lambda lock: seen_at_delete.append(sorted(tmp_path.rglob("*.json")))
    report = Reaper(policy(mode="enforce"), [store], clock, audit=audit, run_id="run-1").run()
    entry = report.locks[0]
    assert entry.outcome is Outcome.REAPED
    assert len(seen_at_delete) == 1 and len(seen_at_delete[0]) == 1, "the record existed before the delete"
    record = json.loads(seen_at_delete[0][0].read_text())
    assert entry.audit_ref == str(seen_at_delete[0][0])
    assert record["run_id"] == "run-1" and record["recorded_at"] == now.isoformat()
    assert record["item"] == lock_item(f"{BUCKET}/stale", record["token"])
    assert record["decision"] == "reap" and record["reasons"] and record["rule"] == "default"
    assert record["lock_id"] == entry.lock_id and record["liveness"]["state"] == "unknown"
    assert record["restorable"] is True


def test_audit_failure_prevents_delete(now: datetime, clock) -> None:
    store = store_with(now, {"stale": 30 * H})
    report = Reaper(policy(mode="enforce"), [store], clock, audit=ListAudit(fail=True)).run()
    e = report.locks[0]
    assert e.outcome is Outcome.ERROR
    assert any("audit write failed, not deleted" in r and "audit bucket unreachable" in r for r in e.reasons)
    assert f"{BUCKET}/stale" in store.items and store.deleted == []
    assert report.exit_code == 1


def test_no_audit_sink_in_enforce_is_an_error_not_a_delete(now: datetime, clock) -> None:
    store = store_with(now, {"stale": 30 * H, "fresh": 1 * H})
    report = Reaper(policy(mode="enforce"), [store], clock, audit=None).run()
    assert outcomes(report) == {"stale": "error", "fresh": "kept"}
    assert "no audit sink is configured: refusing to delete" in report.locks[0].reasons + report.locks[1].reasons
    assert store.deleted == [] and report.exit_code == 1


# ---------------------------------------------------------------- failures
def test_failing_store_does_not_stop_the_next(now: datetime, clock) -> None:
    broken = InMemoryLockStore(name="memory:broken")
    broken.fail_validate = "table 'broken' is not a Terraform lock table"
    good = store_with(now, {"stale": 30 * H}, name="memory:good")
    report = Reaper(policy(mode="enforce"), [broken, good], clock, audit=ListAudit()).run()
    assert [(s.name, s.status) for s in report.stores] == [("memory:broken", "error"), ("memory:good", "ok")]
    assert report.stores[0].error == "table 'broken' is not a Terraform lock table"
    assert outcomes(report) == {"stale": "reaped"}
    assert report.summary.store_errors == 1 and report.exit_code == 1


class ScanDiesMidway(InMemoryLockStore):
    def scan(self) -> Iterator[LockRecord]:
        it = super().scan()
        yield next(it)
        raise StoreError("scan of 'flaky' failed: ProvisionedThroughputExceededException")


def test_store_failing_mid_scan_keeps_what_it_saw(now: datetime, clock) -> None:
    flaky = ScanDiesMidway(name="memory:flaky")
    for k in ("a", "b"):
        flaky.put_lock(f"{BUCKET}/{k}", info_json(f"{BUCKET}/{k}", 30 * H, now))
    good = store_with(now, {"c": 30 * H}, name="memory:good")
    report = Reaper(policy(), [flaky, good], clock).run()
    assert report.stores[0].status == "error" and "ProvisionedThroughputExceeded" in report.stores[0].error
    assert report.stores[0].locks == 1 and report.stores[1].locks == 1
    assert len(report.locks) == 2


def test_liveness_checker_that_raises_means_unknown_and_kept(now: datetime, clock) -> None:
    store = store_with(now, {"stale": 5 * H})  # past max_age 3h, below hard_max_age 1d
    checker = FixedLiveness(exc=TimeoutError("GitHub API timed out"))
    report = Reaper(policy(mode="enforce"), [store], clock, liveness=checker, audit=ListAudit()).run()
    e = report.locks[0]
    assert checker.calls == [f"{BUCKET}/stale"]
    assert e.outcome is Outcome.KEPT and e.liveness == "unknown"
    assert any("liveness check failed: TimeoutError: GitHub API timed out" in r for r in e.reasons)
    assert "kept_unknown" in e.flags and report.summary.kept_unknown == 1
    assert store.deleted == []


def test_liveness_only_asked_for_candidates(now: datetime, clock) -> None:
    store = store_with(now, {"fresh": 1 * H, "stale": 5 * H})
    checker = FixedLiveness(Liveness.DEAD)
    report = Reaper(policy(mode="enforce"), [store], clock, liveness=checker, audit=ListAudit()).run()
    assert checker.calls == [f"{BUCKET}/stale"]
    assert outcomes(report) == {"fresh": "kept", "stale": "reaped"}
    e = next(e for e in report.locks if e.outcome is Outcome.REAPED)
    assert e.liveness == "dead" and "holder dead: fake says dead" in e.reasons


def test_alive_holder_never_reaped(now: datetime, clock) -> None:
    store = store_with(now, {"old": 30 * H})
    report = Reaper(policy(mode="enforce"), [store], clock, liveness=FixedLiveness(Liveness.ALIVE), audit=ListAudit()).run()
    assert outcomes(report) == {"old": "kept"}
    assert report.summary.alive_past_hard_max == 1


def test_delete_raising_is_an_error(now: datetime, clock) -> None:
    store = store_with(now, {"stale": 30 * H, "other": 31 * H})

    def boom(lock: LockRecord) -> None:
        if lock.key.endswith("stale"):
            raise ConnectionError("connection reset by peer")

    store.on_before_delete = boom
    audit = ListAudit()
    report = Reaper(policy(mode="enforce"), [store], clock, audit=audit).run()
    assert outcomes(report) == {"stale": "error", "other": "reaped"}
    err = next(e for e in report.locks if e.outcome is Outcome.ERROR)
    assert any("delete failed: ConnectionError: connection reset by peer" in r for r in err.reasons)
    assert err.audit_ref, "the audit record written before the failed delete is referenced"
    assert f"{BUCKET}/stale" in store.items and report.exit_code == 1


def test_race_and_gone_in_the_engine(now: datetime, clock) -> None:
    store = store_with(now, {"raced": 30 * H, "gone": 31 * H})
    new_info = info_json(f"{BUCKET}/raced", timedelta(0), now, who="deploy@runner-9", id_="aaaabbbb-cccc-dddd-eeee-ffff00001111")

    def interfere(lock: LockRecord) -> None:
        if lock.key.endswith("raced"):
            store.put_lock(lock.key, new_info)
        else:
            store.items.pop(lock.key)

    store.on_before_delete = interfere
    report = Reaper(policy(mode="enforce"), [store], clock, audit=ListAudit()).run()
    assert outcomes(report) == {"raced": "raced", "gone": "gone"}
    raced = next(e for e in report.locks if e.outcome is Outcome.RACED)
    assert raced.current_holder == {"id": "aaaabbbb-cccc-dddd-eeee-ffff00001111", "who": "deploy@runner-9"}
    assert store.get(f"{BUCKET}/raced")["Info"]["S"] == new_info
    assert report.exit_code == 0, "raced and gone are normal outcomes"


def test_one_bad_item_does_not_crash_the_run(now: datetime, clock, monkeypatch: pytest.MonkeyPatch) -> None:
    import reaper.engine as engine

    real = engine.decide

    def flaky_decide(lock, *a, **kw):
        if lock.key.endswith("poison"):
            raise RuntimeError("unexpected")
        return real(lock, *a, **kw)

    monkeypatch.setattr(engine, "decide", flaky_decide)
    store = store_with(now, {"poison": 30 * H, "stale": 30 * H})
    report = Reaper(policy(mode="enforce"), [store], clock, audit=ListAudit()).run()
    assert outcomes(report) == {"poison": "error", "stale": "reaped"}
    assert f"{BUCKET}/poison" in store.items


# ---------------------------------------------------------------- alerts
@pytest.fixture
def sns_queue(aws):
    sns = boto3.client("sns", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    topic = sns.create_topic(Name="lock-reaper")["TopicArn"]
    queue = sqs.create_queue(QueueName="sns-alerts")["QueueUrl"]
    qarn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=qarn, Attributes={"RawMessageDelivery": "false"})

    def received() -> list[dict[str, Any]]:
        msgs = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in msgs]

    return SnsAlertSink(sns, topic), received


@pytest.fixture
def event_queue(aws):
    events = boto3.client("events", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    queue = sqs.create_queue(QueueName="reaped-events")["QueueUrl"]
    qarn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="reaped", EventPattern=json.dumps({"source": ["lock-reaper"], "detail-type": [DETAIL_TYPE_REAPED]}))
    events.put_targets(Rule="reaped", Targets=[{"Id": "q", "Arn": qarn}])

    def received() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            msgs = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
            if not msgs:
                return out
            out += [json.loads(m["Body"]) for m in msgs]
            sqs.delete_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                                for i, m in enumerate(msgs)])

    return EventBridgeAlertSink(events, "default", "lock-reaper"), received


def test_sns_silent_when_nothing_happened(now: datetime, clock, sns_queue) -> None:
    sink, received = sns_queue
    store = store_with(now, {"fresh": 1 * H, "stale": 30 * H})
    report = Reaper(policy(), [store], clock, alerts=[sink]).run()  # report mode: would_reap only
    assert received() == []
    assert [(a.sink, a.status) for a in report.alerts] == [("sns", "skipped")]


def test_sns_once_per_run_when_reaped(now: datetime, clock, sns_queue) -> None:
    sink, received = sns_queue
    store = store_with(now, {"a": 30 * H, "b": 40 * H, "fresh": 1 * H})
    report = Reaper(policy(mode="enforce"), [store], clock, audit=ListAudit(), alerts=[sink]).run()
    msgs = received()
    assert len(msgs) == 1
    assert msgs[0]["Subject"] == "Lock Reaper: 2 reaped, 0 raced"
    body = msgs[0]["Message"]
    assert f"- REAPED: memory:locks {BUCKET}/a" in body and f"{BUCKET}/fresh" not in body.split("--- JSON")[0]
    doc = json.loads(body.split("--- JSON ---\n", 1)[1])
    assert doc["run_id"] == report.run_id and len(doc["locks"]) == 3
    assert report.alerts[0].status == "sent"


def test_sns_when_raced_only(now: datetime, clock, sns_queue) -> None:
    sink, received = sns_queue
    store = store_with(now, {"a": 30 * H})
    store.on_before_delete = lambda lock: store.put_lock(lock.key, info_json(lock.key, timedelta(0), now))
    Reaper(policy(mode="enforce"), [store], clock, audit=ListAudit(), alerts=[sink]).run()
    msgs = received()
    assert len(msgs) == 1 and msgs[0]["Subject"] == "Lock Reaper: 0 reaped, 1 raced"


def test_one_event_per_reaped_lock(now: datetime, clock, event_queue) -> None:
    sink, received = event_queue
    ages = {f"stack-{i}": (30 + i) * H for i in range(12)}  # more than one PutEvents batch of 10
    ages["fresh"] = 1 * H
    store = store_with(now, ages)
    report = Reaper(policy(mode="enforce", max_deletes_per_run=20), [store], clock, audit=ListAudit(), alerts=[sink]).run()
    events = received()
    assert len(events) == 12
    assert {e["source"] for e in events} == {"lock-reaper"}
    assert {e["detail-type"] for e in events} == {"Terraform Lock Reaped"}
    reaped = {e.lock_path: e for e in report.locks if e.outcome is Outcome.REAPED}
    assert {e["detail"]["lock_path"] for e in events} == set(reaped)
    one = events[0]["detail"]
    assert one["run_id"] == report.run_id and one["outcome"] == "reaped" and one["lock_id"] == reaped[one["lock_path"]].lock_id
    assert one["audit_ref"]
    assert report.alerts[0].status == "sent" and "12 event(s)" in report.alerts[0].detail


def test_no_events_when_nothing_reaped(now: datetime, clock, event_queue) -> None:
    sink, received = event_queue
    store = store_with(now, {"stale": 30 * H})
    report = Reaper(policy(), [store], clock, alerts=[sink]).run()
    assert received() == [] and report.alerts[0].status == "skipped"


def test_failing_alert_sink_is_reported_and_does_not_undo_the_delete(now: datetime, clock) -> None:
    store = store_with(now, {"stale": 30 * H})
    bad, good = RecordingSink("sns", fail=True), RecordingSink("eventbridge")
    report = Reaper(policy(mode="enforce"), [store], clock, audit=ListAudit(), alerts=[bad, good]).run()
    assert outcomes(report) == {"stale": "reaped"} and store.deleted == [f"{BUCKET}/stale"]
    assert [(a.sink, a.status) for a in report.alerts] == [("sns", "error"), ("eventbridge", "sent")]
    assert "sns is down" in report.alerts[0].detail
    assert report.summary.alert_errors == 1 and report.exit_code == 1
    assert len(good.reports) == 1, "the next sink still runs"


def test_metrics_sink(now: datetime, clock) -> None:
    from aws_lambda_powertools import Metrics

    metrics = Metrics(namespace="Before", service="lock-reaper")
    metrics.clear_metrics()
    try:
        store = store_with(now, {"stale": 30 * H, "fresh": 1 * H})
        store.put_lock(f"{BUCKET}/junk", "not json")
        failing = RecordingSink("sns", fail=True)
        report = Reaper(
            policy(mode="enforce"), [store], clock, audit=ListAudit(),
            alerts=[MetricsAlertSink(metrics, namespace="Ops/LockReaper"), failing],
        ).run()
        emf = metrics.serialize_metric_set()
        declared = emf["_aws"]["CloudWatchMetrics"][0]
        assert declared["Namespace"] == "Ops/LockReaper"
        names = {m["Name"] for m in declared["Metrics"]}
        assert names == set(METRICS.values()) | {METRIC_DURATION}

        def value(key: str) -> float:
            v = emf[METRICS[key]]
            return v[0] if isinstance(v, list) and len(v) == 1 else v

        assert value("locks_scanned") == 3.0
        assert value("reaped") == 1.0
        assert value("unparseable") == 1.0
        assert value("digests_skipped") == 2.0
        assert value("errors") == 1.0, "metrics run last, so a failed alert is counted"
        assert value("cap_hit") == 0.0
        assert [a.sink for a in report.alerts] == ["sns", "metrics"]
    finally:
        metrics.clear_metrics()
