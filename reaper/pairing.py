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
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import LockRecord
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
