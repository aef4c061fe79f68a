"""One reaping cycle: scan every store, decide, gate, audit, delete, alert.

The engine wires ports together and owns the order of effects:
1. decide without liveness (pure); ask the checkers only for candidates;
2. the dry-run gate, just before any action (report mode stops here);
3. the per-run delete cap;
4. the audit record (a failed write means no delete);
5. the conditional delete (raced / gone are normal outcomes);
6. alerts after the run (a failed alert is reported, never undoes a delete).
One bad item or one failing store never stops the run.

Double locking (reaper/pairing.py): stores with ``pair_first`` (S3 lock files)
are scanned first and only indexed; a lock from another store with the same
lock path and lock ID joins the indexed one as ONE candidate with two delete
targets (decided once, audited per copy, deleted lock file first). Unpaired
indexed locks are decided after the other stores.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from .audit import AUDIT_SCHEMA
from .policy import Policy
from .decision import decide
from .models import Action, DeleteResult, DeleteStatus, Flag, LivenessFact, LockRecord, Outcome
from .pairing import PairIndex, Target
from .ports import AlertSink, AuditSink, Clock, LivenessChecker, LockStore
from .report import AlertResult, EvidenceOut, LockEntry, RunReport, StoreReport, TargetOut

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
        # True when the caller prints the report (the CLI): a store or alert error is then shown
        # there once, not also logged; the Lambda keeps the log lines.
        self.errors_in_output = False

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
        pairs = PairIndex()
        first = [s for s in self.stores if getattr(s, "pair_first", False)]
        done: dict[int, StoreReport] = {}
        for store in first:  # lock files: indexed now, decided with their partner or after the others
            done[id(store)] = self._run_store(store, mode, report, state, pairs, index_only=True)
        for store in self.stores:
            if id(store) not in done:
                done[id(store)] = self._run_store(store, mode, report, state, pairs)
        for target in pairs.leftovers():
            report.locks.append(self._safe_process([target], mode, report, state))
        report.stores.extend(done[id(s)] for s in self.stores)
        stats = getattr(self.liveness, "stats", None)
        if callable(stats):
            report.liveness_api_calls = stats()
        report.finalize(self.clock(), started)
        self._alert(report)
        return report

    # ------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg)
        else:
            log.info(msg)

    def _run_store(self, store: LockStore, mode: str, report: RunReport, state: dict[str, int],
                   pairs: PairIndex | None = None, index_only: bool = False) -> StoreReport:
        sr = StoreReport(name=store.name)
        try:
            store.validate()
            self._say(f"{store.name}: scanning")
            for lock in store.scan():
                sr.locks += 1
                if index_only and pairs is not None:
                    pairs.add(store, lock)
                    continue
                partner = pairs.claim(lock) if pairs is not None else None
                targets = [partner, Target(store, lock)] if partner is not None else [Target(store, lock)]
                report.locks.append(self._safe_process(targets, mode, report, state))
                st = store.stats()
                if self.progress_every and sr.locks % self.progress_every == 0:
                    self._say(f"{store.name}: {st.get('items', 0)} items, {sr.locks} locks so far")
        except Exception as exc:
            sr.status = "error"
            sr.error = f"{type(exc).__name__}: {exc}" if type(exc).__name__ != "StoreError" else str(exc)
            if not self.errors_in_output:
                log.error("store %s failed: %s", store.name, sr.error)
        st = store.stats()
        sr.items_scanned = st.get("items", 0)
        sr.digests_skipped = st.get("digests", 0)
        self._say(
            f"{store.name}: {sr.items_scanned} items, {sr.digests_skipped} digests skipped, {sr.locks} locks"
            + (" (decided after the other stores, paired with their copies under double locking)" if index_only else "")
            + ((" — FAILED (the error is in the report)" if self.errors_in_output else f" — ERROR {sr.error}")
               if sr.error else "")
        )
        return sr

    def _check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        try:
            return self.liveness.check(lock, now)
        except Exception as exc:  # a checker failure is "unknown", never "dead"
            log.warning("liveness check failed for %s: %s", lock.key, exc)
            return LivenessFact.unknown(f"liveness check failed: {type(exc).__name__}: {exc}")

    def _safe_process(self, targets: list[Target], mode: str, report: RunReport, state: dict[str, int]) -> LockEntry:
        try:
            return self._process(targets, mode, report, state)
        except Exception as exc:  # never crash the run over one item
            lock = targets[0].lock
            log.exception("unexpected error on %s", lock.key)
            return _entry(lock, None, None, Outcome.ERROR, [f"internal error: {type(exc).__name__}: {exc}"])

    def _process(self, targets: list[Target], mode: str, report: RunReport, state: dict[str, int]) -> LockEntry:
        """One candidate lock: ``targets`` are its copies in delete order (two under double locking)."""
        lock = targets[0].lock  # the one decision is taken on the first copy (the lock file)
        now = self.clock()
        decision = decide(lock, self.policy, now)
        fact = None
        if decision.needs_liveness:
            fact = self._check(lock, now)
            decision = decide(lock, self.policy, now, fact)
        reasons = list(decision.reasons)
        paired = len(targets) > 1
        if paired:
            reasons.insert(0, "held in " + " and ".join(t.store.name for t in targets)
                           + " (double locking): one lock, one decision")

        def entry(outcome: Outcome, tail: list[str]) -> LockEntry:
            e = _entry(lock, decision, fact, outcome, reasons + tail, now)
            e.restorable = all(getattr(t.store, "restorable", True) for t in targets)
            if paired:
                e.targets = [TargetOut(store=t.store.name, key=t.lock.key) for t in targets]
            return e

        if decision.action is Action.KEEP:
            return entry(Outcome.KEPT, [])

        # ---- the dry-run gate: nothing below this line runs in report mode ----
        if mode != "enforce":
            return entry(Outcome.WOULD_REAP, ["report mode: not deleted"])

        if state["deletes"] >= self.policy.max_deletes_per_run:
            report.summary.cap_hit = True
            return entry(Outcome.KEPT, [f"cap of {self.policy.max_deletes_per_run} deletes per run reached: kept"])

        if self.audit is None:
            return entry(Outcome.ERROR, ["no audit sink is configured: refusing to delete"])
        refs: list[str] = []
        try:  # every copy is recorded before anything is deleted
            for i, t in enumerate(targets):
                refs.append(self.audit.write(self._audit_record(t.store, t.lock, decision, fact, now, targets, i)))
        except Exception as exc:
            e = entry(Outcome.ERROR, [f"audit write failed, not deleted: {type(exc).__name__}: {exc}"])
            e.audit_ref = refs[0] if refs else None
            return e

        state["deletes"] += 1
        results: list[DeleteResult | Exception] = []
        for t in targets:
            try:
                results.append(t.store.delete(t.lock))
            except Exception as exc:
                results.append(exc)
            last = results[-1]
            if not (isinstance(last, DeleteResult) and last.status is DeleteStatus.DELETED):
                break  # a changed or failed copy: the next one is left alone
        e = self._outcome(entry, targets, results)
        e.audit_ref = refs[0]
        for i, t in enumerate(e.targets):
            t.audit_ref = refs[i]
        for t, res in zip(targets, results):
            detail = res.detail if isinstance(res, DeleteResult) else f"{type(res).__name__}: {res}"
            status = res.status.value if isinstance(res, DeleteResult) else "error"
            self._say(f"{t.store.name}: {status} {t.lock.key}{_detail_once(status, detail)}")
        return e

    @staticmethod
    def _outcome(entry: Callable[[Outcome, list[str]], LockEntry], targets: list[Target],
                 results: list[DeleteResult | Exception]) -> LockEntry:
        to_outcome = {DeleteStatus.DELETED: Outcome.REAPED, DeleteStatus.RACED: Outcome.RACED, DeleteStatus.GONE: Outcome.GONE}

        def text(res: DeleteResult | Exception) -> str:
            return res.detail if isinstance(res, DeleteResult) else f"{type(res).__name__}: {res}"

        first = results[0]
        if len(targets) == 1 or not (isinstance(first, DeleteResult) and first.status is DeleteStatus.DELETED):
            if isinstance(first, Exception):
                e = entry(Outcome.ERROR, [f"delete failed: {text(first)}"])
            else:
                e = entry(to_outcome[first.status], [first.detail])
                if first.status is DeleteStatus.RACED:
                    e.current_holder = {"id": first.current_id or "", "who": first.current_who or ""}
            if len(targets) > 1:
                e.reasons.append(f"nothing was deleted: {targets[1].store.name} was left alone")
        else:
            second = results[1]
            ok = isinstance(second, DeleteResult) and second.status is not DeleteStatus.RACED
            if ok:
                e = entry(Outcome.REAPED, [f"{t.store.name}: {text(r)}" for t, r in zip(targets, results)])
            else:
                lock = targets[1].lock
                if isinstance(second, DeleteResult):  # raced: another lock sits in the item now
                    advice = (f"it now holds lock {second.current_id or '?'} by {second.current_who or '?'}: check "
                              "that holder before touching it")
                else:
                    advice = (f"it still holds this lock: release it by hand (terraform force-unlock {lock.lock_id}) "
                              "once the holder is confirmed dead")
                e = entry(Outcome.ERROR, [
                    f"{targets[0].store.name}: {text(first)}",
                    f"{targets[1].store.name}: {text(second)}",
                    f"DOUBLE LOCK HALF RELEASED: the lock file was deleted but {targets[1].store.name} item "
                    f"{lock.key} was not, so the state STAYS LOCKED; {advice}.",
                ])
                e.flags = sorted(set(e.flags) | {Flag.DOUBLE_LOCK_PARTIAL.value})
                if isinstance(second, DeleteResult):
                    e.current_holder = {"id": second.current_id or "", "who": second.current_who or ""}
        for t, res in zip(e.targets, results):
            t.result = res.status.value if isinstance(res, DeleteResult) else "error"  # type: ignore[assignment]
            t.detail = text(res)
        return e

    def _audit_record(self, store: LockStore, lock: LockRecord, decision: Any, fact: LivenessFact | None,
                      now: datetime, targets: list[Target] | None = None, position: int = 0) -> dict[str, Any]:
        restorable = bool(getattr(store, "restorable", True))
        extra: dict[str, Any] = {}
        if not restorable:
            extra["restore_note"] = getattr(store, "restore_note", f"{store.name} locks cannot be re-created")
        if targets and len(targets) > 1:
            extra["double_lock"] = {
                "stores": [t.store.name for t in targets],
                "keys": [t.lock.key for t in targets],
                "delete_order": position + 1,
            }
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
            "restorable": restorable,
            **extra,
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
                if not self.errors_in_output:
                    log.error("alert sink %s failed: %s", name, exc)
                report.alerts.append(AlertResult(sink=name, status="error", detail=f"{type(exc).__name__}: {exc}"))
                report.summary.alert_errors += 1


def _detail_once(status: str, detail: str) -> str:
    """The detail without the status it repeats: ``deleted K (condition Info = seen)``, not
    ``deleted K (deleted (condition Info = seen))``."""
    rest = detail.removeprefix(status).lstrip(": ") if detail.startswith((status + " ", status + ":")) else detail
    if not rest:
        return ""
    return f" {rest}" if rest.startswith("(") else f" ({rest})"


def _age_seconds(lock: LockRecord, decision: Any, now: datetime | None) -> float | None:
    """The decision's age; for a lock kept before the age check (e.g. Info.Path differs), its age from Created."""
    if decision is not None and decision.age_seconds is not None:
        return round(decision.age_seconds, 1)
    if lock.info is not None and now is not None:
        return round((now - lock.info.Created).total_seconds(), 1)
    return None


def _entry(lock: LockRecord, decision: Any, fact: LivenessFact | None, outcome: Outcome, reasons: list[str],
           now: datetime | None = None) -> LockEntry:
    info = lock.info
    return LockEntry(
        store=lock.store,
        key=lock.key,
        lock_path=lock.lock_path,
        lock_id=info.ID if info else "",
        operation=info.Operation if info else "",
        who=info.Who if info else "",
        created=info.Created.isoformat() if info else None,
        age_seconds=_age_seconds(lock, decision, now),
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
