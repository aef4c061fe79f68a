"""The operators' policy: one YAML file, validated with pydantic.

- ``schema``: the models (``Policy``, ``Rule``, the store, audit and alert sections);
- ``liveness``: the ``liveness`` section and a rule's mapping;
- ``types``: durations, globs, operation names, the strict base;
- ``loader``: read a file (line numbers, the stack's environment, every problem at once);
- ``errors``: the one error formatter; ``env``: the ``REAPER_*`` variables.
"""

from .errors import ConfigError, Problem
from .loader import check_policy_file, load_policy, parse_policy
from .schema import Policy, Rule

__all__ = ["ConfigError", "Policy", "Problem", "Rule", "check_policy_file", "load_policy", "parse_policy"]
