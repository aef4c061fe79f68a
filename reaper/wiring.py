"""Composition root: build the real adapters (boto3 clients) from a Policy.

The only place that creates AWS clients. Standard AWS environment variables
(AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL, ...) apply as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from . import aws
from .policy import Policy
from .engine import Progress, Reaper
from .ports import AlertSink, AuditSink, LockStore


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def build_stores(policy: Policy, client_factory: Callable[..., Any] = aws.client, **http_kw: Any) -> list[LockStore]:
    from .stores.dynamodb import DynamoDBLockStore
    from .stores.s3 import S3LockFileStore

    stores: list[LockStore] = []
    for sc in policy.stores:
        if sc.type == "dynamodb":
            stores.append(
                DynamoDBLockStore(client_factory("dynamodb", sc.region), sc.table, segments=sc.segments, page_size=sc.page_size)
            )
        elif sc.type == "s3":
            stores.append(S3LockFileStore(client_factory("s3", sc.region), sc.bucket, list(sc.prefixes), page_size=sc.page_size))
        elif sc.type in ("hcp", "gitlab"):
            stores.append(_http_store(policy, sc, client_factory, **http_kw))
    return stores


def _http_store(policy: Policy, sc: Any, client_factory: Callable[..., Any], *, pool: Any = None,
                env: Any = None, secrets: Any = None, sleep: Callable[[float], None] | None = None) -> LockStore:
    """An HCP Terraform or GitLab state store on the shared urllib3 JSON client (reaper.http.client)."""
    import os
    import time

    from .http.client import HttpLimits, JsonApi, new_pool
    from .http.tokens import SecretsSource, StaticToken, github_header
    from .stores.gitlab_state import GitLabStateStore
    from .stores.hcp import HCPWorkspaceStore

    http = getattr(getattr(policy, "liveness", None), "http", None)
    auth = StaticToken(github_header, secret=sc.token_secret, env_var=sc.token_env,
                       env=os.environ if env is None else env,
                       secrets=secrets or SecretsSource(client_factory=client_factory))
    api = JsonApi(
        sc.name, sc.base_url, pool or new_pool(ca_bundle=getattr(http, "ca_bundle", None)), auth,
        # HCP Terraform reports X-RateLimit-Remaining per second (30): only 0 means wait
        limits=HttpLimits.for_store(sc, rate_limit_reserve=0 if sc.type == "hcp" else 10, max_calls=100000),
        extra_headers={"Accept": "application/vnd.api+json"} if sc.type == "hcp" else None, sleep=sleep or time.sleep,
    )
    if sc.type == "hcp":
        return HCPWorkspaceStore(api, list(sc.organizations), page_size=sc.page_size, grace=sc.grace)
    return GitLabStateStore(api, list(sc.projects), read_lock_id=sc.read_lock_id, page_size=sc.page_size)


def store_checkers(policy: Policy, stores: list[LockStore]) -> list[Any]:
    """Liveness checkers that come with a store (HCP Terraform run status), for the composite."""
    from .stores.hcp import HCPRunChecker, HCPWorkspaceStore

    return [HCPRunChecker(s, s.grace) for s in stores if isinstance(s, HCPWorkspaceStore)]


def build_audit(policy: Policy, client_factory: Callable[..., Any] = aws.client) -> AuditSink | None:
    from .audit import LocalDirAuditSink, S3AuditSink, TeeAuditSink

    sinks: list[Any] = []
    if policy.audit.s3_bucket:
        sinks.append(S3AuditSink(client_factory("s3"), policy.audit.s3_bucket, policy.audit.prefix))
    if policy.audit.local_dir:
        sinks.append(LocalDirAuditSink(policy.audit.local_dir))
    if not sinks:
        return None
    return sinks[0] if len(sinks) == 1 else TeeAuditSink(*sinks)


def build_alerts(policy: Policy, metrics: Any = None, client_factory: Callable[..., Any] = aws.client) -> list[AlertSink]:
    from .alerts import EventBridgeAlertSink, MetricsAlertSink, SnsAlertSink

    sinks: list[AlertSink] = []
    a = policy.alerts
    if a.sns_topic_arn:
        region = a.sns_topic_arn.split(":")[3]
        sinks.append(SnsAlertSink(client_factory("sns", region), a.sns_topic_arn))
    if a.event_bus:
        sinks.append(EventBridgeAlertSink(client_factory("events"), a.event_bus, a.event_source))
    if a.metrics.enabled and metrics is not None:
        sinks.append(MetricsAlertSink(metrics, namespace=a.metrics.namespace))
    return sinks


def build_liveness(policy: Policy, client_factory: Callable[..., Any] = aws.client, **kw: Any) -> Any:
    """The composite liveness checker (claims, GitHub, GitLab, state activity) for one run."""
    from .liveness.build import build_liveness as _build

    return _build(policy, client_factory, **kw)


def build_reaper(
    policy: Policy,
    metrics: Any = None,
    progress: Progress | None = None,
    client_factory: Callable[..., Any] = aws.client,
    clock: Callable[[], datetime] = utc_now,
    liveness: Any = None,
) -> Reaper:
    stores = build_stores(policy, client_factory)
    checker = liveness if liveness is not None else build_liveness(policy, client_factory)
    for extra in store_checkers(policy, stores):
        if hasattr(checker, "register"):
            checker.register(extra)
    return Reaper(
        policy=policy,
        stores=stores,
        clock=clock,
        liveness=checker,
        audit=build_audit(policy, client_factory),
        alerts=build_alerts(policy, metrics, client_factory),
        progress=progress,
    )
