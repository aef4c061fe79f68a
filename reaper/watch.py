"""The late-writer watch: the production measure of false reaps (it must stay zero).

For each lock an enforce run reaped, the watch records a watch item in the run-state
table (``REAPER_LEASE_TABLE``, the run lease's table; items ``watch#<lock path>#<lock id>``,
apart from the ``run-lease`` item and the ``lease#`` lease observations), with what
the state object looked like right after the reap: its ETag, VersionId and
LastModified (``HeadObject``), and where versioning is on the delete marker the reap
left on an S3 lock file. The next scheduled runs, for a day, look again:

- the store that would hold a new lock not scanned completely this run (a store error):
  nothing is concluded, the next complete scan judges ("no new lock" needs a complete list);
- a new lock seen for the lock path (any lock the run's scan saw there; in a versioned
  bucket also a ``<key>.tflock`` version written after the reap's delete marker):
  resolved, the item is deleted. One last look first: a state write S3 dates before
  that new lock's ``Created`` by more than ``clock_skew`` was still the old holder;
- else the state object written after the reap (its ETag or VersionId is not the one
  recorded, a newer version in the versions list, or it appeared): a **late writer**,
  the "dead" holder was alive. The finding goes into the run report (``late_writers``),
  the log (one ``late writer`` line), the ``LateWriter`` metric, the SNS message and a
  ``Terraform Lock Late Writer`` event (``reaper.alerts``); the item is deleted;
- a state object that cannot be read (not granted, AccessDenied, any error) is
  ``unknown``: reported once (``watch.unknown``, one ``watch unknown`` line), never a
  late writer, never a crash;
- past a day: expired, deleted (the TTL on ``expires_at`` tidies up what is left).

Only the reaper's own clock dates the reap, and only S3's clock dates state writes:
they are compared only across ``clock_skew`` (a write S3 dates after the reaping run
started by more than the skew). Locks of HCP Terraform and GitLab are not watched:
their state is not an S3 object the function may read.

It runs as an alert sink (``order``: after the scan, before the notifications, so the
SNS message and the events carry its findings, and before the metrics).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .aws import error_code, is_code
from .models import Outcome
from .policy.env import StateObjectGrants
from .ports import ORDER_NOTIFY, Clock
from .report import LOG_LATE_WRITER, LOG_WATCH_UNKNOWN, LockEntry, RunReport, WatchFinding, WatchSummary

log = logging.getLogger("reaper.watch")

WATCH_PREFIX = "watch#"
WATCH_FOR = timedelta(days=1)  # how long the next runs look
WATCH_TTL_EXTRA = timedelta(hours=2)  # DynamoDB TTL after that (it only tidies up: the runtime compares itself)
ORDER_WATCH = ORDER_NOTIFY - 1
WATCHED_STORES = ("dynamodb:", "s3:")  # S3-backed state: a DynamoDB LockID or an S3 .tflock file names bucket/key
LOCK_FILE_SUFFIX = ".tflock"
_NO_VERSION = (None, "", "null")


def state_location(entry: LockEntry) -> tuple[str, str] | None:
    """(bucket, state key) of a reaped lock: its lock path, ``bucket/key`` for both S3-backed stores; None otherwise."""
    stores = [t.store for t in entry.targets] or [entry.store]
    if not all(s.startswith(WATCHED_STORES) for s in stores):
        return None
    bucket, sep, key = entry.lock_path.partition("/")
    return (bucket, key) if sep and bucket and key else None


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else ""


def _when(value: Any) -> datetime | None:
    """An ISO time of a watch item; None for anything else (a malformed item is then expired)."""
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) and value else None
    except ValueError:
        return None


@dataclass
class Seen:
    """One look at a state object: ``ok`` (with its metadata), ``absent`` (404), or ``unreadable`` (why)."""

    status: str
    etag: str = ""
    version_id: str = ""
    last_modified: datetime | None = None
    detail: str = ""

    def fields(self) -> dict[str, str]:
        out = {"status": self.status, "etag": self.etag, "version_id": self.version_id,
               "last_modified": _iso(self.last_modified)}
        return {k: v for k, v in out.items() if v}


@dataclass
class Versions:
    """The versions list of one state key (newest first) and of its ``.tflock`` file."""

    state: list[dict[str, Any]] = field(default_factory=list)
    lock_versions: list[dict[str, Any]] = field(default_factory=list)
    lock_markers: list[dict[str, Any]] = field(default_factory=list)


class StateObjects:
    """Reads state object metadata: ``HeadObject``, and ``ListObjectVersions`` (exact key and its lock file)."""

    def __init__(self, s3: Any, max_pages: int = 5):
        self.s3 = s3
        self.max_pages = max_pages
        self._no_versions: set[str] = set()  # buckets where listing versions was refused: head only

    def head(self, bucket: str, key: str) -> Seen:
        try:
            h = self.s3.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if is_code(exc, "404", "NoSuchKey", "NotFound"):
                return Seen("absent")
            return Seen("unreadable", detail=f"HeadObject failed ({error_code(exc)})")
        modified = h.get("LastModified")
        return Seen("ok", etag=str(h.get("ETag") or ""), version_id=str(h.get("VersionId") or ""),
                    last_modified=modified if isinstance(modified, datetime) else None)

    def versions(self, bucket: str, key: str) -> Versions | None:
        """None when the bucket refuses the listing (then heads only)."""
        if bucket in self._no_versions:
            return None
        found = Versions()
        lock_key = key + LOCK_FILE_SUFFIX
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
        try:
            for _ in range(self.max_pages):
                page = self.s3.list_object_versions(**kwargs)
                for v in page.get("Versions", []):
                    if v.get("Key") == key:
                        found.state.append(v)
                    elif v.get("Key") == lock_key:
                        found.lock_versions.append(v)
                found.lock_markers += [m for m in page.get("DeleteMarkers", []) if m.get("Key") == lock_key]
                if not page.get("IsTruncated"):
                    break
                kwargs.update(KeyMarker=page.get("NextKeyMarker"), VersionIdMarker=page.get("NextVersionIdMarker"))
        except Exception:
            self._no_versions.add(bucket)
            return None
        return found


class WatchTable:
    """The watch items in the run-state table (low-level DynamoDB: strings, the TTL number, booleans)."""

    def __init__(self, client: Any, table: str):
        self.client = client
        self.table = table

    def items(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True,
                                  "FilterExpression": "begins_with(pk, :watch)",
                                  "ExpressionAttributeValues": {":watch": {"S": WATCH_PREFIX}}}
        while True:
            page = self.client.scan(**kwargs)
            found += [_plain(i) for i in page.get("Items", [])]
            if not page.get("LastEvaluatedKey"):
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def put(self, item: dict[str, Any]) -> None:
        self.client.put_item(TableName=self.table, Item=_typed(item))

    def delete(self, pk: str) -> None:
        self.client.delete_item(TableName=self.table, Key={"pk": {"S": pk}})


def _typed(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in item.items():
        if isinstance(v, bool):
            out[k] = {"BOOL": v}
        elif isinstance(v, int):
            out[k] = {"N": str(v)}
        elif v is not None and v != "":
            out[k] = {"S": str(v)}
    return out


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in item.items():
        if "BOOL" in v:
            out[k] = bool(v["BOOL"])
        elif "N" in v:
            out[k] = int(float(v["N"]))
        elif "S" in v:
            out[k] = v["S"]
    return out


def watch_key(lock_path: str, lock_id: str) -> str:
    return f"{WATCH_PREFIX}{lock_path}#{lock_id}"


class RunWatch:
    """The late-writer watch, told about each scheduled run (an ``AlertSink``; see the module docstring)."""

    name = "late_writer_watch"
    order = ORDER_WATCH

    def __init__(self, table: WatchTable, state: StateObjects, grants: StateObjectGrants | None,
                 clock_skew: timedelta, clock: Clock):
        self.table = table
        self.state = state
        self.grants = grants  # None: every state object may be read; else only these (the stack's grant)
        self.skew = clock_skew
        self.clock = clock

    def granted(self, bucket: str, key: str) -> bool:
        return self.grants is None or self.grants.allows(bucket, key)

    def publish(self, report: RunReport) -> str | None:
        summary = report.watch = WatchSummary()
        reaped = [e for e in report.locks if e.outcome is Outcome.REAPED]
        nothing_granted = self.grants is not None and not self.grants.grants
        if nothing_granted:  # no grant: no read, no table item (the stack grants neither); said once, at the reap
            for e in reaped:
                where = state_location(e)
                if where is not None:
                    self._unknown(report, self._finding_of(e, report, where), "not granted: the function may read no "
                                  "state object (enable context.reaper.state_activity_evidence with state_buckets)")
            return self._said(summary) if reaped else None
        try:
            items = self.table.items()
        except Exception as exc:
            summary.error = f"cannot read the watch items: {type(exc).__name__}: {exc}"
            log.error(LOG_WATCH_UNKNOWN, extra={"run_id": report.run_id, "error_code": error_code(exc),
                                                "error": summary.error})
            return self._said(summary)
        seen = {e.lock_path: e for e in report.locks}
        complete = {st.name for st in report.stores if st.status == "ok"}  # whose scans saw every lock
        for item in items:
            try:
                self._check(report, item, seen, complete)
            except Exception as exc:  # one bad item never stops the watch
                self._unknown_item(report, item, f"watch check failed: {type(exc).__name__}: {exc}")
        for e in reaped:
            try:
                self._record(report, e)
            except Exception as exc:
                where = state_location(e)
                if where is not None:
                    self._unknown(report, self._finding_of(e, report, where),
                                  f"watch item not recorded: {type(exc).__name__}: {exc}")
        return self._said(summary)

    @staticmethod
    def _said(s: WatchSummary) -> str | None:
        if not (s.recorded or s.checked or s.unknown or s.error):
            return None
        return (f"{s.recorded} recorded, {s.checked} checked, {s.resolved} resolved, {s.expired} expired, "
                f"{len(s.unknown)} unknown")

    # ----- after a reap -------------------------------------------------------------------------
    def _record(self, report: RunReport, e: LockEntry) -> None:
        where = state_location(e)
        if where is None:
            return  # HCP Terraform / GitLab state: not watched
        bucket, key = where
        finding = self._finding_of(e, report, where)
        if not self.granted(bucket, key):
            self._unknown(report, finding, f"not granted: the function may read only {self._grants()}")
            return
        base = self.state.head(bucket, key)
        versions = self.state.versions(bucket, key) if base.version_id not in _NO_VERSION else None
        started = _when(report.started_at)
        if base.status == "ok" and base.last_modified and started and base.last_modified > started + self.skew:
            self._late(report, finding.model_copy(update={"at_reap": {}, "now": base.fields(),
                                                          "written_at": _iso(base.last_modified)}),
                       f"state written {_iso(base.last_modified)} (S3's clock), after the reaping run started "
                       f"{report.started_at} by more than the clock skew")
            return
        reaped_at = _when(finding.reaped_at) or self.clock()
        # a versioned bucket: the lock file's newest version now (the reaped one, if it was a lock file); any
        # version listed before it later is a lock taken after the reap, even one released between two runs
        lock_version = str(versions.lock_versions[0].get("VersionId") or "") if versions and versions.lock_versions else ""
        marker = max((m["LastModified"] for m in versions.lock_markers if isinstance(m.get("LastModified"), datetime)),
                     default=None) if versions else None
        self.table.put({
            "pk": watch_key(e.lock_path, e.lock_id), "kind": "late-writer-watch", "store": finding.store,
            "key": e.key, "lock_path": e.lock_path, "lock_id": e.lock_id, "who": e.who, "bucket": bucket,
            "state_key": key, "reaped_at": finding.reaped_at, "reaped_by": report.run_id,
            "run_started_at": report.started_at, "audit_ref": e.audit_ref or "",
            "at_status": base.status, "at_etag": base.etag, "at_version_id": base.version_id,
            "at_last_modified": _iso(base.last_modified), "at_lock_deleted": _iso(marker),
            "lock_versions_listed": versions is not None, "at_lock_version": lock_version,
            "watch_until": (reaped_at + WATCH_FOR).isoformat(),
            "expires_at": int((reaped_at + WATCH_FOR + WATCH_TTL_EXTRA).timestamp()),
            "unknown_reported": base.status == "unreadable",
        })
        assert report.watch is not None
        report.watch.recorded += 1
        if base.status == "unreadable":
            self._unknown(report, finding, f"state object unreadable at the reap: {base.detail}")

    # ----- the next runs ------------------------------------------------------------------------
    def _check(self, report: RunReport, item: dict[str, Any], seen: dict[str, LockEntry], complete: set[str]) -> None:
        summary = report.watch
        assert summary is not None
        summary.checked += 1
        pk = str(item.get("pk", ""))
        now = self.clock()
        until = _when(item.get("watch_until"))
        if until is None or now > until:
            self.table.delete(pk)
            summary.expired += 1
            return
        bucket, key = str(item.get("bucket", "")), str(item.get("state_key", ""))
        new_lock = seen.get(str(item.get("lock_path", "")))
        if new_lock is None and not set(str(item.get("store", "")).split(" + ")) <= complete:
            return  # the store that would hold a new lock was not scanned completely: "no new lock" is not known
        if not self.granted(bucket, key):
            if new_lock is not None:
                self.table.delete(pk)
                summary.resolved += 1
            elif not item.get("unknown_reported"):
                self._unknown_item(report, item, f"not granted: the function may read only {self._grants()}")
            return
        now_seen, versions = self._look(bucket, key, item)
        if new_lock is not None:
            self._resolve(report, item, now_seen, versions, _when(new_lock.created))
            return
        taken = self._lock_taken_since(item, versions) if versions is not None else None
        if taken is not None:
            # a .tflock version S3 dates after the reap's delete marker: a new lock, taken and released between runs
            self._resolve(report, item, now_seen, versions, taken)
            return
        if now_seen.status == "unreadable":
            if not item.get("unknown_reported"):
                self._unknown_item(report, item, f"state object unreadable: {now_seen.detail}")
            return
        written = self._written_after(item, now_seen, versions)
        if written is not None:
            self._late_item(report, item, now_seen, written)

    def _resolve(self, report: RunReport, item: dict[str, Any], now_seen: Seen, versions: Versions | None,
                 new_lock_created: datetime | None) -> None:
        """A new lock was seen: one last look (a write S3 dates before that lock's Created, by more than the
        skew, was still the old holder's), then the item is deleted."""
        written = self._written_after(item, now_seen, versions) if now_seen.status != "unreadable" else None
        if written is not None and new_lock_created is not None and written[0] + self.skew < new_lock_created:
            self._late_item(report, item, now_seen, written, note=" (before the next lock was taken)")
            return
        self.table.delete(str(item.get("pk", "")))
        assert report.watch is not None
        report.watch.resolved += 1

    def _look(self, bucket: str, key: str, item: dict[str, Any]) -> tuple[Seen, Versions | None]:
        versioned = item.get("at_version_id") not in _NO_VERSION or bool(item.get("lock_versions_listed"))
        versions = self.state.versions(bucket, key) if versioned else None
        return self.state.head(bucket, key), versions

    @staticmethod
    def _lock_taken_since(item: dict[str, Any], versions: Versions) -> datetime | None:
        """When S3 dates the first lock file version written after the reap, if any: the versions listed
        before the newest one seen at the reap (or, that one gone, dated after the reap's delete marker)."""
        if not item.get("lock_versions_listed"):
            return None
        at, ids = str(item.get("at_lock_version", "")), [str(v.get("VersionId")) for v in versions.lock_versions]
        if not at:
            newer = versions.lock_versions
        elif at in ids:
            newer = versions.lock_versions[: ids.index(at)]
        else:
            deleted = _when(item.get("at_lock_deleted"))
            newer = [v for v in versions.lock_versions
                     if deleted and isinstance(v.get("LastModified"), datetime) and v["LastModified"] > deleted]
        dates = [v["LastModified"] for v in newer if isinstance(v.get("LastModified"), datetime)]
        return min(dates) if dates else (datetime.now(UTC) if newer else None)

    def _written_after(self, item: dict[str, Any], now_seen: Seen, versions: Versions | None) -> tuple[datetime, str] | None:
        """(when S3 dates the first write after the reap, what changed), or None: unchanged since the reap."""
        at_etag, at_vid = str(item.get("at_etag", "")), str(item.get("at_version_id", ""))
        at_modified = _when(item.get("at_last_modified"))
        if versions is not None and versions.state and at_vid not in _NO_VERSION:
            ids = [str(v.get("VersionId")) for v in versions.state]
            if at_vid in ids:
                newer = versions.state[: ids.index(at_vid)]
            else:  # the version seen at the reap is gone: the versions S3 dates after it
                newer = [v for v in versions.state if at_modified and isinstance(v.get("LastModified"), datetime)
                         and v["LastModified"] > at_modified]
            if newer:
                first = min((v["LastModified"] for v in newer if isinstance(v.get("LastModified"), datetime)),
                            default=now_seen.last_modified or datetime.now(UTC))
                return first, f"{len(newer)} version(s) written after the one seen at the reap ({at_vid})"
        if now_seen.status != "ok":
            return None
        when = now_seen.last_modified or datetime.now(UTC)
        if item.get("at_status") == "ok":
            if now_seen.version_id not in _NO_VERSION and at_vid not in _NO_VERSION and now_seen.version_id != at_vid:
                return when, f"version {now_seen.version_id}, not {at_vid} seen at the reap"
            if now_seen.etag and at_etag and now_seen.etag != at_etag:
                return when, f"ETag {now_seen.etag}, not {at_etag} seen at the reap"
            return None
        if item.get("at_status") == "absent":
            return when, "the state object appeared after the reap (absent then)"
        started = _when(item.get("run_started_at"))  # unreadable at the reap: only S3's date, across the skew
        if now_seen.last_modified and started and now_seen.last_modified > started + self.skew:
            return when, "written after the reaping run started by more than the clock skew (S3's date)"
        return None

    # ----- findings -----------------------------------------------------------------------------
    def _grants(self) -> str:
        return self.grants.describe() if self.grants is not None else "any"

    @staticmethod
    def _finding_of(e: LockEntry, report: RunReport, where: tuple[str, str]) -> WatchFinding:
        return WatchFinding(status="unknown", store=" + ".join(t.store for t in e.targets) if e.targets else e.store,
                            key=e.key, lock_path=e.lock_path, lock_id=e.lock_id, who=e.who,
                            state_object=f"s3://{where[0]}/{where[1]}", reaped_at=report.finished_at or report.started_at,
                            reaped_by=report.run_id, audit_ref=e.audit_ref, detail="")

    @staticmethod
    def _finding_of_item(item: dict[str, Any]) -> WatchFinding:
        g = item.get
        return WatchFinding(status="unknown", store=str(g("store", "")), key=str(g("key", "")),
                            lock_path=str(g("lock_path", "")), lock_id=str(g("lock_id", "")), who=str(g("who", "")),
                            state_object=f"s3://{g('bucket', '')}/{g('state_key', '')}", reaped_at=str(g("reaped_at", "")),
                            reaped_by=str(g("reaped_by", "")), audit_ref=g("audit_ref") or None, detail="",
                            at_reap={k[3:]: str(v) for k, v in item.items()
                                     if k in ("at_status", "at_etag", "at_version_id", "at_last_modified") and v})

    def _unknown(self, report: RunReport, finding: WatchFinding, detail: str) -> None:
        f = finding.model_copy(update={"status": "unknown", "detail": detail})
        assert report.watch is not None
        report.watch.unknown.append(f)
        log.warning(LOG_WATCH_UNKNOWN, extra={"run_id": report.run_id, **f.log_fields()})

    def _unknown_item(self, report: RunReport, item: dict[str, Any], detail: str) -> None:
        self._unknown(report, self._finding_of_item(item), detail)
        if item.get("pk"):
            try:
                self.table.put({**item, "unknown_reported": True})  # once
            except Exception as exc:  # reported again next run, at worst
                log.debug("cannot mark watch item %s: %s", item.get("pk"), exc)

    def _late(self, report: RunReport, finding: WatchFinding, detail: str) -> None:
        f = finding.model_copy(update={"status": "late_writer", "detail": detail})
        report.late_writers.append(f)
        log.error(LOG_LATE_WRITER, extra={"run_id": report.run_id, **f.log_fields()})

    def _late_item(self, report: RunReport, item: dict[str, Any], now_seen: Seen, written: tuple[datetime, str],
                   note: str = "") -> None:
        when, what = written
        finding = self._finding_of_item(item).model_copy(update={"now": now_seen.fields(), "written_at": _iso(when)})
        self._late(report, finding, f"state object written after the reap with no new lock seen{note}: {what}; "
                                    f"S3 dates the write {_iso(when)}")
        self.table.delete(str(item.get("pk", "")))
