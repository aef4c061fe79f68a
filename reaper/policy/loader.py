"""Read a policy file: YAML with line numbers, the stack's environment, every problem in one round.

The same loader serves the Lambda, the CLI and ``cdk synth`` (infra/), so a bad
policy fails the same way everywhere: one line per bad field, naming the field
and its line in the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from .checks import CROSS_CHECKED, cross_errors, rule_warnings
from .env import ENV_OVERRIDES
from .errors import ConfigError, Problem, by_line, pydantic_problems
from .lines import find, load_yaml, locate
from .schema import STORE_TYPES, Policy

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
    def note(loc: tuple[Any, ...]) -> str:
        var = from_env.get(tuple(str(p) for p in loc))
        return f" (value from the environment variable {var})" if var else ""

    return pydantic_problems(exc, lambda loc: locate(root, loc), STORE_TYPES, note)


def _check(text: str, source: str, env: Mapping[str, str] | None,
           purpose: Literal["text", "validate", "run"]) -> tuple[Policy, list[Problem]]:
    """Every error of the document in one ConfigError (warnings attached), or (policy, warnings).

    ``purpose``: "text" checks a document; "validate" and "run" check a policy file, so an
    empty one is an error, and no store at all is a warning ("validate") or an error ("run").
    """
    root, data, problems = load_yaml(text, source)
    if data is None and purpose != "text":
        raise ConfigError(source, [Problem(1, None, _EMPTY)])
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem(1, None, f"the policy must be a mapping, got {type(data).__name__}")])
    from_env = _apply_env(data, env)
    problems += cross_errors(data, root)
    warnings = rule_warnings(data, root)
    if purpose != "text" and not data.get("stores"):
        (problems if purpose == "run" else warnings).append(Problem(find(root, ("stores",)) or 1, "stores", _NO_STORE))
    try:
        policy = Policy.model_validate(data, context={CROSS_CHECKED: True})
    except ValidationError as exc:
        problems += _field_errors(exc, root, from_env)
    if problems:
        raise ConfigError(source, by_line(problems), by_line(warnings)) from None
    return policy, by_line(warnings)


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
