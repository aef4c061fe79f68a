"""The claims table the liveness checks use: CI jobs write a claim, the function queries a lock's latest one.

A builder: it creates its resource in the given scope (see ``infra.constructs``).
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

CLAIMS_PARTITION_KEY = "Who"
CLAIMS_SORT_KEY = "ClaimedAt"
CLAIMS_TTL_ATTRIBUTE = "ExpiresAt"


class ClaimsTable:
    """``Claims``: on demand, point-in-time recovery, TTL on ``ExpiresAt``."""

    def __init__(self, scope: Construct, table_name: str) -> None:
        self.table = dynamodb.Table(
            scope,
            "Claims",
            table_name=table_name,
            partition_key=dynamodb.Attribute(name=CLAIMS_PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=CLAIMS_SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute=CLAIMS_TTL_ATTRIBUTE,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(point_in_time_recovery_enabled=True),
            # Claims live for hours (TTL); losing them makes liveness "unknown", which keeps locks.
            removal_policy=RemovalPolicy.DESTROY,
        )
