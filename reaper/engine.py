"""One reaping cycle: scan every store, decide, gate, audit, delete, alert.

The engine wires ports together and owns the order of effects:
1. decide without liveness (pure); ask the checkers only for candidates;
2. the dry-run gate, just before any action (report mode stops here);
3. the per-run delete cap;
4. the audit record (a failed write means no delete);
5. the conditional delete (raced / gone are normal outcomes);
6. alerts after the run (a failed alert is reported, never undoes a delete).
One bad item or one failing store never stops the run.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from .audit import AUDIT_SCHEMA
from .config import Policy
from .decision import decide
from .models import Action, DeleteStatus, LivenessFact, LockRecord, Outcome
from .ports import AlertSink, AuditSink, Clock, LivenessChecker, LockStore
from .report import AlertResult, EvidenceOut, LockEntry, RunReport, StoreReport

log = logging.getLogger("reaper")

Progress = Callable[[str], None]


class NoLivenessChecker:
    """Used when no CI checker is configured: every holder is unknown."""

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        return LivenessFact.unknown("no liveness checker is configured", checkers=())


class Reaper:
    def __init__(
        self,
        policy: Policy,
        stores: Sequence[LockStore],
        clock: Clock,
        liveness: LivenessChecker | None = None,
        audit: AuditSink | None = None,
        alerts: Sequence[AlertSink] = (),
        run_id: str | None = None,
        progress: Progress | None = None,
        progress_every: int = 5000,
    ):
        self.policy = policy
        self.stores = list(stores)
        self.clock = clock
        self.liveness = liveness or NoLivenessChecker()
        self.audit = audit
        self.alerts = list(alerts)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.progress = progress
        self.progress_every = progress_every

    # ------------------------------------------------------------------
    def run(self, mode: Literal["report", "enforce"] | None = None) -> RunReport:
        mode = mode or self.policy.mode
        started = self.clock()
        report = RunReport(
            run_id=self.run_id,
            mode=mode,
            started_at=started.isoformat(),
            max_deletes_per_run=self.policy.max_deletes_per_run,
        )
        state = {"deletes": 0}
        for store in self.stores:
            report.stores.append(self._run_store(store, mode, report, state))
        report.finalize(self.clock(), started)
        self._alert(report)
        return report

    # ------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        log.info(msg)
        if self.progress:
            self.progress(msg)

    def _run_store(self, store: LockStore, mode: str, report: RunReport, state: dict[str, int]) -> StoreReport:
        sr = StoreReport(name=store.name)
        try:
            store.validate()
            self._say(f"{store.name}: scanning")
            for lock in store.scan():
                try:
                    entry = self._process(store, lock, mode, report, state)
                except Exception as exc:  # never crash the run over one item
                    log.exception("unexpected error on %s", lock.key)
                    entry = _entry(lock, None, None, Outcome.ERROR, [f"internal error: {type(exc).__name__}: {exc}"])
                report.locks.append(entry)
                sr.locks += 1
                st = store.stats()
                if self.progress_every and sr.locks % self.progress_every == 0:
                    self._say(f"{store.name}: {st.get('items', 0)} items, {sr.locks} locks so far")
        except Exception as exc:
            sr.status = "error"
            sr.error = f"{type(exc).__name__}: {exc}" if type(exc).__name__ != "StoreError" else str(exc)
            log.error("store %s failed: %s", store.name, sr.error)
        st = store.stats()
        sr.items_scanned = st.get("items", 0)
        sr.digests_skipped = st.get("digests", 0)
        self._say(
            f"{store.name}: {sr.items_scanned} items, {sr.digests_skipped} digests skipped, {sr.locks} locks"
            + (f" — ERROR {sr.error}" if sr.error else "")
        )
        return sr

    def _check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        try:
            return self.liveness.check(lock, now)
        except Exception as exc:  # a checker failure is "unknown", never "dead"
            log.warning("liveness check failed for %s: %s", lock.key, exc)
            return LivenessFact.unknown(f"liveness check failed: {type(exc).__name__}: {exc}")

    def _process(self, store: LockStore, lock: LockRecord, mode: str, report: RunReport, state: dict[str, int]) -> LockEntry:
        now = self.clock()
        decision = decide(lock, self.policy, now)
        fact = None
        if decision.needs_liveness:
            fact = self._check(lock, now)
            decision = decide(lock, self.policy, now, fact)
        reasons = list(decision.reasons)

        if decision.action is Action.KEEP:
            return _entry(lock, decision, fact, Outcome.KEPT, reasons)

        # ---- the dry-run gate: nothing below this line runs in report mode ----
        if mode != "enforce":
            return _entry(lock, decision, fact, Outcome.WOULD_REAP, reasons + ["report mode: not deleted"])

        if state["deletes"] >= self.policy.max_deletes_per_run:
            report.summary.cap_hit = True
            return _entry(
                lock, decision, fact, Outcome.KEPT,
                reasons + [f"cap of {self.policy.max_deletes_per_run} deletes per run reached: kept"],
            )

        if self.audit is None:
            return _entry(lock, decision, fact, Outcome.ERROR, reasons + ["no audit sink is configured: refusing to delete"])
        record = self._audit_record(lock, decision, fact, now)
        try:
            ref = self.audit.write(record)
        except Exception as exc:
            return _entry(lock, decision, fact, Outcome.ERROR, reasons + [f"audit write failed, not deleted: {type(exc).__name__}: {exc}"])

        state["deletes"] += 1
        try:
            result = store.delete(lock)
        except Exception as exc:
            e = _entry(lock, decision, fact, Outcome.ERROR, reasons + [f"delete failed: {type(exc).__name__}: {exc}"])
            e.audit_ref = ref
            return e
        outcome = {DeleteStatus.DELETED: Outcome.REAPED, DeleteStatus.RACED: Outcome.RACED, DeleteStatus.GONE: Outcome.GONE}[result.status]
        e = _entry(lock, decision, fact, outcome, reasons + [result.detail])
        e.audit_ref = ref
        if result.status is DeleteStatus.RACED:
            e.current_holder = {"id": result.current_id or "", "who": result.current_who or ""}
        self._say(f"{store.name}: {outcome.value} {lock.key} ({result.detail})")
        return e

    def _audit_record(self, lock: LockRecord, decision: Any, fact: LivenessFact | None, now: datetime) -> dict[str, Any]:
        return {
            "schema": AUDIT_SCHEMA,
            "run_id": self.run_id,
            "recorded_at": now.isoformat(),
            "store": lock.store,
            "key": lock.key,
            "lock_path": lock.lock_path,
            "lock_id": lock.lock_id,
            "item": lock.raw,
            "token": lock.token,
            "info": lock.info.model_dump(mode="json") if lock.info else None,
            "decision": decision.action.value,
            "rule": decision.rule,
            "age_seconds": decision.age_seconds,
            "reasons": list(decision.reasons),
            "liveness": fact.model_dump(mode="json") if fact else None,
            "restorable": True,
        }

    def _alert(self, report: RunReport) -> None:
        # metrics last, so its Errors count includes failed alerts
        ordered = sorted(self.alerts, key=lambda s: getattr(s, "name", "") == "metrics")
        for sink in ordered:
            name = getattr(sink, "name", type(sink).__name__)
            try:
                detail = sink.publish(report)
                report.alerts.append(AlertResult(sink=name, status="sent" if detail else "skipped", detail=detail or ""))
            except Exception as exc:
                log.error("alert sink %s failed: %s", name, exc)
                report.alerts.append(AlertResult(sink=name, status="error", detail=f"{type(exc).__name__}: {exc}"))
                report.summary.alert_errors += 1


def _entry(lock: LockRecord, decision: Any, fact: LivenessFact | None, outcome: Outcome, reasons: list[str]) -> LockEntry:
    info = lock.info
    return LockEntry(
        store=lock.store,
        key=lock.key,
        lock_path=lock.lock_path,
        lock_id=info.ID if info else "",
        operation=info.Operation if info else "",
        who=info.Who if info else "",
        created=info.Created.isoformat() if info else None,
        age_seconds=round(decision.age_seconds, 1) if decision is not None and decision.age_seconds is not None else None,
        rule=decision.rule if decision is not None else None,
        liveness=fact.state.value if fact else "not_checked",
        evidence=[
            EvidenceOut(source=ev.source, detail=ev.detail, url=ev.url, status=ev.status, at=ev.at.isoformat() if ev.at else None)
            for ev in (fact.evidence if fact else ())
        ],
        decision=decision.action.value if decision is not None else "keep",
        outcome=outcome,
        reasons=reasons,
        flags=sorted(f.value for f in (decision.flags if decision is not None else ())),
    )
