"""A small JSON-over-HTTP client for the CI APIs, on urllib3 (shipped with botocore).

What it does for every call, so the checkers need not:
- a timeout (connect and total) on every request;
- ETag conditional requests (``If-None-Match``), with a bounded cache that can
  outlive one run (a warm Lambda): a 304 costs nothing against GitHub's limit;
- rate limits: ``Retry-After`` is honoured (one short wait, else the provider is
  paused for the rest of the run), ``X-RateLimit-Remaining`` /
  ``RateLimit-Remaining`` at or below a reserve pauses the provider until reset;
- a per-run budget of calls;
- concurrency: one ``JsonApi`` is shared by the engine's judge workers. The counter, the
  ETag cache and the rate gate are locked; the budget is taken atomically (never
  exceeded); a rate limit one call meets pauses the provider for every thread (their
  calls are refused: unknown), and while one call waits out a short ``Retry-After`` the
  others wait too before calling;
- pagination by ``Link: rel="next"`` (GitHub, GitLab) or ``X-Next-Page`` (GitLab);
- a count of calls per kind and per status (``ApiCounter``).

Every failure raises ``ApiError`` (the checkers turn it into *unknown*). Tokens
are only ever placed in request headers: never in a URL, an exception, a log
line or the ETag cache key (which holds a SHA-256 fingerprint of the header).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import urllib3

log = logging.getLogger("reaper.http.client")

USER_AGENT = "lock-reaper (+liveness)"


class ApiError(Exception):
    """A call that gave no usable answer. ``reason`` is safe to show (no secrets)."""

    def __init__(self, reason: str, *, url: str | None = None, status: int | None = None, kind: str = ""):
        self.reason = reason
        self.url = url
        self.status = status
        self.kind = kind
        super().__init__(reason)


class RateLimited(ApiError):
    pass


class UnexpectedShape(ApiError):
    """A 2xx answer whose JSON is not shaped as the API documents (e.g. a list where an object is expected)."""


class AuthError(ApiError):
    """The token could not be obtained (secret missing, App exchange failed)."""


class ApiCounter:
    """API calls per kind and per status, for the run report and the benchmark."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.memo_hits: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def call(self, kind: str, status: int | str) -> None:
        with self._lock:
            self.calls[kind] += 1
            self.statuses[str(status)] += 1

    def memo(self, kind: str) -> None:
        with self._lock:
            self.memo_hits[kind] += 1

    def skip(self, kind: str) -> None:
        with self._lock:
            self.skipped[kind] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": sum(self.calls.values()),
                "by_kind": dict(sorted(self.calls.items())),
                "by_status": dict(sorted(self.statuses.items())),
                "not_modified": self.statuses.get("304", 0),
                "memo_hits": dict(sorted(self.memo_hits.items())),
                "skipped": dict(sorted(self.skipped.items())),
            }

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.statuses.clear()
            self.memo_hits.clear()
            self.skipped.clear()


@dataclass
class _Cached:
    etag: str
    body: Any
    headers: dict[str, str]


class EtagCache:
    """Bounded LRU of (url, auth fingerprint) -> (ETag, parsed body, paging headers)."""

    def __init__(self, max_entries: int = 2048):
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> _Cached | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
            return hit

    def put(self, key: tuple[str, str], value: _Cached) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


# One cache per process: a warm Lambda keeps its ETags from run to run.
SHARED_ETAGS = EtagCache()

# Dropped by urllib3 when a redirect leaves the host.
_SECRET_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "PRIVATE-TOKEN", "JOB-TOKEN")

_KEEP_HEADERS = ("link", "x-next-page", "x-total", "x-total-pages", "etag")


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    url: str = ""
    from_cache: bool = False


def _fingerprint(headers: Mapping[str, str]) -> str:
    auth = headers.get("Authorization") or headers.get("PRIVATE-TOKEN") or ""
    return hashlib.sha256(auth.encode()).hexdigest()[:16] if auth else "-"


_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?([^";]+)"?')


def next_link(headers: Mapping[str, str], url: str) -> str | None:
    """The next page's URL from ``Link`` (rel="next") or GitLab's ``X-Next-Page``."""
    for target, rel in _LINK.findall(headers.get("link", "")):
        if "next" in rel.split():
            return target
    nxt = (headers.get("x-next-page") or "").strip()
    if nxt.isdigit():
        parts = urlsplit(url)
        q = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "page"] + [("page", nxt)]
        return urlunsplit(parts._replace(query=urlencode(q)))
    return None


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _remaining(headers: Mapping[str, str]) -> tuple[int | None, float | None]:
    rem = headers.get("x-ratelimit-remaining") or headers.get("ratelimit-remaining")
    reset = headers.get("x-ratelimit-reset") or headers.get("ratelimit-reset")
    try:
        r = int(rem) if rem is not None else None
    except ValueError:
        r = None
    try:
        t = float(reset) if reset is not None else None
    except ValueError:
        t = None
    return r, t


@dataclass(frozen=True)
class HttpLimits:
    """How long, how often and how much one provider's API may be called in one run (seconds, counts)."""

    timeout: float = 10.0
    max_retry_wait: float = 10.0  # the longest Retry-After waited for (once); longer pauses the provider
    rate_limit_reserve: int = 100  # pause the provider when this few calls remain
    max_calls: int = 1000
    max_pages: int = 10

    @classmethod
    def from_policy(cls, http_cfg: Any, timeout_override: timedelta | float | None = None) -> HttpLimits:
        """From the policy's ``liveness.http`` section (None: the defaults); a provider's own timeout wins."""
        if http_cfg is None:
            return cls(timeout=_seconds(timeout_override)) if timeout_override else cls()
        return cls(
            timeout=_seconds(timeout_override or http_cfg.timeout),
            max_retry_wait=_seconds(http_cfg.max_retry_wait),
            rate_limit_reserve=http_cfg.rate_limit_reserve,
            max_calls=http_cfg.max_calls_per_run,
            max_pages=http_cfg.max_pages,
        )

    @classmethod
    def for_store(cls, store_cfg: Any, *, rate_limit_reserve: int, max_calls: int) -> HttpLimits:
        """For an HTTP state store (HCP Terraform, GitLab): its own ``timeout`` and ``max_retry_wait``."""
        return cls(timeout=_seconds(store_cfg.timeout), max_retry_wait=_seconds(store_cfg.max_retry_wait),
                   rate_limit_reserve=rate_limit_reserve, max_calls=max_calls)


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class RateGate:
    """Whether the next call may go: the per-run budget, and the pause a rate limit imposes.

    Shared by the threads that call one provider: the budget is counted under a lock (a call past
    ``max_calls`` is never sent), a pause set by one thread refuses every thread's next call, and a short
    ``Retry-After`` one thread waits out holds the others' next calls for as long (``held``)."""

    def __init__(self, name: str, limits: HttpLimits, counter: ApiCounter, clock: Callable[[], float] = time.time):
        self.name = name
        self.limits = limits
        self.counter = counter
        self.clock = clock
        self.calls = 0
        self.paused_until: float | None = None
        self.pause_reason = ""
        self.held_until: float | None = None  # a short Retry-After being waited out by ``_holder``
        self._holder: int | None = None
        self._lock = threading.Lock()

    def held(self) -> float:
        """Seconds this thread should wait before its next call: another thread is waiting out a short
        ``Retry-After`` (0 when none is, or this thread is the one waiting)."""
        with self._lock:
            if self.held_until is None or self._holder == threading.get_ident():
                return 0.0
            return max(0.0, self.held_until - self.clock())

    def admit(self, kind: str, url: str) -> None:
        """Count one call, or raise (counted as skipped) if the provider is paused or the budget spent."""
        with self._lock:
            now = self.clock()
            if self.paused_until is not None and now < self.paused_until:
                self.counter.skip(kind)
                raise RateLimited(
                    f"{self.name} API paused for {int(self.paused_until - now)}s more: {self.pause_reason}", url=url, kind=kind
                )
            if self.calls >= self.limits.max_calls:
                self.counter.skip(kind)
                raise ApiError(f"{self.name}: the budget of {self.limits.max_calls} API calls per run is spent",
                               url=url, kind=kind)
            self.calls += 1

    def pause(self, until: float, reason: str) -> None:
        with self._lock:
            news = self.paused_until is None or until > self.paused_until + 1  # several threads' answers say it at once
            self.paused_until = max(self.paused_until or 0.0, until)
            self.pause_reason = reason
        if news:
            log.warning("%s API paused until %s: %s", self.name, time.strftime("%H:%M:%SZ", time.gmtime(until)), reason)

    def answered(self, status: int, headers: Mapping[str, str], *, kind: str, url: str, may_wait: bool) -> float | None:
        """Note what an answer says of the rate limit. Not limited: None. Limited: the wait before
        the one retry (a short Retry-After, if ``may_wait``), else pause the provider and raise."""
        now = self.clock()
        remaining, reset = _remaining(headers)
        reserve = self.limits.rate_limit_reserve
        if remaining is not None and remaining <= reserve and status < 400:
            self.pause(reset if reset and reset > now else now + 60, f"only {remaining} calls left (reserve {reserve})")
        if not (status == 429 or (status == 403 and (remaining == 0 or "retry-after" in headers))):
            return None
        wait = _retry_after(headers, now)
        if wait is None and reset is not None:
            wait = max(0.0, reset - now)
        if wait is not None and wait <= self.limits.max_retry_wait and may_wait:
            log.info("%s rate limited (%s): waiting %.1fs as Retry-After asks", self.name, status, wait)
            with self._lock:  # the other threads wait as long before their next call
                if self.held_until is None or now + wait > self.held_until:
                    self.held_until, self._holder = now + wait, threading.get_ident()
            return wait
        self.pause(now + (wait if wait is not None else 60.0), f"rate limited (HTTP {status})")
        raise RateLimited(f"{self.name} {kind}: rate limited (HTTP {status})", url=url, status=status, kind=kind)


_RETRY_STATUSES = (502, 503, 504)  # retried once, after min(1 s, max_retry_wait)


@dataclass
class _Call:
    """One prepared request: what goes on the wire, and its ETag cache entry."""

    method: str
    url: str
    kind: str
    headers: dict[str, str]
    payload: bytes | None
    key: tuple[str, str]  # the ETag cache key: (method and URL, auth fingerprint)
    cacheable: bool  # a conditional GET: its answer's ETag is kept
    cached: _Cached | None


class JsonApi:
    """One provider's API (e.g. GitHub at https://api.github.com) for one run.

    ``auth`` returns the auth headers; it is called lazily, so no secret is
    fetched unless a candidate lock needs this provider.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        pool: urllib3.PoolManager,
        auth: Callable[[], dict[str, str]] | None = None,
        *,
        limits: HttpLimits,
        counter: ApiCounter | None = None,
        etags: EtagCache | None = None,
        extra_headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.pool = pool
        self.auth = auth
        self.limits = limits
        self.counter = counter or ApiCounter()
        self.etags = etags if etags is not None else SHARED_ETAGS
        self.extra_headers = dict(extra_headers or {})
        self.sleep = sleep
        self.gate = RateGate(name, limits, self.counter)

    # ------------------------------------------------------------------
    def url(self, path: str, params: Iterable[tuple[str, Any]] | Mapping[str, Any] | None = None) -> str:
        url = path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"
        if params:
            items = list(params.items()) if isinstance(params, Mapping) else list(params)
            url += ("&" if "?" in url else "?") + urlencode(items, doseq=True)
        return url

    def _check_same_origin(self, url: str) -> None:
        # A token is only ever sent to the configured API host (pagination links included).
        a, b = urlsplit(url), urlsplit(self.base_url)
        if (a.scheme, a.netloc) != (b.scheme, b.netloc):
            raise ApiError(f"refusing to follow a link to another host ({a.netloc})", url=url)

    def _headers(self, kind: str, extra: Mapping[str, str] | None, use_auth: bool) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **self.extra_headers}
        if use_auth and self.auth is not None:
            try:
                headers.update(self.auth())
            except ApiError:
                raise
            except Exception as exc:  # never echo the exception text: it could quote a secret
                raise AuthError(f"could not get the {self.name} credentials ({type(exc).__name__})", kind=kind) from None
        if extra:
            headers.update(extra)
        return headers

    def _prepare(self, method: str, url: str, *, kind: str, headers: Mapping[str, str] | None,
                 use_auth: bool, conditional: bool, body: Any) -> _Call:
        self._check_same_origin(url)
        hdrs = self._headers(kind, headers, use_auth)
        key = (f"{method} {url}", _fingerprint(hdrs))
        cacheable = conditional and method == "GET"
        cached = self.etags.get(key) if cacheable else None
        if cached is not None:
            hdrs["If-None-Match"] = cached.etag
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        return _Call(method, url, kind, hdrs, payload, key, cacheable, cached)

    def request(
        self,
        method: str,
        path: str,
        *,
        kind: str,
        params: Iterable[tuple[str, Any]] | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        use_auth: bool = True,
        conditional: bool = True,
        body: Any = None,
    ) -> Response:
        """One call, retried at most once: after a short Retry-After, or a 502/503/504."""
        call = self._prepare(method, self.url(path, params), kind=kind, headers=headers,
                             use_auth=use_auth, conditional=conditional, body=body)
        retried = False
        while True:
            held = self.gate.held()
            if held > 0:  # another call is waiting out a short Retry-After: do not call meanwhile
                self.sleep(held)
            self.gate.admit(kind, call.url)
            resp = self._send(call)
            rh = {k.lower(): v for k, v in resp.headers.items()}
            wait = self.gate.answered(resp.status, rh, kind=kind, url=call.url, may_wait=not retried)
            if wait is None and resp.status in _RETRY_STATUSES and not retried:
                wait = min(1.0, self.limits.max_retry_wait)
            if wait is None:
                return self._read(call, resp.status, rh, resp.data)
            retried = True
            self.sleep(wait)

    def _send(self, call: _Call) -> Any:
        """One HTTP exchange (counted, by status), redirects followed without the secret headers."""
        timeout = self.limits.timeout
        try:
            resp = self.pool.request(
                call.method,
                call.url,
                body=call.payload,
                headers=call.headers,
                timeout=urllib3.Timeout(total=timeout, connect=min(timeout, 5.0)),
                retries=urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=3,
                                      respect_retry_after_header=False, raise_on_redirect=True,
                                      remove_headers_on_redirect=_SECRET_HEADERS),
                preload_content=True,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise self._no_answer(call, exc) from None
        self.counter.call(call.kind, resp.status)
        log.debug("%s %s -> %s", call.method, call.url, resp.status)
        return resp

    def _no_answer(self, call: _Call, exc: urllib3.exceptions.HTTPError) -> ApiError:
        """Count a call that got no answer (as "timeout" or "error"); the error to raise. Never the
        exception's text: it names the URL and could quote a header."""
        status = "error"
        if isinstance(exc, urllib3.exceptions.MaxRetryError):
            cause = exc.reason
            timed_out = isinstance(cause, urllib3.exceptions.TimeoutError)
            what = "timed out" if timed_out else f"failed ({type(cause).__name__ if cause else 'error'})"
        elif isinstance(exc, urllib3.exceptions.TimeoutError):
            status, what = "timeout", f"timed out after {self.limits.timeout:g}s"
        else:
            what = f"failed ({type(exc).__name__})"
        self.counter.call(call.kind, status)
        return ApiError(f"{self.name} {call.kind}: request {what}", url=call.url, kind=call.kind)

    def _read(self, call: _Call, status: int, headers: Mapping[str, str], data: bytes | None) -> Response:
        """The answer as a Response (a 304 from the ETag cache), or ApiError for an error status or bad JSON."""
        if status == 304 and call.cached is not None:
            return Response(status=304, body=call.cached.body, headers=call.cached.headers, url=call.url, from_cache=True)
        if status >= 400:
            raise ApiError(f"{self.name} {call.kind}: HTTP {status}{_hint(status)}", url=call.url, status=status, kind=call.kind)
        try:
            parsed = json.loads(data.decode("utf-8")) if data else None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ApiError(f"{self.name} {call.kind}: malformed JSON in the response",
                           url=call.url, status=status, kind=call.kind) from None
        keep = {k: v for k, v in headers.items() if k in _KEEP_HEADERS}
        etag = headers.get("etag")
        if etag and call.cacheable:
            self.etags.put(call.key, _Cached(etag=etag, body=parsed, headers=keep))
        return Response(status=status, body=parsed, headers=keep, url=call.url)

    def get(self, path: str, *, kind: str, params: Any = None) -> Response:
        return self.request("GET", path, kind=kind, params=params)

    def expect(self, value: Any, shape: type, *, what: str, url: str | None, kind: str) -> Any:
        """``value`` if it is a ``shape`` (dict: a JSON object, list: a JSON array); else
        ``UnexpectedShape`` naming the URL, ``what`` was looked at and what it was."""
        if isinstance(value, shape):
            return value
        raise UnexpectedShape(
            f"{self.name} {kind}: unexpected response shape from {url}: {what} is {describe_shape(value)}, "
            f"expected {_EXPECTED.get(shape, shape.__name__)}",
            url=url, kind=kind,
        )

    def get_object(self, path: str, *, kind: str, params: Any = None, conditional: bool = True) -> dict[str, Any]:
        """GET an endpoint that answers one JSON object (one job, one run)."""
        resp = self.request("GET", path, kind=kind, params=params, conditional=conditional)
        return self.expect(resp.body, dict, what="the response", url=resp.url, kind=kind)

    def get_all(self, path: str, *, kind: str, params: Any = None, items_key: str | None = None,
                item_shape: type | None = dict, enough: Callable[[list[Any]], bool] | None = None) -> tuple[list[Any], bool]:
        """Follow pagination up to ``max_pages``; returns (items, complete).

        Each page is a JSON array, or with ``items_key`` an object holding the array
        at that key (GitHub's ``{"total_count": n, "jobs": [...]}``); each item must
        be an ``item_shape`` (objects by default). Anything else is ``UnexpectedShape``.

        ``enough(page)`` lets an ordered list end early: when it is true for a page just
        read, no further page is asked for and the list counts as complete (the caller
        knows that every later item is beyond what it needs, e.g. older than a horizon).
        """
        items: list[Any] = []
        url: str | None = self.url(path, params)
        pages = 0
        total: int | None = None  # what the API says the whole list holds
        while url is not None:
            if pages >= self.limits.max_pages:
                return items, False
            resp = self.get(url, kind=kind)
            pages += 1
            if items_key:
                body = self.expect(resp.body, dict, what="the response", url=resp.url, kind=kind)
                page = self.expect(body.get(items_key), list, what=f"its {items_key!r}", url=resp.url, kind=kind)
                count = body.get("total_count")  # GitHub
            else:
                page = self.expect(resp.body, list, what="the response", url=resp.url, kind=kind)
                header = (resp.headers.get("x-total") or "").strip()  # GitLab (omitted past 10,000)
                count = int(header) if header.isdigit() else None
            if isinstance(count, int) and not isinstance(count, bool):
                total = count
            if item_shape is not None:
                for i, item in enumerate(page):
                    self.expect(item, item_shape, what=f"item {i} of the list", url=resp.url, kind=kind)
            items.extend(page)
            if enough is not None and enough(page):
                return items, True
            url = next_link(resp.headers, resp.url)
        # No next page, yet fewer items than the API counted (a Link header lost on the way,
        # GitHub's 1,000-result cap on filtered lists): the list is not complete and proves no absence.
        return items, total is None or len(items) >= total


def describe_shape(value: Any) -> str:
    """What a parsed JSON value is, for error messages: "a list of 2", "an object", "null", ..."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


_EXPECTED: dict[type, str] = {dict: "an object", list: "a list"}


def _hint(status: int) -> str:
    return {
        401: " (bad or expired token)",
        403: " (the token lacks a permission or scope)",
        404: " (not found, or not visible to this token)",
    }.get(status, "")


def new_pool(maxsize: int = 8, ca_bundle: str | None = None) -> urllib3.PoolManager:
    """The pool the wiring passes to every provider. TLS is always verified: against
    ``ca_bundle`` (e.g. a GitHub Enterprise Server's private CA) or the system store."""
    kwargs: dict[str, Any] = {"maxsize": maxsize, "retries": False, "cert_reqs": "CERT_REQUIRED"}
    if ca_bundle:
        kwargs["ca_certs"] = ca_bundle
    return urllib3.PoolManager(**kwargs)
