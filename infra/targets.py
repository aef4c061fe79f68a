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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reaper.policy import ConfigError, Policy, Problem, load_policy
from reaper.policy.errors import format_loc, message
from reaper.policy.lines import load_yaml
from reaper.policy.overrides import Attribution, Override, OverridesFile, effective_document, load_overrides, merge

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
