"""The SNS alert topic: KMS encrypted with the stack key, SSL only, CloudWatch alarms of this account may publish.

A builder: it creates its resources in the given scope (see ``infra.constructs``).
"""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct


class AlertTopic:
    """``Alerts``, with one email subscription per address."""

    def __init__(self, scope: Construct, key: kms.IKey, emails: Iterable[str]) -> None:
        self.topic = sns.Topic(
            scope,
            "Alerts",
            display_name="Lock Reaper alerts",
            master_key=key,
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
        for email in emails:
            self.topic.add_subscription(subs.EmailSubscription(email))
