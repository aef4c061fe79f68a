"""The deployable stack: it only composes the ``LockReaper`` construct and names its outputs."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from .lock_reaper import LockReaper, LockReaperProps


class LockReaperStack(Stack):
    def __init__(self, scope: Construct, id: str, *, reaper: LockReaperProps, **kwargs: Any) -> None:
        super().__init__(
            scope,
            id,
            description="Lock Reaper: scheduled removal of stale Terraform/OpenTofu state locks",
            **kwargs,
        )
        self.reaper = LockReaper(self, "LockReaper", reaper)
        outputs = {
            "FunctionName": (self.reaper.function.function_name, "The Lock Reaper function (invoke it for an ad hoc run)"),
            "AlertTopicArn": (self.reaper.topic.topic_arn, "SNS topic for alarms and reap reports"),
            "AuditBucketName": (self.reaper.audit_bucket.bucket_name, "Audit records of every reaped lock"),
            "ClaimsTableName": (self.reaper.claims_table.table_name, "Claims table CI jobs write to"),
            "ClaimsTableArn": (self.reaper.claims_table.table_arn, "Grant CI roles dynamodb:PutItem on this ARN"),
            "ScheduleDLQUrl": (self.reaper.dlq.queue_url, "Dead-letter queue of failed scheduled invocations"),
        }
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)
