"""reaper.aws error helpers on real botocore exceptions, and on exceptions that are not AWS errors."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from reaper.aws import error_code, error_item, error_message, http_status, is_code

ITEM = {"LockID": {"S": "bucket/env/prod.tfstate"}, "Info": {"S": '{"ID": "abc"}'}}


def client_error(code: str | None = "ConditionalCheckFailedException", message: str | None = "The conditional request failed",
                 status: int | None = 400, item: dict | None = None, op: str = "DeleteItem") -> ClientError:
    response: dict = {}
    if code is not None or message is not None:
        response["Error"] = {k: v for k, v in (("Code", code), ("Message", message)) if v is not None}
    if status is not None:
        response["ResponseMetadata"] = {"HTTPStatusCode": status, "RequestId": "r-1"}
    if item is not None:
        response["Item"] = item
    return ClientError(response, op)  # type: ignore[arg-type]


def test_client_error_code_message_status() -> None:
    exc = client_error()
    assert error_code(exc) == "ConditionalCheckFailedException"
    assert error_code(exc, default="") == "ConditionalCheckFailedException"
    assert error_message(exc) == "The conditional request failed"
    assert http_status(exc) == 400
    assert is_code(exc, "ThrottlingException", "ConditionalCheckFailedException")
    assert not is_code(exc, "AccessDenied")


def test_s3_head_object_404_has_a_numeric_code_and_no_message() -> None:
    # HeadObject has no body: botocore makes the code the status text ("404") and the message "Not Found"
    exc = client_error(code="404", message="Not Found", status=404, op="HeadObject")
    assert (error_code(exc), error_message(exc), http_status(exc)) == ("404", "Not Found", 404)
    bare = client_error(code="403", message=None, status=403, op="HeadObject")
    assert error_message(bare, default="") == ""
    assert error_message(bare) == str(bare)  # botocore's own text: "An error occurred (403) when calling ..."
    assert "HeadObject" in error_message(bare)


def test_condition_check_failure_item() -> None:
    assert error_item(client_error(item=ITEM)) == ITEM
    assert error_item(client_error()) is None  # the key was absent: no Item came back


def test_response_without_error() -> None:
    exc = client_error(code=None, message=None, status=500)
    assert error_code(exc) == "ClientError"  # the type's name
    assert error_code(exc, default="") == ""
    assert error_message(exc, default="") == ""
    assert http_status(exc) == 500
    assert error_item(exc) is None
    assert not is_code(exc, "ClientError")  # a type name is not an AWS error code


def test_response_without_metadata() -> None:
    exc = client_error(status=None)
    assert http_status(exc) is None and error_code(exc) == "ConditionalCheckFailedException"


@pytest.mark.parametrize("exc", [
    ValueError("boom"),
    EndpointConnectionError(endpoint_url="https://dynamodb.eu-west-1.amazonaws.com"),
    ReadTimeoutError(endpoint_url="https://s3.amazonaws.com"),
])
def test_not_a_client_error(exc: Exception) -> None:
    assert error_code(exc) == type(exc).__name__
    assert error_code(exc, default="") == ""
    assert error_message(exc) == str(exc)
    assert error_message(exc, default="-") == "-"
    assert http_status(exc) is None
    assert error_item(exc) is None
    assert not is_code(exc, type(exc).__name__)


@pytest.mark.parametrize("response", [
    None, "not a dict", {"Error": "not a dict", "ResponseMetadata": None, "Item": []},
    {"ResponseMetadata": {"HTTPStatusCode": "400"}}, {"ResponseMetadata": {"HTTPStatusCode": True}},
])
def test_malformed_response_attribute(response: object) -> None:
    exc = RuntimeError("odd")
    exc.response = response  # type: ignore[attr-defined]
    assert error_code(exc) == "RuntimeError" and error_message(exc) == "odd"
    assert http_status(exc) is None and error_item(exc) is None


def test_code_and_message_are_strings() -> None:
    exc = RuntimeError("odd")
    exc.response = {"Error": {"Code": 404, "Message": 7}}  # type: ignore[attr-defined]
    assert (error_code(exc), error_message(exc)) == ("404", "7")
