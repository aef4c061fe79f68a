"""One contract for every LockStore backend (see harness.py and conftest.py).

Each case arranges the storage through the harness's back door, acts through
the port (reaper.ports.LockStore) only, and checks the storage again.

Backends whose locks are not Terraform Info JSON (``raw_info`` False: HCP
Terraform, GitLab) run every case that applies; the ones that need raw Info JSON
(created precision, malformed Info items) or a restorable store skip with the
reason, and ``test_restore_is_refused_by_a_store_that_cannot_restore`` pins what
such a store's ``restore`` does instead.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from devtools.locks import info_json
from reaper.models import DeleteStatus, LockRecord, parse_created
from reaper.ports import LockStore, RestoreConflict, StoreTraits

from .harness import StoreHarness

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
NEW_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def paths(h: StoreHarness) -> dict[str, str]:
    return {
        "plan": h.lock_path("network/terraform.tfstate"),
        "apply": h.lock_path("prod/app/terraform.tfstate"),
        "workspace": h.lock_path("env:/staging/prod/app/terraform.tfstate"),
    }


def needs_raw_info(h: StoreHarness, what: str) -> None:
    if not h.raw_info:
        pytest.skip(f"{h.name}: {what} needs Terraform's Info JSON as written; this store builds the Info "
                    "from its API (an ID, a holder and a time)")


def needs_restore(h: StoreHarness) -> None:
    if not h.restorable:
        pytest.skip(f"{h.name}: the store declares traits.restorable=False (see "
                    "test_restore_is_refused_by_a_store_that_cannot_restore)")


def seed(h: StoreHarness) -> dict[str, str]:
    """Three realistic locks with their digests; returns lock path -> raw Info."""
    p = paths(h)
    infos = {
        p["plan"]: info_json(p["plan"], timedelta(hours=3), NOW, operation="OperationTypePlan", digits=9),
        p["apply"]: info_json(p["apply"], timedelta(minutes=20), NOW, who="runner@fv-az581-229", digits=0),
        p["workspace"]: info_json(p["workspace"], timedelta(days=2), NOW, operation="state-mv", who="@ci-host", digits=3),
    }
    for path, info in infos.items():
        h.put_lock(path, info)
        h.put_digest(path)
    return infos


def scan_one(h: StoreHarness, lock_path: str) -> LockRecord:
    found = [r for r in h.store.scan() if r.lock_path == lock_path]
    assert len(found) == 1, found
    return found[0]


def test_store_satisfies_the_port(harness: StoreHarness) -> None:
    assert isinstance(harness.store, LockStore)
    assert harness.store.name
    harness.store.validate()


def test_empty_store(harness: StoreHarness) -> None:
    assert list(harness.store.scan()) == []
    assert harness.store.stats().get("digests", 0) == 0


def test_scan_yields_parsed_locks_and_never_digests(harness: StoreHarness) -> None:
    infos = seed(harness)
    records = list(harness.store.scan())
    assert sorted(r.lock_path for r in records) == sorted(infos)
    for r in records:
        assert r.store == harness.store.name
        assert not r.lock_path.endswith("-md5")
        assert r.parse_error is None and r.info is not None
        expected = json.loads(harness.canonical(infos[r.lock_path]))  # the Info itself, where the store keeps it
        assert r.info.ID == expected["ID"] == r.lock_id
        assert r.info.Who == expected["Who"] and r.info.Operation == expected["Operation"]
        assert r.info.Path == r.lock_path
        assert r.info.Created.tzinfo is not None
        assert r.info.Created == parse_created(expected["Created"])
        assert r.token, "the token for the conditional delete is set"
        assert r.raw, "the original item is kept for the audit record"


def test_created_precision_is_parsed(harness: StoreHarness) -> None:
    needs_raw_info(harness, "Created with 9, 0 and 3 fractional digits")
    infos = seed(harness)
    by_path = {r.lock_path: r for r in harness.store.scan()}
    for path, raw in infos.items():
        created = json.loads(raw)["Created"]  # 9, 0 and 3 fractional digits
        got = by_path[path].info.Created
        assert got.strftime("%Y-%m-%dT%H:%M:%S") == created[:19]
        frac = created[20:-1] if "." in created else ""
        assert got.microsecond == int((frac or "0").ljust(6, "0")[:6])


def test_stats_count_digests(harness: StoreHarness) -> None:
    if not harness.has_digests:
        pytest.skip(f"{harness.name} keeps no digests")
    seed(harness)
    assert len(list(harness.store.scan())) == 3
    stats = harness.store.stats()
    assert stats["digests"] == 3
    assert stats["items"] == 6


def test_stats_are_per_scan(harness: StoreHarness) -> None:
    seed(harness)
    list(harness.store.scan())
    first = harness.store.stats()
    list(harness.store.scan())
    assert harness.store.stats() == first


def test_delete_exact_lock(harness: StoreHarness) -> None:
    infos = seed(harness)
    path = paths(harness)["apply"]
    rec = scan_one(harness, path)
    result = harness.store.delete(rec)
    assert result.status is DeleteStatus.DELETED
    assert harness.current_info(path) is None
    # the other locks and every digest are untouched
    remaining = {r.lock_path: r.token for r in harness.store.scan()}
    assert set(remaining) == set(infos) - {path}
    if harness.has_digests:
        assert harness.store.stats()["digests"] == 3


def test_replaced_between_scan_and_delete_is_raced(harness: StoreHarness) -> None:
    seed(harness)
    path = paths(harness)["apply"]
    rec = scan_one(harness, path)
    new_info = info_json(path, timedelta(0), NOW, who="deploy@ci-runner-7", id_=NEW_ID, operation="OperationTypeApply")
    harness.put_lock(path, new_info)

    result = harness.store.delete(rec)
    assert result.status is DeleteStatus.RACED
    now_held = json.loads(harness.canonical(new_info))
    assert result.current_who == now_held["Who"] and now_held["Who"] in result.detail, "names the new holder"
    if harness.raced_names_id:
        assert result.current_id == now_held["ID"]
    if harness.raw_info:
        assert now_held["ID"] == NEW_ID and NEW_ID in result.detail
    assert harness.current_info(path) == harness.canonical(new_info), "the new holder's lock is untouched"


def test_released_between_scan_and_delete_is_gone(harness: StoreHarness) -> None:
    seed(harness)
    path = paths(harness)["plan"]
    rec = scan_one(harness, path)
    harness.remove(path)
    result = harness.store.delete(rec)
    assert result.status is DeleteStatus.GONE
    assert re.search(r"released|already unlocked", result.detail), result.detail
    assert harness.current_info(path) is None


def test_second_delete_is_gone(harness: StoreHarness) -> None:
    seed(harness)
    rec = scan_one(harness, paths(harness)["plan"])
    assert harness.store.delete(rec).status is DeleteStatus.DELETED
    assert harness.store.delete(rec).status is DeleteStatus.GONE


def test_same_id_new_created_is_raced(harness: StoreHarness) -> None:
    if not harness.relock_same_id_detected:
        pytest.skip(f"{harness.name}: the platform's unlock is conditional on the lock ID alone, and its API keeps "
                    "no other trace of a lock taken again with the same ID (Terraform draws a new random ID per lock)")
    seed(harness)
    path = paths(harness)["workspace"]
    rec = scan_one(harness, path)
    again = json.loads(harness.current_info(path) or "{}")  # the Info as stored (a token may be an ETag)
    again["Created"] = "2026-11-22T11:59:59.5Z"  # same ID, taken again (or rewritten): not the lock we saw
    new_info = json.dumps(again, separators=(",", ":"))
    harness.put_lock(path, new_info)

    result = harness.store.delete(rec)
    assert result.status is DeleteStatus.RACED
    assert result.current_id == rec.lock_id
    assert harness.current_info(path) == harness.canonical(new_info)


def test_restore_puts_the_lock_back(harness: StoreHarness) -> None:
    needs_restore(harness)
    infos = seed(harness)
    path = paths(harness)["apply"]
    rec = scan_one(harness, path)
    assert harness.store.delete(rec).status is DeleteStatus.DELETED
    message = harness.store.restore(json.loads(json.dumps(rec.raw)))  # as read back from an audit record
    assert path in message
    assert harness.current_info(path) == infos[path]
    again = scan_one(harness, path)
    assert again.token == rec.token and again.lock_id == rec.lock_id


def test_restore_never_overwrites_a_lock(harness: StoreHarness) -> None:
    needs_restore(harness)
    seed(harness)
    path = paths(harness)["apply"]
    rec = scan_one(harness, path)
    assert harness.store.delete(rec).status is DeleteStatus.DELETED
    newer = info_json(path, timedelta(0), NOW, who="deploy@ci-runner-7", id_=NEW_ID)
    harness.put_lock(path, newer)

    with pytest.raises(RestoreConflict) as exc_info:
        harness.store.restore(json.loads(json.dumps(rec.raw)))
    assert path in str(exc_info.value) and "not overwritten" in str(exc_info.value)
    assert harness.current_info(path) == newer


def test_restore_conflicts_with_the_same_lock(harness: StoreHarness) -> None:
    needs_restore(harness)
    infos = seed(harness)
    path = paths(harness)["plan"]
    rec = scan_one(harness, path)
    with pytest.raises(RestoreConflict):
        harness.store.restore(rec.raw)
    assert harness.current_info(path) == infos[path]


BAD_INFOS = {
    "not-json": "{this is not json",
    "json-array": '["ID", "Who"]',
    "json-string": '"just a string"',
    "empty": "",
    "missing-fields": json.dumps({"ID": "11e34ba5-91a8-fe56-0c0d-1f7fc212d1b2", "Operation": "OperationTypeApply"}),
    "wrong-types": json.dumps({"ID": 42, "Who": ["a"], "Created": 1700000000, "Path": "{bucket}/wrong-types"}),
    "bad-created": json.dumps({"ID": "a", "Who": "a@b", "Created": "yesterday", "Path": "{bucket}/bad-created"}),
    "lowercase-keys": json.dumps({"id": "a", "who": "a@b", "created": "2026-01-01T00:00:00Z", "path": "{bucket}/x"}),
    "deep-nesting": "[" * 5000 + "]" * 5000,
}


def test_malformed_items_are_reported_not_raised(harness: StoreHarness) -> None:
    needs_raw_info(harness, "malformed Info items")
    infos = seed(harness)
    bad_paths = {}
    for name, raw in BAD_INFOS.items():
        path = f"{harness.bucket}/bad/{name}.tfstate"
        harness.put_lock(path, raw.replace("{bucket}", harness.bucket))
        bad_paths[path] = name

    records = list(harness.store.scan())  # must not raise
    by_path = {r.lock_path: r for r in records}
    assert set(by_path) == set(infos) | set(bad_paths)
    for path, name in bad_paths.items():
        r = by_path[path]
        assert r.info is None, name
        assert r.parse_error, name
        assert r.lock_id == ""
        with pytest.raises(ValueError, match="not parsed"):
            harness.store.delete(r)  # never deleted, whatever the caller does
        assert harness.current_info(path) is not None, name
    for path in infos:
        assert by_path[path].info is not None


def test_store_declares_its_traits(harness: StoreHarness) -> None:
    traits = harness.store.traits
    assert isinstance(traits, StoreTraits)
    assert traits.restorable is harness.restorable
    if not traits.restorable:
        assert traits.restore_note, "a store that cannot restore says what to do instead"


def test_restore_is_refused_by_a_store_that_cannot_restore(harness: StoreHarness) -> None:
    """``restore`` of a non-restorable store raises ValueError with ``traits.restore_note`` (it never
    returns a message, and it is no RestoreConflict: nothing could ever be written), lock present or not."""
    if harness.restorable:
        pytest.skip(f"{harness.name} can restore (test_restore_puts_the_lock_back)")
    infos = seed(harness)
    path = paths(harness)["apply"]
    rec = scan_one(harness, path)
    audit_copy = json.loads(json.dumps(rec.raw))  # as read back from an audit record

    with pytest.raises(ValueError) as while_locked:
        harness.store.restore(audit_copy)
    assert not isinstance(while_locked.value, RestoreConflict)
    assert str(while_locked.value) == harness.store.traits.restore_note
    assert harness.current_info(path) == harness.canonical(infos[path]), "the lock held now is untouched"

    assert harness.store.delete(rec).status is DeleteStatus.DELETED
    with pytest.raises(ValueError) as after_delete:
        harness.store.restore(audit_copy)
    assert str(after_delete.value) == harness.store.traits.restore_note
    assert harness.current_info(path) is None, "nothing was re-created"
    assert [r.lock_path for r in harness.store.scan() if r.lock_path == path] == []


def test_a_lock_the_store_cannot_describe_is_reported_and_never_deleted(harness: StoreHarness) -> None:
    """Whatever makes a lock undescribable in this store (malformed Info JSON; no readable lock ID or age
    behind an API), the scan reports it as a record with ``parse_error`` and the delete refuses it."""
    infos = seed(harness)
    path = harness.lock_path("broken/terraform.tfstate")
    harness.put_unparseable(path)
    records = list(harness.store.scan())  # must not raise
    by_path = {r.lock_path: r for r in records}
    assert set(by_path) == set(infos) | {path}
    r = by_path[path]
    assert r.store == harness.store.name
    assert r.info is None and r.parse_error and r.lock_id == ""
    with pytest.raises(ValueError, match="not parsed"):
        harness.store.delete(r)
    assert harness.current_info(path) is not None
    assert all(by_path[p].info is not None for p in infos)
