"""One reaping cycle: scan every store, decide, gate, audit, delete, alert.

The engine wires ports together and owns the order of effects. Each candidate
goes judge -> gate -> audit -> execute:
1. judge: decide without liveness (pure); ask the checkers only for candidates;
2. gate: kept locks stop here, then the dry-run gate just before any action
   (report mode stops here), then the per-run delete cap (``DeleteBudget``;
   a capped lock is kept with ``Flag.CAP_HIT``, counted by ``RunReport.finalize``);
3. audit: an ``AuditRecord`` per copy (no audit sink, or a failed write, means no delete);
4. execute: the conditional deletes (raced / gone are normal outcomes), turned
   into the lock's entry by ``pairing.outcome_of``;
then alerts after the run, in the sinks' ``order`` (a failed alert is reported,
never undoes a delete). One bad item or one failing store never stops the run.

Double locking (reaper/pairing.py): stores with ``traits.pair_first`` (S3 lock files)
are scanned first and only indexed; a lock from another store with the same
lock path and lock ID joins the indexed one as ONE candidate with two delete
targets (decided once, audited per copy, deleted lock file first). Unpaired
indexed locks are decided after the other stores.

Concurrency (``liveness.http.concurrency``, default 8; 1 = one after the other): only the
liveness checks of the judge phase run on a bounded thread pool. The pure decision is
taken on the scanning thread, in scan order; a candidate that needs liveness is handed
to a worker, at most ``JUDGE_WINDOW`` checks at a time and ``PENDING_LIMIT`` locks
ahead of the oldest one not yet acted on (memory stays bounded on a huge store), so the
scan reads on while the checks run. Gate, audit and execute stay on the scanning
thread, in scan order: the delete cap, audit-before-delete and the double-lock pairing
behave exactly as with one thread. Each store's candidates are all acted on before its
scan is summed up.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Literal

from .audit import OUTCOME_SCHEMA
from .aws import cause_code
from .decision import decide
from .models import (
    Action,
    AuditRecord,
    Decision,
    DeleteResult,
    DeleteStatus,
    DoubleLockCopies,
    Flag,
    LivenessFact,
    LockRecord,
    Outcome,
    Reason,
)
from .models import ReasonCode as C
from .pairing import CopyResult, PairIndex, Result, Target, outcome_of
from .policy import Policy
from .ports import AlertSink, AuditSink, Clock, LivenessChecker, LockStore
from .report import (
    LOG_ALERT_ERROR,
    LOG_LOCK,
    LOG_STORE_ERROR,
    LOG_SUMMARY,
    AlertResult,
    EvidenceOut,
    LockEntry,
    RunReport,
    StoreReport,
    TargetOut,
)

log = logging.getLogger("reaper")

Progress = Callable[[str], None]

JUDGE_WINDOW = 256  # candidates handed to the workers and not yet checked (bounds the queue and staleness)
PENDING_LIMIT = 2048  # locks scanned and not yet acted on, checked or not (bounds memory)


class NoLivenessChecker:
    """Used when no CI checker is configured: every holder is unknown."""

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        return LivenessFact.unknown("no liveness checker is configured", checkers=())

    def stats(self) -> dict[str, Any]:
        return {}


class DeleteBudget:
    """The per-run delete cap. A candidate takes one delete (both copies of a double lock
    take one); one whose audit record could not be written gives it back (nothing was deleted)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> bool:
        """One delete, if the cap allows it."""
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give_back(self) -> None:
        self.used -= 1


@dataclass(frozen=True)
class Judgement:
    """What was decided about one candidate: its copies in delete order (two under double
    locking), the decision taken on the first copy, the liveness fact it rests on, and when."""

    targets: tuple[Target, ...]
    decision: Decision
    fact: LivenessFact | None
    now: datetime

    @property
    def lock(self) -> LockRecord:
        return self.targets[0].lock  # the one decision is taken on the first copy (the lock file)

    def entry(self, outcome: Outcome, tail: Sequence[Reason] = (), *, flags: frozenset[Flag] = frozenset(),
              current_holder: dict[str, str] | None = None, audit_ref: str | None = None,
              refs: Sequence[str] = (), copies: Sequence[CopyResult] = ()) -> LockEntry:
        """The report entry: the decision's reasons, then ``tail``; ``refs`` and ``copies``
        (per copy, in delete order) fill the targets of a double lock."""
        reasons = list(self.decision.reasons) + list(tail)
        targets: list[TargetOut] = []
        if len(self.targets) > 1:
            reasons.insert(0, Reason(C.DOUBLE_LOCK, "held in " + " and ".join(t.store.name for t in self.targets)
                                     + " (double locking): one lock, one decision"))
            targets = [_target_out(t, refs[i] if i < len(refs) else None, copies[i] if i < len(copies) else None)
                       for i, t in enumerate(self.targets)]
        return _entry(self.lock, self.decision, self.fact, outcome, reasons, self.now, flags=flags,
                      restorable=all(t.store.traits.restorable for t in self.targets), targets=targets,
                      current_holder=current_holder, audit_ref=audit_ref)


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
        concurrency: int | None = None,
    ):
        self.policy = policy
        self.stores = list(stores)
        self.clock = clock
        self.liveness: LivenessChecker = liveness or NoLivenessChecker()
        self.audit = audit
        self.alerts = list(alerts)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.progress = progress
        self.progress_every = progress_every
        # liveness checks at the same time (None: the policy's liveness.http.concurrency); none without a checker
        self.concurrency = max(1, concurrency if concurrency is not None else policy.liveness.http.concurrency)
        if liveness is None:
            self.concurrency = 1
        # True when the caller prints the report (the CLI): a store or alert error is then shown
        # there once, not also logged; the Lambda keeps the log lines.
        self.errors_in_output = False

    # ------------------------------------------------------------------ the run
    def run(self, mode: Literal["report", "enforce"] | None = None) -> RunReport:
        mode = mode or self.policy.mode
        started = self.clock()
        report = RunReport(run_id=self.run_id, mode=mode, started_at=started.isoformat(),
                           max_deletes_per_run=self.policy.max_deletes_per_run)
        budget = DeleteBudget(self.policy.max_deletes_per_run)
        pairs = PairIndex()
        judging = _Judging(self, lambda targets, judged: report.locks.append(self._safe_process(targets, mode, budget, judged)),
                           self.concurrency, JUDGE_WINDOW, PENDING_LIMIT)

        def process(targets: list[Target]) -> None:
            judging.add(targets)

        def paired(store: LockStore) -> Callable[[LockRecord], None]:
            def on_lock(lock: LockRecord) -> None:
                partner = pairs.claim(lock)
                process([partner, Target(store, lock)] if partner is not None else [Target(store, lock)])
            return on_lock

        done: dict[int, StoreReport] = {}
        try:
            for store in (s for s in self.stores if s.traits.pair_first):  # lock files: indexed now, decided later
                done[id(store)] = self._run_store(store, partial(pairs.add, store), index_only=True)
            for store in self.stores:
                if id(store) not in done:
                    done[id(store)] = self._run_store(store, paired(store), flush=judging.flush)
            for target in pairs.leftovers():
                process([target])
            judging.flush()
        finally:
            judging.close()
        report.stores.extend(done[id(s)] for s in self.stores)
        report.liveness_api_calls = self.liveness.stats()
        report.finalize(self.clock(), started)
        self._alert(report)
        self._log_run(report)
        return report

    def _log_run(self, report: RunReport) -> None:
        """One ``lock`` line per lock worth a look (an errored one at ERROR: its error, once), then the
        ``run summary`` line. Structured keys (``extra``): the Lambda's Powertools JSON carries them."""
        for e in report.locks:
            if e.worth_logging:
                level = logging.ERROR if e.outcome is Outcome.ERROR else logging.INFO
                log.log(level, LOG_LOCK, extra={"run_id": report.run_id, **e.log_fields()})
        log.info(LOG_SUMMARY, extra=report.summary_fields())

    def _say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg)
        else:
            log.info(msg)

    def _run_store(self, store: LockStore, on_lock: Callable[[LockRecord], None], index_only: bool = False,
                   flush: Callable[[], None] | None = None) -> StoreReport:
        """Scan one store, handing each lock to ``on_lock``, then ``flush`` (act on every candidate still being
        judged); a failing store is reported, never raised."""
        sr = StoreReport(name=store.name)
        try:
            store.validate()
            self._say(f"{store.name}: scanning")
            for lock in store.scan():
                sr.locks += 1
                on_lock(lock)
                if not index_only and self.progress_every and sr.locks % self.progress_every == 0:
                    self._say(f"{store.name}: {store.stats().get('items', 0)} items, {sr.locks} locks so far")
        except Exception as exc:
            sr.status = "error"
            sr.error = f"{type(exc).__name__}: {exc}" if type(exc).__name__ != "StoreError" else str(exc)
            sr.error_code = cause_code(exc)
            if not self.errors_in_output:
                log.error(LOG_STORE_ERROR, extra={"run_id": self.run_id, "store": store.name, "error_code": sr.error_code,
                                                  "error": sr.error})
        if flush is not None:  # the candidates scanned before a failure are still acted on
            flush()
        st = store.stats()
        sr.items_scanned = st.get("items", 0)
        sr.digests_skipped = st.get("digests", 0)
        self._say(
            f"{store.name}: {sr.items_scanned} items, {sr.digests_skipped} digests skipped, {sr.locks} locks"
            + (" (decided after the other stores, paired with their copies under double locking)" if index_only else "")
            + ((" — FAILED (the error is in the report)" if self.errors_in_output else " — FAILED (logged above)")
               if sr.error else "")
        )
        return sr

    # ------------------------------------------------------------------ one candidate
    def _safe_process(self, targets: list[Target], mode: str, budget: DeleteBudget,
                      judged: Callable[[], Judgement] | None = None) -> LockEntry:
        """``judged``: the judgement made ahead (a worker's result; it raises what the worker raised)."""
        try:
            return self._process(targets, mode, budget, judged)
        except Exception as exc:  # never crash the run over one item
            lock = targets[0].lock
            log.debug("unexpected error on %s", lock.key, exc_info=True)  # the error itself: on the lock's line
            failed = Reason(C.INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
            return _entry(lock, None, None, Outcome.ERROR, [failed])

    def _process(self, targets: list[Target], mode: str, budget: DeleteBudget,
                 judgement: Callable[[], Judgement] | None = None) -> LockEntry:
        """One candidate lock: ``targets`` are its copies in delete order (two under double locking)."""
        judged = judgement() if judgement is not None else self._judge(targets)
        stopped = self._gate(judged, mode, budget)
        if stopped is not None:
            return stopped
        refs, refused = self._record(judged)
        if refused is not None:
            budget.give_back()  # nothing was deleted
            return refused
        return self._execute(judged, refs)

    def _judge(self, targets: list[Target]) -> Judgement:
        """The pure decision; the checkers are asked only when it needs liveness."""
        pure = self._pure(targets)
        return self._with_liveness(pure) if pure.decision.needs_liveness else pure

    def _pure(self, targets: list[Target]) -> Judgement:
        """The decision without liveness, at this moment (on the scanning thread: ``now`` follows scan order)."""
        lock, now = targets[0].lock, self.clock()
        return Judgement(tuple(targets), decide(lock, self.policy, now), None, now)

    def _with_liveness(self, pure: Judgement) -> Judgement:
        """The checkers' fact, and the decision taken again with it at the same ``now`` (may run on a worker)."""
        fact = self._check(pure.lock, pure.now)
        return Judgement(pure.targets, decide(pure.lock, self.policy, pure.now, fact), fact, pure.now)

    def _check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        try:
            return self.liveness.check(lock, now)
        except Exception as exc:  # a checker failure is "unknown", never "dead"
            log.warning("liveness check failed for %s: %s", lock.key, exc)
            return LivenessFact.unknown(f"liveness check failed: {type(exc).__name__}: {exc}")

    def _gate(self, judged: Judgement, mode: str, budget: DeleteBudget) -> LockEntry | None:
        """The entry of a candidate that stops before any effect, or None to go on."""
        if judged.decision.action is Action.KEEP:
            return judged.entry(Outcome.KEPT)
        # ---- the dry-run gate: nothing below this line runs in report mode ----
        if mode != "enforce":
            return judged.entry(Outcome.WOULD_REAP, [Reason(C.REPORT_MODE, "report mode: not deleted")])
        refused = [t.store for t in judged.targets if t.store.traits.delete_refused]
        if refused:  # before the cap and the audit record: nothing is attempted
            why = "; ".join(f"{s.name}: {s.traits.delete_refused}" for s in refused)
            return judged.entry(Outcome.KEPT, [Reason(C.DELETE_REFUSED, f"store cannot delete safely, kept: {why}")])
        if not budget.take():
            return judged.entry(Outcome.KEPT, [Reason(C.CAP_REACHED, f"cap of {budget.limit} deletes per run reached: kept")],
                                flags=frozenset({Flag.CAP_HIT}))
        return None

    def _record(self, judged: Judgement) -> tuple[list[str], LockEntry | None]:
        """Every copy is recorded before anything is deleted: the refs, and the entry of a
        candidate that cannot be recorded (then nothing is deleted)."""
        if self.audit is None:
            return [], judged.entry(Outcome.ERROR, [Reason(C.NO_AUDIT, "no audit sink is configured: refusing to delete")])
        refs: list[str] = []
        try:
            for position in range(len(judged.targets)):
                refs.append(self.audit.write(audit_record(self.run_id, judged, position).model_dump(mode="json")))
        except Exception as exc:
            failed = Reason(C.AUDIT_FAILED, f"audit write failed, not deleted: {type(exc).__name__}: {exc}")
            return refs, judged.entry(Outcome.ERROR, [failed], audit_ref=refs[0] if refs else None)
        return refs, None

    def _execute(self, judged: Judgement, refs: list[str]) -> LockEntry:
        """The conditional deletes, in order; a changed or failed copy leaves the next one alone."""
        results: list[Result] = []
        for t in judged.targets:
            try:
                results.append(t.store.delete(t.lock))
            except Exception as exc:
                results.append(exc)
            last = results[-1]
            if not (isinstance(last, DeleteResult) and last.status is DeleteStatus.DELETED):
                break
        done = outcome_of(judged.targets, results)
        self._record_outcomes(judged, refs, done.copies)
        entry = judged.entry(done.outcome, done.reasons, flags=done.flags, current_holder=done.current_holder,
                             audit_ref=refs[0], refs=refs, copies=done.copies)
        for t, copy in zip(judged.targets, done.copies, strict=False):
            self._say(f"{t.store.name}: {copy.result} {t.lock.key}{_detail_once(copy.result, copy.detail)}")
        return entry

    def _record_outcomes(self, judged: Judgement, refs: list[str], copies: Sequence[CopyResult]) -> None:
        """Beside each audit record whose copy was NOT deleted (failed, raced, gone, or not attempted after
        an earlier copy failed), a second record saying so: an audit record without one is a deleted lock."""
        if self.audit is None:
            return
        for i, (t, ref) in enumerate(zip(judged.targets, refs, strict=False)):
            copy = copies[i] if i < len(copies) else None
            result = copy.result if copy is not None else "not_attempted"
            if result == "deleted":
                continue
            record = delete_outcome_record(self.run_id, t.lock, ref, result, copy.detail if copy is not None else "",
                                           self.clock())
            try:
                self.audit.write(record)
            except Exception as exc:  # the report still says what happened
                log.error(LOG_ALERT_ERROR, extra={"run_id": self.run_id, "sink": "audit-outcome", "audit_ref": ref,
                                                  "error_code": cause_code(exc), "error": f"{type(exc).__name__}: {exc}"})

    # ------------------------------------------------------------------ after the run
    def _alert(self, report: RunReport) -> None:
        for sink in sorted(self.alerts, key=lambda s: s.order):  # metrics last: its Errors count includes failed alerts
            try:
                detail = sink.publish(report)
                report.add_alert(AlertResult(sink=sink.name, status="sent" if detail else "skipped", detail=detail or ""))
            except Exception as exc:
                if not self.errors_in_output:
                    log.error(LOG_ALERT_ERROR, extra={"run_id": self.run_id, "sink": sink.name, "error_code": cause_code(exc),
                                                      "error": f"{type(exc).__name__}: {exc}"})
                report.add_alert(AlertResult(sink=sink.name, status="error", detail=f"{type(exc).__name__}: {exc}"))



class _Judging:
    """The judge phase, ahead of gate -> audit -> execute: ``act(targets, judged)`` is called for every candidate
    in the order ``add`` received them, on the calling thread; ``judged()`` returns its ``Judgement`` (or raises
    what judging raised). With ``workers`` > 1 the liveness checks run on a thread pool: at most ``window``
    checks queued or running, at most ``limit`` candidates between ``add`` and ``act`` (``add`` waits past
    either); with 1, each candidate is judged and acted on at once."""

    def __init__(self, reaper: Reaper, act: Callable[[list[Target], Callable[[], Judgement]], None],
                 workers: int, window: int, limit: int) -> None:
        self._reaper = reaper
        self._act = act
        self._limit = max(1, limit)
        self._slots = threading.BoundedSemaphore(max(1, window))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lock-reaper-judge") if workers > 1 else None
        self._pending: deque[tuple[list[Target], Future[Judgement]]] = deque()

    def add(self, targets: list[Target]) -> None:
        if self._pool is None:  # one thread: exactly the sequential order of effects
            self._act(targets, lambda: self._reaper._judge(targets))
            return
        judged: Future[Judgement]
        try:
            pure = self._reaper._pure(targets)
        except Exception as exc:  # acted on in its turn: an error entry
            judged = Future()
            judged.set_exception(exc)
        else:
            if pure.decision.needs_liveness:
                while not self._slots.acquire(timeout=0.05):  # the workers are `window` checks behind
                    self._ready()
                judged = self._pool.submit(self._reaper._with_liveness, pure)
                judged.add_done_callback(lambda _: self._slots.release())
            else:
                judged = Future()
                judged.set_result(pure)
        self._pending.append((targets, judged))
        while len(self._pending) > self._limit:
            self._next()
        self._ready()

    def _ready(self) -> None:
        """Act on the candidates at the head whose judgement is made."""
        while self._pending and self._pending[0][1].done():
            self._next()

    def flush(self) -> None:
        """Act on every candidate added so far (waiting for their checks)."""
        while self._pending:
            self._next()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _next(self) -> None:
        targets, judged = self._pending.popleft()
        self._act(targets, judged.result)


def delete_outcome_record(run_id: str, lock: LockRecord, audit_ref: str, result: str, detail: str,
                          now: datetime) -> dict[str, Any]:
    """The record written beside an audit record whose lock was not deleted (``<record>.outcome.json``)."""
    return {
        "schema": OUTCOME_SCHEMA,
        "run_id": run_id,
        "recorded_at": now.isoformat(),
        "store": lock.store,
        "key": lock.key,
        "lock_path": lock.lock_path,
        "lock_id": lock.lock_id,
        "audit_ref": audit_ref,
        "deleted": False,
        "result": result,
        "detail": detail,
    }


def audit_record(run_id: str, judged: Judgement, position: int) -> AuditRecord:
    """The audit record of copy ``position`` (in delete order) of a judged candidate."""
    store, lock = judged.targets[position].store, judged.targets[position].lock
    decision, fact = judged.decision, judged.fact
    double = None
    if len(judged.targets) > 1:
        double = DoubleLockCopies(stores=[t.store.name for t in judged.targets], keys=[t.lock.key for t in judged.targets],
                                  delete_order=position + 1)
    restorable = store.traits.restorable
    return AuditRecord(
        run_id=run_id,
        recorded_at=judged.now.isoformat(),
        store=lock.store,
        key=lock.key,
        lock_path=lock.lock_path,
        lock_id=lock.lock_id,
        item=lock.raw,
        token=lock.token,
        info=lock.info,
        decision=decision.action,
        rule=decision.rule,
        age_seconds=decision.age_seconds,
        reasons=list(decision.reasons),
        liveness=fact,
        restorable=restorable,
        restore_note=None if restorable else (store.traits.restore_note or f"{store.name} locks cannot be re-created"),
        double_lock=double,
    )


def _target_out(target: Target, ref: str | None, copy: CopyResult | None) -> TargetOut:
    attempted: dict[str, Any] = {"result": copy.result, "detail": copy.detail} if copy is not None else {}
    return TargetOut(store=target.store.name, key=target.lock.key, audit_ref=ref, **attempted)


def _detail_once(status: str, detail: str) -> str:
    """The detail without the status it repeats: ``deleted K (condition Info = seen)``, not
    ``deleted K (deleted (condition Info = seen))``."""
    rest = detail.removeprefix(status).lstrip(": ") if detail.startswith((status + " ", status + ":")) else detail
    if not rest:
        return ""
    return f" {rest}" if rest.startswith("(") else f" ({rest})"


def _age_seconds(lock: LockRecord, decision: Decision | None, now: datetime | None) -> float | None:
    """The decision's age; for a lock kept before the age check (e.g. Info.Path differs), its age from Created."""
    if decision is not None and decision.age_seconds is not None:
        return round(decision.age_seconds, 1)
    if lock.info is not None and now is not None:
        return round((now - lock.info.Created).total_seconds(), 1)
    return None


def _entry(lock: LockRecord, decision: Decision | None, fact: LivenessFact | None, outcome: Outcome,
           reasons: list[Reason], now: datetime | None = None, *, flags: frozenset[Flag] = frozenset(),
           **extra: Any) -> LockEntry:
    """The report entry of one lock; ``flags`` join the decision's (``extra``: restorable, targets, ...)."""
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
        flags=sorted(f.value for f in (decision.flags if decision is not None else frozenset()) | flags),
        **extra,
    )
