"""The Lock Reaper function: its code (bundled locally, no Docker), log group, role and environment.

A builder: it creates its resources in the given scope (see ``infra.constructs``).
The role's permissions are in ``grants``; ``grant`` applies them in their order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aws_cdk import AssetHashType, BundlingOptions, Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from reaper.policy import Policy
from reaper.policy import env as reaper_env
from reaper.report import METRIC_SERVICE

from ..local_bundling import LocalPipBundling
from ..settings import RETENTION_DAYS, ReaperSettings, state_activity_env
from .grants import RoleGrants
from .nag import acknowledge

HANDLER = "reaper.handler.lambda_handler"
TASK_ROOT_POLICY = "/var/task/policy.yaml"  # the bundler copies the policy file to the asset root
RUNTIME = lambda_.Runtime.PYTHON_3_13


def bundled_code(project_root: Path, policy_file: Path) -> lambda_.Code:
    """The ``reaper`` package, its runtime dependencies and the policy file, bundled without Docker."""
    return lambda_.Code.from_asset(
        str(project_root / "reaper"),
        asset_hash_type=AssetHashType.OUTPUT,
        bundling=BundlingOptions(
            # Required by the API; never used: local bundling always succeeds or fails the synth.
            image=RUNTIME.bundling_image,
            local=LocalPipBundling(project_root, policy_file),
            # Never read by the local bundler: it keys CDK's asset cache (source path + bundling options) by the
            # policy's content, so two targets with different policies (stack sets) never share one bundle.
            environment={"LOCK_REAPER_POLICY_SHA256": hashlib.sha256(Path(policy_file).read_bytes()).hexdigest()},
        ),
    )


class ReaperFunction:
    """``Logs``, ``Role`` and ``Function`` (arm64, no async retries, active tracing).

    Runs are kept apart by the run lease (``run_state``), not by reserved concurrency:
    a reservation is opt-in (``reserved_concurrency`` in the context), because it fails
    the deploy on an account whose concurrency limit is still the new-account default.
    """

    def __init__(
        self,
        scope: Construct,
        settings: ReaperSettings,
        code: lambda_.Code,
        environment: dict[str, str],
    ) -> None:
        self.settings = settings
        self.log_group = logs.LogGroup(
            scope,
            "Logs",
            retention=getattr(logs.RetentionDays, RETENTION_DAYS[settings.log_retention_days]),
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.role = iam.Role(
            scope,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Lock Reaper function: reads Terraform locks and deletes stale ones, only where named",
        )
        self.function = lambda_.Function(
            scope,
            "Function",
            description="Lock Reaper: finds stale Terraform state locks and removes them safely",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            handler=HANDLER,
            code=code,
            role=self.role,
            memory_size=settings.memory_mb,
            timeout=Duration.seconds(settings.timeout_seconds),
            reserved_concurrent_executions=settings.reserved_concurrency,  # None: no reservation (the lease serializes runs)
            retry_attempts=0,  # a failed run is retried by the next scheduled one
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            environment=environment,
        )
        acknowledge(
            self.function,
            "AwsSolutions-L1",
            "Pinned to python3.13 on purpose: the bundled binary wheels (pydantic_core, PyYAML, wrapt) "
            "are resolved for cp313 and the package is tested on 3.13; move the runtime and "
            "infra/bundling.PYTHON_VERSION together.",
        )

    @staticmethod
    def environment(
        settings: ReaperSettings,
        *,
        audit_bucket: s3.IBucket,
        topic: sns.ITopic | None,
        claims_table: dynamodb.ITable,
        run_state_table: dynamodb.ITable,
        namespace: str,
    ) -> dict[str, str]:
        """The function's environment: the ``REAPER_*`` contract (``reaper.policy.env``) and Powertools'."""
        return {
            reaper_env.POLICY_FILE: TASK_ROOT_POLICY,
            reaper_env.AUDIT_BUCKET: audit_bucket.bucket_name,
            **({reaper_env.SNS_TOPIC_ARN: topic.topic_arn} if topic is not None else {}),  # no topic: no SNS sink
            reaper_env.EVENT_BUS: settings.event_bus,
            reaper_env.CLAIMS_TABLE: claims_table.table_name,
            reaper_env.LEASE_TABLE: run_state_table.table_name,
            reaper_env.LEASE_SECONDS: str(settings.timeout_seconds),  # a crashed run's lease expires with its timeout
            **state_activity_env(settings),  # state activity off unless the role may head state objects
            "POWERTOOLS_SERVICE_NAME": METRIC_SERVICE,
            "POWERTOOLS_METRICS_NAMESPACE": namespace,
        }

    def grant(
        self,
        policy: Policy,
        *,
        claims_table: dynamodb.ITable,
        run_state_table: dynamodb.ITable,
        topic: sns.ITopic | None,
        audit_bucket: s3.IBucket,
        key: kms.IKey,
    ) -> RoleGrants:
        """Every permission of the role, each named by ARN (see ``grants``)."""
        g = RoleGrants(self.role, self.settings, policy)
        g.lock_tables()
        g.claims(claims_table)
        g.run_state(run_state_table)
        g.state_buckets()
        g.named_keys()
        g.token_secrets()
        g.alerts(topic)
        g.audit_records(audit_bucket, key)
        g.logs(self.log_group)
        g.tracing()
        return g
