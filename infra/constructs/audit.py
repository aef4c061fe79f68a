"""The stack's KMS key and the audit storage: the audit bucket and its access-log bucket.

Builders: they create their resources in the given scope (see ``infra.constructs``).
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct


class StackKey:
    """``Key``: encrypts the alert topic and the audit records; CloudWatch alarms may use it."""

    def __init__(self, scope: Construct) -> None:
        self.key = kms.Key(
            scope,
            "Key",
            description="Lock Reaper: encrypts the alert topic and the audit records",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # CloudWatch alarms publish to the encrypted topic: they need the key (an AWS managed key cannot allow this).
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToUseTheKey",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                # only on behalf of this account's alarms (confused deputy)
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(scope).account}},
            )
        )


class AuditStorage:
    """``Audit`` (versioned, KMS encrypted, SSL only, access logged, RETAIN) and ``AccessLogs`` (SSE-S3)."""

    def __init__(self, scope: Construct, key: kms.IKey, retention_days: int) -> None:
        self.access_logs = self._access_logs(scope)
        self.bucket = s3.Bucket(
            scope,
            "Audit",
            versioned=True,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            removal_policy=RemovalPolicy.RETAIN,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="audit-bucket/",
            lifecycle_rules=audit_lifecycle(retention_days),
        )

    @staticmethod
    def _access_logs(scope: Construct) -> s3.Bucket:
        return s3.Bucket(
            scope,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # server access log delivery requires SSE-S3
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=False,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(365)),
                s3.LifecycleRule(id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=Duration.days(7)),
            ],
        )


def audit_lifecycle(retention_days: int) -> list[s3.LifecycleRule]:
    """Old versions to Glacier IR after 30 days, gone after 365; records expire only if ``retention_days``."""
    rules = [
        s3.LifecycleRule(
            id="noncurrent-versions",
            noncurrent_version_transitions=[
                s3.NoncurrentVersionTransition(
                    storage_class=s3.StorageClass.GLACIER_INSTANT_RETRIEVAL, transition_after=Duration.days(30)
                )
            ],
            noncurrent_version_expiration=Duration.days(365),
        ),
        s3.LifecycleRule(id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=Duration.days(7)),
    ]
    if retention_days:
        rules.append(s3.LifecycleRule(id="expire-audit-records", expiration=Duration.days(retention_days)))
    return rules
