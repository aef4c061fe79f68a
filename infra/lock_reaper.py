"""The ``LockReaper`` construct: everything one account needs to run Lock Reaper.

- the Lambda (Python 3.13, arm64, reserved concurrency 1), bundled without Docker;
- an EventBridge Scheduler schedule with a retry policy and an SQS dead-letter queue;
- a KMS key for the alert topic and the audit records;
- the SNS alert topic (SSL only, KMS encrypted, email subscriptions);
- the audit bucket (versioned, KMS encrypted, SSL only, access logged, RETAIN) and its access-log bucket;
- the claims table used by the liveness checks (CI jobs write, the Lambda queries);
- CloudWatch alarms (all to the topic) and a dashboard;
- a least-privilege role: every grant is named by ARN from the context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import (
    ArnFormat,
    AssetHashType,
    Aws,
    BundlingOptions,
    Duration,
    RemovalPolicy,
    Stack,
    Validations,
)
from aws_cdk import Acknowledgment as Ack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from reaper.policy import Policy
from reaper.report import METRIC_DURATION, METRIC_SERVICE, METRICS

from .local_bundling import LocalPipBundling
from .settings import RETENTION_DAYS, ReaperSettings

HANDLER = "reaper.handler.lambda_handler"
TASK_ROOT_POLICY = "/var/task/policy.yaml"  # the bundler copies the policy file to the asset root
CLAIMS_PARTITION_KEY = "Who"
CLAIMS_SORT_KEY = "ClaimedAt"
CLAIMS_TTL_ATTRIBUTE = "ExpiresAt"
LOCK_FILE_SUFFIX = ".tflock"
STATE_FILE_SUFFIX = ".tfstate"
ALARM_PERIOD = Duration.minutes(15)
SCHEDULE_RETRY_ATTEMPTS = 3
SCHEDULE_MAX_EVENT_AGE_SECONDS = 900  # a delivery older than one interval is superseded by the next run
NAG = "AwsSolutions::"  # cdk-nag 3 acknowledgement prefix (recorded with its reason in the validation report)

# The run metrics that page someone when they are above zero (metric key -> alarm id, meaning).
COUNT_ALARMS: dict[str, tuple[str, str]] = {
    "reaped": ("LocksReaped", "A run deleted at least one stale lock (audited, restorable)."),
    "cap_hit": ("DeleteCapHit", "A run hit max_deletes_per_run: stale locks were kept; look for a mass failure."),
    "unparseable": ("LocksUnparseable", "A lock's Info could not be parsed: it is kept; inspect it by hand."),
    "alive_past_hard_max": (
        "LocksAlivePastHardMax",
        "A lock's holder is still alive past hard_max_age: a run is stuck or far too slow.",
    ),
    "errors": ("RunErrors", "A run could not scan a store, delete a lock or send an alert: see the function logs."),
    "double_lock_partial": (
        "DoubleLockPartial",
        "A double lock (S3 file + DynamoDB item) was released in one store only: the state is still locked.",
    ),
}


@dataclass(frozen=True)
class LockReaperProps:
    settings: ReaperSettings
    policy: Policy
    policy_file: Path
    project_root: Path
    code: lambda_.Code | None = None  # tests may pass inline code to skip bundling; None bundles the package


class LockReaper(Construct):
    def __init__(self, scope: Construct, id: str, props: LockReaperProps) -> None:
        super().__init__(scope, id)
        self.props = props
        s = props.settings
        self.namespace = props.policy.alerts.metrics.namespace

        # ----- encryption key for the topic and the audit records -------------
        self.key = kms.Key(
            self,
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
            )
        )

        # ----- alert topic ------------------------------------------------------
        self.topic = sns.Topic(
            self,
            "Alerts",
            display_name="Lock Reaper alerts",
            master_key=self.key,
            enforce_ssl=True,
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "ArnLike": {"aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}:alarm:*"},
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                },
            )
        )
        for email in s.alert_emails:
            self.topic.add_subscription(subs.EmailSubscription(email))

        # ----- audit bucket and its access logs --------------------------------
        self.access_logs = s3.Bucket(
            self,
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
        audit_rules = [
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
        if s.audit_retention_days:
            audit_rules.append(s3.LifecycleRule(id="expire-audit-records", expiration=Duration.days(s.audit_retention_days)))
        self.audit_bucket = s3.Bucket(
            self,
            "Audit",
            versioned=True,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            removal_policy=RemovalPolicy.RETAIN,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="audit-bucket/",
            lifecycle_rules=audit_rules,
        )

        # ----- claims table (written by CI jobs, queried by the Lambda) --------
        self.claims_table = dynamodb.Table(
            self,
            "Claims",
            table_name=s.claims_table,
            partition_key=dynamodb.Attribute(name=CLAIMS_PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=CLAIMS_SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute=CLAIMS_TTL_ATTRIBUTE,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(point_in_time_recovery_enabled=True),
            # Claims live for hours (TTL); losing them makes liveness "unknown", which keeps locks.
            removal_policy=RemovalPolicy.DESTROY,
        )

        # ----- dead-letter queue for schedule deliveries ------------------------
        self.dlq = sqs.Queue(
            self,
            "ScheduleDLQ",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        Validations.of(self.dlq).acknowledge(
            Ack(
                id=f"{NAG}AwsSolutions-SQS3",
                reason="This queue is itself the dead-letter queue of the EventBridge Scheduler target; "
                "a queue behind it would never receive anything.",
            )
        )

        # ----- the function -----------------------------------------------------
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=getattr(logs.RetentionDays, RETENTION_DAYS[s.log_retention_days]),
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Lock Reaper function: reads Terraform locks and deletes stale ones, only where named",
        )
        code = props.code or lambda_.Code.from_asset(
            str(props.project_root / "reaper"),
            asset_hash_type=AssetHashType.OUTPUT,
            bundling=BundlingOptions(
                # Required by the API; never used: local bundling always succeeds or fails the synth.
                image=lambda_.Runtime.PYTHON_3_13.bundling_image,
                local=LocalPipBundling(props.project_root, props.policy_file),
            ),
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description="Lock Reaper: finds stale Terraform state locks and removes them safely",
            runtime=lambda_.Runtime.PYTHON_3_13,
            architecture=lambda_.Architecture.ARM_64,
            handler=HANDLER,
            code=code,
            role=self.role,
            memory_size=s.memory_mb,
            timeout=Duration.minutes(s.timeout_minutes),
            reserved_concurrent_executions=1,  # runs never overlap
            retry_attempts=0,  # a failed run is retried by the next scheduled one
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            environment={
                "REAPER_POLICY_FILE": TASK_ROOT_POLICY,
                "REAPER_AUDIT_BUCKET": self.audit_bucket.bucket_name,
                "REAPER_SNS_TOPIC_ARN": self.topic.topic_arn,
                "REAPER_EVENT_BUS": s.event_bus,
                "REAPER_CLAIMS_TABLE": self.claims_table.table_name,
                "POWERTOOLS_SERVICE_NAME": METRIC_SERVICE,
                "POWERTOOLS_METRICS_NAMESPACE": self.namespace,
            },
        )
        Validations.of(self.function).acknowledge(
            Ack(
                id=f"{NAG}AwsSolutions-L1",
                reason="Pinned to python3.13 on purpose: the bundled binary wheels (pydantic_core, PyYAML, wrapt) "
                "are resolved for cp313 and the package is tested on 3.13; move the runtime and "
                "infra/bundling.PYTHON_VERSION together.",
            )
        )
        self._grant()

        # ----- schedule -----------------------------------------------------------
        # L1 so the scheduler role gets exactly lambda:InvokeFunction on the function and sqs:SendMessage on the DLQ.
        self.schedule_role = iam.Role(
            self,
            "ScheduleRole",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}
            ),
            description="EventBridge Scheduler: invokes the Lock Reaper function",
        )
        self.schedule_role.add_to_principal_policy(
            iam.PolicyStatement(sid="InvokeReaper", actions=["lambda:InvokeFunction"], resources=[self.function.function_arn])
        )
        self.schedule_role.add_to_principal_policy(
            iam.PolicyStatement(sid="DeadLetter", actions=["sqs:SendMessage"], resources=[self.dlq.queue_arn])
        )
        self.schedule = scheduler.CfnSchedule(
            self,
            "Schedule",
            description="Runs Lock Reaper",
            schedule_expression=s.schedule,
            schedule_expression_timezone=s.schedule_timezone,
            state="ENABLED" if s.schedule_enabled else "DISABLED",
            flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
            target=scheduler.CfnSchedule.TargetProperty(
                arn=self.function.function_arn,
                role_arn=self.schedule_role.role_arn,
                input=json.dumps({"source": "lock-reaper-schedule"}),
                retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                    maximum_retry_attempts=SCHEDULE_RETRY_ATTEMPTS,
                    maximum_event_age_in_seconds=SCHEDULE_MAX_EVENT_AGE_SECONDS,
                ),
                dead_letter_config=scheduler.CfnSchedule.DeadLetterConfigProperty(arn=self.dlq.queue_arn),
            ),
        )
        # The role's policy must exist before the schedule first fires.
        self.schedule.node.add_dependency(self.schedule_role)

        self._alarms()
        self._dashboard()

    # ------------------------------------------------------------------------
    def _statement(self, sid: str, actions: list[str], resources: list[str], conditions: dict | None = None) -> None:
        self.role.add_to_principal_policy(
            iam.PolicyStatement(sid=sid, actions=actions, resources=resources, conditions=conditions)
        )

    def _ack_resources(self, resources: list[str], reason: str) -> None:
        for r in resources:
            finding = f"{NAG}AwsSolutions-IAM5[Resource::{nag_render(self, r)}]"
            Validations.of(self.role).acknowledge(Ack(id=finding, reason=reason))

    def table_arn(self, table: str) -> str:
        region = next(
            (getattr(st, "region", None) for st in self.props.policy.stores if getattr(st, "table", None) == table), None
        )
        return Stack.of(self).format_arn(service="dynamodb", resource="table", resource_name=table, region=region)

    def _grant(self) -> None:
        s = self.props.settings
        stack = Stack.of(self)

        # Terraform lock tables: scan, validate, conditional delete, restore.
        if s.lock_tables:
            self._statement(
                "LockTables",
                ["dynamodb:Scan", "dynamodb:DescribeTable", "dynamodb:DeleteItem", "dynamodb:PutItem"],
                [self.table_arn(t) for t in s.lock_tables],
            )
        # Claims: the latest claim for a lock's Who.
        self._statement("ClaimsQuery", ["dynamodb:Query"], [self.claims_table.table_arn])

        # State buckets: list, then read and conditionally delete lock files only.
        lock_objects: list[str] = []
        state_objects: list[str] = []
        bucket_arns: list[str] = []
        for b in s.state_buckets:
            bucket_arn = stack.format_arn(service="s3", region="", account="", resource=b.bucket)
            bucket_arns.append(bucket_arn)
            prefixes = b.prefixes or [""]
            lock_objects += [f"{bucket_arn}/{p}*{LOCK_FILE_SUFFIX}" for p in prefixes]
            state_objects += [f"{bucket_arn}/{p}*{STATE_FILE_SUFFIX}" for p in prefixes]
        if bucket_arns:
            # No s3:prefix condition: HeadBucket (the store's validation) is authorized by s3:ListBucket
            # and carries no prefix. Listing shows key names only; reads and deletes stay prefix-bound.
            self._statement("ListStateBuckets", ["s3:ListBucket"], bucket_arns)
        if lock_objects:
            self._statement("StateLockFiles", ["s3:GetObject", "s3:DeleteObject"], lock_objects)
            self._ack_resources(
                lock_objects,
                "Terraform names lock files <state key>.tflock: the wildcard is limited to *.tflock keys "
                "(under the configured prefixes) of the configured state buckets.",
            )
        if state_objects and s.state_activity_evidence:
            self._statement("StateObjectsHead", ["s3:GetObject"], state_objects)
            self._ack_resources(
                state_objects,
                "State-activity liveness reads object metadata (HeadObject needs s3:GetObject) of *.tfstate keys "
                "only; enabled by the state_activity_evidence context flag.",
            )

        # Customer keys of SSE-KMS state buckets and secrets.
        if s.kms_key_arns:
            self._statement("DecryptWithNamedKeys", ["kms:Decrypt"], list(s.kms_key_arns))

        # CI / HCP token secrets, by name (Secrets Manager appends -XXXXXX to secret ARNs).
        if s.ci_token_secrets:
            secret_arns = [
                ref
                if ref.startswith("arn:")
                else stack.format_arn(
                    service="secretsmanager",
                    resource="secret",
                    resource_name=f"{ref}-??????",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
                for ref in s.ci_token_secrets
            ]
            self._statement("ReadTokenSecrets", ["secretsmanager:GetSecretValue"], secret_arns)

        # Alerts: the topic (its key), the event bus.
        self._statement("PublishAlerts", ["sns:Publish"], [self.topic.topic_arn])
        bus_arn = (
            s.event_bus
            if s.event_bus.startswith("arn:")
            else stack.format_arn(service="events", resource="event-bus", resource_name=s.event_bus)
        )
        self._statement("PutReapedEvents", ["events:PutEvents"], [bus_arn])

        # Audit records: write, read back for restore; only under the policy's audit prefix.
        prefix = self.props.policy.audit.prefix
        audit_objects = [self.audit_bucket.arn_for_objects(f"{prefix}*")]
        self._statement("AuditRecords", ["s3:PutObject", "s3:GetObject"], audit_objects)
        self._ack_resources(
            audit_objects,
            "Audit records get one object per reaped lock under the policy's audit prefix of the stack's own bucket.",
        )
        self._statement("UseStackKey", ["kms:GenerateDataKey", "kms:Decrypt"], [self.key.key_arn])

        # Logs: only this function's log group.
        self.log_group.grant_write(self.role)

        # Active tracing: CDK adds xray:PutTraceSegments / PutTelemetryRecords, which have no resource-level permissions.
        Validations.of(self.role).acknowledge(
            Ack(
                id=f"{NAG}AwsSolutions-IAM5[Resource::*]",
                reason="Only for xray:PutTraceSegments and xray:PutTelemetryRecords (active tracing), "
                "which support no resource-level permissions.",
            )
        )

    # ------------------------------------------------------------------------
    def metric(self, key: str, statistic: str = "Sum") -> cw.Metric:
        return cw.Metric(
            namespace=self.namespace,
            metric_name=METRICS[key] if key in METRICS else key,
            dimensions_map={"service": METRIC_SERVICE},
            statistic=statistic,
            period=ALARM_PERIOD,
        )

    def _alarms(self) -> None:
        stack_name = Stack.of(self).stack_name
        action = cw_actions.SnsAction(self.topic)
        self.alarms: dict[str, cw.Alarm] = {}

        def add(alarm_id: str, metric: cw.IMetric, description: str) -> None:
            alarm = cw.Alarm(
                self,
                f"{alarm_id}Alarm",
                alarm_name=f"{stack_name}-{alarm_id}",
                alarm_description=description,
                metric=metric,
                threshold=0,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                datapoints_to_alarm=1,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            )
            alarm.add_alarm_action(action)
            self.alarms[alarm_id] = alarm

        add(
            "FunctionErrors",
            self.function.metric_errors(period=ALARM_PERIOD, statistic="Sum"),
            "The Lock Reaper function failed (crash or timeout). Nothing was reaped by that run; see its logs.",
        )
        add(
            "ScheduleDLQ",
            self.dlq.metric_approximate_number_of_messages_visible(period=Duration.minutes(5), statistic="Maximum"),
            "EventBridge Scheduler could not invoke the function: the failed invocations are in the dead-letter queue.",
        )
        for key, (alarm_id, meaning) in COUNT_ALARMS.items():
            if key not in METRICS:  # an optional metric the package does not emit (yet)
                continue
            add(alarm_id, self.metric(key, "Maximum" if key == "cap_hit" else "Sum"), meaning)

    def _dashboard(self) -> None:
        def graph(title: str, metrics: list[cw.IMetric], right: list[cw.IMetric] | None = None) -> cw.GraphWidget:
            return cw.GraphWidget(title=title, left=metrics, right=right or [], width=12, height=6)

        self.dashboard = cw.Dashboard(self, "Dashboard", default_interval=Duration.days(7))
        self.dashboard.add_widgets(
            graph(
                "Locks per run",
                [self.metric(k) for k in ("locks_scanned", "stale", "would_reap", "reaped")],
            ),
            graph(
                "Kept, raced, unparseable",
                [self.metric(k) for k in ("raced", "gone", "kept_unknown", "unparseable", "alive_past_hard_max")],
            ),
        )
        self.dashboard.add_widgets(
            graph(
                "Errors",
                [self.metric("errors"), self.function.metric_errors(period=ALARM_PERIOD, statistic="Sum")],
                [self.metric("cap_hit", "Maximum")],
            ),
            graph(
                "Run duration (seconds)",
                [
                    self.metric(METRIC_DURATION, "Maximum"),
                    self.function.metric_duration(period=ALARM_PERIOD, statistic="Maximum"),
                ],
            ),
        )
        self.dashboard.add_widgets(
            cw.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=24, height=4),
        )


def nag_render(scope: Construct, value: str) -> str:
    """Render a (possibly tokenized) string the way cdk-nag names it in a finding id."""
    resolved = Stack.of(scope).resolve(value)
    return _render(resolved)


def _render(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        if "Ref" in v:
            return f"<{v['Ref']}>"
        if "Fn::GetAtt" in v:
            a = v["Fn::GetAtt"]
            return f"<{a[0]}.{a[1]}>" if isinstance(a, list) else f"<{a}>"
        if "Fn::Join" in v:
            sep, parts = v["Fn::Join"]
            return sep.join(_render(p) for p in parts)
    return str(v)
