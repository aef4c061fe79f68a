"""In-memory lock table: the fake behind the LockStore port.

It holds items in DynamoDB wire format and classifies them with the same code
as the real store, so one contract suite (tests/contract) runs against both.
``on_before_delete`` lets tests change the table between scan and delete.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..models import DeleteResult, DeleteStatus, LockRecord
from ..ports import RestoreConflict, StoreError, StoreTraits
from .dynamo_items import from_jsonable, info_string, lock_records, raced


class InMemoryLockStore:
    traits = StoreTraits()

    def __init__(self, name: str = "memory:locks", items: dict[str, dict[str, Any]] | None = None):
        self.name = name
        self.items: dict[str, dict[str, Any]] = dict(items or {})
        self.on_before_delete: Callable[[LockRecord], None] | None = None
        self.fail_validate: str | None = None
        self.deleted: list[str] = []
        self._lock = threading.Lock()
        self._stats = {"items": 0, "digests": 0}

    # -- helpers for tests and the demo ----------------------------------
    def put_raw(self, item: dict[str, Any]) -> None:
        self.items[item["LockID"]["S"]] = copy.deepcopy(item)

    def put_lock(self, lock_id: str, info_json: str) -> None:
        self.put_raw({"LockID": {"S": lock_id}, "Info": {"S": info_json}})

    def put_digest(self, lock_id: str, digest: str = "0" * 32) -> None:
        self.put_raw({"LockID": {"S": lock_id}, "Digest": {"S": digest}})

    def get(self, lock_id: str) -> dict[str, Any] | None:
        return self.items.get(lock_id)

    # -- port -------------------------------------------------------------
    def validate(self) -> None:
        if self.fail_validate:
            raise StoreError(self.fail_validate)

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def scan(self) -> Iterator[LockRecord]:
        self._stats = {"items": 0, "digests": 0}
        yield from lock_records(self.name, self._current_items(), self._stats)

    def _current_items(self) -> Iterator[dict[str, Any]]:
        """Copies of the items, each read when the scan reaches it (so one released mid-scan is skipped)."""
        for key in list(self.items):
            item = self.items.get(key)
            if item is not None:
                self._stats["items"] += 1
                yield copy.deepcopy(item)

    def delete(self, lock: LockRecord) -> DeleteResult:
        if lock.info is None or not lock.token:
            raise ValueError("refusing to delete a lock that was not parsed")
        if self.on_before_delete is not None:
            self.on_before_delete(lock)
        with self._lock:
            current = self.items.get(lock.key)
            info = info_string(current)
            if current is None or info is None:
                return DeleteResult(status=DeleteStatus.GONE, detail="the lock was already released")
            if info != lock.token:
                return raced(current)
            del self.items[lock.key]
            self.deleted.append(lock.key)
        return DeleteResult(status=DeleteStatus.DELETED, detail="deleted (condition Info = seen)")

    def restore(self, raw: dict[str, Any]) -> str:
        item = from_jsonable(raw)
        if "LockID" not in item or "Info" not in item:
            raise ValueError("the audit record's item has no LockID/Info: nothing to restore")
        key = item["LockID"]["S"]
        with self._lock:
            if key in self.items:
                raise RestoreConflict(f"{key} is locked again: not overwritten")
            self.items[key] = item
        return f"restored {key} into {self.name}"
