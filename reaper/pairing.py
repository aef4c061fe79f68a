"""Double locking: one lock held in two stores is one candidate with two delete targets.

With both ``use_lockfile = true`` and ``dynamodb_table`` set, Terraform writes one
LockInfo (one ID, the same ``Path``) first to the S3 lock file, then to the
DynamoDB item, and unlocks in the same order. Lock Reaper treats the pair as ONE
lock: one decision, one report entry, one audit record per copy, and the deletes
in Terraform's order (the lock file first, then the item), each conditional.

How the engine uses this module:
1. Stores that set ``pair_first = True`` (the S3 lock-file stores) are scanned
   first; their locks are only indexed here, by (lock path, lock ID). Lock files
   exist only while a lock is held, so the index stays small.
2. The other stores are streamed as before; a lock whose (lock path, lock ID)
   matches an indexed lock from a different store is *claimed*: the candidate's
   targets are [lock file, item] and it is decided once, on the lock file.
3. Locks left in the index (no partner) are decided alone, after the others.
A lock whose Info is unparseable, or whose Path differs from its lock path, is
never paired: it is decided (and kept) on its own.

``outcome_of`` (pure) says what the deletes of one candidate's copies came to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .models import DeleteResult, DeleteStatus, Flag, LockRecord, Outcome, Reason
from .models import ReasonCode as C
from .ports import LockStore

PairKey = tuple[str, str]


@dataclass(frozen=True)
class Target:
    """One copy of a lock: the store holding it and the record read from it."""

    store: LockStore
    lock: LockRecord


def pair_key(lock: LockRecord) -> PairKey | None:
    """(lock path, lock ID) for a well-formed lock, else None (never paired)."""
    if lock.info is None or lock.info.Path != lock.lock_path:
        return None
    return (lock.lock_path, lock.info.ID)


class PairIndex:
    """Locks of the ``pair_first`` stores, waiting for a partner from another store."""

    def __init__(self) -> None:
        self._order: list[Target] = []
        self._by_key: dict[PairKey, list[int]] = {}
        self._claimed: set[int] = set()

    def __len__(self) -> int:
        return len(self._order) - len(self._claimed)

    def add(self, store: LockStore, lock: LockRecord) -> None:
        self._order.append(Target(store, lock))
        key = pair_key(lock)
        if key is not None:
            self._by_key.setdefault(key, []).append(len(self._order) - 1)

    def claim(self, lock: LockRecord) -> Target | None:
        """The indexed copy of ``lock`` held in another store, removed from the index; or None."""
        key = pair_key(lock)
        if key is None:
            return None
        for i in self._by_key.get(key, []):
            if i not in self._claimed and self._order[i].lock.store != lock.store:
                self._claimed.add(i)
                return self._order[i]
        return None

    def leftovers(self) -> list[Target]:
        """Indexed locks nobody claimed, in scan order."""
        return [t for i, t in enumerate(self._order) if i not in self._claimed]


# ---------------------------------------------------------------- what the deletes came to
Result = DeleteResult | Exception  # what one copy's delete returned, or raised


@dataclass(frozen=True)
class CopyResult:
    """One attempted copy: ``result`` as TargetOut.result spells it, and what the store said."""

    result: str  # "deleted" | "raced" | "gone" | "error"
    detail: str


@dataclass(frozen=True)
class DeleteOutcome:
    """What the deletes of one candidate came to: the engine turns it into its LockEntry."""

    outcome: Outcome
    reasons: tuple[Reason, ...]
    flags: frozenset[Flag] = frozenset()
    current_holder: dict[str, str] | None = None  # who holds the lock now, when a copy raced
    copies: tuple[CopyResult, ...] = field(default=())  # one per attempted copy, in delete order


_OUTCOME = {DeleteStatus.DELETED: Outcome.REAPED, DeleteStatus.RACED: Outcome.RACED, DeleteStatus.GONE: Outcome.GONE}
_CODE = {DeleteStatus.DELETED: C.DELETED, DeleteStatus.RACED: C.RACED, DeleteStatus.GONE: C.GONE}


def _copy(res: Result) -> CopyResult:
    if isinstance(res, DeleteResult):
        return CopyResult(res.status.value, res.detail)
    return CopyResult("error", f"{type(res).__name__}: {res}")


def _holder(res: DeleteResult) -> dict[str, str]:
    return {"id": res.current_id or "", "who": res.current_who or ""}


def _deleted(res: Result) -> bool:
    return isinstance(res, DeleteResult) and res.status is DeleteStatus.DELETED


def outcome_of(targets: Sequence[Target], results: Sequence[Result]) -> DeleteOutcome:
    """The outcome of deleting ``targets`` in order, given ``results`` for the copies attempted
    (the engine stops at the first copy not deleted, so there may be fewer results than targets)."""
    copies = tuple(_copy(r) for r in results)
    first = results[0]
    if len(targets) == 1 or not _deleted(first):
        return _first_not_deleted(targets, first, copies)
    second = results[1]
    lines = tuple(Reason(C.COPY_RESULT, f"{t.store.name}: {c.detail}") for t, c in zip(targets, copies, strict=True))
    if isinstance(second, DeleteResult) and second.status is not DeleteStatus.RACED:  # deleted, or gone
        return DeleteOutcome(Outcome.REAPED, lines, copies=copies)
    return _half_released(targets, second, lines, copies)


def _first_not_deleted(targets: Sequence[Target], first: Result, copies: tuple[CopyResult, ...]) -> DeleteOutcome:
    """One copy, or the first of two that was not deleted (the second is then left alone)."""
    holder = None
    if isinstance(first, Exception):
        outcome, reasons = Outcome.ERROR, [Reason(C.DELETE_FAILED, f"delete failed: {copies[0].detail}")]
    else:
        outcome, reasons = _OUTCOME[first.status], [Reason(_CODE[first.status], first.detail)]
        holder = _holder(first) if first.status is DeleteStatus.RACED else None
    if len(targets) > 1:
        reasons.append(Reason(C.LEFT_ALONE, f"nothing was deleted: {targets[1].store.name} was left alone"))
    return DeleteOutcome(outcome, tuple(reasons), current_holder=holder, copies=copies)


def _half_released(targets: Sequence[Target], second: Result, lines: tuple[Reason, ...],
                   copies: tuple[CopyResult, ...]) -> DeleteOutcome:
    """The lock file was deleted, the item was not (raced, or its delete failed): the state stays locked."""
    item = targets[1]
    if isinstance(second, DeleteResult):  # raced: another lock sits in the item now
        advice = (f"it now holds lock {second.current_id or '?'} by {second.current_who or '?'}: check "
                  "that holder before touching it")
    else:
        advice = (f"it still holds this lock: release it by hand (terraform force-unlock {item.lock.lock_id}) "
                  "once the holder is confirmed dead")
    alarm = Reason(C.HALF_RELEASED, f"DOUBLE LOCK HALF RELEASED: the lock file was deleted but {item.store.name} item "
                                    f"{item.lock.key} was not, so the state STAYS LOCKED; {advice}.")
    return DeleteOutcome(Outcome.ERROR, (*lines, alarm), flags=frozenset({Flag.DOUBLE_LOCK_PARTIAL}),
                         current_holder=_holder(second) if isinstance(second, DeleteResult) else None,
                         copies=copies)
