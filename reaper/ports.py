"""Small ports (typing.Protocol) between the engine and the outside world.

Adapters get their clients through their constructors; the engine only sees
these shapes, so tests pass fakes and the Lambda passes boto3-backed ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from .models import DeleteResult, LivenessFact, LockRecord

Clock = Callable[[], datetime]


class StoreError(Exception):
    """A whole store cannot be used (missing table, wrong schema, access denied)."""


class ItemError(Exception):
    """One item could not be read; the scan goes on."""


@runtime_checkable
class LockStore(Protocol):
    """Where locks live. ``name`` is how reports and audit records name it."""

    name: str

    def validate(self) -> None:
        """Raise StoreError if this store is not usable as a lock store."""

    def scan(self) -> Iterator[LockRecord]:
        """Stream every lock (never digests). Parse failures come back as records
        with ``info=None`` and ``parse_error`` set, never as exceptions."""

    def delete(self, lock: LockRecord) -> DeleteResult:
        """Delete exactly the lock that was seen (conditional on ``lock.token``).
        A changed lock is RACED, a missing one GONE; other failures raise."""

    def restore(self, raw: dict[str, Any]) -> str:
        """Put a reaped lock back only if no lock exists now; returns a message.
        Raises RestoreConflict when a lock is present."""

    def stats(self) -> dict[str, int]:
        """Counters of the last scan, e.g. {"items": N, "digests": M}."""


class RestoreConflict(Exception):
    """A lock already exists where the restore would write; nothing was written."""


@runtime_checkable
class LivenessChecker(Protocol):
    """Answers alive / dead / unknown, with evidence, for one candidate lock."""

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact: ...


@runtime_checkable
class AuditSink(Protocol):
    """Durable record of each lock before it is deleted."""

    def write(self, record: dict[str, Any]) -> str:
        """Store the record, return a reference usable by ``restore``. Raise on failure."""

    def read(self, ref: str) -> dict[str, Any]: ...


@runtime_checkable
class AlertSink(Protocol):
    """Told about a finished run; decides itself whether there is anything to say."""

    name: str

    def publish(self, report: Any) -> str | None:
        """Return a short description of what was sent, or None if nothing was."""
