"""Realistic Terraform lock items, as Terraform 1.x writes them (statemgr.LockInfo)."""

from __future__ import annotations

import json
import random
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

LOCK_TABLE_SCHEMA = {
    "KeySchema": [{"AttributeName": "LockID", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "LockID", "AttributeType": "S"}],
    "BillingMode": "PAY_PER_REQUEST",
}


def lock_id(rng: random.Random | None = None) -> str:
    """Terraform's random hex ID in 8-4-4-4-12 form (not a valid UUIDv4)."""
    h = (rng.getrandbits(128).to_bytes(16, "big") if rng else secrets.token_bytes(16)).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def created(at: datetime, digits: int = 6) -> str:
    """RFC 3339 UTC with ``digits`` fractional digits (Terraform uses Go's time.Time: up to 9)."""
    at = at.astimezone(timezone.utc)
    base = at.strftime("%Y-%m-%dT%H:%M:%S")
    if digits <= 0:
        return base + "Z"
    frac = f"{at.microsecond:06d}" + "123"
    return f"{base}.{frac[:digits]}Z"


def info_json(
    path: str,
    age: timedelta,
    now: datetime,
    operation: str = "OperationTypeApply",
    who: str = "runner@fv-az581-229",
    version: str = "1.5.5",
    id_: str | None = None,
    digits: int = 6,
) -> str:
    return json.dumps(
        {
            "ID": id_ or lock_id(),
            "Operation": operation,
            "Info": "",
            "Who": who,
            "Version": version,
            "Created": created(now - age, digits),
            "Path": path,
        },
        separators=(",", ":"),
    )


def lock_item(path: str, info: str) -> dict[str, Any]:
    return {"LockID": {"S": path}, "Info": {"S": info}}


def digest_item(path: str, rng: random.Random | None = None) -> dict[str, Any]:
    digest = (rng.getrandbits(128).to_bytes(16, "big") if rng else secrets.token_bytes(16)).hex()
    return {"LockID": {"S": f"{path}-md5"}, "Digest": {"S": digest}}


def create_lock_table(client: Any, name: str) -> None:
    client.create_table(TableName=name, **LOCK_TABLE_SCHEMA)
    client.get_waiter("table_exists").wait(TableName=name)


def create_claims_table(client: Any, name: str) -> None:
    """The claims table ``python -m reaper claim`` writes (schema from reaper.liveness.claims)."""
    from reaper.liveness.claims import ATTRIBUTE_DEFINITIONS, KEY_SCHEMA

    client.create_table(TableName=name, KeySchema=KEY_SCHEMA, AttributeDefinitions=ATTRIBUTE_DEFINITIONS,
                        BillingMode="PAY_PER_REQUEST")
