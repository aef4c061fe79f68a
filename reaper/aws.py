"""AWS plumbing shared by every adapter: the boto3 client factory and botocore error helpers.

Only the composition root (``reaper.wiring``) and the entry points create clients,
through ``client``; adapters get theirs through their constructors. Standard AWS
settings (AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL, ...) apply as usual.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

ClientFactory = Callable[..., Any]  # (service, region=None) -> a boto3 client


def client(service: str, region: str | None = None) -> Any:
    """A boto3 client with adaptive retries and bounded timeouts. The region: ``region``, else
    ``AWS_REGION`` (as on Lambda and in the AWS CLI; boto3 < 1.37 reads only the next one), else
    ``AWS_DEFAULT_REGION``, else the profile's."""
    import boto3

    make: Any = boto3.client  # the stubs overload it per service name (a Literal); ours is any service
    return make(service, region_name=_region(region), config=_config())


def _config() -> Any:
    from botocore.config import Config

    return Config(retries={"mode": "adaptive", "max_attempts": 8}, connect_timeout=5, read_timeout=20)


def _region(region: str | None) -> str | None:
    return region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def credentials_client_factory(credentials: Mapping[str, Any], region: str | None = None) -> ClientFactory:
    """A client factory like ``client`` whose clients sign with ``credentials`` (an STS ``Credentials``
    answer: AccessKeyId, SecretAccessKey, SessionToken), e.g. an assumed role in another account.
    ``region`` is the default for clients asked without one. Its own boto3 session: nothing global
    changes, and factories of several accounts can be used side by side (a lock guards the session,
    which is not thread-safe; the clients are)."""
    import threading

    import boto3

    session: Any = boto3.session.Session(aws_access_key_id=credentials["AccessKeyId"],
                                         aws_secret_access_key=credentials["SecretAccessKey"],
                                         aws_session_token=credentials.get("SessionToken"))
    guard = threading.Lock()
    default = _region(region)

    def make(service: str, region: str | None = None) -> Any:
        with guard:
            return session.client(service, region_name=region or default, config=_config())

    return make


# Every helper takes any exception: botocore's connection errors (EndpointConnectionError,
# ReadTimeoutError) have no ``response``, and some carry ``response=None``.

def _response(exc: BaseException) -> dict[str, Any]:
    response = getattr(exc, "response", None)
    return response if isinstance(response, dict) else {}


def _error(exc: BaseException) -> dict[str, Any]:
    err = _response(exc).get("Error")
    return err if isinstance(err, dict) else {}


def error_code(exc: BaseException, default: str | None = None) -> str:
    """The AWS error code (``ConditionalCheckFailedException``, ``AccessDenied``, ``404``, ...);
    without one, ``default`` (None: the exception's type name)."""
    code = _error(exc).get("Code")
    if code:
        return str(code)
    return type(exc).__name__ if default is None else default


def error_message(exc: BaseException, default: str | None = None) -> str:
    """The AWS error message; without one, ``default`` (None: the exception's text)."""
    message = _error(exc).get("Message")
    if message:
        return str(message)
    return str(exc) if default is None else default


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError, or None."""
    meta = _response(exc).get("ResponseMetadata")
    status = meta.get("HTTPStatusCode") if isinstance(meta, dict) else None
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def error_item(exc: BaseException) -> dict[str, Any] | None:
    """The item DynamoDB returns with a failed condition (``ReturnValuesOnConditionCheckFailure``), or None."""
    item = _response(exc).get("Item")
    return item if isinstance(item, dict) else None


def is_code(exc: BaseException, *codes: str) -> bool:
    """Whether the AWS error code is one of ``codes`` (an exception without a code never is)."""
    return error_code(exc, default="") in codes


def cause_code(exc: BaseException) -> str:
    """The AWS error code or HTTP status behind an error, also behind one raised ``from None`` (a StoreError
    wrapping a ClientError or an ApiError); else the exception's type name."""
    for e in (exc, exc.__cause__, exc.__context__):
        code = error_code(e, default="") if e is not None else ""
        if code:
            return code
        status = getattr(e, "status", None)  # an ApiError's HTTP status (reaper.http.client)
        if isinstance(status, int):
            return f"HTTP {status}"
    return type(exc).__name__
