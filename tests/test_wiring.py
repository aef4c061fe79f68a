"""The composition root (reaper/wiring.py): every configurable store and provider type is built.

The store and provider types come from the policy's pydantic unions, so a new type
added there without a builder fails here (and mypy flags the ``match`` without a
case). An unknown config object raises instead of being silently never scanned.
The adapters of one run share the run's HTTP pool and API call counter.
"""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from devtools.locks import info_json
from reaper import wiring
from reaper.alerts import EventBridgeAlertSink, MetricsAlertSink, SnsAlertSink
from reaper.http.client import ApiCounter, EtagCache, new_pool
from reaper.liveness.composite import ClaimsChecker
from reaper.liveness.github import GitHubRunnersChecker
from reaper.liveness.hcp_runs import HCPRunChecker
from reaper.models import LockInfo, LockRecord
from reaper.policy import Policy
from reaper.policy.liveness import GitHubProvider, GitLabProvider, Provider
from reaper.policy.schema import DynamoDBStoreConfig, GitLabStateStoreConfig, HCPStoreConfig, S3StoreConfig, StoreConfig
from reaper.ports import ORDER_METRICS, ORDER_NOTIFY, LockStore, StoreTraits
from reaper.wiring import Deps, build_components, build_reaper

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
RULES = [{"match": "*", "max_age": "2h", "hard_max_age": "1d"}]

# one minimal valid config per type; a type missing here fails test_every_type_has_a_sample
STORE_SAMPLES: dict[type, dict[str, Any]] = {
    DynamoDBStoreConfig: {"type": "dynamodb", "table": "terraform-locks", "region": "eu-west-1"},
    S3StoreConfig: {"type": "s3", "bucket": "tfstate", "prefixes": ["prod/"]},
    HCPStoreConfig: {"type": "hcp", "organizations": ["acme"], "token_env": "HCP_TOKEN"},
    GitLabStateStoreConfig: {"type": "gitlab", "projects": ["acme/infra"], "token_env": "GITLAB_TOKEN"},
}
PROVIDER_SAMPLES: dict[type, dict[str, Any]] = {
    GitHubProvider: {"type": "github", "token_env": "GH_TOKEN",
                     "runners": [{"org": "acme", "hosts": ["gh-runner-*"], "users": ["ci"]}]},
    GitLabProvider: {"type": "gitlab", "token_env": "GL_TOKEN", "runner_hosts": ["runner-*-project-*-concurrent-*"]},
}


def members(union: Any) -> set[type]:
    """The classes of an ``Annotated[A | B | ..., Field(discriminator=...)]`` union."""
    inner = typing.get_args(union)[0]
    return set(typing.get_args(inner))


def fake_factory(service: str, region: str | None = None) -> Any:
    return SimpleNamespace(service=service, region=region)


def policy(**doc: Any) -> Policy:
    return Policy.model_validate({"rules": RULES, **doc})


def deps(**kw: Any) -> Deps:
    return Deps(client_factory=fake_factory, env={}, **kw)


def lock(store: str, who: str, path: str = "tfstate/prod/app.tfstate") -> LockRecord:
    raw = info_json(path, timedelta(hours=4), NOW, who=who)
    return LockRecord(store=store, key=path, lock_path=path, token=raw, raw={}, info=LockInfo.parse(raw))


@pytest.mark.parametrize("union,samples", [(StoreConfig, STORE_SAMPLES), (Provider, PROVIDER_SAMPLES)],
                         ids=["stores", "providers"])
def test_every_type_has_a_sample(union: Any, samples: dict[type, Any]) -> None:
    assert members(union) == set(samples), "add a sample (and a builder in reaper/wiring.py) for the new type"


@pytest.mark.parametrize("config_type", sorted(members(StoreConfig), key=lambda t: t.__name__))
def test_every_store_config_type_has_a_builder(config_type: type) -> None:
    p = policy(stores=[STORE_SAMPLES[config_type]])
    parts = build_components(p, deps())
    [store] = parts.stores
    assert isinstance(store, LockStore) and isinstance(store.traits, StoreTraits)
    assert store.name == p.stores[0].name


def test_store_traits_and_own_checkers() -> None:
    p = policy(stores=list(STORE_SAMPLES.values()))
    parts = build_components(p, deps())
    traits = {s.name: s.traits for s in parts.stores}
    assert traits["s3:tfstate"].pair_first and not traits["dynamodb:terraform-locks"].pair_first
    hcp, gitlab = traits["hcp:app.terraform.io"], traits["gitlab:gitlab.com"]
    assert hcp.own_evidence and not hcp.restorable and "cannot be re-created" in hcp.restore_note
    assert not gitlab.own_evidence and not gitlab.restorable and "cannot be re-created" in gitlab.restore_note
    [run_checker] = [c for c in parts.liveness.checkers if isinstance(c, HCPRunChecker)]
    store = next(s for s in parts.stores if s.name == "hcp:app.terraform.io")
    assert run_checker.store == store.name and run_checker.api is store.api  # type: ignore[attr-defined]
    assert run_checker.grace == p.stores[2].grace
    assert parts.liveness.names[-1] == "hcp-runs", "a store's own checker comes after the policy's checkers"


@pytest.mark.parametrize("config_type", sorted(members(Provider), key=lambda t: t.__name__))
def test_every_provider_config_type_has_a_builder(config_type: type) -> None:
    sample = PROVIDER_SAMPLES[config_type]
    p = policy(liveness={"providers": [sample], "claims": {"table": "claims"}})
    parts = build_components(p, deps())
    [claims] = [c for c in parts.liveness.checkers if isinstance(c, ClaimsChecker)]
    label = p.liveness.providers[0].label
    assert list(claims.verifiers) == [label] and claims.verifiers[label].provider_type == sample["type"]
    assert claims.api_urls[label] == p.liveness.providers[0].api_url.rstrip("/")


def test_an_unknown_store_type_raises() -> None:
    bogus = SimpleNamespace(type="consul", name="consul:locks")
    p = policy().model_copy(update={"stores": [bogus]})
    with pytest.raises(AssertionError, match="consul"):
        build_components(p, deps())


def test_an_unknown_provider_type_raises() -> None:
    bogus = SimpleNamespace(type="bitbucket", label="bitbucket", api_url="https://api.bitbucket.org")
    base = policy()
    p = base.model_copy(update={"liveness": base.liveness.model_copy(update={"providers": [bogus]})})
    with pytest.raises(AssertionError, match="bitbucket"):
        build_components(p, deps())


def test_one_run_shares_its_pool_and_counter() -> None:
    counter, pool, etags = ApiCounter(), new_pool(), EtagCache()
    p = policy(stores=[STORE_SAMPLES[HCPStoreConfig], STORE_SAMPLES[GitLabStateStoreConfig]],
               liveness={"providers": list(PROVIDER_SAMPLES.values())})
    parts = build_components(p, deps(counter=counter, pool=pool, etags=etags))
    apis = [s.api for s in parts.stores]  # type: ignore[attr-defined]
    apis += [c.gh.api for c in parts.liveness.checkers if isinstance(c, GitHubRunnersChecker)]
    assert len(apis) == 3
    assert all(a.counter is counter and a.pool is pool and a.etags is etags for a in apis)
    assert parts.liveness.counter is counter, "store calls are counted in liveness_api_calls"


def test_a_fresh_counter_per_build_by_default() -> None:
    p = policy(stores=[STORE_SAMPLES[HCPStoreConfig]])
    d = deps()
    first, second = build_components(p, d), build_components(p, d)
    assert first.liveness.counter is not second.liveness.counter
    assert first.stores[0].api.counter is first.liveness.counter  # type: ignore[attr-defined]


def test_own_evidence_locks_are_not_judged_by_runner_names() -> None:
    p = policy(stores=[STORE_SAMPLES[HCPStoreConfig], STORE_SAMPLES[DynamoDBStoreConfig]],
               liveness={"providers": [PROVIDER_SAMPLES[GitHubProvider]]})
    [runners] = [c for c in build_components(p, deps()).liveness.checkers if isinstance(c, GitHubRunnersChecker)]
    assert runners.own_evidence == frozenset({"hcp:app.terraform.io"})
    assert runners.applies(lock("dynamodb:terraform-locks", "ci@gh-runner-1"))
    assert not runners.applies(lock("hcp:app.terraform.io", "ci@gh-runner-1"))


def test_sinks_audit_and_alerts() -> None:
    p = policy(audit={"s3_bucket": "audit-bucket"},
               alerts={"sns_topic_arn": "arn:aws:sns:eu-west-1:123456789012:reaper", "event_bus": "default"})
    parts = build_components(p, deps(), metrics=object())
    assert parts.audit is not None and parts.audit.client.service == "s3"  # type: ignore[attr-defined]
    assert [type(a) for a in parts.alerts] == [SnsAlertSink, EventBridgeAlertSink, MetricsAlertSink]
    assert parts.alerts[0].client.region == "eu-west-1"  # type: ignore[attr-defined]
    assert [a.order for a in parts.alerts] == [ORDER_NOTIFY, ORDER_NOTIFY, ORDER_METRICS]
    bare = build_components(p, deps(), sinks=False)
    assert bare.audit is None and bare.alerts == []


def test_build_reaper_takes_the_clock_from_deps(monkeypatch: pytest.MonkeyPatch) -> None:
    reaper = build_reaper(policy(), deps(clock=lambda: NOW))
    assert reaper.clock() == NOW
    monkeypatch.setattr(wiring, "utc_now", lambda: NOW)  # read when a Deps is made, as the CLI's explain does
    assert Deps.default().clock() == NOW
