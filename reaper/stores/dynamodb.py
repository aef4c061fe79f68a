"""Terraform S3-backend DynamoDB lock tables.

- ``validate`` checks the key schema (``LockID`` string hash key, no sort key).
- ``scan`` streams a paginated, projected scan; digests are filtered out on the
  server and only counted (ScannedCount - Count). Optional parallel segments.
- ``delete`` is conditional on the exact Info string that was scanned, and uses
  ReturnValuesOnConditionCheckFailure=ALL_OLD to name the new holder on a race.
- ``restore`` writes with ``attribute_not_exists(LockID)``.

The boto3 client is passed in (use ``make_client`` for adaptive retries).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from ..aws import error_code, error_item
from ..models import DeleteResult, DeleteStatus, LockRecord
from ..ports import RestoreConflict, StoreError, StoreTraits
from .dynamo_items import from_jsonable, holder, lock_records, raced

_NAMES = {"#id": "LockID", "#info": "Info", "#digest": "Digest"}
_PROJECTION = "#id, #info, #digest"
# Digests (Digest and no Info) are dropped server-side; bad items without either still come back.
_FILTER = "attribute_exists(#info) OR attribute_not_exists(#digest)"


def _code(exc: Exception) -> str:
    # botocore's connection errors (ConnectionClosedError, ReadTimeoutError) carry response=None
    # (found by tests/test_faults.py): never let the error handling hide the real error
    return error_code(exc, default="")


class DynamoDBLockStore:
    traits = StoreTraits()

    def __init__(self, client: Any, table: str, segments: int = 1, page_size: int | None = None):
        self.client = client
        self.table = table
        self.segments = max(1, segments)
        self.page_size = page_size
        self.name = f"dynamodb:{table}"
        self._stats = {"items": 0, "digests": 0, "pages": 0}

    # -- port -------------------------------------------------------------
    def validate(self) -> None:
        try:
            desc = self.client.describe_table(TableName=self.table)["Table"]
        except Exception as exc:  # botocore ClientError / EndpointConnectionError
            code = _code(exc)
            if code == "ResourceNotFoundException":
                raise StoreError(f"table {self.table!r} does not exist (check the name and region)") from None
            raise StoreError(f"cannot describe table {self.table!r}: {code or type(exc).__name__}: {exc}") from None
        schema = [(k["AttributeName"], k["KeyType"]) for k in desc.get("KeySchema", [])]
        types = {a["AttributeName"]: a["AttributeType"] for a in desc.get("AttributeDefinitions", [])}
        if schema != [("LockID", "HASH")] or types.get("LockID") != "S":
            found = ", ".join(f"{n} ({t}, {types.get(n, '?')})" for n, t in schema) or "unknown"
            why = [f"it has a sort key {n}" for n, t in schema if t == "RANGE"]
            why += [f"its hash key is {n}, not LockID" for n, t in schema if t == "HASH" and n != "LockID"]
            if ("LockID", "HASH") in schema and types.get("LockID") != "S":
                why.append(f"LockID is of type {types.get('LockID', '?')}, not S")
            raise StoreError(
                f"table {self.table!r} is not a Terraform lock table ({'; '.join(why) or 'unexpected key schema'}): "
                f"its key is {found}; expected exactly one hash key LockID of type S and no sort key"
            )

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def scan(self) -> Iterator[LockRecord]:
        self._stats = {"items": 0, "digests": 0, "pages": 0}
        pages = self._pages(0, 1) if self.segments == 1 else self._parallel_pages()
        for page in pages:
            scanned = page.get("ScannedCount", 0)
            items = page.get("Items", [])
            self._stats["pages"] += 1
            self._stats["items"] += scanned
            self._stats["digests"] += scanned - len(items)
            # a digest that passed the filter (e.g. "-md5" key, no Digest) is counted, not yielded
            yield from lock_records(self.name, items, self._stats)

    def delete(self, lock: LockRecord) -> DeleteResult:
        if lock.info is None or not lock.token:
            raise ValueError("refusing to delete a lock that was not parsed")
        try:
            self.client.delete_item(
                TableName=self.table,
                Key={"LockID": {"S": lock.key}},
                ConditionExpression="#info = :seen",
                ExpressionAttributeNames={"#info": "Info"},
                ExpressionAttributeValues={":seen": {"S": lock.token}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Exception as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            current = error_item(exc)
            if not current or "Info" not in current:  # same as the in-memory store: no Info, no lock
                return DeleteResult(status=DeleteStatus.GONE, detail="the lock was already released")
            return raced(current)
        return DeleteResult(status=DeleteStatus.DELETED, detail="deleted (condition Info = seen)")

    def restore(self, raw: dict[str, Any]) -> str:
        item = from_jsonable(raw)
        if "LockID" not in item or "Info" not in item:
            raise ValueError("the audit record's item has no LockID/Info: nothing to restore")
        try:
            self.client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(LockID)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Exception as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            cid, cwho = holder(error_item(exc))
            raise RestoreConflict(
                f"{item['LockID']['S']} is locked again (lock {cid} by {cwho or '?'}): not overwritten"
            ) from None
        return f"restored {item['LockID']['S']} into {self.table}"

    # -- scanning ---------------------------------------------------------
    def _pages(self, segment: int, total: int) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "ProjectionExpression": _PROJECTION,
            "FilterExpression": _FILTER,
            "ExpressionAttributeNames": _NAMES,
        }
        if total > 1:
            kwargs.update(Segment=segment, TotalSegments=total)
        if self.page_size:
            kwargs["Limit"] = self.page_size
        try:
            yield from self.client.get_paginator("scan").paginate(**kwargs)
        except Exception as exc:
            code = _code(exc)
            raise StoreError(f"scan of {self.table!r} failed: {code or type(exc).__name__}: {exc}") from None

    def _parallel_pages(self) -> Iterator[dict[str, Any]]:
        """Scan segments in threads; a small bounded queue keeps memory flat."""
        q: queue.Queue[Any] = queue.Queue(maxsize=self.segments * 2)
        done = object()
        stop = threading.Event()

        def put(msg: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(msg, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def worker(seg: int) -> None:
            try:
                for page in self._pages(seg, self.segments):
                    if not put(page):
                        return
            except Exception as exc:  # forwarded to the consumer
                put(exc)
            finally:
                put(done)

        threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(self.segments)]
        for t in threads:
            t.start()
        finished = 0
        error: Exception | None = None
        try:
            while finished < self.segments:
                msg = q.get()
                if msg is done:
                    finished += 1
                elif isinstance(msg, Exception):
                    error = error or msg
                else:
                    yield msg
        finally:
            stop.set()
        if error is not None:
            raise error


def make_client(region: str | None = None, session: Any = None) -> Any:
    """A DynamoDB client with adaptive retries (throttling) and bounded timeouts."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"mode": "adaptive", "max_attempts": 8}, connect_timeout=5, read_timeout=20)
    return (session or boto3).client("dynamodb", region_name=region, config=cfg)
