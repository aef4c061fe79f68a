"""The engine's small parts: the delete budget, the cap flag and alert errors counted by the
report, coded reasons, the audit record model, store traits and sink order."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from devtools.locks import info_json, lock_item
from reaper.decision import decide
from reaper.engine import DeleteBudget, NoLivenessChecker, Reaper
from reaper.models import AUDIT_SCHEMA, AuditRecord, Flag, Liveness, LivenessFact, LockInfo, LockRecord, Outcome, Reason
from reaper.models import ReasonCode as C
from reaper.ports import StoreTraits
from reaper.report import AlertResult, LockEntry, RunReport
from reaper.stores.memory import InMemoryLockStore
from testkit import ListAudit, enforce_policy

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
BUCKET = "corp-tfstate"


def store_with(ages: dict[str, timedelta], name: str = "memory:locks") -> InMemoryLockStore:
    s = InMemoryLockStore(name=name)
    for key, age in ages.items():
        path = f"{BUCKET}/{key}"
        s.put_raw(lock_item(path, info_json(path, age, NOW)))
    return s


def entry(outcome: Outcome = Outcome.KEPT, flags: list[str] | None = None, reasons: list[str] | None = None) -> LockEntry:
    return LockEntry(store="s", key="k", lock_path="p", lock_id="i", operation="o", who="w", created=None,
                     age_seconds=None, decision="keep", outcome=outcome, reasons=reasons or ["r"], flags=flags or [])


# ---------------------------------------------------------------- the delete budget
def test_delete_budget_takes_up_to_its_limit() -> None:
    budget = DeleteBudget(2)
    assert [budget.take(), budget.take(), budget.take()] == [True, True, False]
    assert budget.used == 2
    budget.give_back()
    assert budget.used == 1 and budget.take() and not budget.take()


def test_a_zero_budget_takes_nothing() -> None:
    budget = DeleteBudget(0)
    assert not budget.take() and budget.used == 0


def test_a_failed_audit_write_gives_its_delete_back() -> None:
    store = store_with({"a": 30 * H, "b": 31 * H})
    failing = ListAudit(fail=True)
    report = Reaper(enforce_policy(max_deletes_per_run=1), [store], lambda: NOW, audit=failing).run()
    assert sorted(e.outcome.value for e in report.locks) == ["error", "error"]
    assert not report.summary.cap_hit, "a lock not deleted takes nothing from the cap"


# ---------------------------------------------------------------- counted at finalize
def test_cap_hit_is_an_entry_flag_counted_at_finalize() -> None:
    report = RunReport(run_id="r", mode="enforce", started_at=NOW.isoformat(), max_deletes_per_run=1)
    report.locks = [entry(Outcome.REAPED), entry(flags=[Flag.STALE.value])]
    report.finalize(NOW, NOW)
    assert report.summary.cap_hit is False
    report.locks.append(entry(flags=[Flag.CAP_HIT.value, Flag.STALE.value]))
    report.finalize(NOW, NOW)
    assert report.summary.cap_hit is True and report.metric_values()["DeleteCapHit"] == 1


def test_the_engine_flags_capped_locks_and_leaves_the_summary_to_finalize() -> None:
    store = store_with({"a": 30 * H, "b": 31 * H, "c": 32 * H})
    report = Reaper(enforce_policy(max_deletes_per_run=1), [store], lambda: NOW, audit=ListAudit()).run()
    capped = [e for e in report.locks if Flag.CAP_HIT.value in e.flags]
    assert len(capped) == 2 and all(e.outcome is Outcome.KEPT and e.decision == "reap" for e in capped)
    assert all(e.reason_codes[-1] == C.CAP_REACHED.value for e in capped)
    assert report.summary.cap_hit is True


def test_alert_errors_are_counted_from_the_alerts() -> None:
    report = RunReport(run_id="r", mode="report", started_at=NOW.isoformat(), max_deletes_per_run=1)
    report.add_alert(AlertResult(sink="sns", status="error", detail="down"))
    assert report.summary.alert_errors == 1 and report.errors == 1, "counted as it is added: the metrics sink comes later"
    report.add_alert(AlertResult(sink="metrics", status="sent"))
    report.finalize(NOW, NOW)
    assert report.summary.alert_errors == 1


class Sink:
    def __init__(self, name: str, order: int, seen: list[str], fail: bool = False) -> None:
        self.name, self.order, self.seen, self.fail = name, order, seen, fail

    def publish(self, report: RunReport) -> str | None:
        self.seen.append(f"{self.name}:{report.summary.alert_errors}")
        if self.fail:
            raise RuntimeError("down")
        return "told"


def test_sinks_are_told_in_their_order() -> None:
    seen: list[str] = []
    sinks = [Sink("metrics", 100, seen), Sink("sns", 10, seen, fail=True), Sink("eventbridge", 10, seen)]
    report = Reaper(enforce_policy(), [store_with({})], lambda: NOW, alerts=sinks).run()
    assert seen == ["sns:0", "eventbridge:1", "metrics:1"], "metrics last, and it sees the failed alert"
    assert [a.sink for a in report.alerts] == ["sns", "eventbridge", "metrics"] and report.summary.alert_errors == 1


def test_no_liveness_checker_has_no_stats() -> None:
    assert NoLivenessChecker().stats() == {}
    assert Reaper(enforce_policy(), [store_with({})], lambda: NOW).run().liveness_api_calls == {}


# ---------------------------------------------------------------- coded reasons
def lock(age: timedelta, path: str = f"{BUCKET}/app") -> LockRecord:
    info = LockInfo.parse(info_json(path, age, NOW))
    return LockRecord(store="memory:locks", key=path, lock_path=path, token="t", raw={}, info=info)


def fact(state: Liveness) -> LivenessFact:
    return LivenessFact(state=state, reason=f"fake says {state.value}")


def test_decide_codes_every_reason_and_the_text_reads_back_to_the_same_code() -> None:
    policy = enforce_policy(min_age="15m", exclude=[f"{BUCKET}/skip*"])
    cases = [
        (lock(5 * 60 * timedelta(seconds=1)), None, [C.BELOW_MIN_AGE]),
        (lock(1 * H), None, [C.BELOW_MAX_AGE]),
        (lock(8 * H), None, [C.STALE, C.NOT_CHECKED]),
        (lock(8 * H), fact(Liveness.ALIVE), [C.STALE, C.HOLDER_ALIVE, C.NEVER_WHILE_ALIVE]),
        (lock(30 * H), fact(Liveness.ALIVE), [C.STALE, C.HOLDER_ALIVE, C.NEVER_WHILE_ALIVE, C.PAST_HARD_MAX_ALERT]),
        (lock(8 * H), fact(Liveness.DEAD), [C.STALE, C.HOLDER_DEAD]),
        (lock(8 * H), fact(Liveness.UNKNOWN), [C.STALE, C.HOLDER_UNKNOWN, C.UNKNOWN_KEEP]),
        (lock(30 * H), fact(Liveness.UNKNOWN), [C.STALE, C.HOLDER_UNKNOWN, C.HARD_MAX_ALLOWS]),
        (lock(-2 * H), None, [C.FUTURE_CREATED]),
        (lock(8 * H, f"{BUCKET}/skip-me"), None, [C.EXCLUDED]),
        (LockRecord(store="m", key="k", lock_path="p", token="t", raw={}, parse_error="bad"), None, [C.UNPARSEABLE]),
        (LockRecord(store="m", key="k", lock_path="elsewhere", token="t", raw={}, info=lock(8 * H).info), None,
         [C.PATH_MISMATCH]),
    ]
    for record, known, want in cases:
        reasons = decide(record, policy, NOW, known).reasons
        assert [r.code for r in reasons] == want, (record.key, list(reasons))
        assert [Reason.read(str(r)).code for r in reasons] == want, "a reason read back without its code"


def test_reasons_are_strings_in_json_with_their_codes_alongside() -> None:
    store = store_with({"stale": 30 * H})
    report = Reaper(enforce_policy(), [store], lambda: NOW, audit=ListAudit()).run()
    doc = json.loads(report.to_json())["locks"][0]
    assert all(isinstance(r, str) for r in doc["reasons"])
    assert doc["reason_codes"] == [C.STALE.value, C.HOLDER_UNKNOWN.value, C.HARD_MAX_ALLOWS.value, C.DELETED.value]
    again = LockEntry.model_validate(doc)
    assert [r.code for r in again.reasons] == [C.STALE, C.HOLDER_UNKNOWN, C.HARD_MAX_ALLOWS, C.DELETED]


def test_the_table_picks_the_main_reason_by_code() -> None:
    # a reason whose text looks generic but whose code is not: kept as the main reason
    looks_generic = Reason(C.HOLDER_DEAD, "deleted (that is what the holder's job said)")
    report = RunReport(run_id="r", mode="enforce", started_at="t", max_deletes_per_run=1,
                       locks=[entry(Outcome.REAPED, reasons=[looks_generic, Reason(C.DELETED, "unlocked (DELETE)")])])
    row = report.render_table().splitlines()[1]
    assert "deleted (that is what" in row and "unlocked" not in row


# ---------------------------------------------------------------- the audit record
def test_the_audit_record_keeps_the_keys_restore_reads() -> None:
    store = store_with({"stale": 30 * H})
    audit = ListAudit()
    Reaper(enforce_policy(), [store], lambda: NOW, audit=audit, run_id="run-1").run()
    record = audit.records[0]
    assert list(record) == ["schema", "run_id", "recorded_at", "store", "key", "lock_path", "lock_id", "item", "token",
                            "info", "decision", "rule", "age_seconds", "reasons", "liveness", "restorable"]
    assert record["schema"] == AUDIT_SCHEMA and record["decision"] == "reap" and record["recorded_at"] == NOW.isoformat()
    assert isinstance(record["info"]["Created"], str) and record["liveness"]["state"] == "unknown"
    assert AuditRecord.model_validate(record).model_dump(mode="json") == record, "a record reads back as itself"


class NotRestorable(InMemoryLockStore):
    traits = StoreTraits(restorable=False, restore_note="this API cannot re-create another client's lock")


class NotRestorableNoNote(InMemoryLockStore):
    traits = StoreTraits(restorable=False)


def test_store_traits_reach_the_audit_record_and_the_entry() -> None:
    for cls, note in ((NotRestorable, "this API cannot re-create another client's lock"),
                      (NotRestorableNoNote, "memory:locks locks cannot be re-created")):
        store = cls()
        path = f"{BUCKET}/stale"
        store.put_raw(lock_item(path, info_json(path, 30 * H, NOW)))
        audit = ListAudit()
        report = Reaper(enforce_policy(), [store], lambda: NOW, audit=audit).run()
        assert report.locks[0].restorable is False
        assert audit.records[0]["restorable"] is False and audit.records[0]["restore_note"] == note
