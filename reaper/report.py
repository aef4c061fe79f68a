"""The run report: one entry per lock, per-store status, a summary, and renderers.

Shared by the CLI (table or ``--json``), the Lambda (its return value), the
alerts and the metrics.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from .durations import format_duration
from .models import Flag, Outcome

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
}
METRIC_DURATION = "RunDurationSeconds"


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
    reasons: list[str]
    flags: list[str] = Field(default_factory=list)
    audit_ref: str | None = None
    current_holder: dict[str, str] | None = None  # who holds it now, when raced
    restorable: bool = True  # False where the store cannot re-create a lock (HCP Terraform, GitLab)
    targets: list[TargetOut] = Field(default_factory=list)  # set when one lock lives in two stores


class StoreReport(BaseModel):
    name: str
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    items_scanned: int = 0
    digests_skipped: int = 0
    locks: int = 0


class AlertResult(BaseModel):
    sink: str
    status: Literal["sent", "skipped", "error"]
    detail: str = ""


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
    # CI/AWS calls the liveness checkers made (reaper.liveness.http.ApiCounter.to_dict)
    liveness_api_calls: dict[str, Any] = Field(default_factory=dict)

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
        s.store_errors = sum(1 for st in self.stores if st.status == "error")
        self.finished_at = finished.isoformat()
        self.duration_seconds = round((finished - started).total_seconds(), 3)

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
        if self.summary.store_errors:
            parts.append(f"{self.summary.store_errors} store errors")
        if self.summary.alert_errors:
            parts.append(f"{self.summary.alert_errors} alert errors")
        return f"[{self.mode}] " + ", ".join(parts)

    def render_table(self, width: int = 60) -> str:
        headers = ["STORE", "LOCK PATH", "LOCK ID", "OPERATION", "WHO", "AGE", "LIVENESS", "DECISION", "OUTCOME", "REASON"]
        rows = []
        for e in self.locks:
            rows.append(
                [
                    " + ".join(t.store for t in e.targets) if e.targets else e.store,
                    _clip(e.lock_path, 48),
                    e.lock_id[:8] or "-",
                    _clip(e.operation.replace("OperationType", ""), 12) or "-",
                    _clip(e.who, 28) or "-",
                    format_duration(e.age_seconds) if e.age_seconds is not None else "-",
                    e.liveness,
                    e.decision,
                    e.outcome.value,
                    _clip(_main_reason(e), width),
                ]
            )
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        lines.append("")
        for st in self.stores:
            if st.status == "error":
                lines.append(f"STORE ERROR {st.name}: {st.error}")
        for a in self.alerts:
            lines.append(f"alert {a.sink}: {a.status}{' - ' + a.detail if a.detail else ''}")
        calls = self.liveness_api_calls
        if calls.get("total") or calls.get("memo_hits"):
            kinds = ", ".join(f"{k} {v}" for k, v in calls.get("by_kind", {}).items())
            lines.append(f"liveness: {calls.get('total', 0)} API calls ({kinds or 'none'}), "
                         f"{calls.get('not_modified', 0)} answered 304 Not Modified")
        lines.append(self.summary_line())
        return "\n".join(lines)

    def render_text_summary(self) -> str:
        """Readable body for the SNS message."""
        lines = [f"Lock Reaper run {self.run_id} ({self.mode} mode): {self.summary_line()}", ""]
        if self.summary.double_lock_partial:
            lines += [
                f"!!! {self.summary.double_lock_partial} double lock(s) were released in one store only: "
                "those states are STILL LOCKED and need a person (see the entries marked double_lock_partial).",
                "",
            ]
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


def _clip(s: str, n: int) -> str:
    s = s.replace("\n", " ")
    return s if len(s) <= n else s[: n - 1] + "…"


_GENERIC_TAILS = ("report mode: not deleted", "deleted (condition")


def _main_reason(e: LockEntry) -> str:
    """The decisive reason: the last one, skipping generic outcome notes."""
    for reason in reversed(e.reasons):
        if not reason.startswith(_GENERIC_TAILS):
            return reason
    return e.reasons[-1] if e.reasons else ""


def entry_dict(entry: LockEntry) -> dict[str, Any]:
    return entry.model_dump(mode="json")
