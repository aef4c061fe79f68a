"""Run reports kept after each scheduled run, and the report-mode digest.

- ``S3RunReports`` / ``LocalRunReports``: each run's JSON report at
  ``<audit prefix>runs/YYYY/MM/DD/<run_id>.json`` in the audit bucket (or under the
  local audit directory); ``latest()`` lists ``runs/`` newest date first.
- ``RunReportSink``: an alert sink (told before the metrics sink) that writes the
  report: a failed write is an alert error (logged, counted in ``Errors``), never a
  crash, and nothing is undone.
- ``DigestSink``: opt-in (``alerts.digest.enabled``), report mode only: one SNS
  message listing what would have been reaped, at most once per ``alerts.digest.every``
  (default a day). Its state is a small marker object next to the run reports
  (``runs/last-digest.json``: when it was sent, by which run): no table needed, and it
  lives and is retained with the reports it summarises.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from .models import Outcome
from .ports import ORDER_METRICS, ORDER_NOTIFY
from .report import RunReport

RUNS_DIR = "runs/"
DIGEST_MARKER = "last-digest.json"
ORDER_DIGEST = ORDER_NOTIFY + 1
ORDER_RUN_REPORT = ORDER_METRICS - 1  # last before the metrics: the stored report holds the other alerts' results
_DAY = re.compile(r"^\d{4}/\d{2}/\d{2}/$")


class NoRunReport(LookupError):
    """No stored run report matches (none yet, or no such run id)."""


def report_name(run_id: str, started_at: str) -> str:
    """``YYYY/MM/DD/<run_id>.json`` from the run's start (UTC ISO time)."""
    day = started_at[:10].replace("-", "/") if len(started_at) >= 10 else "undated"
    return f"{day}/{run_id}.json"


class RunReports(Protocol):
    def write(self, report: RunReport) -> str: ...
    def read(self, run_id: str) -> RunReport: ...
    def latest(self) -> RunReport: ...
    def read_marker(self) -> dict[str, Any] | None: ...
    def write_marker(self, marker: dict[str, Any]) -> None: ...


def _parse(text: str | bytes, where: str) -> RunReport:
    try:
        return RunReport.model_validate(json.loads(text))
    except Exception as exc:
        raise ValueError(f"{where} is not a Lock Reaper run report: {type(exc).__name__}: {exc}") from None


class S3RunReports:
    def __init__(self, client: Any, bucket: str, prefix: str = "lock-reaper/audit/"):
        self.client = client
        self.bucket = bucket
        base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.prefix = base + RUNS_DIR

    def write(self, report: RunReport) -> str:
        key = self.prefix + report_name(report.run_id, report.started_at)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=report.to_json().encode("utf-8"),
                               ContentType="application/json")
        return f"s3://{self.bucket}/{key}"

    def _get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def _children(self, prefix: str) -> list[str]:
        """The sub-prefixes (``.../2026/``) directly under ``prefix``."""
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return found

    def _objects(self, prefix: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            found += page.get("Contents", [])
        return found

    def _days(self) -> list[str]:
        """Every ``runs/YYYY/MM/DD/`` prefix, newest first (three short listings per level visited)."""
        days: list[str] = []
        for year in sorted(self._children(self.prefix), reverse=True):
            for month in sorted(self._children(year), reverse=True):
                days += sorted(self._children(month), reverse=True)
        return days

    def latest(self) -> RunReport:
        for day in self._days():  # newest date first; the first day with a report has the latest
            objects = [o for o in self._objects(day) if o["Key"].endswith(".json")]
            if objects:
                newest = max(objects, key=lambda o: (o["LastModified"], o["Key"]))
                return _parse(self._get(newest["Key"]), f"s3://{self.bucket}/{newest['Key']}")
        raise NoRunReport(f"no run report under s3://{self.bucket}/{self.prefix} yet")

    def read(self, run_id: str) -> RunReport:
        name = f"/{run_id}.json"
        for day in self._days():
            for o in self._objects(day):
                if o["Key"].endswith(name):
                    return _parse(self._get(o["Key"]), f"s3://{self.bucket}/{o['Key']}")
        raise NoRunReport(f"no run report for run {run_id} under s3://{self.bucket}/{self.prefix}")

    def read_marker(self) -> dict[str, Any] | None:
        try:
            marker = json.loads(self._get(self.prefix + DIGEST_MARKER))
        except Exception as exc:
            from .aws import is_code

            if is_code(exc, "NoSuchKey", "404"):
                return None
            raise
        return marker if isinstance(marker, dict) else None

    def write_marker(self, marker: dict[str, Any]) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + DIGEST_MARKER,
                               Body=json.dumps(marker).encode("utf-8"), ContentType="application/json")


class LocalRunReports:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory) / RUNS_DIR.rstrip("/")

    def write(self, report: RunReport) -> str:
        path = self.directory / report_name(report.run_id, report.started_at)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(report.to_json(), encoding="utf-8")
        tmp.replace(path)
        return str(path)

    def _days(self) -> list[Path]:
        return sorted((p for p in self.directory.glob("*/*/*") if p.is_dir()), key=lambda p: p.parts[-3:], reverse=True)

    def latest(self) -> RunReport:
        for day in self._days():
            files = list(day.glob("*.json"))
            if files:
                newest = max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
                return _parse(newest.read_bytes(), str(newest))
        raise NoRunReport(f"no run report under {self.directory} yet")

    def read(self, run_id: str) -> RunReport:
        for day in self._days():
            path = day / f"{run_id}.json"
            if path.is_file():
                return _parse(path.read_bytes(), str(path))
        raise NoRunReport(f"no run report for run {run_id} under {self.directory}")

    def read_marker(self) -> dict[str, Any] | None:
        path = self.directory / DIGEST_MARKER
        if not path.is_file():
            return None
        marker = json.loads(path.read_text(encoding="utf-8"))
        return marker if isinstance(marker, dict) else None

    def write_marker(self, marker: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / DIGEST_MARKER).write_text(json.dumps(marker), encoding="utf-8")


class RunReportSink:
    """Keeps the run's report (every store given: S3 and the local directory)."""

    name = "run_report"
    order = ORDER_RUN_REPORT

    def __init__(self, *stores: RunReports):
        self.stores = stores

    def publish(self, report: RunReport) -> str | None:
        return "stored " + " and ".join(s.write(report) for s in self.stores)


def digest_message(report: RunReport) -> tuple[str, str]:
    """(subject, body): the locks this report-mode run would have reaped."""
    would = [e for e in report.locks if e.outcome is Outcome.WOULD_REAP]
    subject = f"Lock Reaper digest (report mode): {len(would)} lock(s) would have been reaped"[:100]
    lines = [f"Report-mode run {report.run_id} at {report.started_at}: {report.summary_line()}",
             "Nothing was deleted. With mode: enforce these locks would have been reaped:", ""]
    for e in would:
        where = " + ".join(t.store for t in e.targets) if e.targets else e.store
        lines.append(f"- {where} {e.lock_path} (id {e.lock_id or '-'}, by {e.who or '-'}, liveness {e.liveness})")
        lines += [f"    {r}" for r in e.reasons]
    lines += ["", "Read any run back with: python -m reaper report [RUN_ID] --config <policy file>"]
    return subject, "\n".join(lines)[: 256 * 1024 - 1024]


class DigestSink:
    """Report mode only, at most once per ``every``: the would-reap list on SNS; the marker records the send."""

    name = "digest"
    order = ORDER_DIGEST

    def __init__(self, client: Any, topic_arn: str, marker: RunReports, every: timedelta = timedelta(days=1)):
        self.client = client
        self.topic_arn = topic_arn
        self.marker = marker
        self.every = every

    def publish(self, report: RunReport) -> str | None:
        if report.mode != "report" or not report.count(Outcome.WOULD_REAP):
            return None
        now = datetime.fromisoformat(report.finished_at or report.started_at)
        last = self.marker.read_marker()
        if last and last.get("sent_at"):
            sent = datetime.fromisoformat(str(last["sent_at"]))
            if now - sent < self.every:
                return None  # quiet: the last digest is recent (its run id is in the marker)
        subject, body = digest_message(report)
        resp = self.client.publish(TopicArn=self.topic_arn, Subject=subject, Message=body)
        self.marker.write_marker({"sent_at": now.isoformat(), "run_id": report.run_id,
                                  "message_id": resp.get("MessageId"), "would_reap": report.count(Outcome.WOULD_REAP)})
        return f"digest {resp.get('MessageId', '?')} to {self.topic_arn}: {subject}"
