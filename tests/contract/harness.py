"""The harness protocol behind the one LockStore contract suite (tests/contract).

A backend plugs into the suite by providing a ``StoreHarness``: the store under
test plus a back door into the same storage, used to arrange the world and to
look at it without going through the store. Register a factory in
``tests/contract/conftest.py`` (``HARNESSES``) and every contract case runs
against it.

Lock paths are what ``LockRecord.lock_path`` and ``Info.Path`` hold
(``"<bucket>/<state key>"``); the harness maps them to its own keys (a DynamoDB
``LockID``, an S3 ``<key>.tflock`` object, ...).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from devtools.locks import LOCK_TABLE_SCHEMA, digest_item, lock_item
from reaper.ports import LockStore
from reaper.stores.memory import InMemoryLockStore


@runtime_checkable
class StoreHarness(Protocol):
    name: str
    store: LockStore
    bucket: str  # the first part of every lock path this harness understands
    has_digests: bool  # False where the store keeps no state digests next to its locks

    def put_lock(self, lock_path: str, info_json: str) -> None:
        """Write a lock as Terraform would (overwriting whatever is there)."""

    def put_digest(self, lock_path: str) -> None:
        """Write Terraform's state digest for ``lock_path``; a no-op without digests."""

    def remove(self, lock_path: str) -> None:
        """Release the lock behind the store's back (as Terraform's unlock does)."""

    def current_info(self, lock_path: str) -> str | None:
        """The raw Info held now, or None when there is no lock."""


# ---------------------------------------------------------------- backends
class MemoryHarness:
    has_digests = True
    bucket = "corp-tfstate"

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.store = InMemoryLockStore(name="memory:terraform-locks")

    def put_lock(self, lock_path: str, info_json: str) -> None:
        self.store.put_raw(lock_item(lock_path, info_json))

    def put_digest(self, lock_path: str) -> None:
        self.store.put_raw(digest_item(lock_path))

    def put_item(self, item: dict[str, Any]) -> None:
        self.store.put_raw(item)

    def remove(self, lock_path: str) -> None:
        self.store.items.pop(lock_path, None)

    def current_info(self, lock_path: str) -> str | None:
        item = self.store.get(lock_path)
        return item.get("Info", {}).get("S") if item else None


class DynamoDBHarness:
    """A real DynamoDBLockStore on a boto3 client (in-process moto or moto_server)."""

    has_digests = True
    bucket = "corp-tfstate"

    def __init__(self, client: Any, table: str = "terraform-locks", name: str = "dynamodb", **store_kw: Any) -> None:
        from reaper.stores.dynamodb import DynamoDBLockStore

        self.name = name
        self.client = client
        self.table = table
        client.create_table(TableName=table, **LOCK_TABLE_SCHEMA)
        self.store = DynamoDBLockStore(client, table, **store_kw)

    def put_lock(self, lock_path: str, info_json: str) -> None:
        self.client.put_item(TableName=self.table, Item=lock_item(lock_path, info_json))

    def put_digest(self, lock_path: str) -> None:
        self.client.put_item(TableName=self.table, Item=digest_item(lock_path))

    def put_item(self, item: dict[str, Any]) -> None:
        self.client.put_item(TableName=self.table, Item=item)

    def remove(self, lock_path: str) -> None:
        self.client.delete_item(TableName=self.table, Key={"LockID": {"S": lock_path}})

    def current_info(self, lock_path: str) -> str | None:
        item = self.client.get_item(TableName=self.table, Key={"LockID": {"S": lock_path}}, ConsistentRead=True).get("Item")
        return item.get("Info", {}).get("S") if item else None


class S3Harness:
    """A real S3LockFileStore (``<state key>.tflock`` objects) on a boto3 S3 client.

    ``put_digest`` writes the state object itself next to the lock file: the store
    must list past it and never read, count or touch it (S3 keeps no digests).
    """

    has_digests = False
    bucket = "corp-tfstate"

    def __init__(self, client: Any, name: str = "s3", versioned: bool = False, **store_kw: Any) -> None:
        from reaper.stores.s3 import S3LockFileStore

        self.name = name
        self.client = client
        client.create_bucket(Bucket=self.bucket)
        if versioned:
            client.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        self.store = S3LockFileStore(client, self.bucket, **store_kw)

    def _state_key(self, lock_path: str) -> str:
        assert lock_path.startswith(self.bucket + "/"), lock_path
        return lock_path[len(self.bucket) + 1:]

    def put_lock(self, lock_path: str, info_json: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._state_key(lock_path) + ".tflock", Body=info_json.encode())

    def put_digest(self, lock_path: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._state_key(lock_path), Body=b'{"version": 4}')

    def remove(self, lock_path: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._state_key(lock_path) + ".tflock")

    def current_info(self, lock_path: str) -> str | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._state_key(lock_path) + ".tflock")["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        return body.decode()
