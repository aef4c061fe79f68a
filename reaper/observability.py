"""Shared Powertools objects (one Logger, Tracer and Metrics per process).

Service name and metrics namespace come from the environment the stack sets
(POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE), with safe defaults.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

from .report import METRIC_SERVICE

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", METRIC_SERVICE)
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "LockReaper")

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
