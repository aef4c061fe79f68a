"""The function role's permissions, one helper per kind of resource; every grant is named by ARN.

Each helper adds its statements (``Sid`` kept stable: the tests and reviewers
refer to them) to the role's default policy and acknowledges the cdk-nag
findings its wildcards raise, with the reason. ``ReaperFunction.grant`` calls
them in a fixed order, so the policy document does not change between synths.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns

from reaper.policy import Policy
from reaper.policy import env as reaper_env

from ..settings import ReaperSettings, StateBucket
from .nag import acknowledge, nag_render

LOCK_FILE_SUFFIX = ".tflock"
# Keys of the run-state table's items (reaper.lease.LEASE_KEY, reaper.watch.WATCH_PREFIX,
# reaper.liveness.lease_observations.KEY_PREFIX; the CDK app may not import those modules).
RUN_LEASE_KEY = "run-lease"
WATCH_KEY_PREFIX = "watch#"
LEASE_OBSERVATION_PREFIX = "lease#"
STATE_FILE_SUFFIX = ".tfstate"


class RoleGrants:
    """Grants to ``role``, from the context (``settings``) and the policy file."""

    def __init__(self, role: iam.Role, settings: ReaperSettings, policy: Policy) -> None:
        self.role = role
        self.settings = settings
        self.policy = policy
        self.stack = Stack.of(role)

    # ----- helpers -------------------------------------------------------------------
    def statement(self, sid: str, actions: list[str], resources: list[str], conditions: dict | None = None) -> None:
        self.role.add_to_principal_policy(
            iam.PolicyStatement(sid=sid, actions=actions, resources=resources, conditions=conditions)
        )

    def ack_resources(self, resources: list[str], reason: str) -> None:
        """Acknowledge the IAM5 (wildcard) finding of each of ``resources``."""
        for r in resources:
            acknowledge(self.role, f"AwsSolutions-IAM5[Resource::{nag_render(self.role, r)}]", reason)

    def table_region(self, table: str) -> str | None:
        """The region of the policy store that scans a lock table, if it names one (else the stack's)."""
        return next(
            (getattr(st, "region", None) for st in self.policy.stores if getattr(st, "table", None) == table), None
        )

    def table_arn(self, table: str) -> str:
        """A lock table's ARN, in the region of the policy store that scans it (else the stack's)."""
        return self.stack.format_arn(
            service="dynamodb", resource="table", resource_name=table, region=self.table_region(table)
        )

    def bucket_arn(self, bucket: StateBucket) -> str:
        return self.stack.format_arn(service="s3", region="", account="", resource=bucket.bucket)

    # ----- one per resource ----------------------------------------------------------
    def lock_tables(self) -> None:
        """Terraform lock tables: scan, validate, conditional delete (restore is the CLI's, with the operator's role)."""
        if self.settings.lock_tables:
            self.statement(
                "LockTables",
                ["dynamodb:Scan", "dynamodb:DescribeTable", "dynamodb:DeleteItem"],
                [self.table_arn(t) for t in self.settings.lock_tables],
            )

    def claims(self, table: dynamodb.ITable) -> None:
        """Claims: one consistent Scan per run (the table is TTL-bounded), or a Query per lock's Who past its limit."""
        self.statement("ClaimsQuery", ["dynamodb:Query", "dynamodb:Scan"], [table.table_arn])

    def run_state(self, table: dynamodb.ITable) -> None:
        """Run state: take (conditional put), read and release the run lease, in the stack's own table only;
        with state objects granted, list the late-writer watch items (``watch#``; written with the same put/delete).
        Item writes are bound to their keys (``dynamodb:LeadingKeys``): the run lease and ``watch#`` items by
        RunLease, the lease evidence's observations (``lease#``: read, conditional put, never delete) by
        LeaseObservations."""
        self.statement("RunLease", ["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:DeleteItem"], [table.table_arn],
                       {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [RUN_LEASE_KEY, f"{WATCH_KEY_PREFIX}*"]}})
        self.statement("LeaseObservations", ["dynamodb:GetItem", "dynamodb:PutItem"], [table.table_arn],
                       {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{LEASE_OBSERVATION_PREFIX}*"]}})
        if self.settings.state_activity_granted:
            self.statement("RunWatch", ["dynamodb:Scan"], [table.table_arn])

    def state_buckets(self) -> None:
        """State buckets: list, then read and conditionally delete lock files only (and head state objects)."""
        lock_objects: list[str] = []
        state_objects: list[str] = []
        bucket_arns: list[str] = []
        for b in self.settings.state_buckets:
            bucket_arn = self.bucket_arn(b)
            bucket_arns.append(bucket_arn)
            prefixes = b.prefixes or [""]
            lock_objects += [f"{bucket_arn}/{p}*{LOCK_FILE_SUFFIX}" for p in prefixes]
            state_objects += [f"{bucket_arn}/{p}*{STATE_FILE_SUFFIX}" for p in prefixes]
        if bucket_arns:
            # No s3:prefix condition: HeadBucket (the store's validation) is authorized by s3:ListBucket
            # and carries no prefix. Listing shows key names only; reads and deletes stay prefix-bound.
            self.statement("ListStateBuckets", ["s3:ListBucket"], bucket_arns)
        if lock_objects:
            self.statement("StateLockFiles", ["s3:GetObject", "s3:DeleteObject"], lock_objects)
            self.ack_resources(
                lock_objects,
                "Terraform names lock files <state key>.tflock: the wildcard is limited to *.tflock keys "
                "(under the configured prefixes) of the configured state buckets.",
            )
        if state_objects and self.settings.state_activity_granted:  # else the function's env turns it off
            self.statement("StateObjectsHead", ["s3:GetObject"], state_objects)
            self.ack_resources(
                state_objects,
                "State-activity liveness and the late-writer watch read object metadata (HeadObject needs "
                "s3:GetObject) of *.tfstate keys only; enabled by the state_activity_evidence context flag.",
            )
            # The late-writer watch lists one state key's versions (ListObjectVersions, Prefix = the key): only
            # for *.tfstate prefixes, one statement per bucket (each bucket has its own prefixes).
            for i, b in enumerate(self.settings.state_buckets):
                self.statement(
                    f"StateObjectVersions{i}",
                    ["s3:ListBucketVersions"],
                    [self.bucket_arn(b)],
                    {"StringLike": {"s3:prefix": [f"{p}*{STATE_FILE_SUFFIX}" for p in (b.prefixes or [""])]}},
                )

    def named_keys(self) -> None:
        """Customer keys of SSE-KMS state buckets and secrets."""
        if self.settings.kms_key_arns:
            self.statement("DecryptWithNamedKeys", ["kms:Decrypt"], list(self.settings.kms_key_arns))

    def token_secrets(self) -> None:
        """CI / HCP token secrets, by name (Secrets Manager appends -XXXXXX to secret ARNs) or ARN."""
        if not self.settings.ci_token_secrets:
            return
        secret_arns = [
            ref
            if ref.startswith("arn:")
            else self.stack.format_arn(
                service="secretsmanager",
                resource="secret",
                resource_name=f"{ref}-??????",
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            )
            for ref in self.settings.ci_token_secrets
        ]
        self.statement("ReadTokenSecrets", ["secretsmanager:GetSecretValue"], secret_arns)

    def alerts(self, topic: sns.ITopic | None) -> None:
        """Alerts: the topic if the stack has one (its key is granted with the audit records), the event bus."""
        if topic is not None:
            self.statement("PublishAlerts", ["sns:Publish"], [topic.topic_arn])
        bus = self.settings.event_bus
        bus_arn = (
            bus
            if bus.startswith("arn:")
            else self.stack.format_arn(service="events", resource="event-bus", resource_name=bus)
        )
        self.statement("PutReapedEvents", ["events:PutEvents"], [bus_arn])

    def audit_records(self, bucket: s3.IBucket, key: kms.IKey) -> None:
        """Audit records: write, read back for restore; only under the policy's audit prefix. The stack key."""
        audit_objects = [bucket.arn_for_objects(f"{self.policy.audit.prefix}*")]
        self.statement("AuditRecords", ["s3:PutObject", "s3:GetObject"], audit_objects)
        self.ack_resources(
            audit_objects,
            "Audit records get one object per reaped lock under the policy's audit prefix of the stack's own bucket.",
        )
        self.statement("UseStackKey", ["kms:GenerateDataKey", "kms:Decrypt"], [key.key_arn])
        if self.policy.alerts.digest.enabled:
            # The digest reads its marker (<audit prefix>runs/last-digest.json) before the first one exists:
            # without s3:ListBucket, S3 answers a missing key with 403 AccessDenied, not 404, and no digest is sent.
            # Key names of the stack's own bucket only; no s3:prefix condition (S3 checks it without a prefix).
            self.statement("AuditBucketList", ["s3:ListBucket"], [bucket.bucket_arn])

    def logs(self, log_group: logs.ILogGroup) -> None:
        """Logs: only this function's log group."""
        log_group.grant_write(self.role)

    def tracing(self) -> None:
        """Active tracing: CDK adds xray:PutTraceSegments / PutTelemetryRecords, which have no resource-level permissions."""
        acknowledge(
            self.role,
            "AwsSolutions-IAM5[Resource::*]",
            "Only for xray:PutTraceSegments and xray:PutTelemetryRecords (active tracing), "
            "which support no resource-level permissions.",
        )


def state_objects_env(settings: ReaperSettings) -> dict[str, str]:
    """``REAPER_STATE_OBJECTS``: the state objects the role may read (``StateObjectsHead``), so that the function
    asks about no other (no AccessDenied every run); ``none`` without the grant."""
    if not settings.state_activity_granted:
        return {reaper_env.STATE_OBJECTS: reaper_env.NO_STATE_OBJECTS}
    granted = [f"{b.bucket}/{p}" for b in settings.state_buckets for p in (b.prefixes or [""])]
    return {reaper_env.STATE_OBJECTS: ",".join(granted)}
