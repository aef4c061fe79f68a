"""The claim item with its lease, and the wrapper's three writes to it.

- ``claim``: ``PutItem`` conditioned on the key not existing (a retried put that had in fact
  succeeded is recognised by reading the item back);
- ``renew``: ``SET Heartbeat = Heartbeat + :one, HeartbeatAt = :now`` (and ``Exclusive = false``
  once another terraform was seen), conditioned on the claim existing;
- ``end``: ``SET EndedAt, ExitCode``, conditioned on the claim existing.

Every call is bounded (botocore connect/read timeouts; renewals are not retried by the SDK,
the wrapper's loop retries), so a hanging call never delays the fence.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..aws import error_code
from ..liveness.claims import Claim
from ..liveness.lease_fields import ENDED_AT, EXCLUSIVE, EXIT_CODE, HEARTBEAT, HEARTBEAT_AT
from ..models import claim_time


def bounded_client(region: str | None, timeout: float, attempts: int) -> Any:
    """A DynamoDB client whose every call ends within about ``attempts * 2 * timeout`` seconds."""
    import boto3
    from botocore.config import Config

    from ..aws import _region

    config = Config(connect_timeout=timeout, read_timeout=timeout,
                    retries={"total_max_attempts": attempts, "mode": "standard"})
    make: Any = boto3.client
    return make("dynamodb", region_name=_region(region), config=config)


class LeaseTable:
    """One claim item in the claims table. ``renewals`` may be a client with shorter bounds."""

    def __init__(self, client: Any, table: str, renew_client: Any | None = None):
        self.client = client
        self.renew_client = renew_client or client
        self.table = table

    @staticmethod
    def key(claim: Claim) -> dict[str, Any]:
        item = claim.to_item()
        return {"Who": item["Who"], "ClaimedAt": item["ClaimedAt"]}

    def claim(self, claim: Claim) -> None:
        item = claim.to_item()
        try:
            self.client.put_item(TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(#w)",
                                 ExpressionAttributeNames={"#w": "Who"})
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            got = self.client.get_item(TableName=self.table, Key=self.key(claim), ConsistentRead=True).get("Item")
            if got != item:  # someone else's claim at the same microsecond: not ours
                raise

    def renew(self, claim: Claim, now: datetime, exclusive_lost: bool = False) -> None:
        self._set(self.renew_client, claim, "#hb = #hb + :one, #at = :now", {"#hb": HEARTBEAT, "#at": HEARTBEAT_AT},
                  {":one": {"N": "1"}, ":now": {"S": claim_time(now)}}, exclusive_lost)

    def end(self, claim: Claim, ended: datetime, exit_code: int, exclusive_lost: bool = False) -> None:
        self._set(self.client, claim, "#end = :end, #code = :code", {"#end": ENDED_AT, "#code": EXIT_CODE},
                  {":end": {"S": claim_time(ended)}, ":code": {"N": str(int(exit_code))}}, exclusive_lost)

    def _set(self, client: Any, claim: Claim, assignments: str, names: dict[str, str], values: dict[str, Any],
             exclusive_lost: bool) -> None:
        """``SET assignments`` on the claim, only while it exists; with ``Exclusive = false`` once another
        terraform was seen."""
        names, values = {"#w": "Who", **names}, dict(values)
        update = "SET " + assignments
        if exclusive_lost:
            names["#ex"] = EXCLUSIVE
            values[":no"] = {"BOOL": False}
            update += ", #ex = :no"
        client.update_item(TableName=self.table, Key=self.key(claim), UpdateExpression=update,
                           ConditionExpression="attribute_exists(#w)", ExpressionAttributeNames=names,
                           ExpressionAttributeValues=values)

