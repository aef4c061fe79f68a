"""Lambda entry point: the Powertools decorators, then one call."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from .observability import lambda_logging, logger, metrics, tracer
from .service import run_scheduled


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with lambda_logging():  # the reaper.* loggers: the same JSON lines, one LOG_LEVEL
        return run_scheduled(event, os.environ, metrics=metrics)
