"""Field types the policy models share (``reaper.policy`` and ``reaper.policy.liveness``).

Pure pydantic (no I/O): durations written as text (``90m``, ``6h``, ``2d``),
lists of globs that may be written as one string, Terraform operation names, plus
the strict base model.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from ..durations import format_duration, parse_duration


class Strict(BaseModel):
    """Unknown keys are errors; values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def duration_type(examples: str, units: str) -> Any:
    """A ``timedelta`` field written as text (``"90m"``), serialised back to text in JSON.

    ``examples`` and ``units`` only word the errors: ``examples`` ("90m, 6h or 2d")
    for a value that is not a duration, ``units`` ("mhd") for a bare number, which
    is refused with e.g. "bare number 90 has no unit: write e.g. 90m, 90h or 90d".
    """

    def to_timedelta(v: Any) -> Any:
        if isinstance(v, timedelta):
            return v
        if isinstance(v, bool):
            raise ValueError(f"expected a duration like {examples}")
        if isinstance(v, int):
            written = [f"{v}{u}" for u in units]
            hint = written[0] if len(written) == 1 else ", ".join(written[:-1]) + f" or {written[-1]}"
            raise ValueError(f"bare number {v} has no unit: write e.g. {hint}")
        return parse_duration(v)

    return Annotated[
        timedelta,
        BeforeValidator(to_timedelta),
        PlainSerializer(format_duration, return_type=str, when_used="json"),
    ]


def as_list(v: Any) -> Any:
    """One string stands for a list of one."""
    return [v] if isinstance(v, str) else v


def _globs(v: Any) -> Any:
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list):
        raise ValueError(f"should be a glob string or a list of globs, got {v!r}")
    return v


Globs = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_globs)]

# What Terraform/OpenTofu write in a lock's Info.Operation: plan, apply and refresh
# write their backend OperationType name (import and console: OperationTypeInvalid);
# the state, taint and workspace commands write the command's own reason string;
# GitLab-managed state keeps no operation (""). The short forms stand for the type names.
OPERATION_TYPES = ("OperationTypeInvalid", "OperationTypeRefresh", "OperationTypePlan", "OperationTypeApply")
COMMAND_OPERATIONS = ("state-mv", "state-rm", "state-push", "state-replace-provider", "taint", "untaint",
                      "workspace-new", "workspace_new", "workspace_delete", "")
_SHORT_OPERATIONS = {t.removeprefix("OperationType"): t for t in OPERATION_TYPES}


def _operation(v: str) -> str:
    if v in OPERATION_TYPES or v in COMMAND_OPERATIONS:
        return v
    if v in _SHORT_OPERATIONS:
        return _SHORT_OPERATIONS[v]
    accepted = [*OPERATION_TYPES, *_SHORT_OPERATIONS, *(repr(c) if not c else c for c in COMMAND_OPERATIONS)]
    raise ValueError(f"unknown operation {v!r}: this rule would never match it (accepted: {', '.join(accepted)})")


def _some_operations(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("an empty list matches no lock: leave operations out to match every operation")
    return v


Operations = Annotated[list[Annotated[str, AfterValidator(_operation)]], BeforeValidator(as_list),
                       AfterValidator(_some_operations)]


def matching(pattern: str, what: str) -> AfterValidator:
    """A string that must match ``pattern`` (whole), refused as "'x' is not a valid <what>"."""
    rx = re.compile(pattern)

    def check(v: str) -> str:
        if not rx.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid {what}")
        return v

    return AfterValidator(check)


def url_host(url: str) -> str:
    """``https://gitlab.example.com/api/v4`` -> ``gitlab.example.com``: how store names show an API."""
    return url.split("://", 1)[-1].split("/", 1)[0]


# The policy's durations (min_age, max_age, clock_skew, store timeouts) and the default floor.
if TYPE_CHECKING:  # to the type checker a duration field is a timedelta; at run time it also parses "6h"
    Duration = timedelta
else:
    Duration = duration_type("90m, 6h or 2d", "mhd")
DEFAULT_MIN_AGE = timedelta(minutes=15)
