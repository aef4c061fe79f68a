"""Turning one DynamoDB lock-table item (wire format) into a LockRecord.

Shared by the real DynamoDB store and the in-memory fake, so both classify
items the same way:
- ``Digest`` without ``Info``, or a ``-md5`` key without ``Info``: a state digest. Not a lock.
- ``-md5`` key with ``Info``: reported as suspicious, never deleted.
- ``Info`` that is not a string, too large, not JSON, or not a LockInfo: reported, never deleted.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Any

from ..models import DIGEST_SUFFIX, DeleteResult, DeleteStatus, LockInfo, LockRecord

MAX_INFO_BYTES = 64 * 1024  # real LockInfo JSON is a few hundred bytes


def to_jsonable(item: dict[str, Any]) -> dict[str, Any]:
    """Wire-format item with bytes made JSON-safe (base64), for audit records."""

    def conv(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            return base64.b64encode(bytes(v)).decode("ascii")
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in item.items()}


def from_jsonable(item: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``to_jsonable`` for the attribute types a lock table holds."""

    def conv(av: Any) -> Any:
        if isinstance(av, dict) and len(av) == 1:
            (t, v), = av.items()
            if t == "B":
                return {"B": base64.b64decode(v)}
            if t == "BS":
                return {"BS": [base64.b64decode(x) for x in v]}
            if t == "M":
                return {"M": {k: conv(x) for k, x in v.items()}}
            if t == "L":
                return {"L": [conv(x) for x in v]}
        return av

    return {k: conv(v) for k, v in item.items()}


def is_digest(item: dict[str, Any]) -> bool:
    lock_id = item.get("LockID", {}).get("S") if isinstance(item.get("LockID"), dict) else None
    if "Info" in item:
        return False
    return "Digest" in item or (isinstance(lock_id, str) and lock_id.endswith(DIGEST_SUFFIX))


def item_to_record(store: str, item: dict[str, Any]) -> LockRecord | None:
    """Return a LockRecord, or None for a state digest."""
    if is_digest(item):
        return None
    raw = to_jsonable(item)
    key_av = item.get("LockID")
    key = key_av.get("S") if isinstance(key_av, dict) else None
    if not isinstance(key, str):
        return LockRecord(store=store, key=str(key_av)[:200], lock_path="", token="", raw=raw,
                          parse_error="item has no string LockID key")

    def bad(reason: str) -> LockRecord:
        return LockRecord(store=store, key=key, lock_path=key, token="", raw=raw, parse_error=reason)

    if key.endswith(DIGEST_SUFFIX):
        return bad(f"LockID ends in {DIGEST_SUFFIX} (a state digest's key) but has Info: never treated as a lock")
    info_av = item.get("Info")
    if info_av is None:
        return bad("item has no Info attribute (not a Terraform lock item)")
    if not isinstance(info_av, dict) or "S" not in info_av:
        kind = next(iter(info_av), "?") if isinstance(info_av, dict) else type(info_av).__name__
        return bad(f"Info is of DynamoDB type {kind}, expected a string (S)")
    info_raw = info_av["S"]
    if len(info_raw.encode("utf-8", "surrogatepass")) > MAX_INFO_BYTES:
        return bad(f"Info is {len(info_raw)} characters, larger than any Terraform lock ({MAX_INFO_BYTES} bytes max)")
    try:
        info = LockInfo.parse(info_raw)
    except ValueError as exc:
        return LockRecord(store=store, key=key, lock_path=key, token=info_raw, raw=raw, parse_error=str(exc))
    return LockRecord(store=store, key=key, lock_path=key, token=info_raw, raw=raw, info=info)


def lock_records(store: str, items: Iterable[dict[str, Any]], stats: dict[str, int]) -> Iterator[LockRecord]:
    """The LockRecords of ``items``; state digests are counted in ``stats["digests"]``, not yielded."""
    for item in items:
        rec = item_to_record(store, item)
        if rec is None:
            stats["digests"] += 1
            continue
        yield rec


def info_string(item: dict[str, Any] | None) -> str | None:
    """The item's ``Info`` string (Terraform's LockInfo JSON), or None when it has none."""
    info = item.get("Info") if item else None
    return info.get("S") if isinstance(info, dict) else None


def holder(item: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """Who holds the lock in this item now: (ID, Who) from its Info.

    ``(None, None)`` without an Info string; ``("(unparseable)", None)`` when the
    Info is not a LockInfo.
    """
    raw = info_string(item)
    if raw is None:
        return None, None
    try:
        li = LockInfo.parse(raw)
        return li.ID, li.Who
    except ValueError:
        return "(unparseable)", None


def raced(item: dict[str, Any] | None) -> DeleteResult:
    """The conditional delete found another lock in the item: name its holder."""
    cid, cwho = holder(item)
    return DeleteResult(
        status=DeleteStatus.RACED,
        detail=f"raced: a new lock {cid} by {cwho or '?'} holds it now",
        current_id=cid,
        current_who=cwho,
    )
