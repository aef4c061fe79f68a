"""Shared Powertools objects (one Logger, Tracer and Metrics per process).

Service name and metrics namespace come from the environment the stack sets
(POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE), with safe defaults.

Logs: everything the function logs is one Powertools JSON line on stdout. The
``reaper.*`` stdlib loggers (engine, stores, liveness) are routed through the
Logger's handler for the length of an invocation (``lambda_logging``), with
Powertools' ``copy_config_to_registered_loggers``: the Lambda runtime leaves the
root logger at WARNING, so without this their INFO lines were dropped. One level
controls them all: ``LOG_LEVEL`` (else ``POWERTOOLS_LOG_LEVEL``, else INFO; Lambda's
advanced logging controls, when set, win as Powertools documents).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
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


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of each record (pytest's capsys too)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # a read-only view of the current stdout
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None: ...


def log_level(env: Any = None) -> str | None:
    """The one level setting: ``LOG_LEVEL``, else ``POWERTOOLS_LOG_LEVEL`` (None: Powertools' default, INFO)."""
    env = os.environ if env is None else env
    level = env.get("LOG_LEVEL") or env.get("POWERTOOLS_LOG_LEVEL")
    return level.upper() if level else None


REAPER_LOGGER = "reaper"  # the parent of every stdlib logger in the package

logger = Logger(service=SERVICE, level=log_level(), logger_handler=_CurrentStdout())


@contextmanager
def lambda_logging() -> Iterator[None]:
    """Route the ``reaper.*`` loggers through the Powertools Logger (same JSON, same level) for one
    invocation; afterwards the ``reaper`` logger is as it was (the CLI and tests share the process)."""
    from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

    target = logging.getLogger(REAPER_LOGGER)  # registered now, so the helper finds it
    saved = (list(target.handlers), target.level, target.propagate)
    level = log_level()
    if level:
        logger.setLevel(level)
    copy_config_to_registered_loggers(source_logger=logger, include={REAPER_LOGGER})
    try:
        yield
    finally:
        target.handlers, target.propagate = saved[0], saved[2]
        target.setLevel(saved[1])
tracer = _make_tracer()
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
