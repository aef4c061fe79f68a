"""Fault injectors for tests/test_faults.py (issue 6).

- ``BotoFault``: a botocore ``before-send`` hook on one client. For the requests
  it matches (operation, optionally the DynamoDB table), it answers with an AWS
  error response in the service's own protocol (JSON, query XML, REST XML) or
  raises a connection error, instead of sending. It runs inside botocore's retry
  loop, so the client's retry mode (adaptive, in production) sees every fault.
- ``FaultProxy``: a TCP proxy in front of moto_server for real socket faults:
  per new connection, "reset" (RST after reading the request), "stall" (read the
  request, answer nothing: a read timeout) or "pass" (forward both ways).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from typing import Any

from botocore.awsrequest import AWSResponse


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **kw: Any) -> Any:
        yield self.body


def error_response(client: Any, url: str, status: int, code: str, message: str) -> AWSResponse:
    """An AWS error response as the client's protocol serialises it."""
    protocol = client.meta.service_model.protocol
    headers = {"x-amzn-RequestId": "fault-injected", "x-amz-request-id": "fault-injected"}
    if protocol in ("json", "rest-json"):
        prefix = "com.amazonaws.dynamodb.v20120810#" if client.meta.service_model.service_name == "dynamodb" else ""
        body = json.dumps({"__type": prefix + code, "message": message}).encode()
        headers["Content-Type"] = "application/x-amz-json-1.0" if protocol == "json" else "application/json"
        headers["x-amzn-ErrorType"] = code
    elif protocol == "query":
        body = (f"<ErrorResponse><Error><Type>{'Sender' if status < 500 else 'Receiver'}</Type><Code>{code}</Code>"
                f"<Message>{message}</Message></Error><RequestId>fault-injected</RequestId></ErrorResponse>").encode()
        headers["Content-Type"] = "text/xml"
    else:  # rest-xml (S3)
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>fault-injected</RequestId></Error>").encode()
        headers["Content-Type"] = "application/xml"
    headers["Content-Length"] = str(len(body))
    return AWSResponse(url, status, headers, _Raw(body))


def ok_response(url: str, doc: dict[str, Any]) -> AWSResponse:
    body = json.dumps(doc).encode()
    return AWSResponse(url, 200, {"Content-Type": "application/x-amz-json-1.1", "Content-Length": str(len(body))}, _Raw(body))


class BotoFault:
    """Answer matching requests with a fault, ``times`` times (None: always)."""

    def __init__(self, client: Any, operation: str, *, status: int = 500, code: str = "InternalServerError",
                 message: str = "injected fault", table: str | None = None, times: int | None = None,
                 exc: type[Exception] | None = None, response: Any = None):
        self.client = client
        self.operation = operation
        self.status, self.code, self.message = status, code, message
        self.table = table
        self.times = times
        self.exc = exc
        self.response = response
        self.fired = 0
        self.passed = 0
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register_first(f"before-send.{service}.{operation}", self)

    def _matches(self, request: Any) -> bool:
        if self.table is None:
            return True
        try:
            return json.loads(request.body or b"{}").get("TableName") == self.table
        except ValueError:
            return False

    def __call__(self, request: Any, **kw: Any) -> Any:
        if not self._matches(request):
            return None
        if self.times is not None and self.fired >= self.times:
            self.passed += 1
            return None
        self.fired += 1
        if self.exc is not None:
            from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

            if self.exc is ReadTimeoutError:
                raise ReadTimeoutError(endpoint_url=request.url)
            if self.exc is ConnectionClosedError:
                raise ConnectionClosedError(endpoint_url=request.url)
            if self.exc is EndpointConnectionError:
                raise EndpointConnectionError(endpoint_url=request.url)
            raise self.exc("injected")
        if self.response is not None:
            return self.response(request)
        return error_response(self.client, request.url, self.status, self.code, self.message)


class FaultProxy:
    """TCP proxy on 127.0.0.1 in front of ``target`` (host, port)."""

    def __init__(self, target: tuple[str, int], stall_seconds: float = 3.0):
        self.target = target
        self.stall_seconds = stall_seconds
        self.plan: list[str] = []  # one mode per new connection, then ``default``
        self.default = "pass"
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    def close(self) -> None:
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                mode = self.plan.pop(0) if self.plan else self.default
                self.seen.append(mode)
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, mode), daemon=True).start()

    def _serve(self, conn: socket.socket, mode: str) -> None:
        try:
            if mode == "reset":
                conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            if mode == "stall":
                conn.recv(65536)
                deadline = time.monotonic() + self.stall_seconds
                while time.monotonic() < deadline and not self._stop.is_set():
                    time.sleep(0.05)
                conn.close()
                return
            upstream = socket.create_connection(self.target, timeout=10)
            with self._lock:
                self._conns.append(upstream)
            t = threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True)
            t.start()
            self._pipe(conn, upstream)
            t.join(timeout=10)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
