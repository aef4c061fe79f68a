"""Alert sinks, each optional and configured in the policy file.

- SnsAlertSink: one message per run that reaped or raced anything, or hit the
  cap: a readable summary followed by the JSON report.
- EventBridgeAlertSink: one event per reaped lock (source ``lock-reaper``,
  detail-type ``Terraform Lock Reaped``), and one per late writer the watch found
  (``Terraform Lock Late Writer``: a reaped lock whose holder wrote state after the reap).
- MetricsAlertSink: Powertools Metrics (EMF) counts for every run.
Each sink is quiet when there is nothing to say. Sinks are told in ascending
``order`` (``reaper.ports``): the metrics sink last.
"""

from __future__ import annotations

import json
from typing import Any

from .models import Outcome
from .ports import ORDER_METRICS, ORDER_NOTIFY
from .report import METRIC_DURATION, RunReport

SNS_MAX_BYTES = 256 * 1024
DETAIL_TYPE_REAPED = "Terraform Lock Reaped"
DETAIL_TYPE_LATE_WRITER = "Terraform Lock Late Writer"


def needs_sns(report: RunReport) -> bool:
    return bool(report.count(Outcome.REAPED) or report.count(Outcome.RACED) or report.summary.cap_hit
                or report.summary.double_lock_partial or report.late_writers)


def sns_message(report: RunReport) -> tuple[str, str]:
    """(subject, body) for the per-run SNS message; the body stays under SNS's limit."""
    s = report.summary
    subject = (
        "Lock Reaper: "
        + (f"LATE WRITER x{len(report.late_writers)} (a reaped lock's holder was alive), " if report.late_writers else "")
        + ("STATE STILL LOCKED (double lock half released), " if s.double_lock_partial else "")
        + f"{report.count(Outcome.REAPED)} reaped, {report.count(Outcome.RACED)} raced"
        + (", delete cap hit" if s.cap_hit else "")
    )[:100]
    text = report.render_text_summary()
    payload = report.model_dump(mode="json")
    body = f"{text}\n\n--- JSON ---\n{json.dumps(payload, indent=1)}"
    if len(body.encode("utf-8")) > SNS_MAX_BYTES:
        # Keep the actionable locks in the JSON; drop the kept ones.
        payload["locks"] = [e for e in payload["locks"] if e["outcome"] != Outcome.KEPT.value]
        payload["locks_truncated"] = True
        body = f"{text}\n\n--- JSON (kept locks omitted) ---\n{json.dumps(payload)}"
        if len(body.encode("utf-8")) > SNS_MAX_BYTES:
            body = body.encode("utf-8")[: SNS_MAX_BYTES - 64].decode("utf-8", "ignore") + "\n[truncated]"
    return subject, body


class SnsAlertSink:
    name = "sns"
    order = ORDER_NOTIFY

    def __init__(self, client: Any, topic_arn: str):
        self.client = client
        self.topic_arn = topic_arn

    def publish(self, report: RunReport) -> str | None:
        if not needs_sns(report):
            return None
        subject, body = sns_message(report)
        resp = self.client.publish(TopicArn=self.topic_arn, Subject=subject, Message=body)
        return f"published {resp.get('MessageId', '?')} to {self.topic_arn}: {subject}"


class EventBridgeAlertSink:
    name = "eventbridge"
    order = ORDER_NOTIFY

    def __init__(self, client: Any, event_bus: str = "default", source: str = "lock-reaper"):
        self.client = client
        self.event_bus = event_bus
        self.source = source

    def publish(self, report: RunReport) -> str | None:
        reaped = [e for e in report.locks if e.outcome is Outcome.REAPED]
        if not reaped and not report.late_writers:
            return None
        late = [
            {
                "Source": self.source,
                "DetailType": DETAIL_TYPE_LATE_WRITER,
                "EventBusName": self.event_bus,
                "Resources": [],
                "Detail": json.dumps({"run_id": report.run_id, "mode": report.mode, **f.model_dump(mode="json")}),
            }
            for f in report.late_writers
        ]
        entries = late + [
            {
                "Source": self.source,
                "DetailType": DETAIL_TYPE_REAPED,
                "EventBusName": self.event_bus,
                "Resources": [],
                "Detail": json.dumps({"run_id": report.run_id, "mode": report.mode, **e.model_dump(mode="json")}),
            }
            for e in reaped
        ]
        failed = 0
        for i in range(0, len(entries), 10):  # PutEvents takes at most 10 entries
            resp = self.client.put_events(Entries=entries[i : i + 10])
            failed += int(resp.get("FailedEntryCount", 0))
        if failed:
            raise RuntimeError(f"{failed} of {len(entries)} events were not accepted by {self.event_bus}")
        return f"{len(entries)} event(s) put on bus {self.event_bus}"


class MetricsAlertSink:
    """Adds the run's counts to a Powertools ``Metrics`` object (flushed by its owner)."""

    name = "metrics"
    order = ORDER_METRICS  # last: its Errors count includes the alerts that failed before it

    def __init__(self, metrics: Any, namespace: str | None = None):
        self.metrics = metrics
        self.namespace = namespace  # the policy's alerts.metrics.namespace; None keeps the object's own

    def publish(self, report: RunReport) -> str | None:
        from aws_lambda_powertools.metrics import MetricUnit

        if self.namespace:
            self.metrics.namespace = self.namespace
        for name, value in report.metric_values().items():
            self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
        if report.duration_seconds is not None:
            self.metrics.add_metric(name=METRIC_DURATION, unit=MetricUnit.Seconds, value=report.duration_seconds)
        return f"{len(report.metric_values()) + 1} metrics"
