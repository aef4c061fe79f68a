"""The one error formatter of the policy, the CLI, the Lambda and ``cdk synth`` (infra/).

Every problem is a ``Problem``: ``line N: field: message``. ``pydantic_problems``
turns a pydantic ``ValidationError`` into Problems, given a function that finds
an error location's line in the source document.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

Locate = Callable[[tuple[Any, ...]], tuple[tuple[Any, ...], "int | None"]]


class Problem(str):
    """One error or warning, written ``line N: field: message`` (the one formatter of this module).

    A ``str``, so callers print it as it is; ``line``, ``field`` and ``message`` are
    kept for ``validate --json``.
    """

    line: int | None
    field: str | None
    message: str

    def __new__(cls, line: int | None, field: str | None, message: str) -> Problem:
        self = super().__new__(cls, (f"line {line}: " if line else "") + (f"{field}: " if field else "") + message)
        self.line, self.field, self.message = line, field, message
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


def by_line(found: list[Problem]) -> list[Problem]:
    return sorted(found, key=lambda p: p.line or 0)


class ConfigError(Exception):
    """A policy file that cannot be used. ``problems`` has one line per bad field, ``warnings`` those found too."""

    def __init__(self, source: str, problems: list[Problem], warnings: list[Problem] | None = None):
        self.source = source
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("\n".join(f"{source}: {p}" for p in problems) if problems else source)


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def message(err: Mapping[str, Any], store_types: tuple[str, ...] = ()) -> str:
    """One pydantic error's message, in the policy's words."""
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (check the spelling)"
    if err.get("type") == "union_tag_invalid":
        msg = (f"unknown store type {err.get('input', {}).get('type')!r} (expected one of {', '.join(store_types)})"
               if isinstance(err.get("input"), dict) else msg)
    if err.get("type") == "union_tag_not_found":
        msg = f"missing 'type' (one of {', '.join(store_types)})"
    if err.get("type") == "literal_error" and isinstance(err.get("input"), (str, int, float, bool)):
        msg += f", got {err['input']!r}"
    return msg


def pydantic_problems(exc: ValidationError, locate: Locate, store_types: tuple[str, ...] = (),
                      note: Callable[[tuple[Any, ...]], str] | None = None) -> list[Problem]:
    """One Problem per pydantic error: ``locate(loc)`` gives the shown location and its line."""
    found = []
    for err in exc.errors():
        shown, line = locate(tuple(err["loc"]))
        extra = note(tuple(err["loc"])) if note is not None else ""
        found.append(Problem(line, format_loc(shown), message(err, store_types) + extra))
    return found
