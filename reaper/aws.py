"""AWS plumbing shared by every adapter: the boto3 client factory and botocore error helpers.

Only the composition root (``reaper.wiring``) and the entry points create clients,
through ``client``; adapters get theirs through their constructors. Standard AWS
settings (AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL, ...) apply as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ClientFactory = Callable[..., Any]  # (service, region=None) -> a boto3 client


def client(service: str, region: str | None = None) -> Any:
    """A boto3 client with adaptive retries and bounded timeouts."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"mode": "adaptive", "max_attempts": 8}, connect_timeout=5, read_timeout=20)
    return boto3.client(service, region_name=region, config=cfg)


def _error(exc: BaseException) -> dict[str, Any]:
    response = getattr(exc, "response", None)
    err = response.get("Error") if isinstance(response, dict) else None
    return err if isinstance(err, dict) else {}


def error_code(exc: BaseException) -> str:
    """The AWS error code (``ConditionalCheckFailedException``, ``AccessDenied``, ...), else the exception's type."""
    return str(_error(exc).get("Code") or type(exc).__name__)


def error_message(exc: BaseException) -> str:
    """The AWS error message, else the exception's text."""
    return str(_error(exc).get("Message") or exc)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError, or None."""
    response = getattr(exc, "response", None)
    meta = response.get("ResponseMetadata") if isinstance(response, dict) else None
    status = meta.get("HTTPStatusCode") if isinstance(meta, dict) else None
    return status if isinstance(status, int) else None


def is_code(exc: BaseException, *codes: str) -> bool:
    return error_code(exc) in codes
