"""State-activity evidence: an apply writes its state object about every 20 s.

``HeadObject`` on the lock's state object (``<bucket>/<key>``, the lock path):
modified after the lock was created and within the last ``window`` means the
holder is alive. The reverse proves nothing (plans never write state), so this
checker never says dead. Only for S3-backed locks (DynamoDB lock tables and
S3 ``.tflock`` files); other stores are "not applicable".
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from ..aws import error_code, http_status
from ..durations import format_duration
from ..models import LivenessFact, LockRecord
from ..policy.env import StateObjectGrants
from .facts import alive, created_at, ev, unknown

S3_STORES = ("dynamodb:", "s3:")


def split_lock_path(lock_path: str) -> tuple[str, str] | None:
    bucket, sep, key = lock_path.partition("/")
    if not sep or not bucket or not key:
        return None
    return bucket, key


class StateActivityChecker:
    name = "state-activity"

    def __init__(self, s3: Any, window: timedelta = timedelta(minutes=10), counter: Any = None,
                 grants: StateObjectGrants | None = None):
        self.s3 = s3
        self.window = window
        self.counter = counter
        self.grants = grants  # None: any state object may be asked (the CLI); else only these (the stack's grant)
        self._denied: dict[str, str] = {}  # bucket -> error: one refusal per bucket per run
        self._lock = threading.Lock()

    def applies(self, lock: LockRecord) -> bool:
        return lock.info is not None and lock.store.startswith(S3_STORES) and split_lock_path(lock.lock_path) is not None

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact | None:
        if not self.applies(lock):
            return None
        src = self.name
        where = split_lock_path(lock.lock_path)
        if where is None:
            return None
        bucket, key = where
        url = f"s3://{bucket}/{key}"
        if self.grants is not None and not self.grants.allows(bucket, key):  # no AccessDenied every run: not asked
            detail = f"not granted: the function may read only {self.grants.describe()}"
            return unknown(src, f"state object {url}: {detail}", ev(src, detail, url, "not_granted"))
        with self._lock:
            denied = self._denied.get(bucket)
        if denied:
            if self.counter is not None:
                self.counter.memo("s3.head_object")
            return unknown(src, f"state object {url}: {denied}", ev(src, denied, url, "denied"))
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
            if self.counter is not None:
                self.counter.call("s3.head_object", 200)
        except Exception as exc:
            code, status = error_code(exc), http_status(exc)
            if self.counter is not None:
                self.counter.call("s3.head_object", status or "error")
            if code in ("404", "NoSuchKey", "NotFound"):
                detail = "no state object yet: proves nothing"
            else:
                detail = f"HeadObject failed ({code})"
                if status in (301, 400, 403):
                    with self._lock:
                        self._denied[bucket] = detail
            return unknown(src, f"state object {url}: {detail}", ev(src, detail, url, str(status or code)))
        modified = head.get("LastModified")
        if not isinstance(modified, datetime):
            return unknown(src, f"state object {url}: no LastModified", ev(src, "no LastModified", url))
        modified = modified.astimezone(UTC)
        created = created_at(lock)
        age = now - modified
        if modified > created and age <= self.window:
            detail = (f"state object written {format_duration(age)} ago, after the lock was created "
                      f"(within the {format_duration(self.window)} window): an apply is writing it")
            return alive(src, detail, ev(src, detail, url, "modified", modified))
        why = "before the lock was created" if modified <= created else f"{format_duration(age)} ago, outside the window"
        detail = f"state object last written {why}: proves nothing (plans never write state)"
        return unknown(src, detail, ev(src, detail, url, "quiet", modified))
