"""The run report: one entry per lock, per-store status, a summary, and renderers.

Shared by the CLI (table or ``--json``), the Lambda (its return value), the
alerts and the metrics.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from .durations import format_duration
from .models import Flag, Outcome, Reason, ReasonCode

# CloudWatch metric names (namespace from the policy, dimension service=lock-reaper).
# infra/ builds its alarms and dashboard from the same names.
METRIC_SERVICE = "lock-reaper"
METRICS = {
    "locks_scanned": "LocksScanned",
    "stale": "LocksStale",
    "would_reap": "LocksWouldReap",
    "reaped": "LocksReaped",
    "raced": "LocksRaced",
    "gone": "LocksGone",
    "unparseable": "LocksUnparseable",
    "kept_unknown": "LocksKeptUnknown",
    "alive_past_hard_max": "LocksAlivePastHardMax",
    "errors": "Errors",
    "cap_hit": "DeleteCapHit",
    "digests_skipped": "DigestsSkipped",
    "double_lock_partial": "DoubleLockPartial",
    "late_writers": "LateWriter",  # the late-writer watch (reaper/watch.py): a false reap; must stay zero
}
METRIC_DURATION = "RunDurationSeconds"
METRIC_RUNS_SKIPPED = "RunsSkipped"  # a run that found another run's live lease (reaper/lease.py)

# The log lines (Powertools JSON, one object per line), for Logs Insights queries:
LOG_SUMMARY = "run summary"  # one per run: RunReport.summary_fields()
LOG_LOCK = "lock"  # one per lock worth a look: LockEntry.log_fields() (see LockEntry.worth_logging)
LOG_STORE_ERROR = "store error"  # one per failed store: store, error_code, error
LOG_ALERT_ERROR = "alert error"  # one per failed alert sink: sink, error_code, error
LOG_SKIPPED = "run skipped"  # a run that found a live lease: run_id, holder, expires_at
LOG_LATE_WRITER = "late writer"  # one per late writer found by the watch: WatchFinding.log_fields()
LOG_WATCH_UNKNOWN = "watch unknown"  # one per reaped lock whose state object the watch cannot read (once)


class EvidenceOut(BaseModel):
    source: str
    detail: str
    url: str | None = None
    status: str | None = None
    at: str | None = None


class TargetOut(BaseModel):
    """One copy of a lock held in several stores (double locking), in delete order."""

    store: str
    key: str
    audit_ref: str | None = None
    result: Literal["not_attempted", "deleted", "raced", "gone", "error"] = "not_attempted"
    detail: str = ""


class LockEntry(BaseModel):
    store: str
    key: str
    lock_path: str
    lock_id: str
    operation: str
    who: str
    created: str | None
    age_seconds: float | None
    rule: str | None = None
    liveness: Literal["alive", "dead", "unknown", "not_checked"] = "not_checked"
    evidence: list[EvidenceOut] = Field(default_factory=list)
    decision: Literal["keep", "reap"]
    outcome: Outcome
    reasons: list[Reason]  # strings in JSON; each keeps its code (a plain string is coded by Reason.read)
    flags: list[str] = Field(default_factory=list)
    audit_ref: str | None = None
    current_holder: dict[str, str] | None = None  # who holds it now, when raced
    restorable: bool = True  # False where the store cannot re-create a lock (HCP Terraform, GitLab)
    targets: list[TargetOut] = Field(default_factory=list)  # set when one lock lives in two stores

    @computed_field  # type: ignore[prop-decorator]  # mypy rejects a decorator over @property; pydantic's documented form
    @property
    def reason_codes(self) -> list[str]:
        """The code of each reason, in the same order (in JSON next to ``reasons``)."""
        return [Reason.read(r).code.value for r in self.reasons]

    @property
    def worth_logging(self) -> bool:
        """A candidate, reaped, raced, gone, errored or flagged lock: all but a young kept one."""
        return self.outcome is not Outcome.KEPT or self.decision == "reap" or bool(self.flags)

    def log_fields(self) -> dict[str, Any]:
        """The keys of its ``lock`` log line (no lock item, no token: what the table shows, and the evidence URL)."""
        return {
            "store": " + ".join(t.store for t in self.targets) if self.targets else self.store,
            "key": self.key,
            "lock_path": self.lock_path,
            "lock_id": self.lock_id,
            "operation": self.operation,
            "who": self.who,
            "age_seconds": self.age_seconds,
            "rule": self.rule,
            "liveness": self.liveness,
            "evidence_url": next((ev.url for ev in self.evidence if ev.url), None),
            "decision": self.decision,
            "outcome": self.outcome.value,
            "reasons": [str(r) for r in self.reasons],
            "reason_codes": self.reason_codes,
            "flags": self.flags,
            "audit_ref": self.audit_ref,
            **({"error_code": self.reason_codes[-1]} if self.outcome is Outcome.ERROR and self.reasons else {}),
        }


class StoreReport(BaseModel):
    name: str
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    error_code: str | None = None  # the AWS error code or HTTP status behind ``error``
    items_scanned: int = 0
    digests_skipped: int = 0
    locks: int = 0


class AlertResult(BaseModel):
    sink: str
    status: Literal["sent", "skipped", "error"]
    detail: str = ""


class WatchFinding(BaseModel):
    """The late-writer watch (reaper/watch.py) on one reaped lock: its state object was written after the reap
    while no new lock was seen (``late_writer``), or it cannot be read (``unknown``, reported once)."""

    status: Literal["late_writer", "unknown"]
    store: str
    key: str
    lock_path: str
    lock_id: str
    who: str
    state_object: str | None  # s3://bucket/key
    reaped_at: str  # the reaper's clock
    reaped_by: str  # the run that reaped it
    audit_ref: str | None = None
    detail: str
    written_at: str | None = None  # S3's LastModified of the write after the reap (S3's clock)
    at_reap: dict[str, str] = Field(default_factory=dict)  # etag / version_id / last_modified seen at the reap
    now: dict[str, str] = Field(default_factory=dict)  # the same, as seen by this run

    def log_fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class WatchSummary(BaseModel):
    """What the watch did this run: items recorded, checked, resolved (a new lock seen) or expired."""

    recorded: int = 0
    checked: int = 0
    resolved: int = 0
    expired: int = 0
    unknown: list[WatchFinding] = Field(default_factory=list)
    error: str | None = None  # the watch itself could not run (its table unreadable): no finding, not a crash


class Summary(BaseModel):
    locks_scanned: int = 0
    digests_skipped: int = 0
    items_scanned: int = 0
    outcomes: dict[str, int] = Field(default_factory=lambda: {o.value: 0 for o in Outcome})
    stale: int = 0
    unparseable: int = 0
    kept_unknown: int = 0
    alive_past_hard_max: int = 0
    store_errors: int = 0
    alert_errors: int = 0
    cap_hit: bool = False
    double_lock_partial: int = 0  # double locks released in one store only: the state stays locked


class RunReport(BaseModel):
    run_id: str
    mode: Literal["report", "enforce"]
    started_at: str
    finished_at: str | None = None
    duration_seconds: float | None = None
    max_deletes_per_run: int
    stores: list[StoreReport] = Field(default_factory=list)
    locks: list[LockEntry] = Field(default_factory=list)
    alerts: list[AlertResult] = Field(default_factory=list)
    summary: Summary = Field(default_factory=Summary)
    # CI/AWS calls the liveness checkers made (reaper.http.client.ApiCounter.to_dict)
    liveness_api_calls: dict[str, Any] = Field(default_factory=dict)
    status: Literal["completed", "skipped"] = "completed"  # skipped: another run held the run lease
    skipped_reason: str | None = None
    late_writers: list[WatchFinding] = Field(default_factory=list)  # set by the late-writer watch (reaper/watch.py)
    watch: WatchSummary | None = None

    # ----- derived -------------------------------------------------------
    def count(self, outcome: Outcome) -> int:
        return self.summary.outcomes.get(outcome.value, 0)

    @property
    def errors(self) -> int:
        return self.count(Outcome.ERROR) + self.summary.store_errors + self.summary.alert_errors

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def finalize(self, finished: datetime, started: datetime) -> None:
        # a stable order whatever the scan order (parallel segments, threads): by store, then lock path
        store_order = {st.name: i for i, st in enumerate(self.stores)}
        self.locks.sort(key=lambda e: (store_order.get(e.store, len(store_order)), e.lock_path, e.key))
        s = self.summary
        outcomes = Counter(e.outcome.value for e in self.locks)
        s.outcomes = {o.value: outcomes.get(o.value, 0) for o in Outcome}
        s.locks_scanned = len(self.locks)
        s.items_scanned = sum(st.items_scanned for st in self.stores)
        s.digests_skipped = sum(st.digests_skipped for st in self.stores)
        flags = Counter(f for e in self.locks for f in e.flags)
        s.stale = flags[Flag.STALE.value]
        s.unparseable = flags[Flag.UNPARSEABLE.value]
        s.kept_unknown = sum(1 for e in self.locks if Flag.KEPT_UNKNOWN.value in e.flags and e.outcome is Outcome.KEPT)
        s.alive_past_hard_max = flags[Flag.ALIVE_PAST_HARD_MAX.value]
        s.double_lock_partial = flags[Flag.DOUBLE_LOCK_PARTIAL.value]
        s.cap_hit = flags[Flag.CAP_HIT.value] > 0
        s.store_errors = sum(1 for st in self.stores if st.status == "error")
        self._count_alerts()
        self.finished_at = finished.isoformat()
        self.duration_seconds = round((finished - started).total_seconds(), 3)

    def add_alert(self, result: AlertResult) -> None:
        """What one alert sink did. Alerts come after ``finalize``: the summary's count of failed
        alerts is kept up to date here, so that the sinks told later (metrics) count them."""
        self.alerts.append(result)
        self._count_alerts()

    def _count_alerts(self) -> None:
        self.summary.alert_errors = sum(1 for a in self.alerts if a.status == "error")

    def metric_values(self) -> dict[str, float]:
        s = self.summary
        return {
            METRICS["locks_scanned"]: s.locks_scanned,
            METRICS["stale"]: s.stale,
            METRICS["would_reap"]: self.count(Outcome.WOULD_REAP),
            METRICS["reaped"]: self.count(Outcome.REAPED),
            METRICS["raced"]: self.count(Outcome.RACED),
            METRICS["gone"]: self.count(Outcome.GONE),
            METRICS["unparseable"]: s.unparseable,
            METRICS["kept_unknown"]: s.kept_unknown,
            METRICS["alive_past_hard_max"]: s.alive_past_hard_max,
            METRICS["errors"]: self.errors,
            METRICS["cap_hit"]: 1 if s.cap_hit else 0,
            METRICS["digests_skipped"]: s.digests_skipped,
            METRICS["double_lock_partial"]: s.double_lock_partial,
            METRICS["late_writers"]: len(self.late_writers),
        }

    def summary_fields(self, status: Literal["completed", "skipped"] = "completed") -> dict[str, Any]:
        """The keys of the run's one ``run summary`` log line (``skipped``: another run held the run lease)."""
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "status": status,
            "outcomes": dict(self.summary.outcomes),
            "locks": self.summary.locks_scanned,
            "stale": self.summary.stale,
            "kept_unknown": self.summary.kept_unknown,
            "cap_hit": self.summary.cap_hit,
            "errors": self.errors,
            "late_writers": len(self.late_writers),
            "stores": [{"name": st.name, "status": st.status, "items": st.items_scanned, "locks": st.locks,
                        **({"error_code": st.error_code} if st.error_code else {})} for st in self.stores],
            "alerts": {a.sink: a.status for a in self.alerts},
            "api_calls": int(self.liveness_api_calls.get("total", 0) or 0),
            "api_calls_by_kind": dict(self.liveness_api_calls.get("by_kind", {})),
            "duration_seconds": self.duration_seconds,
            "summary": self.summary_line(),
        }

    # ----- rendering -----------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False)

    def summary_line(self) -> str:
        o = self.summary.outcomes
        parts = [f"{self.summary.locks_scanned} locks", f"{self.summary.digests_skipped} digests skipped"]
        parts += [f"{o[k]} {k}" for k in ("kept", "would_reap", "reaped", "raced", "gone", "error") if o.get(k)]
        if self.summary.cap_hit:
            parts.append(f"delete cap {self.max_deletes_per_run} hit")
        if self.summary.double_lock_partial:
            parts.append(f"{self.summary.double_lock_partial} DOUBLE LOCKS HALF RELEASED (state still locked)")
        if self.late_writers:
            parts.append(f"{len(self.late_writers)} LATE WRITER(S): a reaped lock's holder wrote state after the reap")
        if self.summary.store_errors:
            parts.append(f"{self.summary.store_errors} store errors")
        if self.summary.alert_errors:
            parts.append(f"{self.summary.alert_errors} alert errors")
        return f"[{self.mode}] " + ", ".join(parts)

    def render_table(self, width: int = 60, *, cut: bool = False) -> str:
        """The table, then store errors, alerts, API calls and the summary line.

        Cells are cut (at a word boundary, with an ellipsis) only when ``cut`` is set:
        the CLI sets it on a terminal without ``--wide``. Audit refs are never cut."""
        if self.status == "skipped":
            lines = [f"run skipped: {self.skipped_reason or 'another run held the run lease'}"]
        else:
            lines = self._table_lines(width if cut else None) if self.locks else [self._no_locks()]
        lines.append("")
        lines += watch_lines(self)
        for st in self.stores:
            if st.status == "error":
                lines.append(f"STORE ERROR {st.name}: {st.error}")
        for a in self.alerts:
            lines.append(f"alert {a.sink}: {a.status}{' - ' + a.detail if a.detail else ''}")
        calls = self.liveness_api_calls
        if calls.get("total") or calls.get("memo_hits"):
            lines.append(liveness_line(calls))
        lines.append(self.summary_line())
        return "\n".join(lines)

    def _no_locks(self) -> str:
        failed = sum(1 for st in self.stores if st.status == "error")
        read = len(self.stores) - failed
        text = f"no locks found in {read} store{'s' if read != 1 else ''}"
        return text + (f" ({failed} could not be read)" if failed else "")

    def lock_table_lines(self, width: int | None = None, *, accounts: Sequence[str] | None = None) -> list[str]:
        """The lock table alone (cells cut to ``width`` when given). ``accounts``, one per lock in order,
        adds an ACCOUNT column first (``scan`` across accounts)."""
        return self._table_lines(width, accounts)

    def _table_lines(self, width: int | None, accounts: Sequence[str] | None = None) -> list[str]:
        def clip(text: str, n: int) -> str:
            return _clip(text, n) if width is not None else text.replace("\n", " ")

        headers = (["ACCOUNT"] if accounts is not None else []) + [
            "STORE", "LOCK PATH", "LOCK ID", "OPERATION", "WHO", "AGE", "LIVENESS", "DECISION", "OUTCOME", "REASON"]
        with_refs = any(_audit_refs(e) for e in self.locks)
        if with_refs:
            headers.append("AUDIT REF")
        rows = []
        for i, e in enumerate(self.locks):
            main, note = _main_reason(e)
            row = ([accounts[i]] if accounts is not None else []) + [
                " + ".join(t.store for t in e.targets) if e.targets else e.store,
                clip(e.lock_path, 48),
                e.lock_id[:8] or "-",
                clip(e.operation.replace("OperationType", ""), 12) or "-",
                clip(e.who, 28) or "-",
                format_duration(e.age_seconds) if e.age_seconds is not None else "-",
                e.liveness,
                e.decision,
                e.outcome.value,
                clip(main, max(width - len(note), 20) if width else 0) + note,
            ]
            if with_refs:
                row.append(" + ".join(_audit_refs(e)) or "-")
            rows.append(row)
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        return lines

    def render_text_summary(self) -> str:
        """Readable body for the SNS message."""
        lines = [f"Lock Reaper run {self.run_id} ({self.mode} mode): {self.summary_line()}", ""]
        if self.summary.double_lock_partial:
            lines += [
                f"!!! {self.summary.double_lock_partial} double lock(s) were released in one store only: "
                "those states are STILL LOCKED and need a person (see the entries marked double_lock_partial).",
                "",
            ]
        lines += watch_lines(self)
        for e in self.locks:
            if e.outcome in (Outcome.REAPED, Outcome.RACED, Outcome.GONE, Outcome.ERROR, Outcome.WOULD_REAP):
                where = " + ".join(t.store for t in e.targets) if e.targets else e.store
                lines.append(f"- {e.outcome.value.upper()}: {where} {e.lock_path} (id {e.lock_id or '-'}, by {e.who or '-'})")
                for r in e.reasons:
                    lines.append(f"    {r}")
                if e.audit_ref:
                    lines.append(f"    audit: {e.audit_ref}")
                for t in e.targets:
                    if t.audit_ref and t.audit_ref != e.audit_ref:
                        lines.append(f"    audit ({t.store}): {t.audit_ref}")
        if self.summary.cap_hit:
            lines.append(f"The cap of {self.max_deletes_per_run} deletes per run was hit: remaining stale locks were kept.")
        return "\n".join(lines)


def watch_lines(report: RunReport) -> list[str]:
    """The late-writer watch's findings, one line each (with the audit record), for the table and the SNS body."""
    lines = [f"LATE WRITER: {f.store} {f.lock_path} (id {f.lock_id or '-'}, by {f.who or '-'}, reaped {f.reaped_at} "
             f"by run {f.reaped_by}): {f.detail}; audit: {f.audit_ref or '-'}" for f in report.late_writers]
    for f in report.watch.unknown if report.watch else ():
        lines.append(f"watch unknown: {f.store} {f.lock_path} (id {f.lock_id or '-'}): {f.detail}")
    if report.watch and report.watch.error:
        lines.append(f"watch error: {report.watch.error}")
    return lines + ([""] if lines else [])


def _clip(s: str, n: int) -> str:
    """At most ``n`` characters, cut at a word (or path) boundary with an ellipsis."""
    s = s.replace("\n", " ")
    if len(s) <= n:
        return s
    head = s[: n - 1]
    cut = max(head.rfind(" "), head.rfind("/") + 1 if "/" in head else -1)
    if cut >= n // 2:  # a boundary not too far back; else cut inside the word
        head = head[:cut]
    return head.rstrip(" ,;:") + "…"


# The codes of reasons that note what was done, not why (the generic tails of a reason list):
# report.py and devtools/demo.py skip them.
GENERIC_REASON_TAILS = frozenset({ReasonCode.REPORT_MODE, ReasonCode.DELETED, ReasonCode.NEVER_WHILE_ALIVE})


def _main_reason(e: LockEntry) -> tuple[str, str]:
    """The decisive reason (the last one, skipping generic outcome notes) and an alert note
    such as `` (past hard_max_age 4h: alert)``: a kept lock leads with why it was kept."""
    coded = [Reason.read(r) for r in e.reasons]
    notes = [r.removeprefix("age is ") for r in coded if r.code is ReasonCode.PAST_HARD_MAX_ALERT]
    note = f" ({'; '.join(notes)})" if notes else ""
    for reason in reversed(coded):
        if reason.code not in GENERIC_REASON_TAILS and reason.code is not ReasonCode.PAST_HARD_MAX_ALERT:
            return reason, note
    return (e.reasons[-1] if e.reasons else ""), ""


def _audit_refs(e: LockEntry) -> list[str]:
    refs = [t.audit_ref for t in e.targets if t.audit_ref] or ([e.audit_ref] if e.audit_ref else [])
    return list(dict.fromkeys(refs))


# What the liveness counter's kinds are: claims.* DynamoDB queries, s3.* HeadObject on
# state files, everything else (github.*, gitlab.*, hcp.*, app.*) a CI system's API.
_CALL_GROUPS = (("claims", "claim-table read", "claim-table reads"),
                ("s3", "state-file HeadObject call", "state-file HeadObject calls"))


def liveness_line(calls: dict[str, Any]) -> str:
    """``liveness: 8 CI API calls (...; 0 answered 304 Not Modified), 6 claim-table reads``"""
    by_kind: dict[str, int] = calls.get("by_kind", {})
    grouped = {prefix for prefix, _, _ in _CALL_GROUPS}
    ci = {k: v for k, v in by_kind.items() if k.split(".", 1)[0] not in grouped}
    parts = []
    if ci:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(ci.items()))
        n = sum(ci.values())
        not_modified = calls.get("not_modified", 0)
        parts.append(f"{n} CI API call{'s' if n != 1 else ''} ({kinds}; {not_modified} answered 304 Not Modified)")
    for prefix, one, many in _CALL_GROUPS:
        n = sum(v for k, v in by_kind.items() if k.split(".", 1)[0] == prefix)
        if n:
            parts.append(f"{n} {one if n == 1 else many}")
    return "liveness: " + (", ".join(parts) or "no API calls")


def entry_dict(entry: LockEntry) -> dict[str, Any]:
    return entry.model_dump(mode="json")
