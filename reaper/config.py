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
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from .durations import format_duration
from .liveness.settings import LivenessConfig, RuleLiveness, check_rule_mappings
from .policy_types import Globs, Strict as _Strict, as_list as _as_list, duration_type, url_host

Duration = duration_type("90m, 6h or 2d", "mhd")


class DynamoDBStoreConfig(_Strict):
    type: Literal["dynamodb"]
    table: str = Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
    region: str | None = None
    segments: int = Field(default=1, ge=1, le=32, description="parallel scan segments")
    page_size: int | None = Field(default=None, ge=1, le=10000)

    @property
    def name(self) -> str:
        return f"dynamodb:{self.table}"


class S3StoreConfig(_Strict):
    """Terraform's S3 native lock files (``use_lockfile = true``): ``<state key>.tflock`` objects."""

    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    prefixes: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        default_factory=lambda: [""], min_length=1, description="key prefixes to list, e.g. env:/ or prod/"
    )
    region: str | None = None
    page_size: int | None = Field(default=None, ge=1, le=1000)

    @property
    def name(self) -> str:
        return f"s3:{self.bucket}"


class _HTTPStoreConfig(_Strict):
    """Shared by the HTTP-API stores: where, how to authenticate, how long to wait."""

    base_url: str = Field(pattern=r"^https?://[A-Za-z0-9.\[\]:-]+(/[^\s?#]*)?$")
    token_secret: str | None = Field(default=None, min_length=1, description="Secrets Manager secret name or ARN")
    token_env: str | None = Field(default=None, min_length=1, validate_default=True,
                                  description="environment variable holding the token (local runs)")
    timeout: Duration = timedelta(seconds=10)
    max_retry_wait: Duration = timedelta(seconds=30)

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @field_validator("token_env")
    @classmethod
    def _one_token_source(cls, v: str | None, info: ValidationInfo) -> str | None:
        secret = info.data.get("token_secret")
        if v and secret:
            raise ValueError("set token_secret or token_env, not both")
        if not v and not secret:
            raise ValueError("set token_secret (a Secrets Manager secret name or ARN holding the API token) or token_env")
        return v

    @property
    def name(self) -> str:
        return f"{self.type}:{url_host(self.base_url)}"  # type: ignore[attr-defined]


class HCPStoreConfig(_HTTPStoreConfig):
    """HCP Terraform / Terraform Enterprise workspace locks of the listed organizations."""

    type: Literal["hcp"]
    base_url: str = Field(default="https://app.terraform.io", pattern=r"^https?://[A-Za-z0-9.\[\]:-]+(/[^\s?#]*)?$")
    organizations: list[Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")]] = Field(min_length=1)
    grace: Duration = Field(default=timedelta(minutes=10),
                            description="a run must have finished this long ago before its lock counts as dead")
    page_size: int = Field(default=100, ge=1, le=100)


class GitLabStateStoreConfig(_HTTPStoreConfig):
    """GitLab-managed Terraform state (HTTP backend) of the listed projects."""

    type: Literal["gitlab"]
    base_url: str = Field(default="https://gitlab.com", pattern=r"^https?://[A-Za-z0-9.\[\]:-]+(/[^\s?#]*)?$")
    projects: list[Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")]] = Field(min_length=1)
    read_lock_id: bool = Field(default=True, description="learn each lock's ID with POST .../lock (see README, Lock stores)")
    page_size: int = Field(default=100, ge=1, le=100)


StoreConfig = Annotated[
    DynamoDBStoreConfig | S3StoreConfig | HCPStoreConfig | GitLabStateStoreConfig,
    Field(discriminator="type"),
]
STORE_TYPES = ("dynamodb", "s3", "hcp", "gitlab")


class Rule(_Strict):
    """First match wins: by glob on the lock path, optionally by operation."""

    name: str | None = None
    match: Globs = Field(min_length=1)
    operations: list[str] | None = None
    max_age: Duration
    hard_max_age: Duration | None = None
    liveness: RuleLiveness | None = None  # repos/projects whose CI alone takes these locks

    @field_validator("hard_max_age")
    @classmethod
    def _hard_after_max(cls, v: timedelta | None, info: ValidationInfo) -> timedelta | None:
        # a field validator (not a model one), so the error names rules[i].hard_max_age and its line
        max_age = info.data.get("max_age")
        if v is not None and max_age is not None and v < max_age:
            raise ValueError(
                f"hard_max_age ({format_duration(v)}) must not be shorter than max_age ({format_duration(max_age)})"
            )
        return v

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
    audit: AuditConfig = Field(default_factory=AuditConfig, validate_default=True)
    alerts: AlertsConfig = AlertsConfig()
    liveness: LivenessConfig = Field(default_factory=LivenessConfig, validate_default=True)

    @field_validator("liveness")
    @classmethod
    def _rule_mappings(cls, v: LivenessConfig, info: ValidationInfo) -> LivenessConfig:
        check_rule_mappings(info.data.get("rules") or [], v)
        return v

    @field_validator("stores")
    @classmethod
    def _unique_stores(cls, v: list[StoreConfig]) -> list[StoreConfig]:
        seen: set[str] = set()
        for s in v:
            if s.name in seen:
                raise ValueError(f"store {s.name} is listed twice")
            seen.add(s.name)
        return v

    @field_validator("audit")
    @classmethod
    def _enforce_needs_audit(cls, v: AuditConfig, info: ValidationInfo) -> AuditConfig:
        # on the field (validated after mode), so the error names "audit" and its line
        if info.data.get("mode") == "enforce" and not v.enabled:
            raise ValueError(
                "mode 'enforce' needs an audit sink: set audit.s3_bucket (or REAPER_AUDIT_BUCKET) or audit.local_dir"
            )
        return v

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
    "REAPER_CLAIMS_TABLE": ("liveness", "claims", "table"),
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
        msg = (f"unknown store type {err.get('input', {}).get('type')!r} (expected one of {', '.join(STORE_TYPES)})"
               if isinstance(err.get("input"), dict) else msg)
    if err.get("type") == "union_tag_not_found":
        msg = f"missing 'type' (one of {', '.join(STORE_TYPES)})"
    if err.get("type") == "literal_error" and isinstance(err.get("input"), (str, int, float, bool)):
        msg += f", got {err['input']!r}"
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
    from_env: dict[tuple[str, ...], str] = {}
    for var, path in ENV_OVERRIDES.items():
        value = (env or {}).get(var)
        if value:
            from_env[path] = var
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
            var = from_env.get(tuple(str(p) for p in err["loc"]))
            note = f" (value from the environment variable {var})" if var else ""
            problems.append(f"{where}{_format_loc(shown)}: {_message(err)}{note}")
        raise ConfigError(source, problems) from None


def load_policy(path: str | Path, env: Mapping[str, str] | None = None) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the policy file: {exc.strerror or exc}"]) from None
    return parse_policy(text, source=str(path), env=env)
