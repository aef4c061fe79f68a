"""The run lease: one run at a time, without reserved concurrency.

A run first takes the lease, one item in a DynamoDB table the stack owns
(``REAPER_LEASE_TABLE``), with a conditional ``PutItem``::

    {"pk": "run-lease", "holder": <run id>, "expires_at": <epoch seconds>, "acquired_at": <ISO time>}
    condition: attribute_not_exists(pk) OR expires_at < :now

and releases it at the end with a ``DeleteItem`` conditioned on ``holder = <its run id>``
(a lease another run took over after it expired is left alone). A run that finds a
live lease is skipped. The lease lasts the function's timeout (``REAPER_LEASE_SECONDS``,
default 900), so one left by a crashed or timed-out run expires when that run could no
longer be running. No table configured (the CLI, tests): no lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .aws import error_item, is_code

LEASE_KEY = "run-lease"
DEFAULT_LEASE_SECONDS = 900


class LeaseError(RuntimeError):
    """The lease table could not be used (missing, access denied): no run, never two at once."""


@dataclass(frozen=True)
class Held:
    """Who holds the lease when it could not be taken."""

    holder: str
    expires_at: int

    def describe(self, now: float) -> str:
        until = datetime.fromtimestamp(self.expires_at, UTC).isoformat()
        return f"run {self.holder} holds the run lease until {until} ({max(0, int(self.expires_at - now))}s from now)"


class RunLease:
    def __init__(self, client: Any, table: str, seconds: int = DEFAULT_LEASE_SECONDS, *,
                 key: str = LEASE_KEY, wall_clock: Callable[[], float] = time.time):
        self.client = client
        self.table = table
        self.seconds = seconds
        self.key = key
        self.wall_clock = wall_clock

    def acquire(self, run_id: str) -> Held | None:
        """Take the lease for ``run_id``: None when taken, else who holds it (a live lease)."""
        now = int(self.wall_clock())
        try:
            self.client.put_item(
                TableName=self.table,
                Item={"pk": {"S": self.key}, "holder": {"S": run_id}, "expires_at": {"N": str(now + self.seconds)},
                      "acquired_at": {"S": datetime.fromtimestamp(now, UTC).isoformat()}},
                ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                ExpressionAttributeValues={":now": {"N": str(now)}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return None
        except Exception as exc:
            if is_code(exc, "ConditionalCheckFailedException"):
                return self._holder(exc)
            raise LeaseError(f"cannot take the run lease in table {self.table}: {type(exc).__name__}: {exc}") from exc

    def _holder(self, exc: BaseException) -> Held:
        item = error_item(exc)
        if item is None:  # an older endpoint without ReturnValuesOnConditionCheckFailure
            item = self.client.get_item(TableName=self.table, Key={"pk": {"S": self.key}}, ConsistentRead=True).get("Item")
        item = item or {}
        return Held(holder=item.get("holder", {}).get("S", "?"), expires_at=int(item.get("expires_at", {}).get("N", "0")))

    def release(self, run_id: str) -> bool:
        """Give the lease back; False when it is no longer ours (it expired and another run took it)."""
        try:
            self.client.delete_item(
                TableName=self.table, Key={"pk": {"S": self.key}},
                ConditionExpression="holder = :me", ExpressionAttributeValues={":me": {"S": run_id}},
            )
            return True
        except Exception as exc:
            if is_code(exc, "ConditionalCheckFailedException"):
                return False
            raise
