"""Composition root: build the real adapters (boto3 clients) from a Policy.

The only place that creates AWS clients. Standard AWS environment variables
(AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL, ...) apply as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .config import Policy
from .engine import Progress, Reaper
from .ports import AlertSink, AuditSink, LockStore


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _client(service: str, region: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"mode": "adaptive", "max_attempts": 8}, connect_timeout=5, read_timeout=20)
    return boto3.client(service, region_name=region, config=cfg)


def build_stores(policy: Policy, client_factory: Callable[..., Any] = _client) -> list[LockStore]:
    from .stores.dynamodb import DynamoDBLockStore

    stores: list[LockStore] = []
    for sc in policy.stores:
        if sc.type == "dynamodb":
            stores.append(
                DynamoDBLockStore(client_factory("dynamodb", sc.region), sc.table, segments=sc.segments, page_size=sc.page_size)
            )
    return stores


def build_audit(policy: Policy, client_factory: Callable[..., Any] = _client) -> AuditSink | None:
    from .audit import LocalDirAuditSink, S3AuditSink, TeeAuditSink

    sinks: list[Any] = []
    if policy.audit.s3_bucket:
        sinks.append(S3AuditSink(client_factory("s3"), policy.audit.s3_bucket, policy.audit.prefix))
    if policy.audit.local_dir:
        sinks.append(LocalDirAuditSink(policy.audit.local_dir))
    if not sinks:
        return None
    return sinks[0] if len(sinks) == 1 else TeeAuditSink(*sinks)


def build_alerts(policy: Policy, metrics: Any = None, client_factory: Callable[..., Any] = _client) -> list[AlertSink]:
    from .alerts import EventBridgeAlertSink, MetricsAlertSink, SnsAlertSink

    sinks: list[AlertSink] = []
    a = policy.alerts
    if a.sns_topic_arn:
        region = a.sns_topic_arn.split(":")[3]
        sinks.append(SnsAlertSink(client_factory("sns", region), a.sns_topic_arn))
    if a.event_bus:
        sinks.append(EventBridgeAlertSink(client_factory("events"), a.event_bus, a.event_source))
    if a.metrics.enabled and metrics is not None:
        sinks.append(MetricsAlertSink(metrics))
    return sinks


def build_reaper(
    policy: Policy,
    metrics: Any = None,
    progress: Progress | None = None,
    client_factory: Callable[..., Any] = _client,
    clock: Callable[[], datetime] = utc_now,
) -> Reaper:
    return Reaper(
        policy=policy,
        stores=build_stores(policy, client_factory),
        clock=clock,
        liveness=None,
        audit=build_audit(policy, client_factory),
        alerts=build_alerts(policy, metrics, client_factory),
        progress=progress,
    )
