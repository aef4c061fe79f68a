"""The operators' policy file: one YAML document, validated with pydantic.

The same models are used by the Lambda, the CLI and ``cdk synth`` (infra/), so a
bad policy fails the same way everywhere: one line per bad field, naming the
field and its line in the file.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from .durations import format_duration, parse_duration


def _to_timedelta(v: Any) -> Any:
    if isinstance(v, timedelta):
        return v
    if isinstance(v, bool):
        raise ValueError("expected a duration like 90m, 6h or 2d")
    if isinstance(v, int):
        raise ValueError(f"bare number {v} has no unit: write e.g. {v}m, {v}h or {v}d")
    return parse_duration(v)


Duration = Annotated[
    timedelta,
    BeforeValidator(_to_timedelta),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


Globs = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_as_list)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DynamoDBStoreConfig(_Strict):
    type: Literal["dynamodb"]
    table: str = Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
    region: str | None = None
    segments: int = Field(default=1, ge=1, le=32, description="parallel scan segments")
    page_size: int | None = Field(default=None, ge=1, le=10000)

    @property
    def name(self) -> str:
        return f"dynamodb:{self.table}"


StoreConfig = DynamoDBStoreConfig


class Rule(_Strict):
    """First match wins: by glob on the lock path, optionally by operation."""

    name: str | None = None
    match: Globs = Field(min_length=1)
    operations: list[str] | None = None
    max_age: Duration
    hard_max_age: Duration | None = None

    @model_validator(mode="after")
    def _hard_after_max(self) -> "Rule":
        if self.hard_max_age is not None and self.hard_max_age < self.max_age:
            raise ValueError(
                f"hard_max_age ({format_duration(self.hard_max_age)}) must not be shorter "
                f"than max_age ({format_duration(self.max_age)})"
            )
        return self

    @property
    def label(self) -> str:
        return self.name or ",".join(self.match)

    def matches(self, lock_path: str, operation: str | None) -> bool:
        if not any(fnmatch.fnmatchcase(lock_path, g) for g in self.match):
            return False
        if self.operations is not None:
            return operation in self.operations
        return True


class AuditConfig(_Strict):
    s3_bucket: str | None = None
    prefix: str = "lock-reaper/audit/"
    local_dir: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.s3_bucket or self.local_dir)


class MetricsConfig(_Strict):
    enabled: bool = True
    namespace: str = "LockReaper"


class AlertsConfig(_Strict):
    sns_topic_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]+$")
    event_bus: str | None = None  # name or ARN; "default" is allowed
    event_source: str = "lock-reaper"
    metrics: MetricsConfig = MetricsConfig()


class Policy(_Strict):
    mode: Literal["report", "enforce"] = "report"
    max_deletes_per_run: int = Field(default=10, ge=0, le=1000)
    min_age: Duration = timedelta(minutes=15)
    clock_skew: Duration = timedelta(minutes=5)
    stores: list[StoreConfig] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    exclude: Globs = Field(default_factory=list)
    audit: AuditConfig = AuditConfig()
    alerts: AlertsConfig = AlertsConfig()

    @field_validator("stores")
    @classmethod
    def _unique_stores(cls, v: list[StoreConfig]) -> list[StoreConfig]:
        seen: set[str] = set()
        for s in v:
            if s.name in seen:
                raise ValueError(f"store {s.name} is listed twice")
            seen.add(s.name)
        return v

    @model_validator(mode="after")
    def _enforce_needs_audit(self) -> "Policy":
        if self.mode == "enforce" and not self.audit.enabled:
            raise ValueError("mode 'enforce' needs an audit sink: set audit.s3_bucket or audit.local_dir")
        return self

    def rule_for(self, lock_path: str, operation: str | None) -> Rule | None:
        for rule in self.rules:
            if rule.matches(lock_path, operation):
                return rule
        return None

    def excluded_by(self, lock_path: str) -> str | None:
        for g in self.exclude:
            if fnmatch.fnmatchcase(lock_path, g):
                return g
        return None


class ConfigError(Exception):
    """A policy file that cannot be used. ``problems`` has one line per bad field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems) if problems else source)


# Environment variables the deployed Lambda uses to learn the resources the
# stack created, so the operators' policy file need not hard-code ARNs.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "REAPER_AUDIT_BUCKET": ("audit", "s3_bucket"),
    "REAPER_SNS_TOPIC_ARN": ("alerts", "sns_topic_arn"),
    "REAPER_EVENT_BUS": ("alerts", "event_bus"),
    "REAPER_METRICS_NAMESPACE": ("alerts", "metrics", "namespace"),
}


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _locate(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], int | None]:
    """Walk the YAML node tree along a pydantic error location.

    Returns the display location (union tags removed) and the 1-based line of
    the deepest node that exists.
    """
    node = root
    shown: list[Any] = []
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = None
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    found = (k, v)
                    break
            if found is None:
                type_values = [v.value for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "type"]
                if type_values and str(part) in type_values:
                    continue  # discriminated-union tag, not a real key
                shown.append(part)
                node = None
                continue
            shown.append(part)
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            shown.append(part)
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            if not (shown and isinstance(part, str) and part.startswith(("function-", "list["))):
                shown.append(part)
    return tuple(shown), line


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (check the spelling)"
    if err.get("type") == "union_tag_invalid":
        msg = f"unknown store type {err.get('input', {}).get('type')!r}" if isinstance(err.get("input"), dict) else msg
    return msg


def parse_policy(text: str, source: str = "<policy>", env: Mapping[str, str] | None = None) -> Policy:
    """Parse and validate a policy document. Raises ConfigError."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}not valid YAML: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"line 1: the policy must be a mapping, got {type(data).__name__}"])
    for var, path in ENV_OVERRIDES.items():
        value = (env or {}).get(var)
        if value:
            target = data
            for key in path[:-1]:
                nxt = target.get(key)
                if not isinstance(nxt, dict):
                    nxt = {}
                    target[key] = nxt
                target = nxt
            target[path[-1]] = value
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            shown, line = _locate(root, tuple(err["loc"]))
            where = f"line {line}: " if line else ""
            problems.append(f"{where}{_format_loc(shown)}: {_message(err)}")
        raise ConfigError(source, problems) from None


def load_policy(path: str | Path, env: Mapping[str, str] | None = None) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the policy file: {exc.strerror or exc}"]) from None
    return parse_policy(text, source=str(path), env=env)
