"""Terraform/OpenTofu S3 native lock files (``use_lockfile = true``, Terraform >= 1.10).

Terraform writes ``<state key>.tflock`` next to the state object with
``PutObject If-None-Match: *``; the body is the same LockInfo JSON as in a
DynamoDB lock table and its ``Path`` is ``"<bucket>/<state key>"``.

- ``scan`` lists the configured prefixes (paginated, streamed), keeps only keys
  ending in ``.tflock`` and reads each with GetObject, keeping its ETag. S3
  cannot filter a listing by suffix, so state objects appear in the listing;
  they are skipped there and never read, written or deleted.
- ``delete`` is ``DeleteObject IfMatch=<ETag>``: 412 (or 409) means raced (the
  lock file is re-read to name the new holder), 404 means gone. In a versioned
  bucket the delete adds a delete marker, exactly as Terraform's own unlock does.
  ``IfMatch`` needs botocore >= 1.35.67: the asset bundles its own (pinned) SDK,
  and ``validate`` checks anyway. If the loaded botocore's ``DeleteObject`` has no
  ``IfMatch``, the store sets ``traits.delete_refused`` (the engine then attempts no
  delete and writes no audit record), refuses ``delete`` and says why once.
- ``restore`` is ``PutObject If-None-Match: *``: it never overwrites a lock.
- SSE-C lock files cannot be read without the customer key: they are reported
  as unknown and never deleted. SSE-KMS lock files need ``kms:Decrypt``.

The boto3 S3 client is passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ..aws import error_code, error_message, http_status
from ..models import DeleteResult, DeleteStatus, LockInfo, LockRecord
from ..ports import RestoreConflict, StoreError, StoreTraits
from .dynamo_items import MAX_INFO_BYTES

LOCK_SUFFIX = ".tflock"
log = logging.getLogger("reaper.stores.s3")
_said: set[str] = set()


def conditional_delete_missing(client: Any) -> str:
    """Why ``client`` cannot send ``DeleteObject IfMatch``, or "" if it can (or is not a botocore client)."""
    try:
        shape = client.meta.service_model.operation_model("DeleteObject").input_shape
    except AttributeError:
        return ""  # not a botocore client (a test double): nothing to check
    if shape is not None and "IfMatch" in shape.members:
        return ""
    try:
        import botocore

        version = botocore.__version__
    except ImportError:  # pragma: no cover - a botocore client without botocore
        version = "?"
    return (f"the loaded botocore {version} has no IfMatch on S3 DeleteObject (needs >= 1.35.67): "
            "lock files are not deleted; bundle the pinned SDK (requirements.lock)")


def _error(exc: Exception) -> tuple[str, int]:
    return error_code(exc, default=""), http_status(exc) or 0


def _describe(exc: Exception) -> str:
    code, status = _error(exc)
    if code or status:
        msg = error_message(exc, default="")
        return f"{code or 'HTTP ' + str(status)}{': ' + msg if msg else ''}"
    return f"{type(exc).__name__}: {exc}"


def _normalise_prefixes(prefixes: list[str] | tuple[str, ...] | None) -> list[str]:
    """Drop duplicates and prefixes covered by a shorter one (so no key is read twice)."""
    out: list[str] = []
    for p in sorted(set(prefixes or [""]), key=len):
        if not any(p.startswith(q) for q in out):
            out.append(p)
    return out


def state_key(lock_key: str) -> str:
    return lock_key[: -len(LOCK_SUFFIX)] if lock_key.endswith(LOCK_SUFFIX) else lock_key


class S3LockFileStore:
    """``s3:<bucket>``: the ``.tflock`` objects under the configured prefixes."""

    # The engine reads this store's locks before the other stores' so that a lock
    # held in two stores (double locking with DynamoDB) is decided once and its
    # lock file deleted first (see reaper/pairing.py).
    traits = StoreTraits(pair_first=True)

    def __init__(self, client: Any, bucket: str, prefixes: list[str] | None = None, page_size: int | None = None):
        self.client = client
        self.bucket = bucket
        self.prefixes = _normalise_prefixes(prefixes)
        self.page_size = page_size
        self.name = f"s3:{bucket}"
        self._stats = self._zero()

    @staticmethod
    def _zero() -> dict[str, int]:
        # items: lock files found; objects: every key listed; vanished: released between list and read
        return {"items": 0, "digests": 0, "objects": 0, "pages": 0, "vanished": 0, "unreadable": 0}

    # -- port -------------------------------------------------------------
    def validate(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            code, status = _error(exc)
            if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(f"bucket {self.bucket!r} does not exist (check the name and region)") from None
            if status == 403 or code in ("403", "AccessDenied", "Forbidden"):
                raise StoreError(
                    f"access denied to bucket {self.bucket!r}: the reaper needs s3:ListBucket on it "
                    "and s3:GetObject/s3:DeleteObject on its *.tflock keys"
                ) from None
            raise StoreError(f"cannot reach bucket {self.bucket!r}: {_describe(exc)}") from None
        missing = conditional_delete_missing(self.client)
        self.traits = replace(type(self).traits, delete_refused=missing)
        if missing and missing not in _said:
            _said.add(missing)
            log.warning("%s: %s", self.name, missing)

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def scan(self) -> Iterator[LockRecord]:
        self._stats = self._zero()
        for prefix in self.prefixes:
            for obj in self._list(prefix):
                key = obj.get("Key", "")
                if not key.endswith(LOCK_SUFFIX):
                    continue  # a state object or anything else: never read
                self._stats["items"] += 1
                rec = self._read(key, obj)
                if rec is None:
                    self._stats["vanished"] += 1
                    continue
                yield rec

    def delete(self, lock: LockRecord) -> DeleteResult:
        if lock.info is None or not lock.token:
            raise ValueError("refusing to delete a lock that was not parsed")
        if not lock.key.endswith(LOCK_SUFFIX):
            raise ValueError(f"refusing to delete {lock.key!r}: not a {LOCK_SUFFIX} object")
        if self.traits.delete_refused:
            raise ValueError(f"refusing to delete {lock.key!r}: {self.traits.delete_refused}")
        try:
            resp = self.client.delete_object(Bucket=self.bucket, Key=lock.key, IfMatch=lock.token)
        except Exception as exc:
            code, status = _error(exc)
            if status == 404 or code == "NoSuchKey":
                return DeleteResult(status=DeleteStatus.GONE, detail="the lock file was already released")
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return self._raced(lock, code or str(status))
            raise
        detail = f"deleted (IfMatch ETag {lock.token})"
        if resp.get("DeleteMarker"):
            detail += "; versioned bucket: a delete marker was added, earlier versions are kept"
        return DeleteResult(status=DeleteStatus.DELETED, detail=detail)

    def restore(self, raw: dict[str, Any]) -> str:
        key, body = raw.get("key"), raw.get("body")
        if not isinstance(key, str) or not isinstance(body, str):
            raise ValueError("the audit record's item has no key/body: nothing to restore")
        if raw.get("bucket") not in (None, self.bucket):
            raise ValueError(f"the audit record is for bucket {raw.get('bucket')!r}, not {self.bucket!r}")
        if not key.endswith(LOCK_SUFFIX):
            raise ValueError(f"refusing to write {key!r}: not a {LOCK_SUFFIX} object")
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body.encode("utf-8"),
            "ContentType": "application/json",
            "IfNoneMatch": "*",
        }
        if raw.get("sse") == "aws:kms":
            kwargs["ServerSideEncryption"] = "aws:kms"
            if raw.get("kms_key_id"):
                kwargs["SSEKMSKeyId"] = raw["kms_key_id"]
        try:
            self.client.put_object(**kwargs)
        except Exception as exc:
            code, status = _error(exc)
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                cid, cwho = self._holder(key)
                raise RestoreConflict(f"s3://{self.bucket}/{key} is locked again (lock {cid or '?'} by {cwho or '?'}): "
                                      "not overwritten") from None
            raise
        return f"restored s3://{self.bucket}/{key}"

    # -- internals ----------------------------------------------------------
    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if self.page_size:
            kwargs["PaginationConfig"] = {"PageSize": self.page_size}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                self._stats["pages"] += 1
                contents = page.get("Contents", [])
                self._stats["objects"] += len(contents)
                yield from contents
        except Exception as exc:
            raise StoreError(f"listing s3://{self.bucket}/{prefix} failed: {_describe(exc)}") from None

    def _record(self, key: str, token: str, raw: dict[str, Any], info: LockInfo | None = None,
                error: str | None = None) -> LockRecord:
        return LockRecord(store=self.name, key=key, lock_path=f"{self.bucket}/{state_key(key)}", token=token,
                          raw=raw, info=info, parse_error=error)

    def _read(self, key: str, listed: dict[str, Any]) -> LockRecord | None:
        raw: dict[str, Any] = {"bucket": self.bucket, "key": key}
        size = int(listed.get("Size", 0) or 0)
        if size > MAX_INFO_BYTES:
            self._stats["unreadable"] += 1
            return self._record(key, "", raw, error=f"lock file is {size} bytes, larger than any Terraform lock "
                                                    f"({MAX_INFO_BYTES} max): not read")
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            data = resp["Body"].read(MAX_INFO_BYTES + 1)
        except Exception as exc:
            code, status = _error(exc)
            if status == 404 or code == "NoSuchKey":
                return None  # released between the listing and the read
            self._stats["unreadable"] += 1
            return self._record(key, "", raw, error=self._read_error(exc, code, status))
        etag = str(resp.get("ETag", ""))
        raw.update(etag=etag)
        for field, name in (("ServerSideEncryption", "sse"), ("SSEKMSKeyId", "kms_key_id"), ("VersionId", "version_id"),
                            ("LastModified", "last_modified")):
            if resp.get(field):
                raw[name] = str(resp[field]) if field == "LastModified" else resp[field]
        if len(data) > MAX_INFO_BYTES:
            return self._record(key, "", raw, error=f"lock file is larger than any Terraform lock ({MAX_INFO_BYTES} bytes max)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._record(key, "", raw, error="lock file is not UTF-8 text")
        raw["body"] = text
        try:
            info = LockInfo.parse(text)
        except ValueError as exc:
            return self._record(key, etag, raw, error=str(exc))
        return self._record(key, etag, raw, info=info)

    def _read_error(self, exc: Exception, code: str, status: int) -> str:
        msg = error_message(exc, default="")
        if code == "InvalidRequest" and ("Server Side Encryption" in msg or "customer" in msg.lower()) or (
            status == 400 and "SSECustomer" in msg
        ):
            return ("lock file is encrypted with a customer-provided key (SSE-C): it cannot be read without that key, "
                    "so its holder and age are unknown; never deleted")
        if status == 403 or code in ("AccessDenied", "KMS.AccessDeniedException", "KMS.DisabledException"):
            return (f"cannot read the lock file ({_describe(exc)}): the reaper needs s3:GetObject on *.tflock keys "
                    "and, for SSE-KMS, kms:Decrypt on the bucket's key")
        return f"cannot read the lock file: {_describe(exc)}"

    def _holder(self, key: str) -> tuple[str | None, str | None]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read(MAX_INFO_BYTES + 1)
        except Exception:
            return None, None
        try:
            info = LockInfo.parse(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return "(unparseable)", None
        return info.ID, info.Who

    def _raced(self, lock: LockRecord, why: str) -> DeleteResult:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=lock.key)
            body = resp["Body"].read(MAX_INFO_BYTES + 1)
        except Exception as exc:
            code, status = _error(exc)
            if status == 404 or code == "NoSuchKey":
                return DeleteResult(status=DeleteStatus.GONE,
                                    detail=f"the lock file changed ({why}) and was released before it could be re-read")
            return DeleteResult(status=DeleteStatus.RACED,
                                detail=f"raced ({why}): the lock file changed; the new holder could not be read: "
                                       f"{_describe(exc)}")
        etag = resp.get("ETag", "")
        try:
            info = LockInfo.parse(body.decode("utf-8"))
            cid, cwho = info.ID, info.Who
        except (ValueError, UnicodeDecodeError):
            cid, cwho = "(unparseable)", None
        return DeleteResult(
            status=DeleteStatus.RACED,
            detail=f"raced ({why}): a new lock {cid} by {cwho or '?'} holds it now (ETag {etag})",
            current_id=cid,
            current_who=cwho,
        )
