"""What the reaper itself saw of each lease, kept between its runs (the ``lease`` checker's memory).

One item per leased claim in the stack's run-state table (``REAPER_LEASE_TABLE``, the
table of the run lease; partition key ``pk``, TTL attribute ``expires_at``), keyed
``lease#<Who>#<ClaimedAt>`` so that it never meets the run lease (``run-lease``) or
other run state (``watch#...``):

- ``counter`` (N): the lease's ``Heartbeat`` counter as last read;
- ``first_seen_at`` (S): when the reaper first read that counter value, by the reaper's clock;
- ``ended_seen_at`` (S, optional): when the reaper first read the claim's ``EndedAt``, by its clock;
- ``observer`` (S): who recorded it (``lambda:<function>`` or ``cli:<user@host>``), for explain;
- ``expires_at`` (N): epoch seconds, the table's TTL: a day after the claim's own expiry.

Only the reaper's own clock goes into these times, so the writer's clock never shortens
a wait for death. Every write is conditional on the item the run read (a new item: it does
not exist yet; a changed one: the exact counter and first sighting read), so two runs never
move a first sighting later or earlier than one of them saw it; a lost race is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..aws import is_code
from ..models import claim_time, parse_created

KEY_PREFIX = "lease#"
PARTITION_KEY = "pk"
TTL_ATTRIBUTE = "expires_at"


def observation_key(who: str, claimed_at: datetime) -> str:
    """The item key of a claim's observation (``ClaimedAt`` is fixed width, so the key is unambiguous)."""
    return f"{KEY_PREFIX}{who}#{claim_time(claimed_at)}"


class Observation(BaseModel):
    """The reaper's own sightings of one lease."""

    model_config = ConfigDict(frozen=True)

    counter: int = Field(ge=0)
    first_seen_at: datetime
    ended_seen_at: datetime | None = None
    observer: str = ""

    def to_item(self, key: str, expires_at: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            PARTITION_KEY: {"S": key},
            "counter": {"N": str(self.counter)},
            "first_seen_at": {"S": claim_time(self.first_seen_at)},
            TTL_ATTRIBUTE: {"N": str(int(expires_at))},
        }
        if self.ended_seen_at is not None:
            item["ended_seen_at"] = {"S": claim_time(self.ended_seen_at)}
        if self.observer:
            item["observer"] = {"S": self.observer[:200]}
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Observation:
        """Raises ValueError (or KeyError) on an item that is not an observation."""
        ended = item.get("ended_seen_at", {}).get("S")
        return cls(
            counter=int(item["counter"]["N"]),
            first_seen_at=parse_created(item["first_seen_at"]["S"]),
            ended_seen_at=parse_created(ended) if ended else None,
            observer=item.get("observer", {}).get("S", ""),
        )


class LeaseObservationStore:
    """Observations in a DynamoDB table with a string partition key ``pk`` (the boto3 client is passed in).

    Implements ``reaper.ports.LeaseObservations``: ``GetItem`` (consistent) and a conditional
    ``PutItem`` on ``lease#`` keys only (the stack grants no more).
    """

    def __init__(self, client: Any, table: str):
        self.client = client
        self.table = table

    def get(self, key: str) -> Observation | None:
        if not key.startswith(KEY_PREFIX):
            raise ValueError(f"{key!r} is not a lease observation key")
        resp = self.client.get_item(TableName=self.table, Key={PARTITION_KEY: {"S": key}}, ConsistentRead=True)
        item = resp.get("Item")
        return Observation.from_item(item) if item else None

    def put(self, key: str, obs: Observation, expires_at: int, previous: Observation | None) -> bool:
        """Record ``obs`` if the item is still ``previous`` (None: still absent); False when another run changed it."""
        if not key.startswith(KEY_PREFIX):
            raise ValueError(f"{key!r} is not a lease observation key")
        kwargs: dict[str, Any] = {"TableName": self.table, "Item": obs.to_item(key, expires_at)}
        if previous is None:
            kwargs["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            kwargs["ConditionExpression"] = "#c = :c AND #f = :f"
            kwargs["ExpressionAttributeNames"] = {"#c": "counter", "#f": "first_seen_at"}
            kwargs["ExpressionAttributeValues"] = {":c": {"N": str(previous.counter)},
                                                   ":f": {"S": claim_time(previous.first_seen_at)}}
        try:
            self.client.put_item(**kwargs)
            return True
        except Exception as exc:
            if is_code(exc, "ConditionalCheckFailedException"):
                return False
            raise
