"""The deployable stack: it only composes the ``LockReaper`` construct (and, for an organization, ``OrgMember``)
and names its outputs. ``compose_member`` is shared with the stack set's member template (``infra.stackset``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from .constructs.org_member import OrgMember
from .lock_reaper import LockReaper, LockReaperProps
from .org_settings import OrgSettings

DESCRIPTION = "Lock Reaper: scheduled removal of stale Terraform/OpenTofu state locks"


class LockReaperStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        reaper: LockReaperProps,
        org: OrgSettings | None = None,
        regions: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, description=DESCRIPTION, **kwargs)
        compose_member(self, reaper, org, regions)


def compose_member(stack: Stack, reaper: LockReaperProps, org: OrgSettings | None, regions: Sequence[str] = ()) -> None:
    """``LockReaper`` (and ``Org`` when an organization is configured) in ``stack``, with the outputs.

    Sets ``stack.reaper`` and ``stack.org``. ``regions``: where a stack set deploys the template (for the scan role).
    """
    stack.reaper = lr = LockReaper(stack, "LockReaper", reaper)  # type: ignore[attr-defined]
    org_parts = OrgMember(stack, "Org", lr, org, list(regions)) if org is not None else None
    stack.org = org_parts  # type: ignore[attr-defined]
    outputs = {
        "FunctionName": (lr.function.function_name, "The Lock Reaper function (invoke it for an ad hoc run)"),
        "AlertTopicArn": (lr.topic.topic_arn if lr.topic is not None else None, "SNS topic for alarms and reap reports"),
        "AuditBucketName": (lr.audit_bucket.bucket_name, "Audit records of every reaped lock"),
        "ClaimsTableName": (lr.claims_table.table_name, "Claims table CI jobs write to"),
        "ClaimsTableArn": (lr.claims_table.table_arn, "Grant CI roles dynamodb:PutItem on this ARN"),
        "ScheduleDLQUrl": (lr.dlq.queue_url, "Dead-letter queue of failed scheduled invocations"),
    }
    for name, (value, description) in outputs.items():
        if value is not None:
            CfnOutput(stack, name, value=value, description=description)
    if org_parts is not None and org_parts.scan_role is not None:
        CfnOutput(
            stack,
            "ScanRoleArn",
            value=org_parts.scan_role.role_arn,
            description="Role the central account assumes for lock-reaper scan --role-arn (read only)",
            condition=org_parts.scan_role.node.default_child.cfn_options.condition,  # type: ignore[union-attr]
        )
