"""A tiny threaded HTTP server on a free 127.0.0.1 port, with fault injection.

``ThreadedServer`` is the lifecycle every fake API shares (this module's
``FakeServer`` and devtools/fake_ci.py): a ``ThreadingHTTPServer`` on 127.0.0.1
in a daemon thread, quiet, HTTP/1.1 keep-alive, and ``TCP_NODELAY`` so that a
reply's headers and body (two writes) are not held back by Nagle's algorithm
waiting for the client's delayed ACK (about 40 ms per call otherwise).

``FakeServer`` is the base of the fake HCP Terraform and GitLab APIs
(devtools/fake_hcp.py, devtools/fake_gitlab.py) that the tests, the demo and the
benchmark share. Subclasses implement ``route(req) -> Reply``. Faults (``fail``)
answer matching requests with a status (e.g. 409, 429 with Retry-After, 500) or
a delay (to make the client time out) before the route sees them. Every request
is recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str  # percent-decoded path
    raw_path: str  # as sent (percent-encoded)
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, raw text, or None

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int | None
    body: Any
    headers: dict[str, str]
    times: int
    delay: float


class ThreadedServer:
    """A threaded HTTP server on 127.0.0.1. Start with ``start()`` (or ``with``);
    ``url`` is its base URL. Subclasses implement ``handle(h)`` for one request
    (``h`` is the ``BaseHTTPRequestHandler``: ``h.command``, ``h.path``, ...)."""

    methods: tuple[str, ...] = ("GET", "POST", "DELETE", "PUT", "PATCH")
    thread_name: str | None = None

    def __init__(self, port: int = 0) -> None:
        """``port`` 0 picks a free port at ``start()``; a given port makes ``url`` known at once."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}" if port else ""
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handle(self, h: BaseHTTPRequestHandler) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def start(self) -> Self:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: send each at once

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _serve(self) -> None:
                server.handle(self)

        for method in self.methods:
            setattr(Handler, f"do_{method}", Handler._serve)
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class FakeServer(ThreadedServer):
    """A fake JSON API: ``route(req) -> Reply``, faults, every request recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        data = h.rfile.read(length) if length else b""
        parts = urlsplit(h.path)
        try:
            body: Any = json.loads(data) if data else None
        except ValueError:
            body = data.decode("utf-8", "replace")
        req = Request(
            method=h.command,
            path=unquote(parts.path),
            raw_path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in h.headers.items()},
            body=body,
        )
        reply = self._dispatch(req)
        payload = b"" if reply.body is None else (
            reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        )
        try:
            h.send_response(reply.status)
            if payload:
                h.send_header("Content-Type", reply.content_type)
            h.send_header("Content-Length", str(len(payload)))
            for k, v in reply.headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    # -- faults and inspection --------------------------------------------------
    def fail(self, method: str, path_regex: str, status: int | None = 500, *, body: Any = None,
             headers: dict[str, str] | None = None, times: int = 1, delay: float = 0.0) -> None:
        """Answer the next ``times`` matching requests with ``status`` (after ``delay``
        seconds). ``status=None`` with a delay only slows the request down."""
        with self._lock:
            self._faults.append(Fault(method.upper(), re.compile(path_regex), status, body, dict(headers or {}), times, delay))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def calls(self, method: str | None = None, path_regex: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method.upper())
                    and (path_regex is None or re.search(path_regex, r.path))]

    def _dispatch(self, req: Request) -> Reply:
        with self._lock:
            self.requests.append(req)
            fault = None
            for f in self._faults:
                if f.times > 0 and f.method in (req.method, "*") and f.pattern.search(req.path):
                    f.times -= 1
                    fault = f
                    break
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None:
                body = fault.body if fault.body is not None else {
                    "errors": [{"status": str(fault.status), "title": "injected fault"}]}
                return Reply(status=fault.status, body=body, headers=fault.headers)
        try:
            with self._lock:
                return self.route(req)
        except Exception as exc:  # a bug in a fake must be visible, not a hang
            return Reply(status=500, body={"errors": [{"status": "500", "title": f"fake server error: {exc!r}"}]})

    def route(self, req: Request) -> Reply:  # pragma: no cover - subclasses
        return Reply(status=404, body={"errors": [{"status": "404", "title": "not found"}]})


def iso(dt: Any) -> str:
    """UTC ISO 8601 with milliseconds and Z, as Rails renders times."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
