"""Shared Powertools objects (one Logger, Tracer and Metrics per process).

Service name and metrics namespace come from the environment the stack sets
(POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE), with safe defaults.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

from .report import METRIC_SERVICE

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", METRIC_SERVICE)
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "LockReaper")



class _NoSegment(BaseSegment):
    def close(self, end_time: int | None = None) -> None: ...
    def add_subsegment(self, subsegment: Any) -> None: ...
    def remove_subsegment(self, subsegment: Any) -> None: ...
    def put_annotation(self, key: str, value: Any) -> None: ...
    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None: ...
    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None: ...


class _NoTracing(BaseProvider):
    """Tracer provider used when tracing is off (outside Lambda, POWERTOOLS_TRACE_DISABLED).

    The X-Ray SDK builds botocore clients when it is imported (about 0.2 s of cold
    start); with tracing off nothing would use it, so it is not imported at all.
    """

    @contextmanager
    def in_subsegment(self, name=None, **kwargs):
        yield _NoSegment()

    def in_subsegment_async(self, name=None, **kwargs):
        raise NotImplementedError("async tracing is not used by Lock Reaper")

    def put_annotation(self, key: str, value: Any) -> None: ...
    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None: ...
    def patch(self, modules: Any) -> None: ...
    def patch_all(self) -> None: ...


def _make_tracer() -> Tracer:
    if Tracer._is_tracer_disabled():
        return Tracer(service=SERVICE, disabled=True, auto_patch=False, provider=_NoTracing())
    return Tracer(service=SERVICE)


logger = Logger(service=SERVICE)
tracer = _make_tracer()
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
