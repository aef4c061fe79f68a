"""What the stores behind a platform's HTTP API share (HCP Terraform, GitLab-managed state).

Each such store lists the locks of a few configured scopes (organizations,
projects) through a ``JsonApi``. They share: the token check in ``validate``,
``stats``, ``restore`` (always refused: these platforms cannot re-create a
lock), and a ``scan`` that keeps going when one scope fails: that scope's locks
stay unknown (never acted on) and the store reports the failure as a
``StoreError`` after yielding every other scope's locks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar

from ..http.client import ApiError, JsonApi
from ..models import LockRecord
from ..policy.types import url_host
from ..ports import StoreError, StoreTraits


class ApiLockStore:
    """Base of the HTTP-API stores. Subclasses set the class attributes and implement
    ``_scopes`` and ``_scan_scope``."""

    traits: StoreTraits  # set by each subclass: restorable=False, with the platform's restore_note
    kind: ClassVar[str] = ""  # store name prefix: "hcp", "gitlab"
    scope_kind: ClassVar[str] = ""  # what one scope is: "organization", "project"
    unchecked_note: ClassVar[str] = ""  # appended to the StoreError of a failed scan
    stat_keys: ClassVar[tuple[str, ...]] = ("items", "digests", "pages", "locked")
    log: ClassVar[logging.Logger]

    def __init__(self, api: JsonApi, page_size: int = 100):
        self.api = api
        self.page_size = page_size
        self.name = f"{self.kind}:{url_host(api.base_url)}"
        self._stats = self._zero()

    def _zero(self) -> dict[str, int]:
        return dict.fromkeys(self.stat_keys, 0)

    # -- port -------------------------------------------------------------
    def validate(self) -> None:
        try:
            self.api.auth() if self.api.auth is not None else None
        except ApiError as exc:
            raise StoreError(f"{self.name}: no API token: {exc.reason}") from None

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def scan(self) -> Iterator[LockRecord]:
        self._stats = self._zero()
        failed: list[str] = []
        for scope in self._scopes():
            try:
                yield from self._scan_scope(scope, failed)
            except ApiError as exc:  # this scope's locks stay unknown: kept and reported
                self.log.warning("%s: listing %s %s failed: %s", self.name, self.scope_kind, scope, exc.reason)
                failed.append(f"{self.scope_kind} {scope}: {exc.reason}")
        if failed:
            raise StoreError(f"{self.name}: " + "; ".join(failed) + self.unchecked_note)

    def restore(self, raw: dict[str, Any]) -> str:
        raise ValueError(self.traits.restore_note)

    # -- for subclasses ---------------------------------------------------
    def _scopes(self) -> list[str]:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _scan_scope(self, scope: str, failed: list[str]) -> Iterator[LockRecord]:  # pragma: no cover - subclasses
        """Yield the scope's locks; raise ApiError if it cannot be listed. ``failed``
        collects problems with single locks that do not stop the scope."""
        raise NotImplementedError
