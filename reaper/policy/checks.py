"""Checks across fields, on the raw document, so they are reported with the field errors; and warnings."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from ..durations import format_duration
from .errors import Problem
from .lines import find
from .liveness import LivenessConfig, RuleLiveness, rule_mapping_problems
from .types import DEFAULT_MIN_AGE, Duration, Globs, Operations

# Set in the validation context by the loader, which runs these checks itself on the raw document;
# without it, Policy's own validator runs them (a Policy built directly, e.g. in a test).
CROSS_CHECKED = "cross_checked"

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


_NEEDS_AUDIT = "mode 'enforce' needs an audit sink: set audit.s3_bucket (or REAPER_AUDIT_BUCKET) or audit.local_dir"


def cross_errors(data: Mapping[str, Any], root: yaml.Node | None) -> list[Problem]:
    """Errors that involve two fields, checked on the raw document so they come with the field errors."""
    found: list[Problem] = []
    rules = _rules(data)
    if data.get("mode") == "enforce":
        audit = data.get("audit") or {}
        if isinstance(audit, dict) and not (audit.get("s3_bucket") or audit.get("local_dir")):
            found.append(Problem(find(root, ("mode",)), "audit", _NEEDS_AUDIT))
    liveness = _valid(LivenessConfig, data.get("liveness") or {})
    if liveness is not None:
        for i, message in rule_mapping_problems(rules, liveness):
            # at the liveness section that lacks the provider, else at the rule's mapping
            line = find(root, ("liveness",)) or find(root, ("rules", i, "liveness"))
            found.append(Problem(line, "liveness", message))
    first: dict[str, int] = {}
    for i, rule in enumerate(rules):
        j = first.setdefault(rule.name, i) if rule.name is not None else i
        if j != i:
            found.append(Problem(find(root, ("rules", i, "name")), f"rules[{i}].name",
                                 f"duplicate rule name {rule.name!r} (first at rules[{j}], "
                                 f"line {find(root, ('rules', j, 'name'))})"))
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


def rule_warnings(data: Mapping[str, Any], root: yaml.Node | None) -> list[Problem]:
    """Valid but surely not what was meant: a max_age below min_age, a rule no lock can reach."""
    found: list[Problem] = []
    rules = _rules(data)
    min_age = _valid(Duration, data.get("min_age")) if "min_age" in data else DEFAULT_MIN_AGE
    for i, rule in enumerate(rules):
        if rule.max_age is not None and min_age is not None and rule.max_age < min_age:
            m, floor = format_duration(rule.max_age), format_duration(min_age)
            found.append(Problem(find(root, ("rules", i, "max_age")), f"rules[{i}].max_age",
                                 f"max_age ({m}) is shorter than min_age ({floor}): no lock younger than min_age "
                                 f"is touched, so this rule acts as max_age {floor}"))
    for j, later in enumerate(rules):
        k = next((i for i in range(j) if _shadows(rules[i], later)), None)
        if k is not None:
            label = later.name or ",".join(later.match)
            earlier = f"rules[{k}]" + (f" ({rules[k].name})" if rules[k].name else "")
            found.append(Problem(find(root, ("rules", j)), f"rules[{j}]",
                                 f"rule {label!r} can never match: {earlier} before it matches every lock it matches "
                                 "(first match wins)"))
    return found + alert_warnings(data, root)


def alert_warnings(data: Mapping[str, Any], root: yaml.Node | None) -> list[Problem]:
    """An alert that is switched on but can never be sent: the digest without an SNS topic."""
    alerts = data.get("alerts")
    alerts = alerts if isinstance(alerts, Mapping) else {}
    digest = alerts.get("digest")
    if isinstance(digest, Mapping) and digest.get("enabled") is True and not alerts.get("sns_topic_arn"):
        line = find(root, ("alerts", "digest", "enabled")) or find(root, ("alerts", "digest"))
        return [Problem(line, "alerts.digest.enabled",
                        "true, but no SNS topic is set (alerts.sns_topic_arn, or REAPER_SNS_TOPIC_ARN as the stack "
                        "sets it): no digest will be sent")]
    return []
