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
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .durations import format_duration
from .liveness.settings import LivenessConfig, RuleLiveness, rule_mapping_problems
from .policy_types import Globs, Operations, Strict as _Strict, as_list as _as_list, duration_type, url_host

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

    @model_validator(mode="after")
    def _cross_fields(self, info: ValidationInfo) -> "Policy":
        # parse_policy runs these checks itself, on the raw document, so that they are
        # reported with the field errors, each at its line; this guards direct construction
        if not (info.context or {}).get(_CROSS_CHECKED):
            found = _cross_errors(self.model_dump(mode="json"), None)
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


class Problem(str):
    """One error or warning, written ``line N: field: message`` (the one formatter of this module).

    A ``str``, so callers print it as it is; ``line``, ``field`` and ``message`` are
    kept for ``validate --json``.
    """

    line: int | None
    field: str | None
    message: str

    def __new__(cls, line: int | None, field: str | None, message: str) -> "Problem":
        self = super().__new__(cls, (f"line {line}: " if line else "") + (f"{field}: " if field else "") + message)
        self.line, self.field, self.message = line, field, message
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


def _by_line(found: list[Problem]) -> list[Problem]:
    return sorted(found, key=lambda p: p.line or 0)


class ConfigError(Exception):
    """A policy file that cannot be used. ``problems`` has one line per bad field, ``warnings`` those found too."""

    def __init__(self, source: str, problems: list[Problem], warnings: list[Problem] | None = None):
        self.source = source
        self.problems = problems
        self.warnings = warnings or []
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
                    found = (k, v)  # no break: of a repeated key, the last one is the value used
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


class _PolicyLoader(yaml.SafeLoader):
    """A SafeLoader that records repeated mapping keys: plain YAML lets the last one win silently."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[yaml.MappingNode, yaml.Node, yaml.Node]] = []  # (mapping, first key, repeat)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # only explicit scalar keys: a key that overrides a merged (<<) one is no repeat
            first = seen.setdefault(self.construct_object(key_node), key_node)
            if first is not key_node:
                self.duplicates.append((node, first, key_node))
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any, list[Problem]]:
    """(node tree, data, one problem per repeated key). Raises ConfigError on a YAML syntax error."""
    loader = _PolicyLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [Problem(mark.line + 1 if mark else None, None, f"not valid YAML: {problem}")]) from None
    finally:
        loader.dispose()
    paths = _node_paths(root)
    repeated = [
        Problem(again.start_mark.line + 1, _format_loc(paths.get(id(mapping), ()) + (again.value,)),
                f"duplicate key {again.value!r} (first at line {first.start_mark.line + 1})")
        for mapping, first, again in loader.duplicates
    ]
    return root, data, repeated


def _node_paths(root: yaml.Node | None) -> dict[int, tuple[Any, ...]]:
    """id(node) -> its location (``("rules", 0)``) for every node of the tree (aliases: the first path)."""
    paths: dict[int, tuple[Any, ...]] = {}
    todo: list[tuple[Any, tuple[Any, ...]]] = [(root, ())] if root is not None else []
    while todo:
        node, loc = todo.pop()
        if id(node) in paths:
            continue
        paths[id(node)] = loc
        if isinstance(node, yaml.MappingNode):
            todo.extend((v, loc + (k.value,)) for k, v in node.value if isinstance(k, yaml.ScalarNode))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((v, loc + (i,)) for i, v in enumerate(node.value))
    return paths


def _find(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line of the key (or list item) at ``loc`` if the file has it, else None."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hits = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not hits:
                return None
            key, node = hits[-1]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return None
    return line


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _valid(type_: Any, value: Any) -> Any:
    """``value`` validated on its own as ``type_``; None when missing or invalid (the full validation reports why)."""
    if value is None:
        return None
    adapter = _ADAPTERS.setdefault(type_, TypeAdapter(type_))
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None


def _rule_parts(raw: Any) -> SimpleNamespace:
    """The fields of one raw rule that the cross-field checks read, each validated on its own."""
    raw = raw if isinstance(raw, dict) else {}
    ops = _valid(Operations, raw.get("operations"))
    return SimpleNamespace(
        name=raw.get("name") if isinstance(raw.get("name"), str) else None,
        match=_valid(Globs, raw.get("match")),
        operations=ops,
        known_ops=ops is not None or raw.get("operations", None) is None,  # absent, or valid
        max_age=_valid(Duration, raw.get("max_age")),
        liveness=_valid(RuleLiveness, raw.get("liveness")),
    )


def _rules(data: Mapping[str, Any]) -> list[SimpleNamespace]:
    rules = data.get("rules")
    return [_rule_parts(r) for r in rules] if isinstance(rules, list) else []


_CROSS_CHECKED = "cross_checked"
_NEEDS_AUDIT = "mode 'enforce' needs an audit sink: set audit.s3_bucket (or REAPER_AUDIT_BUCKET) or audit.local_dir"


def _cross_errors(data: Mapping[str, Any], root: yaml.Node | None) -> list[Problem]:
    """Errors that involve two fields, checked on the raw document so they come with the field errors."""
    found: list[Problem] = []
    rules = _rules(data)
    if data.get("mode") == "enforce":
        audit = _valid(AuditConfig, data.get("audit") or {})
        if audit is not None and not audit.enabled:
            found.append(Problem(_find(root, ("mode",)), "audit", _NEEDS_AUDIT))
    liveness = _valid(LivenessConfig, data.get("liveness") or {})
    if liveness is not None:
        for i, message in rule_mapping_problems(rules, liveness):
            # at the liveness section that lacks the provider, else at the rule's mapping
            line = _find(root, ("liveness",)) or _find(root, ("rules", i, "liveness"))
            found.append(Problem(line, "liveness", message))
    first: dict[str, int] = {}
    for i, rule in enumerate(rules):
        j = first.setdefault(rule.name, i) if rule.name is not None else i
        if j != i:
            found.append(Problem(_find(root, ("rules", i, "name")), f"rules[{i}].name",
                                 f"duplicate rule name {rule.name!r} (first at rules[{j}], line {_find(root, ('rules', j, 'name'))})"))
    return found


def _glob_covers(g: str, h: str) -> bool:
    """Every path glob ``h`` matches, glob ``g`` matches too (False when that cannot be proven).

    Proven when they are equal, or when neither uses ``?`` or ``[...]`` and ``g`` matches
    ``h``'s text: ``g``'s literal characters cannot match a ``*`` of ``h``, so each ``*``
    of ``h`` lies inside one of ``g``'s, whatever it stands for.
    """
    plain = not any(c in g or c in h for c in "?[")
    return g == h or (plain and fnmatch.fnmatchcase(h, g))


def _shadows(earlier: SimpleNamespace, later: SimpleNamespace) -> bool:
    if earlier.match is None or later.match is None or not (earlier.known_ops and later.known_ops):
        return False
    if earlier.operations is not None and (later.operations is None or not set(later.operations) <= set(earlier.operations)):
        return False
    return all(any(_glob_covers(g, h) for g in earlier.match) for h in later.match)


def _warnings(data: Mapping[str, Any], root: yaml.Node | None) -> list[Problem]:
    """Valid but surely not what was meant: a max_age below min_age, a rule no lock can reach."""
    found: list[Problem] = []
    rules = _rules(data)
    min_age = _valid(Duration, data.get("min_age")) if "min_age" in data else Policy.model_fields["min_age"].default
    for i, rule in enumerate(rules):
        if rule.max_age is not None and min_age is not None and rule.max_age < min_age:
            m, floor = format_duration(rule.max_age), format_duration(min_age)
            found.append(Problem(_find(root, ("rules", i, "max_age")), f"rules[{i}].max_age",
                                 f"max_age ({m}) is shorter than min_age ({floor}): no lock younger than min_age "
                                 f"is touched, so this rule acts as max_age {floor}"))
    for j, later in enumerate(rules):
        k = next((i for i in range(j) if _shadows(rules[i], later)), None)
        if k is not None:
            label = later.name or ",".join(later.match)
            earlier = f"rules[{k}]" + (f" ({rules[k].name})" if rules[k].name else "")
            found.append(Problem(_find(root, ("rules", j)), f"rules[{j}]",
                                 f"rule {label!r} can never match: {earlier} before it matches every lock it matches "
                                 "(first match wins)"))
    return found


_EMPTY = "the policy file is empty (only comments or blank lines): it configures no store, so the reaper would do nothing"
_NO_STORE = "no store is configured: the reaper would scan nothing (add a dynamodb, s3, hcp or gitlab store)"


def _apply_env(data: dict[str, Any], env: Mapping[str, str] | None) -> dict[tuple[str, ...], str]:
    """Write the stack's environment variables into the document; returns which path came from which variable."""
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
    return from_env


def _field_errors(exc: ValidationError, root: yaml.Node | None, from_env: Mapping[tuple[str, ...], str]) -> list[Problem]:
    found = []
    for err in exc.errors():
        shown, line = _locate(root, tuple(err["loc"]))
        var = from_env.get(tuple(str(p) for p in err["loc"]))
        note = f" (value from the environment variable {var})" if var else ""
        found.append(Problem(line, _format_loc(shown), _message(err) + note))
    return found


def _check(text: str, source: str, env: Mapping[str, str] | None,
           purpose: Literal["text", "validate", "run"]) -> tuple[Policy, list[Problem]]:
    """Every error of the document in one ConfigError (warnings attached), or (policy, warnings).

    ``purpose``: "text" checks a document; "validate" and "run" check a policy file, so an
    empty one is an error, and no store at all is a warning ("validate") or an error ("run").
    """
    root, data, problems = _load_yaml(text, source)
    if data is None and purpose != "text":
        raise ConfigError(source, [Problem(1, None, _EMPTY)])
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem(1, None, f"the policy must be a mapping, got {type(data).__name__}")])
    from_env = _apply_env(data, env)
    problems += _cross_errors(data, root)
    warnings = _warnings(data, root)
    if purpose != "text" and not data.get("stores"):
        (problems if purpose == "run" else warnings).append(Problem(_find(root, ("stores",)) or 1, "stores", _NO_STORE))
    try:
        policy = Policy.model_validate(data, context={_CROSS_CHECKED: True})
    except ValidationError as exc:
        problems += _field_errors(exc, root, from_env)
    if problems:
        raise ConfigError(source, _by_line(problems), _by_line(warnings)) from None
    return policy, _by_line(warnings)


def parse_policy(text: str, source: str = "<policy>", env: Mapping[str, str] | None = None) -> Policy:
    """Parse and validate a policy document. Raises ConfigError."""
    return _check(text, source, env, "text")[0]


def check_policy_file(path: str | Path, env: Mapping[str, str] | None = None, *,
                      run: bool = True) -> tuple[Policy, list[Problem]]:
    """(policy, warnings) of a policy file, or ConfigError with every problem.

    ``run``: the file is what a run uses (scan, reap, the Lambda, cdk synth), so a policy
    without any store is an error; ``validate`` passes False and gets a warning instead.
    """
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [Problem(None, None, f"cannot read the policy file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(source, [Problem(line, None, f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                                                       "cannot be decoded (save the file as UTF-8)")]) from None
    return _check(text, source, env, "run" if run else "validate")


def load_policy(path: str | Path, env: Mapping[str, str] | None = None) -> Policy:
    return check_policy_file(path, env)[0]
