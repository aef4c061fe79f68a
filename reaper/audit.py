"""Audit sinks: each lock is recorded before it is deleted, so it can be restored.

- S3AuditSink: one JSON object per reaped lock, ``s3://bucket/prefix/...``.
- LocalDirAuditSink: the same JSON in a local directory (the CLI and the demo).
- TeeAuditSink: write to several; every write must succeed.
If a write fails, the engine does not delete.

A record is ``reaper.models.AuditRecord``; the engine hands the sinks its
``model_dump(mode="json")``, the dict they store and ``restore`` reads back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .models import AUDIT_SCHEMA  # the record's format lives with its model (AuditRecord)

# The second record written beside an audit record when the lock was NOT deleted after all
# (the delete failed, raced, found it gone, or was not attempted): ``<record>.outcome.json``.
# An audit record with no outcome record beside it is a deleted lock.
OUTCOME_SCHEMA = "lock-reaper/delete-outcome/v1"
OUTCOME_SUFFIX = ".outcome.json"

_S3_REF = re.compile(r"^s3://([^/]+)/(.+)$")


class NotAnAuditRecord(ValueError):
    """What ``restore`` was given is not an audit record at all (not JSON, not an object, no schema)."""


def split_s3_ref(ref: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); ValueError naming what is missing."""
    m = _S3_REF.match(ref)
    if not m:
        raise ValueError(f"{ref} names no object key: give s3://<bucket>/<key> (the audit_ref the reap report shows)")
    return m.group(1), m.group(2)


def parse_record(text: str | bytes, ref: str) -> Any:
    """The JSON of an audit record; NotAnAuditRecord (one sentence) when it is not JSON."""
    try:
        return json.loads(text)
    except UnicodeDecodeError:
        raise NotAnAuditRecord(f"{ref} is not an audit record: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise NotAnAuditRecord(
            f"{ref} is not an audit record: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "an audit record is the JSON file that reap --enforce wrote before deleting a lock"
        ) from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:150] or "lock"


def record_name(record: dict[str, Any]) -> str:
    """Relative object name: <date>/<run id>/<store>/<path>-<lock id>.json (a delete-outcome record:
    the name of its audit record with ``.outcome.json`` for ``.json``, beside it)."""
    if record.get("schema") == OUTCOME_SCHEMA and record.get("audit_ref"):
        ref = str(record["audit_ref"])
        return "/".join(ref.replace("\\", "/").split("/")[-4:]).removesuffix(".json") + OUTCOME_SUFFIX
    day = str(record.get("recorded_at", ""))[:10] or "undated"
    return "/".join(
        [
            day,
            _slug(str(record.get("run_id", "run"))),
            _slug(str(record.get("store", "store"))),
            f"{_slug(str(record.get('lock_path', '')))}-{_slug(str(record.get('lock_id', '')))}.json",
        ]
    )


class S3AuditSink:
    def __init__(self, client: Any, bucket: str, prefix: str = "lock-reaper/audit/"):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def write(self, record: dict[str, Any]) -> str:
        key = self.prefix + record_name(record)
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=json.dumps(record, indent=2, sort_keys=True).encode("utf-8"),
            ContentType="application/json",
        )
        return f"s3://{self.bucket}/{key}"

    def read(self, ref: str) -> dict[str, Any]:
        bucket, key = split_s3_ref(ref) if ref.startswith("s3://") else (self.bucket, ref)
        if not bucket:
            raise ValueError(f"{ref} names no bucket and the policy has no audit.s3_bucket: give s3://<bucket>/<key>")
        body = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return parse_record(body, ref)


class LocalDirAuditSink:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def write(self, record: dict[str, Any]) -> str:
        path = self.directory / record_name(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
        return str(path)

    def read(self, ref: str) -> dict[str, Any]:
        path = Path(ref)
        if not path.is_absolute() and not path.exists():
            path = self.directory / ref
        return parse_record(path.read_bytes(), ref)


class TeeAuditSink:
    def __init__(self, *sinks: Any):
        self.sinks = sinks

    def write(self, record: dict[str, Any]) -> str:
        refs = [s.write(record) for s in self.sinks]
        return refs[0]

    def read(self, ref: str) -> dict[str, Any]:
        sink: Any = next((s for s in self.sinks if isinstance(s, S3AuditSink)), None) if ref.startswith("s3://") else None
        if sink is None:
            sink = next((s for s in self.sinks if isinstance(s, LocalDirAuditSink)), self.sinks[0])
        return sink.read(ref)


def validate_record(record: Any, ref: str = "the audit record") -> dict[str, Any]:
    """Check an audit record read back for restore; raise ValueError naming what is wrong
    (NotAnAuditRecord when it is not an audit record at all)."""
    if not isinstance(record, dict):
        raise NotAnAuditRecord(f"{ref} is not a Lock Reaper audit record (it is a JSON {type(record).__name__}, not an object)")
    if "schema" not in record:
        raise NotAnAuditRecord(f"{ref} is not a Lock Reaper audit record (it has no 'schema' field)")
    if record.get("schema") == OUTCOME_SCHEMA:
        raise NotAnAuditRecord(f"{ref} is a delete-outcome record (the lock was not deleted: {record.get('result')}); "
                               f"its audit record is {record.get('audit_ref')}")
    if record.get("schema") != AUDIT_SCHEMA:
        raise ValueError(f"audit record schema {record.get('schema')!r} is not supported (expected {AUDIT_SCHEMA})")
    for field in ("store", "lock_path", "item", "restorable"):
        if field not in record:
            raise ValueError(f"audit record has no {field!r}")
    return record
