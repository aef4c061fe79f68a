"""Race trials: randomized interleavings of Terraform and the reaper (issue 6).

Every trial puts a few stale locks (holder dead, so each would be reaped) and
some state digests in a store, then runs one enforce cycle. At a random moment
between the scan and the delete of a random lock (during a liveness check,
during an audit write, or just before a delete), each lock is
- released (Terraform's unlock),
- re-acquired by a new holder with a new ID,
- re-acquired with the same ID but a new Created, or
- left alone.

Property: nothing but the exact lock that was seen is ever deleted, and every
other case ends as "raced" (someone holds it now) or "gone" (nobody does).
The expected outcome is computed here from what the lock held at the moment
its delete was issued, not by asking the store or the decision.

1000+ trials run on the in-memory store; a few hundred more on the real
DynamoDB store (and S3 lock files when that store exists) in in-process moto.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from devtools.locks import info_json, lock_id
from reaper.policy import Policy
from reaper.engine import Reaper
from reaper.models import DeleteResult, Liveness, LivenessFact, LockRecord, Outcome

from contract.harness import DynamoDBHarness, MemoryHarness, StoreHarness

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
BUCKET = "corp-tfstate"
ACTIONS = ("release", "new_holder", "same_id_new_created", "leave")
MOMENTS = ("liveness", "audit", "delete")
POLICY = Policy.model_validate(
    {
        "mode": "enforce",
        "max_deletes_per_run": 1000,
        "min_age": "15m",
        "rules": [{"name": "all", "match": "*", "max_age": "1h", "hard_max_age": "2d"}],
        "audit": {"local_dir": "unused"},
    }
)


class Trial:
    """One randomized interleaving against one harness."""

    def __init__(self, harness: StoreHarness, rng: random.Random, prefix: str):
        self.h = harness
        self.rng = rng
        n = rng.randint(1, 6)
        self.paths = [f"{BUCKET}/{prefix}/stack-{i}/terraform.tfstate" for i in range(n)]
        self.original: dict[str, str] = {}
        for p in self.paths:
            info = info_json(p, timedelta(hours=rng.uniform(1.5, 40)), NOW, id_=lock_id(rng), digits=rng.choice([0, 3, 6, 9]))
            self.original[p] = info
            harness.put_lock(p, info)
            if rng.random() < 0.7:
                harness.put_digest(p)
        # which mutation, and at which moment of which lock it happens
        self.plan: dict[str, tuple[str, str, str]] = {
            p: (rng.choice(ACTIONS), rng.choice(MOMENTS), rng.choice(self.paths)) for p in self.paths
        }
        self.applied: dict[str, str | None] = {}  # path -> Info written by the mutation (None: released)
        self.seen: dict[str, tuple[str, str]] = {}  # path -> (ID, Created) of the lock the scan saw
        self.seen_token: dict[str, str] = {}
        self.at_delete: dict[str, str | None] = {}  # path -> Info when its delete was issued
        self.audited: dict[str, str] = {}  # path -> lock_id recorded before the delete
        self.deletes_issued: list[str] = []
        self.mutated_before_delete: dict[str, bool] = {}
        # the liveness checks run on the engine's worker threads: a mutation is atomic with respect to a
        # delete (and its bookkeeping), so "what the lock held when its delete was issued" is well defined
        self.atomic = threading.RLock()

    # -- the world changes ------------------------------------------------
    def fire(self, moment: str, lock: LockRecord) -> None:
        with self.atomic:
            for path, (action, when, at) in self.plan.items():
                if path in self.applied or when != moment or at != lock.lock_path:
                    continue
                self.applied[path] = self._mutate(path, action)

    def _mutate(self, path: str, action: str) -> str | None:
        current = self.h.current_info(path)
        if action == "leave":
            return current
        if action == "release":
            if current is not None:
                self.h.remove(path)
            return None
        if action == "new_holder":
            info = info_json(path, timedelta(seconds=self.rng.randint(0, 7200)), NOW, id_=lock_id(self.rng),
                             who="someone-else@laptop")
        else:  # same ID, new Created: Terraform never does this, a careless tool might
            old = json.loads(self.original[path])
            while True:
                created = (NOW - timedelta(minutes=self.rng.randint(61, 600), microseconds=self.rng.randint(1, 999_999))
                           ).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                if ident(json.dumps({**old, "Created": created})) != ident(self.original[path]):
                    break
            info = json.dumps({**old, "Created": created}, separators=(",", ":"))
        self.h.put_lock(path, info)
        return info

    # -- ports wired to the world ------------------------------------------
    def store(self) -> Any:
        trial = self
        inner = self.h.store

        class Hooked:
            name = inner.name
            traits = inner.traits

            def validate(self) -> None:
                inner.validate()

            def scan(self) -> Iterator[LockRecord]:
                for rec in inner.scan():
                    if rec.lock_path in trial.original and rec.info is not None:
                        # what this record says the store read (a page may have been read before a mutation)
                        trial.seen[rec.lock_path] = (rec.info.ID, rec.info.Created.isoformat())
                        trial.seen_token[rec.lock_path] = rec.token
                    yield rec

            def delete(self, lock: LockRecord) -> DeleteResult:
                with trial.atomic:
                    trial.fire("delete", lock)
                    trial.at_delete[lock.lock_path] = trial.h.current_info(lock.lock_path)
                    trial.mutated_before_delete[lock.lock_path] = lock.lock_path in trial.applied
                    trial.deletes_issued.append(lock.lock_path)
                    return inner.delete(lock)

            def restore(self, raw: dict[str, Any]) -> str:
                return inner.restore(raw)

            def stats(self) -> dict[str, int]:
                return inner.stats()

        return Hooked()

    def liveness(self) -> Any:
        trial = self

        class Dead:
            def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
                trial.fire("liveness", lock)
                return LivenessFact(state=Liveness.DEAD, reason="run finished (trial)", checkers=("trial",))

            def stats(self) -> dict[str, Any]:
                return {}

        return Dead()

    def audit(self) -> Any:
        trial = self

        class Audit:
            def write(self, record: dict[str, Any]) -> str:
                trial.fire("audit", _record_lock(record))
                trial.audited[record["lock_path"]] = record["lock_id"]
                return f"trial://{record['lock_path']}"

            def read(self, ref: str) -> dict[str, Any]:
                raise NotImplementedError

        return Audit()

    # -- run and judge ----------------------------------------------------
    def run_and_check(self) -> dict[str, int]:
        report = Reaper(POLICY, [self.store()], lambda: NOW, liveness=self.liveness(), audit=self.audit()).run()
        assert report.stores[0].status == "ok", report.stores[0].error
        entries = {e.lock_path: e for e in report.locks if e.lock_path in self.original}
        tally: dict[str, int] = {}
        for path in self.paths:
            final = self.h.current_info(path)
            e = entries.get(path)
            seen = self.seen.get(path)
            if e is None:
                # released before the scan reached it: never seen, never touched
                assert seen is None and path not in self.deletes_issued, path
                assert final == self._expected_final(path, deleted=False)
                tally["unseen"] = tally.get("unseen", 0) + 1
                continue
            assert e.outcome is not Outcome.ERROR, (path, e.reasons)
            if path not in self.deletes_issued:
                # seen but not a candidate any more (a fresh lock when scanned): kept, untouched
                assert e.outcome is Outcome.KEPT, (path, e.outcome, e.reasons)
                assert final == self._expected_final(path, deleted=False), path
                tally["kept"] = tally.get("kept", 0) + 1
                continue
            at_delete = self.at_delete[path]
            assert self.audited.get(path) == seen[0], "the audit record names the lock that was seen"
            if at_delete is not None and ident(at_delete) == seen:
                expected = Outcome.REAPED
                if not self.h.store.name.startswith("s3:"):
                    assert self.seen_token[path] == at_delete, "the delete's condition is the exact Info read"
            elif at_delete is None:
                expected = Outcome.GONE
            else:
                expected = Outcome.RACED
            assert e.outcome is expected, (path, self.plan[path], e.outcome, e.reasons)
            if expected is Outcome.RACED:
                assert e.current_holder and e.current_holder["id"] == json.loads(at_delete)["ID"], e.current_holder
            # the store holds exactly what it should: only the seen lock could have been deleted
            assert final == self._expected_final(path, deleted=expected is Outcome.REAPED), (path, self.plan[path], e.outcome)
            tally[expected.value] = tally.get(expected.value, 0) + 1
        return tally

    def _expected_final(self, path: str, deleted: bool) -> str | None:
        """What the lock must hold after the run, computed from the plan alone."""
        action, _, _ = self.plan[path]
        if path not in self.applied or action == "leave":  # nobody else wrote it
            return None if deleted else self.original[path]
        if deleted and self.mutated_before_delete[path]:
            return None  # deleted what the mutation had written (the scan saw that one)
        # not deleted, or deleted first and released / re-acquired afterwards: the last write stands
        return self.applied[path]


def ident(info: str) -> tuple[str, str]:
    """(ID, Created to the microsecond, UTC): the identity of a lock, computed without the reaper's parser."""
    doc = json.loads(info)
    m = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?Z$", doc["Created"])
    assert m, doc["Created"]
    frac = (m.group(2) or "").ljust(6, "0")[:6]
    created = datetime.fromisoformat(m.group(1) + "+00:00").replace(microsecond=int(frac))
    return doc["ID"], created.isoformat()


def _record_lock(record: dict[str, Any]) -> LockRecord:
    return LockRecord(store=record["store"], key=record["key"], lock_path=record["lock_path"], token=record["token"],
                      raw=record["item"])


def _run_trials(make_harness: Callable[[int], StoreHarness], trials: int, seed: int,
                cleanup: Callable[[StoreHarness, int], None] | None = None) -> dict[str, int]:
    rng = random.Random(seed)
    total: dict[str, int] = {}
    for t in range(trials):
        h = make_harness(t)
        trial = Trial(h, random.Random(rng.getrandbits(64)), prefix=f"t{t}")
        try:
            got = trial.run_and_check()
        except AssertionError as exc:
            raise AssertionError(f"trial {t} (seed {seed}) plan {trial.plan}: {exc}") from exc
        if cleanup is not None:
            cleanup(h, t)
        for k, v in got.items():
            total[k] = total.get(k, 0) + v
    return total


def _assert_all_cases_happened(total: dict[str, int], cases: tuple[str, ...] = ("reaped", "raced", "gone")) -> None:
    for outcome in cases:
        assert total.get(outcome, 0) > 0, f"no trial ended {outcome}: the interleavings are not varied enough {total}"


def test_race_trials_in_memory() -> None:
    total = _run_trials(lambda t: MemoryHarness(), trials=1200, seed=20261122)
    assert sum(total.values()) >= 1200
    # the in-memory scan reads each item when it reaches it, so mutations can also land before the scan
    _assert_all_cases_happened(total, ("reaped", "raced", "gone", "kept", "unseen"))


def test_race_trials_dynamodb_moto(aws) -> None:
    import boto3

    client = boto3.client("dynamodb", region_name="us-east-1")

    def drop(h: StoreHarness, t: int) -> None:
        client.delete_table(TableName=f"race-{t}")

    # the scan reads a page at a time, so every mutation here lands between the read and the delete
    total = _run_trials(lambda t: DynamoDBHarness(client, table=f"race-{t}"), trials=250, seed=7, cleanup=drop)
    _assert_all_cases_happened(total)


def test_race_trials_s3_moto(aws) -> None:
    pytest.importorskip("reaper.stores.s3")
    import boto3

    from contract.harness import S3Harness

    client = boto3.client("s3", region_name="us-east-1")
    shared: dict[str, S3Harness] = {}

    def harness(t: int) -> StoreHarness:
        if "h" not in shared:
            shared["h"] = S3Harness(client)
        return shared["h"]

    def empty(h: StoreHarness, t: int) -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=h.bucket, Prefix=f"t{t}/"):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=h.bucket, Key=obj["Key"])

    total = _run_trials(harness, trials=100, seed=11, cleanup=empty)
    _assert_all_cases_happened(total)


def test_a_careless_store_is_caught() -> None:
    """The trial oracle must be able to fail: a store that deletes without its condition is caught."""
    h = MemoryHarness()
    real_delete = h.store.delete

    def unconditional(lock: LockRecord) -> DeleteResult:
        item = h.store.items.get(lock.key)
        if item is not None:  # deletes whatever is there now
            h.store.items[lock.key] = {**item, "Info": {"S": lock.token}}
        return real_delete(lock)

    h.store.delete = unconditional  # type: ignore[method-assign]
    with pytest.raises(AssertionError):
        _run_trials(lambda t: h, trials=200, seed=3)
