"""The EventBridge Scheduler schedule that runs the function: its role and its SQS dead-letter queue.

A builder: it creates its resources in the given scope (see ``infra.constructs``).
Two steps, so the resources keep their template order: the dead-letter queue
(``__init__``) comes before the function, the role and schedule (``invoke``) after it.
"""

from __future__ import annotations

import json

from aws_cdk import Aws, Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ..settings import ReaperSettings
from .nag import acknowledge

SCHEDULE_RETRY_ATTEMPTS = 3
SCHEDULE_MAX_EVENT_AGE_SECONDS = 900  # a delivery older than one interval is superseded by the next run


class ReaperSchedule:
    """``ScheduleDLQ``, then (``invoke``) ``ScheduleRole`` and the L1 ``Schedule``."""

    def __init__(self, scope: Construct, settings: ReaperSettings) -> None:
        self.scope = scope
        self.settings = settings
        self.dlq = sqs.Queue(
            scope,
            "ScheduleDLQ",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        acknowledge(
            self.dlq,
            "AwsSolutions-SQS3",
            "This queue is itself the dead-letter queue of the EventBridge Scheduler target; "
            "a queue behind it would never receive anything.",
        )

    def invoke(self, function: lambda_.IFunction) -> scheduler.CfnSchedule:
        """The schedule (L1, so its role gets exactly lambda:InvokeFunction and sqs:SendMessage on the DLQ)."""
        self.role = self._role(function)
        s = self.settings
        self.schedule = scheduler.CfnSchedule(
            self.scope,
            "Schedule",
            description="Runs Lock Reaper",
            schedule_expression=s.schedule,
            schedule_expression_timezone=s.schedule_timezone,
            state="ENABLED" if s.schedule_enabled else "DISABLED",
            flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
            target=scheduler.CfnSchedule.TargetProperty(
                arn=function.function_arn,
                role_arn=self.role.role_arn,
                input=json.dumps({"source": "lock-reaper-schedule"}),
                retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                    maximum_retry_attempts=SCHEDULE_RETRY_ATTEMPTS,
                    maximum_event_age_in_seconds=SCHEDULE_MAX_EVENT_AGE_SECONDS,
                ),
                dead_letter_config=scheduler.CfnSchedule.DeadLetterConfigProperty(arn=self.dlq.queue_arn),
            ),
        )
        # The role's policy must exist before the schedule first fires.
        self.schedule.node.add_dependency(self.role)
        return self.schedule

    def _role(self, function: lambda_.IFunction) -> iam.Role:
        role = iam.Role(
            self.scope,
            "ScheduleRole",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}
            ),
            description="EventBridge Scheduler: invokes the Lock Reaper function",
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(sid="InvokeReaper", actions=["lambda:InvokeFunction"], resources=[function.function_arn])
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(sid="DeadLetter", actions=["sqs:SendMessage"], resources=[self.dlq.queue_arn])
        )
        return role
