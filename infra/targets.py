"""Each target's effective policy and settings: the policy file, with the override that names it (issue 13).

A *target* is what one member template is built for: ``base`` (every account of
the stack set's OUs that no override names) or one override of the overrides
file (``context.org.stackset.overrides_file``, format in
``reaper.policy.overrides``). Each is validated at synth as the deployed
function will load it (``load_policy`` with the stack's environment, then the
cross-check against the grants), and every problem names the file and line its
bad value came from: the override's line when the override set it, else the
policy file's or ``context.reaper``'s.

The effective policy of an override is written to ``<workdir>/<name>.policy.yaml``
(the cloud assembly's directory, so a reviewer can read what each target runs) and
bundled into that target's asset as ``policy.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reaper.policy import ConfigError, Policy, Problem, load_policy
from reaper.policy.errors import format_loc, message
from reaper.policy.lines import find, load_yaml
from reaper.policy.overrides import Attribution, Override, OverridesFile, effective_document, load_overrides, merge

from .org_settings import ORG, OrgSettings
from .settings import CONTEXT, ReaperSettings, SettingsError, SourcedProblem, cross_check, deployed_env, load_checked_policy

BASE = "base"


@dataclass(frozen=True)
class MemberTarget:
    """One member template's inputs."""

    name: str
    settings: ReaperSettings
    policy: Policy
    policy_file: Path
    organizational_units: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    warnings: list[Problem] = field(default_factory=list)


def _settings_problems(exc: ValidationError, attribution: Attribution) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not str(p).startswith(("function-", "list[")))
        found = attribution.settings(loc)
        if found:
            source, line, shown = found
            out.append(SourcedProblem(source, line, shown, message(err)))
        else:
            out.append(Problem(None, format_loc((CONTEXT, *loc)), message(err)))
    return out


def _policy_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def override_target(
    raw_settings: dict[str, Any], base_policy: Path, base_source: str, overrides: OverridesFile, index: int, workdir: Path
) -> MemberTarget:
    """The target of ``overrides[index]``. Raises SettingsError naming each bad value's file and line."""
    o: Override = overrides.overrides.overrides[index]
    base_text = _policy_text(base_policy)
    try:
        base_root = load_yaml(base_text, base_source)[0]
    except ConfigError:
        base_root = None
    attribution = Attribution(base_source, base_root, overrides, index)
    try:
        settings = ReaperSettings.model_validate(merge(dict(raw_settings), o.settings))
    except ValidationError as exc:
        raise SettingsError(_settings_problems(exc, attribution)) from None
    header = f"Effective policy of target {o.name!r}: {base_source} with overrides[{index}] of {overrides.source}"
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{o.name}.policy.yaml"
    text = effective_document(base_text, o, header)
    path.write_text(text, encoding="utf-8")
    shown = f"{o.name}.policy.yaml"
    try:
        policy = load_policy(path, env=deployed_env(settings))
    except ConfigError as exc:
        raise SettingsError([_sourced(attribution, p) for p in exc.problems]) from None
    problems, warnings = cross_check(policy, settings, shown, text)
    if problems:
        raise SettingsError([_sourced(attribution, p) for p in problems])
    return MemberTarget(o.name, settings, policy, path, tuple(o.organizational_units), tuple(o.accounts), warnings)


def _sourced(attribution: Attribution, problem: Problem) -> SourcedProblem:
    source, p = attribution.policy(problem)
    return SourcedProblem(source, p.line, p.field, p.message)


def load_targets(
    raw_settings: dict[str, Any], settings: ReaperSettings, root: Path, overrides_file: str | None, workdir: Path
) -> tuple[list[MemberTarget], OverridesFile | None]:
    """``base`` and one target per override; every target validated. Raises SettingsError with all their problems."""
    policy, path, warnings = load_checked_policy(settings, root)
    targets = [MemberTarget(BASE, settings, policy, path, warnings=warnings)]
    if not overrides_file:
        return targets, None
    ov_path = Path(overrides_file)
    if not ov_path.is_absolute():
        ov_path = root / ov_path
    try:
        overrides = load_overrides(ov_path)
    except ConfigError as exc:
        raise SettingsError([SourcedProblem.of(overrides_file, p) for p in exc.problems]) from None
    overrides = OverridesFile(overrides.overrides, overrides.root, overrides_file)
    problems: list[Problem] = []
    for i in range(len(overrides.overrides.overrides)):
        try:
            targets.append(override_target(raw_settings, path, settings.policy_file, overrides, i, workdir))
        except SettingsError as exc:
            problems += exc.problems
    if problems:
        raise SettingsError(problems)
    return targets, overrides


# ----- stack set targets: disjoint stack instance groups -------------------------------------
@dataclass(frozen=True)
class InstanceGroup:
    """One ``StackInstances`` entry: OUs, accounts and how they combine (``AccountFilterType``)."""

    organizational_units: tuple[str, ...]
    accounts: tuple[str, ...] = ()
    account_filter: str = "NONE"  # NONE | INTERSECTION | DIFFERENCE


def instance_groups(org: OrgSettings, targets: Sequence[MemberTarget]) -> dict[str, list[InstanceGroup]]:
    """Each target's stack instance groups, disjoint: an account named by an override runs that override only."""
    base_ous = tuple(org.stackset.organizational_units)
    override_ous = tuple(ou for t in targets for ou in t.organizational_units)
    known_ous = tuple(dict.fromkeys(base_ous + override_ous))
    named = tuple(dict.fromkeys(a for t in targets for a in t.accounts))
    out: dict[str, list[InstanceGroup]] = {}
    for t in targets:
        groups: list[InstanceGroup] = []
        ous = base_ous if t.name == BASE else t.organizational_units
        if ous:
            others = tuple(a for a in named if a not in t.accounts)
            groups.append(InstanceGroup(ous, others, "DIFFERENCE") if others else InstanceGroup(ous))
        if t.accounts:
            groups.append(InstanceGroup(known_ous, t.accounts, "INTERSECTION"))
        out[t.name] = groups
    return out


def target_problems(org: OrgSettings, overrides: OverridesFile | None) -> list[Problem]:
    """OU overlaps that would put one account in two stack sets (the ones visible without AWS)."""
    if overrides is None:
        return []
    base = org.stackset.organizational_units
    roots = [ou for ou in base if ou.startswith("r-")]
    out: list[Problem] = []
    for i, o in enumerate(overrides.overrides.overrides):
        for j, ou in enumerate(o.organizational_units):
            loc = ("overrides", i, "organizational_units", j)
            line = find(overrides.root, loc)
            if ou in base:
                out.append(SourcedProblem(overrides.source, line, format_loc(loc),
                                          f"{ou} is also in {ORG}.stackset.organizational_units: a target takes one "
                                          "stack set, remove it there"))
            elif roots:
                out.append(SourcedProblem(overrides.source, line, format_loc(loc),
                                          f"{ORG}.stackset.organizational_units is the root {roots[0]}, which contains "
                                          f"{ou}: list the OUs without the overridden ones there"))
    return out


def check_stackset_targets(org: OrgSettings, overrides: OverridesFile | None) -> None:
    problems = target_problems(org, overrides)
    if problems:
        raise SettingsError(problems)
