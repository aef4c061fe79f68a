"""The ``LockReaper`` construct: everything one account needs to run Lock Reaper.

- the Lambda (Python 3.13, arm64; reserved concurrency only if the context asks), bundled without Docker;
- an EventBridge Scheduler schedule with a retry policy and an SQS dead-letter queue;
- a KMS key for the alert topic and the audit records;
- the SNS alert topic (SSL only, KMS encrypted, email subscriptions);
- the audit bucket (versioned, KMS encrypted, SSL only, access logged, RETAIN) and its access-log bucket;
- the claims table used by the liveness checks (CI jobs write, the Lambda queries);
- the run-state table holding the run lease (one run at a time);
- CloudWatch alarms (all to the topic) and a dashboard;
- a least-privilege role: every grant is named by ARN from the context.

Each part is built by ``infra.constructs`` into this construct's scope, so every
resource keeps its path and logical ID (see that package's docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from reaper.policy import Policy

from .constructs import (
    COUNT_ALARMS,
    NAG,
    AlertTopic,
    AuditStorage,
    ClaimsTable,
    Monitoring,
    ReaperFunction,
    ReaperSchedule,
    RunStateTable,
    StackKey,
    nag_render,
)
from .constructs.function import bundled_code
from .constructs.grants import state_objects_env
from .settings import ReaperSettings

__all__ = ["COUNT_ALARMS", "NAG", "LockReaper", "LockReaperProps", "nag_render"]


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

        self.key = StackKey(self).key
        # None when context.reaper.alert_topic is false (a member that alerts through the central account)
        self.topic = AlertTopic(self, self.key, s.alert_emails).topic if s.alert_topic else None
        audit = AuditStorage(self, self.key, s.audit_retention_days)
        self.access_logs, self.audit_bucket = audit.access_logs, audit.bucket
        self.claims_table = ClaimsTable(self, s.claims_table).table
        self.run_state_table = RunStateTable(self).table
        schedule = ReaperSchedule(self, s)  # the dead-letter queue now, the schedule once the function exists
        self.dlq = schedule.dlq

        env = ReaperFunction.environment(
            s,
            audit_bucket=self.audit_bucket,
            topic=self.topic,
            claims_table=self.claims_table,
            run_state_table=self.run_state_table,
            namespace=self.namespace,
        )
        env.update(state_objects_env(s))  # the state objects the role may read: no other is asked
        fn = ReaperFunction(self, s, props.code or bundled_code(props.project_root, props.policy_file), env)
        self.log_group, self.role, self.function = fn.log_group, fn.role, fn.function
        self.grants = fn.grant(
            props.policy,
            claims_table=self.claims_table,
            run_state_table=self.run_state_table,
            topic=self.topic,
            audit_bucket=self.audit_bucket,
            key=self.key,
        )

        self.schedule = schedule.invoke(self.function)
        self.schedule_role = schedule.role

        self.monitoring = Monitoring(
            self, self.namespace, self.function, self.dlq, self.topic, self.log_group, self.lock_table_regions()
        )
        self.alarms, self.dashboard = self.monitoring.alarms, self.monitoring.dashboard

    def metric(self, key: str, statistic: str = "Sum") -> cw.Metric:
        """A run metric of the package, as the alarms and the dashboard use it."""
        return self.monitoring.metric(key, statistic)

    def lock_table_regions(self) -> list[tuple[str, str | None]]:
        """(lock table, its region if the policy names one) for each table of the context."""
        return [(t, self.grants.table_region(t)) for t in self.props.settings.lock_tables]

    def table_arn(self, table: str) -> str:
        """A lock table's ARN as the role names it."""
        return self.grants.table_arn(table)
