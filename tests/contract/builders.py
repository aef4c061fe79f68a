"""Build adapters the way the product does: from a policy document, through the public builder.

The contract suites never call an adapter's constructor: a store or checker is
whatever the composition root, ``reaper.wiring.build_components(policy,
Deps(...))``, makes of a policy, so the suites do not depend on constructor
details. This module is the one place that knows how to call it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from reaper.policy import Policy, parse_policy
from reaper.ports import LivenessChecker, LockStore


@dataclass
class Built:
    stores: list[LockStore]
    liveness: LivenessChecker


def policy_from(doc: dict[str, Any]) -> Policy:
    """A policy document (as a dict) through the same parser and validation as a policy file."""
    return parse_policy(yaml.safe_dump(doc, sort_keys=False))


def no_aws(service: str, region: str | None = None) -> Any:
    raise AssertionError(f"this world uses no AWS service, but the wiring asked for a {service} client")


def _etags() -> Any:
    from reaper.http.client import EtagCache

    return EtagCache()


def build(policy: Policy, *, env: Mapping[str, str], client_factory: Callable[..., Any] = no_aws,
          sleep: Callable[[float], None] = lambda s: None) -> Built:
    """The stores and the composite liveness checker of one run (no audit, no alerts)."""
    from reaper.wiring import Deps, build_components

    deps = Deps(client_factory=client_factory, env=dict(env), sleep=sleep, etags=_etags())
    c = build_components(policy, deps, sinks=False)
    return Built(list(c.stores), c.liveness)
