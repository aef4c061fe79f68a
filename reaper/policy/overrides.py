"""Per-account and per-OU overrides of the one policy file (issue 13).

Every account runs the same policy file; an overrides file may change it for
some targets, named by OU or by account::

    overrides:
      - name: sandbox-enforce            # lowercase, digits, -; unique
        organizational_units: [ou-ab12-11111111]
        policy:                          # merged over the policy file
          mode: enforce
      - name: legacy-table
        accounts: ["111122223333"]
        policy:
          stores:
            - type: dynamodb
              table: legacy-locks
        settings:                        # merged over cdk.json's context.reaper (what the stack grants)
          lock_tables: [legacy-locks]

Merging: mappings key by key, all the way down; a list or a value replaces the
base's whole (``stores`` above replaces every store). An account named by an
override runs it even if its OU has another one (the account is the narrower
target). An OU or an account may be named by one override only.

``load_overrides`` validates the file (one problem per bad field, with its line,
like the policy); ``effective_document`` merges one override into the policy
document; ``Attribution`` tells, for a problem of the merged document, whether the
bad value came from the override (its line in the overrides file) or from the
policy file (its line there). Pure: no AWS, no files written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError

from .errors import ConfigError, Problem, by_line, format_loc, pydantic_problems
from .lines import find, load_yaml, locate
from .types import Strict, matching

OU_ID = r"^(ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}|r-[0-9a-z]{4,32})$"
ACCOUNT_ID = r"^\d{12}$"
NAME = r"^[a-z][a-z0-9-]{0,30}$"
# context.reaper fields an override may not change: they are the stack set's, the same in every account.
FIXED_SETTINGS = ("policy_file", "stack_name", "account", "region")


class Override(Strict):
    """One target group: the OUs and accounts it applies to, and what it changes."""

    name: Annotated[str, matching(NAME, "override name (a lowercase letter, then lowercase letters, digits or -; "
                                         "at most 31)")]
    description: str | None = None
    organizational_units: list[Annotated[str, matching(OU_ID, "organizational unit id (ou-xxxx-xxxxxxxx or r-xxxx)")]] = (
        Field(default_factory=list))
    accounts: list[Annotated[str, matching(ACCOUNT_ID, "AWS account id (12 digits, quoted in YAML)")]] = (
        Field(default_factory=list))
    policy: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)


class Overrides(Strict):
    overrides: list[Override] = Field(default_factory=list)

    def for_account(self, account: str) -> tuple[int, Override] | None:
        """The override (and its index) that names ``account`` itself, if any."""
        return next(((i, o) for i, o in enumerate(self.overrides) if account in o.accounts), None)


@dataclass(frozen=True)
class OverridesFile:
    """A validated overrides file: the model, its YAML tree (for lines) and its name."""

    overrides: Overrides
    root: yaml.Node | None
    source: str


def _semantic_problems(model: Overrides, root: yaml.Node | None) -> Iterable[Problem]:
    """Empty targets or changes, repeated names, an OU or account in two overrides, fixed settings."""
    names: dict[str, int] = {}
    owners: dict[str, tuple[int, str]] = {}
    for i, o in enumerate(model.overrides):
        here = ("overrides", i)
        if o.name in names:
            yield Problem(find(root, (*here, "name")), format_loc((*here, "name")),
                          f"duplicate override name {o.name!r} (first at overrides[{names[o.name]}])")
        names.setdefault(o.name, i)
        if not o.organizational_units and not o.accounts:
            yield Problem(find(root, here), format_loc(here),
                          "names no target: give organizational_units or accounts")
        if not o.policy and not o.settings:
            yield Problem(find(root, here), format_loc(here), "changes nothing: give policy or settings")
        for key in ("organizational_units", "accounts"):
            for j, target in enumerate(getattr(o, key)):
                item: tuple[Any, ...] = (*here, key, j)
                if target in owners:
                    first, first_key = owners[target]
                    yield Problem(find(root, item), format_loc(item),
                                  f"{target} is already a target of overrides[{first}] ({first_key}): "
                                  "a target takes one override")
                else:
                    owners[target] = (i, key)
        for key in o.settings:
            if key in FIXED_SETTINGS:
                fixed: tuple[Any, ...] = (*here, "settings", key)
                yield Problem(find(root, fixed), format_loc(fixed),
                              f"{key} is the same for every target (the stack set's): it cannot be overridden")


def parse_overrides(text: str, source: str = "<overrides>") -> OverridesFile:
    """Validate an overrides document. Raises ConfigError with every problem (field and line)."""
    root, data, problems = load_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem(1, None, f"the overrides file must be a mapping, got {type(data).__name__}")])
    model = None
    try:
        model = Overrides.model_validate(data)
    except ValidationError as exc:
        problems += pydantic_problems(exc, lambda loc: locate(root, loc))
    if model is not None:
        problems += _semantic_problems(model, root)
    if problems or model is None:
        raise ConfigError(source, by_line(problems))
    return OverridesFile(model, root, source)


def load_overrides(path: str | Path) -> OverridesFile:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [Problem(None, None, f"cannot read the overrides file: {exc}")]) from None
    return parse_overrides(text, source)


# ----- merging ------------------------------------------------------------------------
def merge(base: Any, patch: Any) -> Any:
    """``patch`` over ``base``: mappings key by key (recursively), anything else replaced."""
    if isinstance(base, Mapping) and isinstance(patch, Mapping):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    return patch


def effective_document(base_text: str, override: Override | None, header: str = "") -> str:
    """The policy document one target runs, as YAML text (the policy file itself when no override)."""
    if override is None or not override.policy:
        return base_text
    base = yaml.safe_load(base_text) or {}
    merged = merge(base, override.policy)
    body = yaml.safe_dump(merged, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def parse_field(field: str | None) -> tuple[Any, ...]:
    """A formatted location (``rules[0].max_age``) back to its parts (``("rules", 0, "max_age")``)."""
    if not field or field == "(top level)":
        return ()
    return tuple(int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field))


def _in_patch(patch: Any, loc: tuple[Any, ...]) -> bool:
    """Whether the value at ``loc`` of the merged document came from ``patch``."""
    node = patch
    for part in loc:
        if isinstance(node, Mapping):
            if part not in node:
                return False
            node = node[part]
        else:  # a list or value of the patch replaced the base's whole
            return True
    return True


@dataclass(frozen=True)
class Attribution:
    """Sends a problem of a target's merged document (or settings) to the file and line it came from."""

    base_source: str
    base_root: yaml.Node | None
    overrides: OverridesFile | None = None
    index: int | None = None

    def _override(self) -> Override | None:
        if self.overrides is None or self.index is None:
            return None
        return self.overrides.overrides.overrides[self.index]

    def policy(self, problem: Problem) -> tuple[str, Problem]:
        """(source, problem at its line) for a problem of the merged policy document."""
        loc = parse_field(getattr(problem, "field", None))
        message = getattr(problem, "message", str(problem))
        o = self._override()
        if o is not None and self.overrides is not None and loc and _in_patch(o.policy, loc):
            where = ("overrides", self.index, "policy", *loc)
            return self.overrides.source, Problem(locate(self.overrides.root, where)[1], format_loc(where), message)
        line = locate(self.base_root, loc)[1] if loc else getattr(problem, "line", None)
        return self.base_source, Problem(line, getattr(problem, "field", None), message)

    def settings(self, field_loc: tuple[Any, ...]) -> tuple[str, int, str] | None:
        """(overrides file, line, shown field) when ``field_loc`` of the target's settings came from the override."""
        o = self._override()
        if o is None or self.overrides is None or not field_loc or not _in_patch(o.settings, field_loc):
            return None
        where = ("overrides", self.index, "settings", *field_loc)
        return self.overrides.source, locate(self.overrides.root, where)[1] or 0, format_loc(where)
