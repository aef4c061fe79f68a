"""What one scheduled invocation does: parse the event, load the shipped policy, run a cycle."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .policy import load_policy

# The stack copies the operators' policy file to the asset root (/var/task/policy.yaml).
DEFAULT_POLICY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "policy.yaml")


class InvalidEvent(ValueError):
    """The invocation's event cannot be used (e.g. an unknown mode)."""


class ScheduledEvent(BaseModel):
    """EventBridge Scheduler input. Any extra fields are ignored; ``mode`` overrides the policy for one run."""

    model_config = ConfigDict(extra="ignore")

    mode: Literal["report", "enforce"] | None = None


def run_scheduled(event: Mapping[str, Any] | None, env: Mapping[str, str], metrics: Any = None, build=None) -> dict[str, Any]:
    from .wiring import Deps, build_reaper

    try:
        parsed = ScheduledEvent.model_validate(event or {})
    except ValidationError as exc:  # one readable line, nothing scanned
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}"
            + (f", got {e['input']!r}" if e["loc"] else f", got {type(e['input']).__name__}")
            for e in exc.errors()
        )
        raise InvalidEvent(f"invalid event: {problems}") from None
    policy = load_policy(env.get("REAPER_POLICY_FILE", DEFAULT_POLICY), env=env)
    reaper = (build or build_reaper)(policy, Deps(env=env), metrics=metrics)  # tokens from the invocation's env
    report = reaper.run(mode=parsed.mode or policy.mode)
    return report.model_dump(mode="json")
