"""The policy's pydantic models: stores, rules, audit, alerts, and the whole ``Policy``.

The same models are used by the Lambda, the CLI and ``cdk synth`` (infra/), so a
bad policy fails the same way everywhere: one line per bad field, naming the
field and its line in the file.
"""

from __future__ import annotations

import fnmatch
from datetime import timedelta
from typing import Annotated, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..durations import format_duration
from .checks import CROSS_CHECKED, cross_errors
from .liveness import LivenessConfig, RuleLiveness
from .types import DEFAULT_MIN_AGE, Duration, Globs, Operations, url_host
from .types import Strict as _Strict
from .types import as_list as _as_list


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

    kind: ClassVar[str]  # the store type, as its ``type`` field says it

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
        return f"{self.kind}:{url_host(self.base_url)}"


class HCPStoreConfig(_HTTPStoreConfig):
    """HCP Terraform / Terraform Enterprise workspace locks of the listed organizations."""

    kind: ClassVar[str] = "hcp"
    type: Literal["hcp"]
    base_url: str = Field(default="https://app.terraform.io", pattern=r"^https?://[A-Za-z0-9.\[\]:-]+(/[^\s?#]*)?$")
    organizations: list[Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")]] = Field(min_length=1)
    grace: Duration = Field(default=timedelta(minutes=10),
                            description="a run must have finished this long ago before its lock counts as dead")
    page_size: int = Field(default=100, ge=1, le=100)


class GitLabStateStoreConfig(_HTTPStoreConfig):
    """GitLab-managed Terraform state (HTTP backend) of the listed projects."""

    kind: ClassVar[str] = "gitlab"
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
    operations: Operations | None = None  # short forms (Plan) become OperationTypePlan
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


class DigestConfig(_Strict):
    """Report mode's digest: one SNS message (to sns_topic_arn) listing what would have been reaped,
    at most once per ``every``; sent by the scheduled function (reaper/runs.py)."""

    enabled: bool = False
    every: Duration = timedelta(days=1)


class AlertsConfig(_Strict):
    sns_topic_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]+$")
    event_bus: str | None = None  # name or ARN; "default" is allowed
    event_source: str = "lock-reaper"
    metrics: MetricsConfig = MetricsConfig()
    digest: DigestConfig = DigestConfig()


class Policy(_Strict):
    mode: Literal["report", "enforce"] = "report"
    max_deletes_per_run: int = Field(default=10, ge=0, le=1000)
    min_age: Duration = DEFAULT_MIN_AGE
    clock_skew: Duration = timedelta(minutes=5)
    stores: list[StoreConfig] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    exclude: Globs = Field(default_factory=list)
    audit: AuditConfig = Field(default_factory=AuditConfig, validate_default=True)
    alerts: AlertsConfig = AlertsConfig()
    liveness: LivenessConfig = Field(default_factory=LivenessConfig, validate_default=True)

    @model_validator(mode="after")
    def _cross_fields(self, info: ValidationInfo) -> Policy:
        # parse_policy runs these checks itself, on the raw document, so that they are
        # reported with the field errors, each at its line; this guards direct construction
        if not (info.context or {}).get(CROSS_CHECKED):
            found = cross_errors(self.model_dump(mode="json"), None)
            if found:
                raise ValueError("; ".join(found))
        return self

    @field_validator("stores")
    @classmethod
    def _unique_stores(cls, v: list[StoreConfig]) -> list[StoreConfig]:
        seen: set[str] = set()
        for s in v:
            if s.name in seen:
                raise ValueError(f"store {s.name} is listed twice")
            seen.add(s.name)
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
