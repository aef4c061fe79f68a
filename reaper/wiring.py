"""Composition root: the one place that builds the adapters of a run from a Policy.

``build_components(policy, deps)`` builds the stores, the composite liveness
checker (claims, leases, GitHub, GitLab, state activity, and each store's own checker:
HCP Terraform run status), the audit sink and the alert sinks; ``build_reaper``
puts them in a ``Reaper``. ``Deps`` is everything from outside the policy: the
boto3 client factory, the HTTP pool, the ETag cache, the API call counter, the
clock, ``sleep`` and the environment (tokens). The Lambda, the CLI, the benchmark
and the devtools pass their own ``Deps``; nothing else builds adapters.

Every store and provider config type has a ``case`` in ``_store`` or
``_provider``; ``assert_never`` makes mypy report one that has none (at run time it
raises), so a configured store is never silently left unscanned.

Built once per run: the memo of API answers and the call counter live exactly one
run; the ETag cache (``http.client.SHARED_ETAGS``) and the secrets cache
(Powertools) outlive it in a warm Lambda. Standard AWS environment variables
(AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL, ...) apply as usual.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, assert_never

import urllib3

from . import aws
from .alerts import EventBridgeAlertSink, MetricsAlertSink, SnsAlertSink
from .audit import LocalDirAuditSink, S3AuditSink, TeeAuditSink
from .engine import Progress, Reaper
from .http.client import ApiCounter, EtagCache, HttpLimits, JsonApi, new_pool
from .http.tokens import GitHubAppToken, SecretsSource, StaticToken, github_header, gitlab_header
from .lease import DEFAULT_LEASE_SECONDS, RunLease
from .liveness.claims import ClaimStore
from .liveness.composite import ClaimsChecker, CompositeChecker
from .liveness.github import GITHUB_HEADERS, GitHubApi, GitHubClaimVerifier, GitHubReposChecker, GitHubRunnersChecker
from .liveness.gitlab import GitLabApi, GitLabClaimVerifier, GitLabJobsChecker
from .liveness.hcp_runs import HCPRunChecker
from .liveness.lease import LeaseChecker
from .liveness.lease_observations import LeaseObservationStore
from .liveness.state_activity import StateActivityChecker
from .policy import Policy
from .policy.env import LEASE_SECONDS, LEASE_TABLE, StateObjectGrants
from .policy.liveness import GitHubProvider, GitLabProvider, Provider
from .policy.schema import DynamoDBStoreConfig, GitLabStateStoreConfig, HCPStoreConfig, S3StoreConfig, StoreConfig
from .ports import AlertSink, AuditSink, Checker, ClaimVerifier, Clock, LivenessChecker, LockStore
from .runs import DigestSink, LocalRunReports, RunReports, RunReportSink, S3RunReports
from .stores.dynamodb import DynamoDBLockStore
from .stores.gitlab_state import GitLabStateStore
from .stores.hcp import HCPWorkspaceStore
from .stores.s3 import S3LockFileStore
from .watch import RunWatch, StateObjects, WatchTable


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Deps:
    """What a run takes from outside the policy. Every field has a production default."""

    client_factory: aws.ClientFactory = aws.client  # (service, region=None) -> boto3 client
    pool: urllib3.PoolManager | None = None  # None: one per build, trusting the policy's liveness.http.ca_bundle
    etags: EtagCache | None = None  # None: the process-wide SHARED_ETAGS (kept by a warm Lambda)
    counter: ApiCounter | None = None  # None: a fresh one per build, so the report counts one run's calls
    clock: Clock = field(default_factory=lambda: utc_now)  # read when the Deps is made (tests patch utc_now)
    sleep: Callable[[float], None] = time.sleep
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)  # token_env variables
    observe: bool = True  # False (explain): the lease checker reads its observations, never records them

    @classmethod
    def default(cls, **overrides: Any) -> Deps:
        return cls(**overrides)


@dataclass
class Components:
    """The adapters of one run."""

    stores: list[LockStore]
    liveness: CompositeChecker  # with each store's own checkers registered
    audit: AuditSink | None
    alerts: list[AlertSink]


@dataclass
class _Run:
    """One build: the policy, its Deps, and what every adapter of the run shares."""

    policy: Policy
    deps: Deps
    pool: urllib3.PoolManager
    counter: ApiCounter
    secrets: SecretsSource

    @classmethod
    def start(cls, policy: Policy, deps: Deps) -> _Run:
        cfg = policy.liveness
        max_age: timedelta = cfg.secret_max_age
        return cls(
            policy, deps,
            pool=deps.pool or new_pool(maxsize=cfg.http.concurrency + 1, ca_bundle=cfg.http.ca_bundle),  # workers + scan
            counter=deps.counter or ApiCounter(),
            secrets=SecretsSource(max_age=int(max_age.total_seconds()), client_factory=deps.client_factory),
        )


# ---------------------------------------------------------------------------- entry points
def build_components(policy: Policy, deps: Deps | None = None, *, metrics: Any = None, sinks: bool = True) -> Components:
    """Everything a run needs. ``sinks=False`` leaves out audit and alerts (for read-only commands: explain)."""
    run = _Run.start(policy, deps or Deps.default())
    stores, own_checkers = _stores(run)
    liveness = _liveness(run, stores, own_checkers)
    if not sinks:
        return Components(stores, liveness, None, [])
    return Components(stores, liveness, _audit(run), _alerts(run, metrics))


def build_reaper(policy: Policy, deps: Deps | None = None, *, metrics: Any = None, progress: Progress | None = None,
                 liveness: LivenessChecker | None = None) -> Reaper:
    """The run the Lambda and the CLI make. ``liveness`` replaces the policy's checker (tests)."""
    deps = deps or Deps.default()
    c = build_components(policy, deps, metrics=metrics)
    return Reaper(policy=policy, stores=c.stores, clock=deps.clock, liveness=liveness or c.liveness,
                  audit=c.audit, alerts=c.alerts, progress=progress)


def build_stores(policy: Policy, deps: Deps | None = None) -> list[LockStore]:
    """The policy's stores alone (restore, and tests that bring their own checker)."""
    return _stores(_Run.start(policy, deps or Deps.default()))[0]


def build_audit(policy: Policy, deps: Deps | None = None) -> AuditSink | None:
    return _audit(_Run.start(policy, deps or Deps.default()))


def build_liveness(policy: Policy, client_factory: aws.ClientFactory = aws.client, **deps: Any) -> CompositeChecker:
    """The composite checker as ``build_components`` builds it (``deps``: other ``Deps`` fields), for
    tests and tools that bring their own stores and audit."""
    return build_components(policy, Deps(client_factory=client_factory, **deps), sinks=False).liveness


# ---------------------------------------------------------------------------- stores
def _stores(run: _Run) -> tuple[list[LockStore], list[Checker]]:
    """The stores, in the policy's order, and the liveness checkers that come with them."""
    stores: list[LockStore] = []
    checkers: list[Checker] = []
    for sc in run.policy.stores:
        store, own = _store(sc, run)
        stores.append(store)
        checkers.extend(own)
    return stores, checkers


def _store(sc: StoreConfig, run: _Run) -> tuple[LockStore, list[Checker]]:
    """Config -> builder, one case per store type (``reaper.policy.schema.StoreConfig``)."""
    f = run.deps.client_factory
    match sc:
        case DynamoDBStoreConfig():
            return DynamoDBLockStore(f("dynamodb", sc.region), sc.table, segments=sc.segments, page_size=sc.page_size), []
        case S3StoreConfig():
            return S3LockFileStore(f("s3", sc.region), sc.bucket, list(sc.prefixes), page_size=sc.page_size), []
        case HCPStoreConfig():
            # HCP Terraform reports X-RateLimit-Remaining per second (30): only 0 means wait
            api = _store_api(sc, run, reserve=0, headers={"Accept": "application/vnd.api+json"})
            store = HCPWorkspaceStore(api, list(sc.organizations), page_size=sc.page_size)
            return store, [HCPRunChecker(api, store.name, sc.grace)]
        case GitLabStateStoreConfig():
            api = _store_api(sc, run, reserve=10, headers=None)
            return GitLabStateStore(api, list(sc.projects), read_lock_id=sc.read_lock_id, page_size=sc.page_size), []
        case _:
            assert_never(sc)


def _store_api(sc: HCPStoreConfig | GitLabStateStoreConfig, run: _Run, *, reserve: int,
               headers: dict[str, str] | None) -> JsonApi:
    """An HTTP state store's API client, on the run's shared pool and call counter."""
    auth = StaticToken(github_header, secret=sc.token_secret, env_var=sc.token_env, env=run.deps.env, secrets=run.secrets)
    return JsonApi(sc.name, sc.base_url, run.pool, auth,
                   limits=HttpLimits.for_store(sc, rate_limit_reserve=reserve, max_calls=100000),
                   counter=run.counter, etags=run.deps.etags, extra_headers=headers, sleep=run.deps.sleep)


# ---------------------------------------------------------------------------- liveness
@dataclass
class _Evidence:
    """What the providers contribute, gathered before the composite is assembled."""

    verifiers: dict[str, ClaimVerifier] = field(default_factory=dict)  # provider label -> claim verifier
    api_urls: dict[str, str] = field(default_factory=dict)  # provider label -> normalised api_url
    github_repos: dict[str, tuple[GitHubApi, list[str]]] = field(default_factory=dict)
    gitlab: dict[str, tuple[GitLabApi, list[str], list[str]]] = field(default_factory=dict)
    runners: list[GitHubRunnersChecker] = field(default_factory=list)


def _liveness(run: _Run, stores: list[LockStore], own_checkers: list[Checker]) -> CompositeChecker:
    """Claims, self-hosted runners, repo and project mappings, state activity, then the stores' own checkers.
    Locks of an ``own_evidence`` store are judged by their own checker only, never by runners or mappings."""
    policy, cfg, f = run.policy, run.policy.liveness, run.deps.client_factory
    own = frozenset(s.name for s in stores if s.traits.own_evidence)
    found = _Evidence()
    for p in cfg.providers:
        found.api_urls[p.label] = p.api_url.rstrip("/")
        _provider(p, run, found, own)
    checkers: list[Checker] = []
    if cfg.claims is not None:
        claims = ClaimStore(f("dynamodb", cfg.claims.region), cfg.claims.table, run.counter)
        checkers.append(ClaimsChecker(claims, found.verifiers, found.api_urls))
        if cfg.leases.enabled:  # the same ClaimStore: one claims-table scan per run answers both
            checkers.append(_lease_checker(run, claims, own))
    checkers.extend(found.runners)
    if found.github_repos and any(r.liveness and r.liveness.github_repos for r in policy.rules):
        checkers.append(GitHubReposChecker(found.github_repos, policy, own))
    if found.gitlab:
        checkers.append(GitLabJobsChecker(found.gitlab, policy, own))
    if cfg.state_activity.enabled:
        checkers.append(StateActivityChecker(f("s3"), cfg.state_activity.window, run.counter,
                                             grants=StateObjectGrants.from_env(run.deps.env)))
    return CompositeChecker([*checkers, *own_checkers], run.counter)


def _lease_checker(run: _Run, claims: ClaimStore, own: frozenset[str]) -> LeaseChecker:
    """Leases; their observations in ``liveness.leases.observations_table``, else the run-state table."""
    leases, env = run.policy.liveness.leases, run.deps.env
    table = leases.observations_table or env.get(LEASE_TABLE)
    store = LeaseObservationStore(run.deps.client_factory("dynamodb", leases.region), table) if table else None
    function = env.get("AWS_LAMBDA_FUNCTION_NAME")
    observer = f"lambda:{function}" if function else f"cli:{_who()}"
    return LeaseChecker(claims, store, grace=run.policy.liveness.grace, skew=run.policy.clock_skew, own=own,
                        record=run.deps.observe, observer=observer)


def _who() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _provider(p: Provider, run: _Run, found: _Evidence, own: frozenset[str]) -> None:
    """Config -> builder, one case per provider type (``reaper.policy.liveness.Provider``)."""
    grace, skew = run.policy.liveness.grace, run.policy.clock_skew
    match p:
        case GitHubProvider():
            gh = GitHubApi(_provider_api(p, run, GITHUB_HEADERS, _github_auth(p, run)), p.label)
            found.verifiers[p.label] = GitHubClaimVerifier(gh, grace, skew)
            found.github_repos[p.label] = (gh, list(p.active_run_statuses))
            if p.runners:
                found.runners.append(GitHubRunnersChecker(gh, list(p.runners), own))
        case GitLabProvider():
            auth = StaticToken(gitlab_header, secret=p.token_secret, secrets=run.secrets, env_var=p.token_env,
                               env=run.deps.env)
            gl = GitLabApi(_provider_api(p, run, None, auth), p.label, list(p.live_job_scopes))
            found.verifiers[p.label] = GitLabClaimVerifier(gl, grace, skew)
            found.gitlab[p.label] = (gl, list(p.runner_hosts), list(p.runner_users))
        case _:
            assert_never(p)


def _github_auth(p: GitHubProvider, run: _Run) -> Callable[[], dict[str, str]]:
    if p.app is not None:
        token_api = _provider_api(p, run, GITHUB_HEADERS, None)
        return GitHubAppToken(token_api, p.app.app_id, p.app.installation_id, p.app.private_key_secret, run.secrets)
    return StaticToken(github_header, secret=p.token_secret, secrets=run.secrets, env_var=p.token_env, env=run.deps.env)


def _provider_api(p: GitHubProvider | GitLabProvider, run: _Run, headers: dict[str, str] | None,
                  auth: Callable[[], dict[str, str]] | None) -> JsonApi:
    return JsonApi(p.label, p.api_url, run.pool, auth, limits=HttpLimits.from_policy(run.policy.liveness.http, p.timeout),
                   counter=run.counter, etags=run.deps.etags, extra_headers=headers, sleep=run.deps.sleep)


# ---------------------------------------------------------------------------- sinks
def _audit(run: _Run) -> AuditSink | None:
    a, f = run.policy.audit, run.deps.client_factory
    sinks: list[AuditSink] = []
    if a.s3_bucket:
        sinks.append(S3AuditSink(f("s3"), a.s3_bucket, a.prefix))
    if a.local_dir:
        sinks.append(LocalDirAuditSink(a.local_dir))
    if not sinks:
        return None
    return sinks[0] if len(sinks) == 1 else TeeAuditSink(*sinks)


def _alerts(run: _Run, metrics: Any) -> list[AlertSink]:
    a, f = run.policy.alerts, run.deps.client_factory
    sinks: list[AlertSink] = []
    if a.sns_topic_arn:
        sinks.append(SnsAlertSink(f("sns", a.sns_topic_arn.split(":")[3]), a.sns_topic_arn))
    if a.event_bus:
        sinks.append(EventBridgeAlertSink(f("events"), a.event_bus, a.event_source))
    if a.metrics.enabled and metrics is not None:
        sinks.append(MetricsAlertSink(metrics, namespace=a.metrics.namespace))
    return sinks


# ---------------------------------------------------------------------------- scheduled runs only
def build_run_reports(policy: Policy, deps: Deps | None = None) -> list[RunReports]:
    """Where run reports are kept: the audit bucket (``<prefix>runs/``), and the local audit directory."""
    a, f = policy.audit, (deps or Deps.default()).client_factory
    found: list[RunReports] = []
    if a.s3_bucket:
        found.append(S3RunReports(f("s3"), a.s3_bucket, a.prefix))
    if a.local_dir:
        found.append(LocalRunReports(a.local_dir))
    return found


def build_run_sinks(policy: Policy, deps: Deps | None = None) -> list[AlertSink]:
    """The sinks a scheduled run adds: the late-writer watch (with the run-state table), the report-mode
    digest (opt-in), then the kept run report."""
    deps = deps or Deps.default()
    kept = build_run_reports(policy, deps)
    sinks: list[AlertSink] = []
    table = deps.env.get(LEASE_TABLE)
    if table:
        f = deps.client_factory
        sinks.append(RunWatch(WatchTable(f("dynamodb"), table), StateObjects(f("s3")),
                              StateObjectGrants.from_env(deps.env), policy.clock_skew, deps.clock))
    a = policy.alerts
    if a.digest.enabled and a.sns_topic_arn and kept:
        sinks.append(DigestSink(deps.client_factory("sns", a.sns_topic_arn.split(":")[3]), a.sns_topic_arn, kept[0],
                                every=a.digest.every))
    if kept:
        sinks.append(RunReportSink(*kept))
    return sinks


def build_lease(deps: Deps | None = None) -> RunLease | None:
    """The run lease from ``REAPER_LEASE_TABLE`` / ``REAPER_LEASE_SECONDS``; None without a table."""
    deps = deps or Deps.default()
    table = deps.env.get(LEASE_TABLE)
    if not table:
        return None
    seconds = int(deps.env.get(LEASE_SECONDS) or DEFAULT_LEASE_SECONDS)
    return RunLease(deps.client_factory("dynamodb"), table, seconds)
