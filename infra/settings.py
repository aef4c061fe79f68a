"""The ``reaper`` context block of cdk.json, validated with pydantic.

``load_settings`` turns the raw context into :class:`ReaperSettings`;
``load_checked_policy`` validates the operators' policy file with the very
models the Lambda uses (``reaper.policy.load_policy``) and cross-checks it
against the context, so ``cdk synth`` fails before building anything, with one
line per problem naming the bad field (and, for the policy, its line).

It reuses the policy's own machinery: the strict base model
(``reaper.policy.types.Strict``), the one error formatter
(``reaper.policy.errors``: ``Problem``, ``pydantic_problems``; ``SettingsError``
is a ``ConfigError``), the YAML line numbers (``reaper.policy.lines``) and the
``REAPER_*`` variables (``reaper.policy.env``).

Nothing here talks to AWS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, field_validator

from reaper.policy import ConfigError, Policy, Problem, load_policy
from reaper.policy import env as reaper_env
from reaper.policy.errors import format_loc, pydantic_problems
from reaper.policy.lines import load_yaml, locate
from reaper.policy.types import Strict, matching

CONTEXT_KEY = "reaper"
CONTEXT = f"context.{CONTEXT_KEY}"  # how problems name the block

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


def _retention(v: int) -> int:
    if v not in RETENTION_DAYS:
        raise ValueError(f"{v} is not a CloudWatch Logs retention; choose one of {sorted(RETENTION_DAYS)}")
    return v


RetentionDays = Annotated[int, AfterValidator(_retention)]  # a retention CloudWatch Logs accepts

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
_DEPLOYED_ENV = {reaper_env.AUDIT_BUCKET: "audit-bucket-created-by-the-stack"}


TableName = Annotated[str, matching(_TABLE, "DynamoDB table name")]


def _bucket_shorthand(v: Any) -> Any:
    return {"bucket": v} if isinstance(v, str) else v


class StateBucket(Strict):
    """A Terraform state bucket: its lock files (``*.tflock``) and, optionally, its state objects."""

    bucket: Annotated[str, matching(_BUCKET, "S3 bucket name")]
    prefixes: list[str] = Field(default_factory=list, description="state key prefixes; empty means the whole bucket")

    @field_validator("prefixes")
    @classmethod
    def _plain_prefixes(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p or any(c in p for c in "*?") or p.startswith("/"):
                raise ValueError(f"prefix {p!r} must be a plain, non-empty key prefix (no wildcards, no leading /)")
        return v


class ReaperSettings(Strict):
    """cdk.json ``context.reaper``. Every field has a safe default."""

    policy_file: str = Field(default="config/policy.yaml", min_length=1)
    stack_name: Annotated[str, matching(r"^[A-Za-z][A-Za-z0-9-]{0,127}$", "CloudFormation stack name")] = "LockReaper"
    account: Annotated[str, matching(r"^\d{12}$", "AWS account id (12 digits)")] | None = None
    region: Annotated[str, matching(r"^[a-z]{2}(-[a-z]+)+-\d$", "AWS region name (like eu-west-1)")] | None = None
    schedule: str = "rate(15 minutes)"
    schedule_timezone: str | None = None
    schedule_enabled: bool = True
    alert_emails: list[Annotated[str, matching(_EMAIL, "email address")]] = Field(default_factory=list)
    lock_tables: list[TableName] = Field(default_factory=list)
    state_buckets: list[Annotated[StateBucket, BeforeValidator(_bucket_shorthand)]] = Field(default_factory=list)
    state_activity_evidence: bool = Field(
        default=False,
        description="allow HeadObject (s3:GetObject) on *.tfstate objects of the state buckets, for state-activity liveness",
    )
    ci_token_secrets: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    kms_key_arns: list[str] = Field(default_factory=list)
    event_bus: str = Field(default="default", min_length=1)
    alert_topic: bool = Field(
        default=True,
        description="create the SNS alert topic (alarms, reap reports); false for a member that alerts through "
        "the central account (context.org.member.forward_events)",
    )
    claims_table: TableName = "lock-reaper-claims"
    log_retention_days: RetentionDays = 90
    audit_retention_days: int = Field(default=0, ge=0, description="expire audit records after N days; 0 keeps them")
    memory_mb: int = Field(default=512, ge=128, le=10240)
    timeout_minutes: int = Field(default=14, ge=1, le=15)
    reserved_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="reserve this many concurrent executions for the function; none by default (the run lease "
        "keeps runs apart, and a reservation fails the deploy on an account whose concurrency limit is still 10)",
    )

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

    @property
    def state_activity_granted(self) -> bool:
        """Whether the role may head state objects (``StateObjectsHead``): the flag on and a state bucket named."""
        return self.state_activity_evidence and bool(self.state_buckets)

    @property
    def timeout_seconds(self) -> int:
        return self.timeout_minutes * 60


class SettingsError(ConfigError):
    """The context or the policy cannot be deployed: a ``ConfigError`` with one ``Problem`` per bad field.

    Each problem names its place itself: ``context.reaper.<field>: ...`` for the
    context, ``<policy file>: line N: <field>: ...`` for the policy (``SourcedProblem``).
    """

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None):
        super().__init__("cdk synth", problems, warnings)
        self.args = ("\n".join(problems),)


class SourcedProblem(Problem):
    """A ``Problem`` of a named file, written ``<source>: line N: field: message``."""

    source: str

    def __new__(cls, source: str, line: int | None, field: str | None, message: str) -> SourcedProblem:
        plain = Problem(line, field, message)
        self = str.__new__(cls, f"{source}: {plain}")
        self.source, self.line, self.field, self.message = source, line, field, message
        return self

    @classmethod
    def of(cls, source: str, problem: Problem) -> SourcedProblem:
        return cls(source, getattr(problem, "line", None), getattr(problem, "field", None),
                   getattr(problem, "message", str(problem)))


def _context_locate(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], int | None]:
    """A context error's location as ``context.reaper.<field>`` (validator names dropped); no line."""
    return (CONTEXT, *(p for p in loc if not str(p).startswith(("function-", "list[")))), None


def context_object(raw: Any, key: str) -> dict[str, Any]:
    """A context value as a dict: None gives {}, a string (``cdk synth -c reaper='{...}'`` passes one)
    is parsed as JSON; anything else that is not an object is refused, naming ``key``."""
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise SettingsError([Problem(None, key, f"not valid JSON: {exc}")]) from None
    if not isinstance(raw, Mapping):
        raise SettingsError([Problem(None, key, f"must be an object, got {type(raw).__name__}")])
    return dict(raw)


def load_settings(raw: Any) -> ReaperSettings:
    """Validate the raw ``reaper`` context value (a dict, or None for all defaults)."""
    raw = context_object(raw, CONTEXT)
    try:
        return ReaperSettings.model_validate(dict(raw))
    except ValidationError as exc:
        raise SettingsError(pydantic_problems(exc, _context_locate)) from None


_SECRET_KEY = re.compile(r"(^|_)secret(_name|_id|_arn)?s?$")

Loc = tuple[Any, ...]


def _policy_secret_names(data: Any, loc: Loc = ()) -> Iterable[tuple[Loc, str]]:
    """(location, secret name) for every string under a key named like ``secret`` / ``token_secret``."""
    if isinstance(data, Mapping):
        for k, v in data.items():
            here = (*loc, k)
            if isinstance(k, str) and _SECRET_KEY.search(k):
                values = [v] if isinstance(v, str) else v if isinstance(v, list) else []
                for s in values:
                    if isinstance(s, str) and s:
                        yield here, s
            else:
                yield from _policy_secret_names(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _policy_secret_names(v, (*loc, i))


def _policy_token_envs(data: Any, loc: Loc = ()) -> Iterable[tuple[Loc, str]]:
    if isinstance(data, Mapping):
        for k, v in data.items():
            here = (*loc, k)
            if k == "token_env" and isinstance(v, str) and v:
                yield here, v
            else:
                yield from _policy_token_envs(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _policy_token_envs(v, (*loc, i))


def _secret_name(ref: str) -> str:
    """The secret name of a name or an ARN (the ARN's random -XXXXXX suffix removed)."""
    if ref.startswith("arn:"):
        name = ref.split(":secret:", 1)[1]
        return re.sub(r"-[A-Za-z0-9]{6}$", "", name)
    return ref


At = Callable[[Loc, str], Problem]  # (location in the policy, message) -> "<file>: line N: <location>: <message>"


def _policy_at(source: str, text: str | None) -> At:
    """Problems of the policy file ``source``, each at the line of its location's deepest node in ``text``."""
    root = None
    if text:
        try:
            root = load_yaml(text, source)[0]
        except ConfigError:  # not YAML: the problems name no line
            pass

    def at(loc: Loc, message: str) -> Problem:
        return SourcedProblem(source, locate(root, loc)[1], format_loc(loc), message)

    return at


def _store_problems(policy: Policy, settings: ReaperSettings, at: At) -> Iterable[Problem]:
    """Tables, buckets and prefixes the policy scans that the context does not grant."""
    tables = set(settings.lock_tables)
    for i, store in enumerate(policy.stores):
        table = getattr(store, "table", None)
        if isinstance(table, str) and table not in tables:
            yield at(
                ("stores", i, "table"),
                f"table {table!r} is not in {CONTEXT}.lock_tables ({', '.join(sorted(tables)) or 'empty'}): "
                "add it there so the Lambda may scan it",
            )
        bucket = getattr(store, "bucket", None)
        if not isinstance(bucket, str):
            continue
        granted = settings.bucket(bucket)
        if granted is None:
            yield at(
                ("stores", i, "bucket"),
                f"bucket {bucket!r} is not in {CONTEXT}.state_buckets: add it there so the Lambda may list and "
                "delete its lock files",
            )
        elif granted.prefixes:
            for p in getattr(store, "prefixes", None) or [""]:
                if not any(p.startswith(g) for g in granted.prefixes):
                    yield at(
                        ("stores", i, "prefixes"),
                        f"prefix {p!r} of bucket {bucket!r} is outside the prefixes granted in "
                        f"{CONTEXT}.state_buckets ({', '.join(granted.prefixes)})",
                    )


def _secret_problems(policy: Policy, settings: ReaperSettings, at: At) -> Iterable[Problem]:
    """Secrets the policy reads that the context does not grant."""
    allowed = {_secret_name(s) for s in settings.ci_token_secrets}
    for where, name in _policy_secret_names(policy.model_dump(mode="json")):
        if _secret_name(name) not in allowed:
            yield at(where, f"secret {name!r} is not in {CONTEXT}.ci_token_secrets: add it there so the Lambda may read it")


def _unused_tables(policy: Policy, settings: ReaperSettings, source: str) -> Iterable[Problem]:
    used = {t for t in (getattr(store, "table", None) for store in policy.stores) if isinstance(t, str)}
    for t in sorted(set(settings.lock_tables) - used):
        yield Problem(None, f"{CONTEXT}.lock_tables", f"{t!r} is granted but no store in {source} scans it")


def _asks_state_activity(policy: Policy, text: str | None) -> bool:
    """Whether the operators' file sets ``liveness.state_activity`` and does not turn it off.

    Read from the file's text when given: the loaded policy may already carry the stack's override.
    """
    if text is None:
        liveness = policy.liveness
        return "state_activity" in liveness.model_fields_set and liveness.state_activity.enabled
    try:
        data = load_yaml(text, "<policy>")[1]
    except ConfigError:
        return False
    section = data.get("liveness") if isinstance(data, Mapping) else None
    state_activity = section.get("state_activity") if isinstance(section, Mapping) else None
    return isinstance(state_activity, Mapping) and state_activity.get("enabled", True) is not False


def _policy_warnings(policy: Policy, settings: ReaperSettings, at: At, text: str | None = None) -> Iterable[Problem]:
    """What the deployed function will not be able to use: token variables, state activity, metrics."""
    for where, var in _policy_token_envs(policy.model_dump(mode="json")):
        yield at(
            where,
            f"the deployed function has no environment variable {var!r}: use a token_secret "
            f"listed in {CONTEXT}.ci_token_secrets",
        )
    if _asks_state_activity(policy, text) and not settings.state_activity_granted:
        why = (
            f"{CONTEXT}.state_activity_evidence is false"
            if not settings.state_activity_evidence
            else f"{CONTEXT}.state_buckets is empty"
        )
        yield at(
            ("liveness", "state_activity"),
            f"enabled but {why}: the function may not read state objects, so the deployed function "
            f"turns state activity off ({reaper_env.STATE_ACTIVITY_ENABLED}=false)",
        )
    if not policy.alerts.metrics.enabled:
        yield at(("alerts", "metrics", "enabled"), "false, so the reaped/cap/unparseable alarms never fire")


def cross_check(
    policy: Policy, settings: ReaperSettings, source: str, text: str | None = None
) -> tuple[list[Problem], list[Problem]]:
    """Problems (fail the synth) and warnings (printed) between the policy and the context.

    ``text`` (the policy file's content) lets each message name the line.
    """
    at = _policy_at(source, text)
    problems = [*_store_problems(policy, settings, at), *_secret_problems(policy, settings, at)]
    warnings = [*_unused_tables(policy, settings, source), *_policy_warnings(policy, settings, at, text)]
    return problems, warnings


def deployed_env(settings: ReaperSettings) -> dict[str, str]:
    """The ``REAPER_*`` variables the stack sets, as far as they are known before deploying (placeholders)."""
    return {
        **_DEPLOYED_ENV,
        reaper_env.EVENT_BUS: settings.event_bus,
        reaper_env.CLAIMS_TABLE: settings.claims_table,
        **state_activity_env(settings),
    }


def state_activity_env(settings: ReaperSettings) -> dict[str, str]:
    """``REAPER_STATE_ACTIVITY_ENABLED=false`` when the role may not head state objects, else nothing (the policy decides)."""
    return {} if settings.state_activity_granted else {reaper_env.STATE_ACTIVITY_ENABLED: "false"}


def load_checked_policy(settings: ReaperSettings, root: Path) -> tuple[Policy, Path, list[Problem]]:
    """Load the policy file named by the context; (policy, its path, warnings). Raises SettingsError."""
    path = Path(settings.policy_file)
    if not path.is_absolute():
        path = root / path
    shown = settings.policy_file
    try:
        policy = load_policy(path, env=deployed_env(settings))
    except ConfigError as exc:
        raise SettingsError([SourcedProblem.of(shown, p) for p in exc.problems] or [Problem(None, None, str(exc))]) from None
    problems, warnings = cross_check(policy, settings, shown, path.read_text(encoding="utf-8"))
    if problems:
        raise SettingsError(problems)
    return policy, path, warnings
