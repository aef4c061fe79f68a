"""The ``reaper`` context block of cdk.json, validated with pydantic.

``load_settings`` turns the raw context into :class:`ReaperSettings`;
``load_checked_policy`` validates the operators' policy file with the very
models the Lambda uses (``reaper.policy.load_policy``) and cross-checks it
against the context, so ``cdk synth`` fails before building anything, with one
line per problem naming the bad field (and, for the policy, its line).

Nothing here talks to AWS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from reaper.policy import ConfigError, Policy, load_policy

CONTEXT_KEY = "reaper"

# CloudWatch Logs accepts only these retention periods (days -> aws_logs.RetentionDays member name).
RETENTION_DAYS: dict[int, str] = {
    1: "ONE_DAY",
    3: "THREE_DAYS",
    5: "FIVE_DAYS",
    7: "ONE_WEEK",
    14: "TWO_WEEKS",
    30: "ONE_MONTH",
    60: "TWO_MONTHS",
    90: "THREE_MONTHS",
    120: "FOUR_MONTHS",
    150: "FIVE_MONTHS",
    180: "SIX_MONTHS",
    365: "ONE_YEAR",
    400: "THIRTEEN_MONTHS",
    545: "EIGHTEEN_MONTHS",
    731: "TWO_YEARS",
    1096: "THREE_YEARS",
    1827: "FIVE_YEARS",
    2192: "SIX_YEARS",
    2557: "SEVEN_YEARS",
    2922: "EIGHT_YEARS",
    3288: "NINE_YEARS",
    3653: "TEN_YEARS",
}

_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\(\S+ \S+ \S+ \S+ \S+ \S+\)$")
_TABLE = r"^[A-Za-z0-9_.-]{3,255}$"
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_SECRET_NAME = r"^[A-Za-z0-9/_+=.@-]{1,512}$"
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$")
_KMS_KEY_ARN = r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/(mrk-[0-9a-f]{32}|[0-9a-fA-F-]{36})$"

# Placeholders for the resources the stack creates, used only to validate the
# policy as the deployed Lambda will see it (the stack sets these variables).
_DEPLOYED_ENV = {"REAPER_AUDIT_BUCKET": "audit-bucket-created-by-the-stack"}

TableName = Annotated[str, Field(pattern=_TABLE)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _bucket_shorthand(v: Any) -> Any:
    return {"bucket": v} if isinstance(v, str) else v


class StateBucket(_Strict):
    """A Terraform state bucket: its lock files (``*.tflock``) and, optionally, its state objects."""

    bucket: str = Field(pattern=_BUCKET)
    prefixes: list[str] = Field(default_factory=list, description="state key prefixes; empty means the whole bucket")

    @field_validator("prefixes")
    @classmethod
    def _plain_prefixes(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p or any(c in p for c in "*?") or p.startswith("/"):
                raise ValueError(f"prefix {p!r} must be a plain, non-empty key prefix (no wildcards, no leading /)")
        return v


class ReaperSettings(_Strict):
    """cdk.json ``context.reaper``. Every field has a safe default."""

    policy_file: str = Field(default="config/policy.yaml", min_length=1)
    stack_name: str = Field(default="LockReaper", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
    account: str | None = Field(default=None, pattern=r"^\d{12}$")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    schedule: str = "rate(15 minutes)"
    schedule_timezone: str | None = None
    schedule_enabled: bool = True
    alert_emails: list[Annotated[str, Field(pattern=_EMAIL)]] = Field(default_factory=list)
    lock_tables: list[TableName] = Field(default_factory=list)
    state_buckets: list[Annotated[StateBucket, BeforeValidator(_bucket_shorthand)]] = Field(default_factory=list)
    state_activity_evidence: bool = Field(
        default=False,
        description="allow HeadObject (s3:GetObject) on *.tfstate objects of the state buckets, for state-activity liveness",
    )
    ci_token_secrets: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    kms_key_arns: list[str] = Field(default_factory=list)
    event_bus: str = Field(default="default", min_length=1)
    claims_table: TableName = "lock-reaper-claims"
    log_retention_days: int = 90
    audit_retention_days: int = Field(default=0, ge=0, description="expire audit records after N days; 0 keeps them")
    memory_mb: int = Field(default=512, ge=128, le=10240)
    timeout_minutes: int = Field(default=14, ge=1, le=15)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        m = _RATE.match(v)
        if m:
            n, unit = int(m.group(1)), m.group(2)
            if n < 1:
                raise ValueError(f"{v!r}: the rate must be at least 1")
            if (n == 1) != (not unit.endswith("s")):
                want = unit.rstrip("s") if n == 1 else unit + ("" if unit.endswith("s") else "s")
                raise ValueError(f"{v!r}: write rate({n} {want}) (singular unit for 1, plural otherwise)")
            return v
        if _CRON.match(v):
            return v
        raise ValueError(f"{v!r} is not an EventBridge Scheduler expression: use rate(15 minutes) or cron(0/15 * * * ? *)")

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        if v not in RETENTION_DAYS:
            raise ValueError(f"{v} is not a CloudWatch Logs retention; choose one of {sorted(RETENTION_DAYS)}")
        return v

    @field_validator("ci_token_secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        for s in v:
            if s.startswith("arn:"):
                if not _SECRET_ARN.match(s):
                    raise ValueError(f"{s!r} is not a Secrets Manager secret ARN")
            elif not re.match(_SECRET_NAME, s):
                raise ValueError(f"{s!r} is not a Secrets Manager secret name")
        return v

    @field_validator("kms_key_arns")
    @classmethod
    def _kms(cls, v: list[str]) -> list[str]:
        for k in v:
            if ":alias/" in k:
                raise ValueError(f"{k!r} is an alias: IAM grants key use by key ARN only, give arn:...:key/<key id>")
            if not re.match(_KMS_KEY_ARN, k):
                raise ValueError(f"{k!r} is not a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>)")
        return v

    @field_validator("event_bus")
    @classmethod
    def _bus(cls, v: str) -> str:
        if v.startswith("arn:"):
            if not re.match(r"^arn:aws[a-z-]*:events:[a-z0-9-]+:\d{12}:event-bus/[\w.\-/]+$", v):
                raise ValueError(f"{v!r} is not an EventBridge event bus ARN")
        elif not re.match(r"^[\w.\-/]{1,256}$", v):
            raise ValueError(f"{v!r} is not an event bus name")
        return v

    # ----- derived -------------------------------------------------------
    def bucket(self, name: str) -> StateBucket | None:
        return next((b for b in self.state_buckets if b.bucket == name), None)


class SettingsError(Exception):
    """The context or the policy cannot be deployed. ``problems`` has one line per bad field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _format_loc(loc: Iterable[Any]) -> str:
    out = f"context.{CONTEXT_KEY}"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "list[")):
            continue
        else:
            out += f".{part}"
    return out


_WHAT = {
    "alert_emails": "email address",
    "bucket": "S3 bucket name",
    "lock_tables": "DynamoDB table name",
    "claims_table": "DynamoDB table name",
    "account": "AWS account id (12 digits)",
    "region": "AWS region name (like eu-west-1)",
    "stack_name": "CloudFormation stack name",
}


def load_settings(raw: Any) -> ReaperSettings:
    """Validate the raw ``reaper`` context value (a dict, or None for all defaults)."""
    if raw is None:
        raw = {}
    if isinstance(raw, str):  # `cdk synth -c reaper='{"schedule": ...}'` passes a string
        import json

        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise SettingsError([f"context.{CONTEXT_KEY}: not valid JSON: {exc}"]) from None
    if not isinstance(raw, Mapping):
        raise SettingsError([f"context.{CONTEXT_KEY}: must be an object, got {type(raw).__name__}"])
    try:
        return ReaperSettings.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = str(err.get("msg", "invalid"))
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if err.get("type") == "extra_forbidden":
                msg = "unknown field (check the spelling)"
            if err.get("type") == "string_pattern_mismatch":
                field = next((str(p) for p in reversed(err["loc"]) if isinstance(p, str)), "")
                msg = f"{err.get('input')!r} is not a valid {_WHAT.get(field, 'value')}"
            problems.append(f"{_format_loc(err['loc'])}: {msg}")
        raise SettingsError(problems) from None


_SECRET_KEY = re.compile(r"(^|_)secret(_name|_id|_arn)?s?$")


def _policy_secret_names(data: Any, path: str = "") -> Iterable[tuple[str, str]]:
    """(field path, secret name) for every string under a key named like ``secret`` / ``token_secret``."""
    if isinstance(data, Mapping):
        for k, v in data.items():
            here = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _SECRET_KEY.search(k):
                values = [v] if isinstance(v, str) else v if isinstance(v, list) else []
                for s in values:
                    if isinstance(s, str) and s:
                        yield here, s
            else:
                yield from _policy_secret_names(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _policy_secret_names(v, f"{path}[{i}]")


def _policy_token_envs(data: Any, path: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(data, Mapping):
        for k, v in data.items():
            here = f"{path}.{k}" if path else str(k)
            if k == "token_env" and isinstance(v, str) and v:
                yield here, v
            else:
                yield from _policy_token_envs(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _policy_token_envs(v, f"{path}[{i}]")


def _secret_name(ref: str) -> str:
    """The secret name of a name or an ARN (the ARN's random -XXXXXX suffix removed)."""
    if ref.startswith("arn:"):
        name = ref.split(":secret:", 1)[1]
        return re.sub(r"-[A-Za-z0-9]{6}$", "", name)
    return ref


def _yaml_line(text: str | None, path: str) -> str:
    """``"line N: "`` for a dotted/indexed path like ``stores[0].table`` in the policy text, or ``""``."""
    if not text:
        return ""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return ""
    line = None
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and part.startswith("["):
            i = int(part[1:-1])
            if i >= len(node.value):
                break
            node = node.value[i]
            line = node.start_mark.line + 1
        else:
            break
    return f"line {line}: " if line else ""


def cross_check(
    policy: Policy, settings: ReaperSettings, source: str, text: str | None = None
) -> tuple[list[str], list[str]]:
    """Problems (fail the synth) and warnings (printed) between the policy and the context.

    ``text`` (the policy file's content) lets each message name the line.
    """
    problems: list[str] = []
    warnings: list[str] = []

    def at(path: str) -> str:
        return f"{source}: {_yaml_line(text, path)}{path}"
    tables = set(settings.lock_tables)
    used_tables: set[str] = set()
    for i, store in enumerate(policy.stores):
        table = getattr(store, "table", None)
        if isinstance(table, str):
            used_tables.add(table)
            if table not in tables:
                problems.append(
                    f"{at(f'stores[{i}].table')}: table {table!r} is not in context.{CONTEXT_KEY}.lock_tables "
                    f"({', '.join(sorted(tables)) or 'empty'}): add it there so the Lambda may scan it"
                )
        bucket = getattr(store, "bucket", None)
        if isinstance(bucket, str):
            granted = settings.bucket(bucket)
            if granted is None:
                problems.append(
                    f"{at(f'stores[{i}].bucket')}: bucket {bucket!r} is not in context.{CONTEXT_KEY}.state_buckets: "
                    "add it there so the Lambda may list and delete its lock files"
                )
            elif granted.prefixes:
                for p in getattr(store, "prefixes", None) or [""]:
                    if not any(p.startswith(g) for g in granted.prefixes):
                        problems.append(
                            f"{at(f'stores[{i}].prefixes')}: prefix {p!r} of bucket {bucket!r} is outside the prefixes "
                            f"granted in context.{CONTEXT_KEY}.state_buckets ({', '.join(granted.prefixes)})"
                        )
    for t in sorted(tables - used_tables):
        warnings.append(f"context.{CONTEXT_KEY}.lock_tables: {t!r} is granted but no store in {source} scans it")
    allowed = {_secret_name(s) for s in settings.ci_token_secrets}
    for where, name in _policy_secret_names(policy.model_dump(mode="json")):
        if _secret_name(name) not in allowed:
            problems.append(
                f"{at(where)}: secret {name!r} is not in context.{CONTEXT_KEY}.ci_token_secrets: "
                "add it there so the Lambda may read it"
            )
    for where, var in _policy_token_envs(policy.model_dump(mode="json")):
        warnings.append(
            f"{at(where)}: the deployed function has no environment variable {var!r}: use a token_secret "
            f"listed in context.{CONTEXT_KEY}.ci_token_secrets"
        )
    liveness = getattr(policy, "liveness", None)
    state_activity = getattr(liveness, "state_activity", None)
    if (
        state_activity is not None
        and "state_activity" in liveness.model_fields_set
        and getattr(state_activity, "enabled", False)
        and not settings.state_activity_evidence
    ):
        warnings.append(
            f"{at('liveness.state_activity')}: enabled but context.{CONTEXT_KEY}.state_activity_evidence is false: "
            "the function may not read state objects, so that evidence stays unknown"
        )
    if not policy.alerts.metrics.enabled:
        warnings.append(f"{at('alerts.metrics.enabled')}: false, so the reaped/cap/unparseable alarms never fire")
    return problems, warnings


def load_checked_policy(settings: ReaperSettings, root: Path) -> tuple[Policy, Path, list[str]]:
    """Load the policy file named by the context; (policy, its path, warnings). Raises SettingsError."""
    path = Path(settings.policy_file)
    if not path.is_absolute():
        path = root / path
    shown = settings.policy_file
    env = dict(_DEPLOYED_ENV)
    env["REAPER_EVENT_BUS"] = settings.event_bus
    env["REAPER_CLAIMS_TABLE"] = settings.claims_table
    try:
        policy = load_policy(path, env=env)
    except ConfigError as exc:
        raise SettingsError([f"{shown}: {p}" for p in exc.problems] or [str(exc)]) from None
    problems, warnings = cross_check(policy, settings, shown, path.read_text(encoding="utf-8"))
    if problems:
        raise SettingsError(problems)
    return policy, path, warnings
