"""DynamoDB lock-table store on in-process moto: key schema, scanning, malformed items."""

from __future__ import annotations

import io
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import create_lock_table, digest_item, info_json, lock_item
from reaper.cli import main
from reaper.ports import StoreError
from reaper.stores.dynamodb import DynamoDBLockStore, make_client

pytestmark = pytest.mark.usefixtures("aws")

TABLE = "terraform-locks"


@pytest.fixture
def ddb() -> Any:
    client = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(client, TABLE)
    return client


def _table(client: Any, name: str, keys: list[tuple[str, str, str]]) -> None:
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": n, "KeyType": k} for n, k, _ in keys],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, _, t in keys],
        BillingMode="PAY_PER_REQUEST",
    )


# ---------------------------------------------------------------- key schema
def test_lock_table_validates(ddb: Any) -> None:
    DynamoDBLockStore(ddb, TABLE).validate()


@pytest.mark.parametrize(
    "keys,needles",
    [
        pytest.param([("id", "HASH", "S")], ["its hash key is id, not LockID"], id="keyed-id"),
        pytest.param([("LockID", "HASH", "S"), ("Sort", "RANGE", "N")], ["it has a sort key Sort"], id="sort-key"),
        pytest.param([("LockID", "HASH", "N")], ["LockID is of type N, not S"], id="numeric-lockid"),
    ],
)
def test_non_lock_tables_are_refused(ddb: Any, keys: list[tuple[str, str, str]], needles: list[str]) -> None:
    _table(ddb, "not-locks", keys)
    ddb.put_item(TableName="not-locks", Item={k[0]: {k[2]: "1"} for k in keys})
    store = DynamoDBLockStore(ddb, "not-locks")
    with pytest.raises(StoreError) as exc_info:
        store.validate()
    msg = str(exc_info.value)
    assert "'not-locks' is not a Terraform lock table" in msg
    assert "expected exactly one hash key LockID of type S and no sort key" in msg
    for needle in needles:
        assert needle in msg


def test_missing_table(ddb: Any) -> None:
    with pytest.raises(StoreError, match="table 'no-such-table' does not exist"):
        DynamoDBLockStore(ddb, "no-such-table").validate()


def test_make_client_uses_adaptive_retries() -> None:
    client = make_client("eu-west-1")
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.retries["mode"] == "adaptive"


# ---------------------------------------------------------------- scanning
def _fill(client: Any, n: int, now: datetime) -> set[str]:
    rng = random.Random(7)
    paths = set()
    for i in range(n):
        path = f"corp-tfstate/team-{i % 7}/stack-{i}/terraform.tfstate"
        client.put_item(TableName=TABLE, Item=lock_item(path, info_json(path, timedelta(minutes=rng.randint(1, 5000)), now)))
        client.put_item(TableName=TABLE, Item=digest_item(path, rng))
        client.put_item(TableName=TABLE, Item=digest_item(f"corp-tfstate/other-{i}/terraform.tfstate", rng))
        paths.add(path)
    return paths


def test_parallel_segments_yield_the_same_locks(ddb: Any, now: datetime) -> None:
    paths = _fill(ddb, 60, now)
    one = DynamoDBLockStore(ddb, TABLE, segments=1)
    four = DynamoDBLockStore(ddb, TABLE, segments=4)
    keys1 = sorted(r.key for r in one.scan())
    keys4 = sorted(r.key for r in four.scan())  # a list: duplicates would show
    assert keys1 == keys4 == sorted(paths)
    s1, s4 = one.stats(), four.stats()
    assert s1["items"] == s4["items"] == 180
    assert s1["digests"] == s4["digests"] == 120
    assert s4["pages"] >= 4


def test_small_pages(ddb: Any, now: datetime) -> None:
    paths = _fill(ddb, 25, now)
    store = DynamoDBLockStore(ddb, TABLE, page_size=7)
    keys = sorted(r.key for r in store.scan())
    assert keys == sorted(paths)
    st = store.stats()
    assert st["items"] == 75 and st["digests"] == 50
    assert st["pages"] >= 75 // 7


def test_scan_streams_pages(ddb: Any, now: datetime) -> None:
    """The scan is a generator over pages: the first lock comes before the later pages are read."""
    for i in range(12):
        path = f"corp-tfstate/stack-{i}/terraform.tfstate"
        ddb.put_item(TableName=TABLE, Item=lock_item(path, info_json(path, timedelta(hours=i), now)))
    calls: list[int] = []

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def get_paginator(self, name: str) -> Any:
            pag = self.inner.get_paginator(name)

            class P:
                def paginate(self, **kw: Any):
                    for page in pag.paginate(**kw):
                        calls.append(1)
                        yield page

            return P()

    store = DynamoDBLockStore(Counting(ddb), TABLE, page_size=2)
    it = store.scan()
    next(it)
    assert len(calls) <= 2
    rest = list(it)
    assert len(rest) == 11 and len(calls) >= 6


def test_scan_failure_mid_table_is_a_store_error(ddb: Any, now: datetime) -> None:
    _fill(ddb, 3, now)
    store = DynamoDBLockStore(ddb, TABLE)
    ddb.delete_table(TableName=TABLE)
    with pytest.raises(StoreError, match="scan of 'terraform-locks' failed: ResourceNotFoundException"):
        list(store.scan())


def test_delete_of_item_without_info_is_gone(ddb: Any, now: datetime) -> None:
    path = "corp-tfstate/prod/terraform.tfstate"
    ddb.put_item(TableName=TABLE, Item=lock_item(path, info_json(path, timedelta(hours=9), now)))
    store = DynamoDBLockStore(ddb, TABLE)
    rec = next(iter(store.scan()))
    ddb.put_item(TableName=TABLE, Item={"LockID": {"S": path}, "Other": {"S": "x"}})
    result = store.delete(rec)
    assert result.status.value == "gone"
    assert ddb.get_item(TableName=TABLE, Key={"LockID": {"S": path}})["Item"]["Other"] == {"S": "x"}


# ---------------------------------------------------------------- malformed items
def _bad_items(now: datetime) -> dict[str, tuple[dict[str, Any], str]]:
    """path -> (item, a piece of the reason the report must give)."""
    good = info_json
    huge = json.loads(good("corp-tfstate/bad/huge", timedelta(hours=5), now))
    huge["Info"] = "x" * 120_000
    return {
        "corp-tfstate/bad/not-json": ({"Info": {"S": "Lock Info: {ID: 1}"}}, "not valid JSON"),
        "corp-tfstate/bad/missing-fields": (
            {"Info": {"S": json.dumps({"ID": "11e34ba5-91a8-fe56-0c0d-1f7fc212d1b2", "Operation": "OperationTypeApply"})}},
            "Field required",
        ),
        "corp-tfstate/bad/wrong-types": (
            {"Info": {"S": json.dumps({"ID": 7, "Who": "a@b", "Created": 1700000000, "Path": "corp-tfstate/bad/wrong-types"})}},
            "Info fields invalid",
        ),
        "corp-tfstate/bad/binary-info": (
            {"Info": {"B": good("corp-tfstate/bad/binary-info", timedelta(hours=5), now).encode()}},
            "DynamoDB type B",
        ),
        "corp-tfstate/bad/number-info": ({"Info": {"N": "42"}}, "DynamoDB type N"),
        "corp-tfstate/bad/huge": ({"Info": {"S": json.dumps(huge)}}, "larger than any Terraform lock"),
        "corp-tfstate/bad/lowercase-attr": (
            {"info": {"S": good("corp-tfstate/bad/lowercase-attr", timedelta(hours=5), now)}},
            "no Info attribute",
        ),
        "corp-tfstate/bad/lowercase-id": (
            {"Info": {"S": good("corp-tfstate/bad/lowercase-id", timedelta(hours=5), now).replace('"ID"', '"id"')}},
            "ID: Field required",
        ),
        "corp-tfstate/bad/digest-with-info-md5": (
            {"Info": {"S": good("corp-tfstate/bad/digest-with-info-md5", timedelta(hours=5), now)}},
            "ends in -md5",
        ),
        "corp-tfstate/bad/neither": ({"Owner": {"S": "someone"}}, "no Info attribute"),
        "corp-tfstate/bad/future": (
            {"Info": {"S": good("corp-tfstate/bad/future", timedelta(hours=-3), now)}},
            "in the future",
        ),
        "corp-tfstate/bad/path-mismatch": (
            {"Info": {"S": good("corp-tfstate/somewhere-else", timedelta(hours=5), now)}},
            "differs from the lock's path",
        ),
    }


def _all_items(client: Any) -> dict[str, dict[str, Any]]:
    items = {}
    for page in client.get_paginator("scan").paginate(TableName=TABLE, ConsistentRead=True):
        for it in page["Items"]:
            items[it["LockID"]["S"]] = it
    return items


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_malformed_items_reported_never_deleted(ddb: Any, tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)  # the CLI reads the real clock
    bad = _bad_items(now)
    for path, (attrs, _) in bad.items():
        ddb.put_item(TableName=TABLE, Item={"LockID": {"S": path}, **attrs})
    stale = "corp-tfstate/prod/app/terraform.tfstate"
    ddb.put_item(TableName=TABLE, Item=lock_item(stale, info_json(stale, timedelta(hours=5), now)))
    ddb.put_item(TableName=TABLE, Item=digest_item(stale))
    before = _all_items(ddb)

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "mode: enforce\nmin_age: 1m\nmax_deletes_per_run: 100\n"
        f"stores: [{{type: dynamodb, table: {TABLE}}}]\n"
        "rules: [{match: '*', max_age: 1m, hard_max_age: 1m}]\n"
        f"audit: {{local_dir: '{tmp_path / 'audit'}'}}\n"
    )

    code, out, err = _run(["scan", "--config", str(policy), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    by_path = {e["lock_path"]: e for e in doc["locks"]}
    assert set(by_path) == set(bad) | {stale}, "digests are not locks; every bad item is listed"
    for path, (_, reason) in bad.items():
        e = by_path[path]
        assert e["decision"] == "keep" and e["outcome"] == "kept", path
        assert any(reason in r for r in e["reasons"]), (path, e["reasons"])
    assert by_path[stale]["outcome"] == "would_reap"
    assert _all_items(ddb) == before, "scan never deletes"

    code, out, err = _run(["reap", "--config", str(policy), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    outcomes = {e["lock_path"]: e["outcome"] for e in doc["locks"]}
    assert outcomes.pop(stale) == "reaped", "the enforce path is live: the one real stale lock goes"
    assert set(outcomes.values()) == {"kept"}
    assert doc["summary"]["unparseable"] == 10
    after = _all_items(ddb)
    assert set(before) - set(after) == {stale}
    assert all(after[k] == before[k] for k in after), "no malformed item was touched"
    assert f"{stale}-md5" in after


def test_malformed_items_in_parallel_scan(ddb: Any, now: datetime) -> None:
    for path, (attrs, _) in _bad_items(now).items():
        ddb.put_item(TableName=TABLE, Item={"LockID": {"S": path}, **attrs})
    store = DynamoDBLockStore(ddb, TABLE, segments=3)
    recs = list(store.scan())
    assert len(recs) == 12
    assert sum(1 for r in recs if r.info is None) == 10
