"""pairing.outcome_of: what the deletes of one candidate's copies came to (pure, no store is called)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from devtools.locks import info_json
from reaper.models import DeleteResult, DeleteStatus, Flag, LockInfo, LockRecord, Outcome, ReasonCode
from reaper.pairing import CopyResult, Target, outcome_of

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
PATH = "corp-tfstate/app/terraform.tfstate"


class Named:
    """Only the name of a store: outcome_of never calls one."""

    def __init__(self, name: str) -> None:
        self.name = name


def target(store: str, key: str) -> Target:
    info = LockInfo.parse(info_json(PATH, timedelta(hours=8), NOW, id_="lock-1"))
    lock = LockRecord(store=store, key=key, lock_path=PATH, token="t", raw={}, info=info)
    return Target(Named(store), lock)  # type: ignore[arg-type]


ONE = [target("dynamodb:locks", PATH)]
PAIR = [target("s3:corp-tfstate", PATH + ".tflock"), target("dynamodb:locks", PATH)]

DELETED = DeleteResult(status=DeleteStatus.DELETED, detail="deleted (condition Info = seen)")
GONE = DeleteResult(status=DeleteStatus.GONE, detail="already gone")
RACED = DeleteResult(status=DeleteStatus.RACED, detail="raced: another lock is there now", current_id="new-id",
                     current_who="ci@runner-7")


def codes(out: Any) -> list[ReasonCode]:
    return [r.code for r in out.reasons]


# ---------------------------------------------------------------- one copy
def test_single_deleted() -> None:
    out = outcome_of(ONE, [DELETED])
    assert out.outcome is Outcome.REAPED and out.reasons == ("deleted (condition Info = seen)",)
    assert codes(out) == [ReasonCode.DELETED] and out.flags == frozenset() and out.current_holder is None
    assert out.copies == (CopyResult("deleted", "deleted (condition Info = seen)"),)


def test_single_raced_names_the_new_holder() -> None:
    out = outcome_of(ONE, [RACED])
    assert out.outcome is Outcome.RACED and codes(out) == [ReasonCode.RACED]
    assert out.current_holder == {"id": "new-id", "who": "ci@runner-7"}
    assert out.copies == (CopyResult("raced", RACED.detail),)


def test_single_gone() -> None:
    out = outcome_of(ONE, [GONE])
    assert out.outcome is Outcome.GONE and out.reasons == ("already gone",) and codes(out) == [ReasonCode.GONE]
    assert out.current_holder is None


def test_single_error() -> None:
    out = outcome_of(ONE, [TimeoutError("read timed out")])
    assert out.outcome is Outcome.ERROR
    assert out.reasons == ("delete failed: TimeoutError: read timed out",) and codes(out) == [ReasonCode.DELETE_FAILED]
    assert out.copies == (CopyResult("error", "TimeoutError: read timed out"),)


# ---------------------------------------------------------------- two copies (double locking)
def test_pair_deleted_deleted() -> None:
    out = outcome_of(PAIR, [DELETED, DELETED])
    assert out.outcome is Outcome.REAPED and out.flags == frozenset()
    assert out.reasons == ("s3:corp-tfstate: deleted (condition Info = seen)", "dynamodb:locks: deleted (condition Info = seen)")
    assert codes(out) == [ReasonCode.COPY_RESULT, ReasonCode.COPY_RESULT]
    assert [c.result for c in out.copies] == ["deleted", "deleted"]


def test_pair_deleted_then_gone_is_reaped() -> None:
    out = outcome_of(PAIR, [DELETED, GONE])
    assert out.outcome is Outcome.REAPED and [c.result for c in out.copies] == ["deleted", "gone"]


def test_pair_deleted_then_raced_is_half_released() -> None:
    out = outcome_of(PAIR, [DELETED, RACED])
    assert out.outcome is Outcome.ERROR and out.flags == frozenset({Flag.DOUBLE_LOCK_PARTIAL})
    assert codes(out) == [ReasonCode.COPY_RESULT, ReasonCode.COPY_RESULT, ReasonCode.HALF_RELEASED]
    assert "STAYS LOCKED" in out.reasons[-1] and "it now holds lock new-id by ci@runner-7" in out.reasons[-1]
    assert out.current_holder == {"id": "new-id", "who": "ci@runner-7"}
    assert [c.result for c in out.copies] == ["deleted", "raced"]


def test_pair_deleted_then_error_is_half_released() -> None:
    out = outcome_of(PAIR, [DELETED, ConnectionError("throttled")])
    assert out.outcome is Outcome.ERROR and out.flags == frozenset({Flag.DOUBLE_LOCK_PARTIAL})
    assert out.reasons[1] == "dynamodb:locks: ConnectionError: throttled"
    assert "terraform force-unlock lock-1" in out.reasons[-1] and out.current_holder is None
    assert [c.result for c in out.copies] == ["deleted", "error"]


def test_pair_raced_first_leaves_the_item_alone() -> None:
    out = outcome_of(PAIR, [RACED])
    assert out.outcome is Outcome.RACED and out.flags == frozenset()
    assert out.reasons == (RACED.detail, "nothing was deleted: dynamodb:locks was left alone")
    assert codes(out) == [ReasonCode.RACED, ReasonCode.LEFT_ALONE]
    assert out.current_holder == {"id": "new-id", "who": "ci@runner-7"}
    assert out.copies == (CopyResult("raced", RACED.detail),), "only the attempted copy"


def test_pair_error_first_leaves_the_item_alone() -> None:
    out = outcome_of(PAIR, [OSError("no route")])
    assert out.outcome is Outcome.ERROR and codes(out) == [ReasonCode.DELETE_FAILED, ReasonCode.LEFT_ALONE]
    assert out.flags == frozenset()
