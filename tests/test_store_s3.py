"""S3 native lock files beyond the shared contract (tests/contract): what only S3 has.

Encryption (SSE-C unreadable, SSE-KMS read and restored), versioned buckets and
their delete markers, state objects never read or touched, prefixes, pagination,
oversized and vanished lock files, the ETag race through the whole engine, and the
Path check. In-process moto; moto 5.2.5 enforces DeleteObject IfMatch.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import boto3
import pytest

from devtools.locks import info_json
from reaper.engine import Reaper
from reaper.models import DeleteStatus, Liveness, LivenessFact, LockRecord, Outcome
from reaper.ports import StoreError
from reaper.stores.s3 import S3LockFileStore
from testkit import ListAudit
from testkit import enforce_policy as policy

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
BUCKET = "corp-tfstate"
STATE = "prod/app/terraform.tfstate"
LOCK = STATE + ".tflock"
PATH = f"{BUCKET}/{STATE}"


@pytest.fixture
def s3(aws: None) -> Any:
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


def put_lock(s3: Any, key: str = LOCK, age: timedelta = timedelta(hours=5), path: str | None = None, **kw: Any) -> str:
    state_key = key[: -len(".tflock")]
    body = info_json(path or f"{BUCKET}/{state_key}", age, NOW, **kw)
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
    return body


class Dead:
    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        return LivenessFact(state=Liveness.DEAD, reason="the CI run finished", checkers=("fake",))

    def stats(self) -> dict[str, Any]:
        return {}


def record_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """Every ``operation`` call's parameters, as botocore is asked to send them."""
    seen: list[dict[str, Any]] = []
    client.meta.events.register(f"provide-client-params.s3.{operation}", lambda params, **_: seen.append(dict(params)))
    return seen


def s3_error(client: Any, operation: str, code: str, message: str, status: int, key: str | None) -> None:
    """Make S3 answer ``operation`` on ``key`` with an error, exactly as the service sends it."""

    class _Http:
        status_code = status
        headers: dict[str, str] = {}

    def handler(params: dict[str, Any], **_: Any) -> Any:  # params: the serialized request
        if key is None or str(params.get("url_path", "")).endswith("/" + quote(key, safe="/~")):
            return _Http(), {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return None

    client.meta.events.register(f"before-call.s3.{operation}", handler)


# ------------------------------------------------------------------ reading
def test_scan_reads_lock_files_only_and_never_state_objects(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key=STATE, Body=b'{"version": 4}')
    s3.put_object(Bucket=BUCKET, Key="prod/app/terraform.tfstate.backup", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key="notes/readme.tflock.txt", Body=b"not a lock")
    body = put_lock(s3)
    gets = record_calls(s3, "GetObject")
    store = S3LockFileStore(s3, BUCKET)
    records = list(store.scan())
    assert [r.key for r in records] == [LOCK]
    rec = records[0]
    assert rec.store == f"s3:{BUCKET}" and rec.lock_path == PATH and rec.info is not None
    assert rec.info.ID == json.loads(body)["ID"]
    assert rec.token == s3.head_object(Bucket=BUCKET, Key=LOCK)["ETag"]
    assert rec.raw["body"] == body and rec.raw["bucket"] == BUCKET and rec.raw["key"] == LOCK
    assert [g["Key"] for g in gets] == [LOCK], "only the lock file is read"
    stats = store.stats()
    assert stats["items"] == 1 and stats["objects"] == 4 and stats["digests"] == 0


def test_prefixes_limit_the_listing_and_overlaps_are_read_once(s3: Any) -> None:
    put_lock(s3, "env:/staging/app/terraform.tfstate.tflock")
    put_lock(s3, "env:/prod/app/terraform.tfstate.tflock")
    put_lock(s3, "other/terraform.tfstate.tflock")
    store = S3LockFileStore(s3, BUCKET, prefixes=["env:/", "env:/staging/", "env:/"])
    assert store.prefixes == ["env:/"]
    keys = sorted(r.key for r in store.scan())
    assert keys == ["env:/prod/app/terraform.tfstate.tflock", "env:/staging/app/terraform.tfstate.tflock"]
    assert {r.lock_path for r in store.scan()} == {f"{BUCKET}/env:/prod/app/terraform.tfstate",
                                                   f"{BUCKET}/env:/staging/app/terraform.tfstate"}


def test_listing_is_paginated_and_streamed(s3: Any) -> None:
    for i in range(7):
        put_lock(s3, f"team{i}/terraform.tfstate.tflock")
        s3.put_object(Bucket=BUCKET, Key=f"team{i}/terraform.tfstate", Body=b"{}")
    lists = record_calls(s3, "ListObjectsV2")
    store = S3LockFileStore(s3, BUCKET, page_size=3)
    it = store.scan()
    first = next(it)  # the first lock comes back before the listing is finished
    assert first.key == "team0/terraform.tfstate.tflock" and len(lists) == 1
    rest = list(it)
    assert len(rest) == 6 and len(lists) == 5  # 14 objects, 3 per page
    assert store.stats()["pages"] == 5


def test_sse_c_lock_file_is_unknown_and_never_deleted(s3: Any, tmp_path: Any) -> None:
    """moto does not enforce SSE-C on reads, so S3's real answer (400 InvalidRequest) is injected."""
    put_lock(s3, "ssec/terraform.tfstate.tflock", age=timedelta(days=30))
    s3_error(s3, "GetObject", "InvalidRequest",
             "The object was stored using a form of Server Side Encryption. The correct parameters must be "
             "provided to retrieve the object.", 400, "ssec/terraform.tfstate.tflock")
    store = S3LockFileStore(s3, BUCKET)
    rec = next(iter(store.scan()))
    assert rec.info is None and rec.token == ""
    assert "SSE-C" in (rec.parse_error or "") and "never deleted" in (rec.parse_error or "")
    report = Reaper(policy(), [store], clock=lambda: NOW, liveness=Dead(), audit=ListAudit()).run()
    entry = report.locks[0]
    assert entry.outcome is Outcome.KEPT and "unparseable" in entry.flags
    with pytest.raises(ValueError, match="not parsed"):
        store.delete(rec)
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1


def test_sse_kms_lock_file_is_read_and_restored_with_its_key(s3: Any) -> None:
    kms = boto3.client("kms", region_name="us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["Arn"]
    body = info_json(PATH, timedelta(hours=5), NOW)
    s3.put_object(Bucket=BUCKET, Key=LOCK, Body=body.encode(), ServerSideEncryption="aws:kms", SSEKMSKeyId=key_id)
    store = S3LockFileStore(s3, BUCKET)
    rec = next(iter(store.scan()))
    assert rec.info is not None and rec.raw["sse"] == "aws:kms" and rec.raw["kms_key_id"] == key_id
    assert store.delete(rec).status is DeleteStatus.DELETED
    store.restore(json.loads(json.dumps(rec.raw)))
    head = s3.head_object(Bucket=BUCKET, Key=LOCK)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_id
    assert s3.get_object(Bucket=BUCKET, Key=LOCK)["Body"].read().decode() == body


def test_kms_access_denied_names_kms_decrypt(s3: Any) -> None:
    put_lock(s3)
    s3_error(s3, "GetObject", "AccessDenied", "User is not authorized to perform: kms:Decrypt", 403, LOCK)
    rec = next(iter(S3LockFileStore(s3, BUCKET).scan()))
    assert rec.info is None and "kms:Decrypt" in (rec.parse_error or "")


def test_oversized_lock_file_is_not_read(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key=LOCK, Body=b"{" + b" " * 70000 + b"}")
    gets = record_calls(s3, "GetObject")
    rec = next(iter(S3LockFileStore(s3, BUCKET).scan()))
    assert rec.info is None and "larger than any Terraform lock" in (rec.parse_error or "")
    assert gets == []


def test_lock_released_between_list_and_read_is_skipped(s3: Any) -> None:
    put_lock(s3)
    put_lock(s3, "other/terraform.tfstate.tflock")

    def release_first(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == LOCK and params.get("Bucket") == BUCKET:
            boto3.client("s3", region_name="us-east-1").delete_object(Bucket=BUCKET, Key=LOCK)  # Terraform unlocked

    s3.meta.events.register("provide-client-params.s3.GetObject", release_first)
    store = S3LockFileStore(s3, BUCKET)
    assert [r.key for r in store.scan()] == ["other/terraform.tfstate.tflock"]
    assert store.stats()["vanished"] == 1


def test_validate_names_missing_bucket_and_permissions(s3: Any) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        S3LockFileStore(s3, "no-such-bucket").validate()
    s3_error(s3, "HeadBucket", "403", "Forbidden", 403, None)
    with pytest.raises(StoreError, match="s3:ListBucket"):
        S3LockFileStore(s3, BUCKET).validate()


# ------------------------------------------------------------------ deleting
def test_versioned_bucket_keeps_a_delete_marker_and_the_old_version(s3: Any) -> None:
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    body = put_lock(s3)
    store = S3LockFileStore(s3, BUCKET)
    report = Reaper(policy(), [store], clock=lambda: NOW, liveness=Dead(), audit=ListAudit()).run()
    entry = report.locks[0]
    assert entry.outcome is Outcome.REAPED, entry.reasons
    assert any("delete marker" in r for r in entry.reasons)
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=LOCK)
    assert [m["IsLatest"] for m in versions["DeleteMarkers"]] == [True]
    old = versions["Versions"][0]
    assert s3.get_object(Bucket=BUCKET, Key=LOCK, VersionId=old["VersionId"])["Body"].read().decode() == body
    assert list(store.scan()) == []


def test_delete_is_conditional_on_the_etag_read(s3: Any) -> None:
    put_lock(s3)
    deletes = record_calls(s3, "DeleteObject")
    store = S3LockFileStore(s3, BUCKET)
    rec = next(iter(store.scan()))
    assert store.delete(rec).status is DeleteStatus.DELETED
    assert deletes == [{"Bucket": BUCKET, "Key": LOCK, "IfMatch": rec.token}]


def test_etag_race_through_the_engine_names_the_new_holder(s3: Any) -> None:
    put_lock(s3, age=timedelta(hours=6))
    store = S3LockFileStore(s3, BUCKET)
    new_body = info_json(PATH, timedelta(0), NOW, who="deploy@ci-runner-7", id_="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
    real_delete = store.delete

    def replaced_then_delete(lock: LockRecord) -> Any:
        s3.put_object(Bucket=BUCKET, Key=LOCK, Body=new_body.encode())  # a new run took the lock meanwhile
        return real_delete(lock)

    store.delete = replaced_then_delete  # type: ignore[method-assign]
    audit = ListAudit()
    report = Reaper(policy(), [store], clock=lambda: NOW, liveness=Dead(), audit=audit).run()
    entry = report.locks[0]
    assert entry.outcome is Outcome.RACED
    assert entry.current_holder == {"id": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "who": "deploy@ci-runner-7"}
    assert "deploy@ci-runner-7" in entry.reasons[-1]
    assert s3.get_object(Bucket=BUCKET, Key=LOCK)["Body"].read().decode() == new_body
    assert audit.records[0]["restorable"] is True and audit.records[0]["item"]["key"] == LOCK


def test_path_mismatch_is_kept_as_suspicious(s3: Any) -> None:
    put_lock(s3, age=timedelta(days=10), path=f"{BUCKET}/somewhere/else.tfstate")
    store = S3LockFileStore(s3, BUCKET)
    report = Reaper(policy(), [store], clock=lambda: NOW, liveness=Dead(), audit=ListAudit()).run()
    entry = report.locks[0]
    assert entry.outcome is Outcome.KEPT and "path_mismatch" in entry.flags
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1


def test_scan_json_names_the_store_and_restore_round_trips(s3: Any, tmp_path: Any) -> None:
    from reaper.audit import LocalDirAuditSink

    body = put_lock(s3, age=timedelta(hours=30))
    store = S3LockFileStore(s3, BUCKET)
    audit = LocalDirAuditSink(tmp_path)
    report = Reaper(policy(), [store], clock=lambda: NOW, liveness=Dead(), audit=audit).run()
    doc = json.loads(report.to_json())
    assert doc["locks"][0]["store"] == f"s3:{BUCKET}" and doc["locks"][0]["outcome"] == "reaped"
    assert doc["locks"][0]["restorable"] is True
    record = audit.read(doc["locks"][0]["audit_ref"])
    assert record["restorable"] is True and record["store"] == f"s3:{BUCKET}"
    assert "restore_note" not in record
    store.restore(record["item"])
    assert s3.get_object(Bucket=BUCKET, Key=LOCK)["Body"].read().decode() == body
