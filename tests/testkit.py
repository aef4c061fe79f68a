"""Test doubles and builders that several test modules share (import as ``testkit``).

- ``ListAudit``: an in-memory audit sink; every record must survive JSON.
- ``InterceptDelete``: wraps any LockStore, records each delete and can act
  between the engine's decision and the delete (a race, a fault).
- ``enforce_policy``: the small policy the store tests run the engine with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Callable, Iterator
from typing import Any

from reaper.audit import OUTCOME_SCHEMA
from reaper.policy import Policy
from reaper.models import DeleteResult, LockRecord


class ListAudit:
    """Audit records kept in a list; ``mem://<n>`` refs. ``fail=True``: every write fails."""

    def __init__(self, fail: bool = False) -> None:
        self.records: list[dict[str, Any]] = []
        self.fail = fail

    def write(self, record: dict[str, Any]) -> str:
        if self.fail:
            raise OSError("audit bucket unreachable")
        self.records.append(json.loads(json.dumps(record)))  # must be JSON-serialisable
        return f"mem://{len(self.records)}"

    def read(self, ref: str) -> dict[str, Any]:
        return self.records[int(ref.split("//")[1]) - 1]

    @property
    def audits(self) -> list[dict[str, Any]]:
        """The audit records written before deletes (not the delete-outcome records written after a failed one)."""
        return [r for r in self.records if r.get("schema") != OUTCOME_SCHEMA]

    @property
    def outcomes(self) -> list[dict[str, Any]]:
        """The records that say a copy was not deleted, written beside its audit record."""
        return [r for r in self.records if r.get("schema") == OUTCOME_SCHEMA]


class InterceptDelete:
    """Wraps a LockStore: appends the store's name to ``log`` on each delete (in order)
    and calls ``before(lock)`` just before it. Everything else is the inner store's
    (``traits``, ...)."""

    def __init__(self, store: Any, before: Callable[[LockRecord], None] | None = None,
                 log: list[str] | None = None) -> None:
        self.inner = store
        self.before = before
        self.log = log
        self.name = store.name

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def validate(self) -> None:
        self.inner.validate()

    def scan(self) -> Iterator[LockRecord]:
        return self.inner.scan()

    def delete(self, lock: LockRecord) -> DeleteResult:
        if self.log is not None:
            self.log.append(self.name)
        if self.before is not None:
            self.before(lock)
        return self.inner.delete(lock)

    def restore(self, raw: dict[str, Any]) -> str:
        return self.inner.restore(raw)

    def stats(self) -> dict[str, int]:
        return self.inner.stats()


def enforce_policy(mode: str = "enforce", **kw: Any) -> Policy:
    """One rule for every lock: max_age 3h, hard_max_age 1d; ``kw`` sets more top-level keys."""
    doc: dict[str, Any] = {"mode": mode, "rules": [{"match": "*", "max_age": "3h", "hard_max_age": "1d"}],
                           "audit": {"local_dir": "unused"}}
    doc.update(kw)
    return Policy.model_validate(doc)


@dataclass
class FakeLambdaContext:
    """The Lambda context the handler's Powertools decorators read."""

    function_name: str = "lock-reaper"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:lock-reaper"
    memory_limit_in_mb: int = 256
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    log_group_name: str = "/aws/lambda/lock-reaper"
    log_stream_name: str = "2026/11/22/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000
