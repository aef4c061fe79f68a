"""The harness protocol behind the one LockStore contract suite (tests/contract).

A backend plugs into the suite by providing a ``StoreHarness``: the store under
test plus a back door into the same storage, used to arrange the world and to
look at it without going through the store. Register a factory in
``tests/contract/conftest.py`` (``HARNESSES``) and every contract case runs
against it.

Lock paths are what ``LockRecord.lock_path`` and ``Info.Path`` hold; a harness
makes them from a state name with ``lock_path`` (``"<bucket>/<state key>"`` for
the Terraform backends, ``"<organization>/<workspace>"`` for HCP Terraform,
``"<project>/<state>"`` for GitLab) and maps them to its own keys (a DynamoDB
``LockID``, an S3 ``<key>.tflock`` object, a workspace, a GitLab state).

Capabilities (cases that need one skip, with the reason, where it is missing):

- ``raw_info``: the store reads Terraform's Info JSON as the client wrote it. The
  HTTP-API stores (HCP Terraform, GitLab) build the Info from what their API keeps
  (an ID, a holder, a time); for them ``put_lock`` takes the same Info JSON and
  writes what the API would hold, and ``canonical`` says what the store can give
  back of it (``canonical`` is the identity for ``raw_info`` stores);
- ``restorable``: ``restore`` can put a reaped lock back (``store.traits.restorable``);
- ``raced_names_id``: a RACED delete names the new holder's lock ID (GitLab's
  read API has no lock IDs: it names the new holder only);
- ``relock_same_id_detected``: a lock taken again with the same ID (a new
  ``Created``) is not the lock that was seen (GitLab's unlock compares the ID alone).
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol, runtime_checkable

from devtools.fakehttp import iso as rails_time
from devtools.locks import LOCK_TABLE_SCHEMA, digest_item, lock_item
from reaper.models import parse_created
from reaper.ports import LockStore
from reaper.stores.memory import InMemoryLockStore

from .builders import build, policy_from


@runtime_checkable
class StoreHarness(Protocol):
    name: str
    store: LockStore
    bucket: str  # the first part of every lock path this harness understands
    has_digests: bool  # False where the store keeps no state digests next to its locks
    raw_info: bool
    raced_names_id: bool
    relock_same_id_detected: bool

    @property
    def restorable(self) -> bool: ...

    def lock_path(self, state: str) -> str:
        """The lock path of the state ``state`` (e.g. ``"prod/app/terraform.tfstate"``) in this store."""

    def put_lock(self, lock_path: str, info_json: str) -> None:
        """Write a lock as Terraform would (overwriting whatever is there)."""

    def put_digest(self, lock_path: str) -> None:
        """Write Terraform's state digest for ``lock_path``; a no-op without digests."""

    def put_unparseable(self, lock_path: str) -> None:
        """A lock the store cannot describe (malformed Info; a lock with no readable ID or age)."""

    def remove(self, lock_path: str) -> None:
        """Release the lock behind the store's back (as Terraform's unlock does)."""

    def current_info(self, lock_path: str) -> str | None:
        """The Info held now (``canonical`` form), or None when there is no lock."""

    def canonical(self, info_json: str) -> str:
        """What this store keeps of an Info JSON written with ``put_lock`` (the identity for ``raw_info``)."""


def traits_restorable(store: Any) -> bool:
    traits = getattr(store, "traits", None)
    return bool(getattr(traits, "restorable", True))


class TerraformInfoHarness:
    """Base of the backends that keep Terraform's own Info JSON (DynamoDB, S3, memory)."""

    bucket = "corp-tfstate"
    raw_info = True
    raced_names_id = True
    relock_same_id_detected = True
    store: Any

    @property
    def restorable(self) -> bool:
        return traits_restorable(self.store)

    def lock_path(self, state: str) -> str:
        return f"{self.bucket}/{state}"

    def canonical(self, info_json: str) -> str:
        return info_json

    def put_lock(self, lock_path: str, info_json: str) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def put_unparseable(self, lock_path: str) -> None:
        self.put_lock(lock_path, "{this is not json")


# ---------------------------------------------------------------- backends
class MemoryHarness(TerraformInfoHarness):
    has_digests = True

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


class DynamoDBHarness(TerraformInfoHarness):
    """A real DynamoDBLockStore on a boto3 client (in-process moto or moto_server)."""

    has_digests = True

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


class S3Harness(TerraformInfoHarness):
    """A real S3LockFileStore (``<state key>.tflock`` objects) on a boto3 S3 client.

    ``put_digest`` writes the state object itself next to the lock file: the store
    must list past it and never read, count or touch it (S3 keeps no digests).
    """

    has_digests = False

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


# ------------------------------------------------ HTTP-API stores (loopback fakes)
def _slug(state: str) -> str:
    """A state key as a workspace/state name: ``env:/staging/prod/app/terraform.tfstate`` -> ``env-staging-prod-app``."""
    name = re.sub(r"(/terraform)?\.tfstate$", "", state)
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "default"


def _username(who: str) -> str:
    """A Terraform ``Who`` as a platform username (no ``@``): ``runner@fv-az581-229`` -> ``runner-fv-az581-229``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", who).strip("-.") or "someone"


def _canonical(id_: str, who: str, created: str | None) -> str:
    return json.dumps({"ID": id_, "Who": who, "Operation": "", "Created": created}, sort_keys=True)


class HCPHarness:
    """A real HCPWorkspaceStore, built from a policy, on the loopback fake HCP Terraform API.

    A lock is a workspace locked by a user (the only holder whose lock the API lets a
    client choose the ID, holder and time of): ``put_lock`` registers a user whose ID
    is derived from the Info's ID (``user-…``), named after its ``Who``, and locks the
    workspace at its ``Created`` (the workspace's ``updated-at``, which is what the
    store reads as the age of a user lock). The store reports ID ``user-…``, Who
    ``user <name>``, no operation.
    """

    has_digests = False
    raw_info = False
    raced_names_id = True
    relock_same_id_detected = True  # a user lock taken again moves the workspace's updated-at

    def __init__(self, fake: Any, org: str = "acme", name: str = "hcp") -> None:
        self.name = name
        self.fake = fake
        self.org = self.bucket = org
        policy = policy_from({
            "mode": "report",
            "rules": [{"match": "*", "max_age": "2h"}],
            "stores": [{"type": "hcp", "base_url": fake.url, "organizations": [org], "token_env": "HCP_TOKEN",
                        "page_size": 2, "timeout": "2s"}],
            "liveness": {"state_activity": {"enabled": False}},
        })
        [self.store] = build(policy, env={"HCP_TOKEN": fake.token}).stores

    @property
    def restorable(self) -> bool:
        return traits_restorable(self.store)

    def lock_path(self, state: str) -> str:
        return f"{self.org}/{_slug(state)}"

    def _ws(self, lock_path: str, create: bool = True) -> str | None:
        org, _, ws_name = lock_path.partition("/")
        assert org == self.org, lock_path
        for ws_id in self.fake.orgs.get(org, []):
            if self.fake.workspaces[ws_id]["name"] == ws_name:
                return str(ws_id)
        return self.fake.add_workspace(org, ws_name) if create else None

    @staticmethod
    def _user(info: dict[str, Any]) -> tuple[str, str]:
        id_, who = str(info["ID"]), str(info["Who"])
        uid = id_ if id_.startswith("user-") else "user-" + re.sub(r"[^A-Za-z0-9]", "", id_)[:16]
        return uid, (who[len("user "):] if who.startswith("user ") else _username(who))

    def canonical(self, info_json: str) -> str:
        info = json.loads(info_json)
        uid, username = self._user(info)
        return _canonical(uid, f"user {username}", rails_time(parse_created(info["Created"])))

    def put_lock(self, lock_path: str, info_json: str) -> None:
        info = json.loads(info_json)
        uid, username = self._user(info)
        self.fake.users[uid] = {"username": username}
        ws = self._ws(lock_path)
        self.fake.lock(ws, "users", uid, reason=info.get("Info") or None, at=parse_created(info["Created"]))

    def put_digest(self, lock_path: str) -> None:
        self._ws(lock_path)  # HCP Terraform keeps no digests; the workspace exists

    def put_unparseable(self, lock_path: str) -> None:
        ws = self._ws(lock_path)
        self.fake.lock(ws, "users", self.fake.add_user("no-time"))
        self.fake.workspaces[ws]["updated_at"] = None  # no timestamp tells the lock's age

    def remove(self, lock_path: str) -> None:
        ws = self._ws(lock_path, create=False)
        if ws is not None:
            self.fake.workspaces[ws].update(locked=False, locked_by=None, locked_reason=None)

    def current_info(self, lock_path: str) -> str | None:
        ws_id = self._ws(lock_path, create=False)
        ws = self.fake.workspaces.get(ws_id) if ws_id else None
        if not ws or not ws["locked"]:
            return None
        type_, id_ = ws["locked_by"]
        holder = (self.fake.users if type_ == "users" else self.fake.teams).get(id_, {})
        who = f"user {holder.get('username')}" if type_ == "users" else f"{type_} {id_}"
        return _canonical(id_, who, ws["updated_at"])


class GitLabStateHarness:
    """A real GitLabStateStore, built from a policy, on the loopback fake GitLab (Terraform state API).

    GitLab keeps a lock's ID, user and time: ``put_lock`` locks the state with the
    Info's ``ID``, the ``Who`` as a username and ``Created`` as ``locked_at``. The
    store reads the ID back from the lock endpoint's 409 answer.
    """

    has_digests = False
    raw_info = False
    raced_names_id = False  # GraphQL shows the new holder's username and time, not its lock ID
    relock_same_id_detected = False  # DELETE .../lock?ID= compares the lock ID alone
    token = "glpat-contract-suite"

    def __init__(self, fake: Any, project: str = "infra/platform", name: str = "gitlab-state") -> None:
        self.name = name
        self.fake = fake
        self.project = self.bucket = project
        fake.add_token(self.token, "lock-reaper-bot")
        fake.add_project(project)
        policy = policy_from({
            "mode": "report",
            "rules": [{"match": "*", "max_age": "2h"}],
            "stores": [{"type": "gitlab", "base_url": fake.url, "projects": [project], "token_env": "GITLAB_TOKEN",
                        "page_size": 2, "timeout": "2s"}],
            "liveness": {"state_activity": {"enabled": False}},
        })
        [self.store] = build(policy, env={"GITLAB_TOKEN": self.token}).stores

    @property
    def restorable(self) -> bool:
        return traits_restorable(self.store)

    def lock_path(self, state: str) -> str:
        return f"{self.project}/{_slug(state)}"

    def _state(self, lock_path: str, create: bool = True) -> str:
        assert lock_path.startswith(self.project + "/"), lock_path
        name = lock_path[len(self.project) + 1:]
        if create and self.fake.state(self.project, name) is None:
            self.fake.add_state(self.project, name)
        return name

    def canonical(self, info_json: str) -> str:
        info = json.loads(info_json)
        return _canonical(str(info["ID"]), _username(str(info["Who"])), rails_time(parse_created(info["Created"])))

    def put_lock(self, lock_path: str, info_json: str) -> None:
        info = json.loads(info_json)
        name = self._state(lock_path)
        self.fake.lock(self.project, name, str(info["ID"]), _username(str(info["Who"])), parse_created(info["Created"]))

    def put_digest(self, lock_path: str) -> None:
        self._state(lock_path)  # GitLab keeps no digests; the state exists

    def put_unparseable(self, lock_path: str) -> None:
        name = self._state(lock_path)
        self.fake.lock(self.project, name, "0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5", "someone",
                       parse_created("2026-11-22T08:00:00Z"))
        # the lock ID cannot be learned: the lock endpoint fails (the store reports the lock, never unlocks it)
        self.fake.fail("POST", rf"/terraform/state/{re.escape(name)}/lock$", 500, times=1000)

    def remove(self, lock_path: str) -> None:
        s = self.fake.state(self.project, self._state(lock_path, create=False))
        if s is not None:
            s.update(lock_xid=None, locked_by=None, locked_at=None)

    def current_info(self, lock_path: str) -> str | None:
        s = self.fake.state(self.project, self._state(lock_path, create=False))
        if not s or s["lock_xid"] is None:
            return None
        return _canonical(s["lock_xid"], s["locked_by"], rails_time(s["locked_at"]))
