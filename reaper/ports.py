"""Small ports (typing.Protocol) between the engine and the outside world.

Adapters get their clients through their constructors; the engine and the
composite checker only see these shapes, and rely on nothing that is not
declared here: no ``getattr`` or ``hasattr`` on a port object. Tests pass fakes,
the Lambda passes boto3- and urllib3-backed ones.

- ``LockStore``: where locks live, with its declared ``StoreTraits``.
- ``LivenessChecker``: what the engine asks about a candidate (the composite).
- ``Checker``: one kind of evidence inside the composite.
- ``ClaimVerifier``: asks a claim's CI provider about the claimed job.
- ``LeaseObservations``: the reaper's own sightings of leases, kept between runs.
- ``AuditSink``: the durable record written before a delete.
- ``AlertSink``: told about a finished run, in the order of its ``order``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .models import DeleteResult, LivenessFact, LockRecord

if TYPE_CHECKING:  # the report and the claim are only named in signatures
    from .liveness.claims import Claim
    from .liveness.lease_observations import Observation
    from .report import RunReport

Clock = Callable[[], datetime]


class StoreError(Exception):
    """A whole store cannot be used (missing table, wrong schema, access denied)."""


class ItemError(Exception):
    """One item could not be read; the scan goes on."""


class RestoreConflict(Exception):
    """A lock already exists where the restore would write; nothing was written."""


@dataclass(frozen=True)
class StoreTraits:
    """What the engine and the checkers need to know about a store, declared by the store.

    - ``pair_first``: scanned first and only indexed, so that a lock held in two stores
      (double locking: an S3 lock file and a DynamoDB item) is one candidate;
    - ``restorable``: ``restore`` can put a reaped lock back (False for HCP Terraform
      and GitLab, whose APIs cannot re-create another client's lock);
    - ``restore_note``: what the audit record says instead, when not restorable;
    - ``own_evidence``: only the store's own checker may judge its locks (an HCP
      Terraform lock is held by a run or a user, never by a CI hostname or mapping);
    - ``delete_refused``: why this store cannot delete safely (set by ``validate``, e.g. the
      loaded botocore has no conditional ``DeleteObject``): the engine then attempts no
      delete and writes no audit record for its locks. Empty: deletes allowed.
    """

    pair_first: bool = False
    restorable: bool = True
    restore_note: str = ""
    own_evidence: bool = False
    delete_refused: str = ""


@runtime_checkable
class LockStore(Protocol):
    """Where locks live. ``name`` is how reports and audit records name it."""

    name: str
    traits: StoreTraits

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


@runtime_checkable
class LivenessChecker(Protocol):
    """Answers alive / dead / unknown, with evidence, for one candidate lock (the engine's view)."""

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact: ...

    def stats(self) -> dict[str, Any]:
        """API calls made so far (per kind and status), for the run report."""


@runtime_checkable
class Checker(Protocol):
    """One kind of evidence inside the composite checker."""

    name: str

    def applies(self, lock: LockRecord) -> bool:
        """False when this evidence says nothing about the lock (it is then skipped, not asked)."""

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact | None:
        """The answer, or None when it turns out not to apply."""


@runtime_checkable
class ClaimVerifier(Protocol):
    """Asks one CI provider (``provider_type`` "github" or "gitlab") about a claimed job."""

    source: str
    provider_type: str

    def verify(self, claim: Claim, lock: LockRecord, now: datetime) -> LivenessFact: ...


@runtime_checkable
class LeaseObservations(Protocol):
    """What the reaper saw of each lease in its earlier runs (``reaper.liveness.lease_observations``)."""

    table: str

    def get(self, key: str) -> Observation | None: ...

    def put(self, key: str, obs: Observation, expires_at: int, previous: Observation | None) -> bool:
        """Record ``obs`` only if the stored item is still ``previous``; False when another run changed it."""


@runtime_checkable
class AuditSink(Protocol):
    """Durable record of each lock before it is deleted."""

    def write(self, record: dict[str, Any]) -> str:
        """Store the record, return a reference usable by ``restore``. Raise on failure."""

    def read(self, ref: str) -> dict[str, Any]: ...


# AlertSink.order: sinks are told in ascending order; the metrics sink goes last, so that its
# Errors count includes the alerts that failed before it.
ORDER_NOTIFY, ORDER_METRICS = 10, 100


@runtime_checkable
class AlertSink(Protocol):
    """Told about a finished run; decides itself whether there is anything to say."""

    name: str
    order: int

    def publish(self, report: RunReport) -> str | None:
        """Return a short description of what was sent, or None if nothing was."""
