"""What a member account adds for the organization (issue 13): forwarding, the scan role, the observability link.

- ``EventForwarding``: two rules whose target is the central event bus in another
  account, through a role allowed ``events:PutEvents`` on that bus only:
  the reaper's own events (``source`` of the policy, e.g. ``Terraform Lock Reaped``)
  on the bus the function puts them on, and the state changes of this stack's
  alarms (``CloudWatch Alarm State Change`` on the default bus: raced locks,
  half-released double locks, holders alive past hard_max_age, run errors, the
  cap, unparseable locks, function errors, the schedule's DLQ). Undelivered events
  go to a dead-letter queue (alarmed to the local topic, if there is one).
- ``ScanRole``: the read-only role the central account assumes for
  ``lock-reaper scan --role-arn arn:aws:iam::{account}:role/LockReaperScan``,
  trusted with an ``sts:ExternalId``; read actions only, no delete.
- ``ObservabilityLink``: a CloudWatch cross-account observability link of the
  account's metrics and log groups to the central sink (in the sink's region only).

Child constructs of ``Org`` (all new resources: no logical ID of the stack changes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Aws, CfnCondition, Duration, Fn, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_oam as oam
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ..org_settings import OrgSettings
from .grants import LOCK_FILE_SUFFIX, STATE_FILE_SUFFIX
from .nag import acknowledge, nag_render

if TYPE_CHECKING:
    from ..lock_reaper import LockReaper

ALARM_STATE_CHANGE = "CloudWatch Alarm State Change"
SCAN_READ_ACTIONS = ("dynamodb:Scan", "dynamodb:DescribeTable", "dynamodb:Query", "s3:ListBucket", "s3:GetObject",
                     "kms:Decrypt")


def region_condition(scope: Construct, region: str) -> CfnCondition:
    """``AWS::Region == region``, one per region and stack (a stack set deploys the template in several)."""
    stack = Stack.of(scope)
    id = "LockReaperIn" + "".join(p.capitalize() for p in region.split("-"))
    found = stack.node.try_find_child(id)
    if isinstance(found, CfnCondition):
        return found
    return CfnCondition(stack, id, expression=Fn.condition_equals(Aws.REGION, region))


class EventForwarding(Construct):
    """``ReaperEvents`` and ``AlarmChanges`` rules to the central bus, ``Role`` and ``DLQ``."""

    def __init__(self, scope: Construct, id: str, reaper: LockReaper, org: OrgSettings) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.bus_arn = org.central_bus_arn(stack.partition)
        central = events.EventBus.from_event_bus_arn(self, "CentralBus", self.bus_arn)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal(
                "events.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}
            ),
            description="Lock Reaper: forwards this account's Lock Reaper events to the central event bus",
        )
        self.dlq = sqs.Queue(
            self, "DLQ", encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True, retention_period=Duration.days(14)
        )
        acknowledge(
            self.dlq,
            "AwsSolutions-SQS3",
            "This queue is itself the dead-letter queue of the forwarding rules' target; "
            "a queue behind it would never receive anything.",
        )
        target = targets.EventBus(central, role=self.role, dead_letter_queue=self.dlq)

        s, policy = reaper.props.settings, reaper.props.policy
        bus = (
            events.EventBus.from_event_bus_arn(self, "ReaperBus", s.event_bus)
            if s.event_bus.startswith("arn:")
            else events.EventBus.from_event_bus_name(self, "ReaperBus", s.event_bus)
        )
        self.reaper_events = events.Rule(
            self,
            "ReaperEvents",
            description="Lock Reaper: every event the function puts (reaped locks) to the central bus",
            event_bus=bus,
            event_pattern=events.EventPattern(source=[policy.alerts.event_source]),
            targets=[target],
        )
        self.raced_alarm = cw.Alarm(
            self,
            "LocksRacedAlarm",
            alarm_name=f"{stack.stack_name}-LocksRaced",
            alarm_description="A run found a new holder between its read and its delete (raced): forwarded to the "
            "central account, no local action.",
            metric=reaper.metric("raced"),
            threshold=0,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        alarms = [*reaper.alarms.values(), self.raced_alarm]
        self.alarm_changes = events.Rule(
            self,
            "AlarmChanges",
            description="Lock Reaper: this stack's alarm state changes to the central bus",
            event_pattern=events.EventPattern(
                source=["aws.cloudwatch"],
                detail_type=[ALARM_STATE_CHANGE],
                resources=[a.alarm_arn for a in alarms],
            ),
            targets=[target],
        )
        self.dlq_alarm = cw.Alarm(
            self,
            "DLQAlarm",
            alarm_name=f"{stack.stack_name}-ForwardingDLQ",
            alarm_description="Events could not be delivered to the central bus: they are in the forwarding DLQ.",
            metric=self.dlq.metric_approximate_number_of_messages_visible(period=Duration.minutes(5), statistic="Maximum"),
            threshold=0,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        if reaper.topic is not None:
            self.dlq_alarm.add_alarm_action(cw_actions.SnsAction(reaper.topic))


class ScanRole(Construct):
    """``Role``: the central account may read this account's locks for ``lock-reaper scan`` (never delete).

    ``regions``: where the lock tables are read (the stack set's regions; else the stack's own).
    """

    def __init__(self, scope: Construct, id: str, reaper: LockReaper, org: OrgSettings, regions: list[str]) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        s, sr = reaper.props.settings, org.member.scan_role
        table_regions = regions or [Aws.REGION]
        statements: list[iam.PolicyStatement] = []
        tables = [
            stack.format_arn(service="dynamodb", resource="table", resource_name=t, region=reaper.grants.table_region(t) or r)
            for t in s.lock_tables
            for r in table_regions
        ]
        if tables:
            statements.append(iam.PolicyStatement(sid="ReadLockTables", actions=["dynamodb:Scan", "dynamodb:DescribeTable"],
                                                  resources=list(dict.fromkeys(tables))))
        claims = [stack.format_arn(service="dynamodb", resource="table", resource_name=s.claims_table, region=r)
                  for r in table_regions]
        statements.append(iam.PolicyStatement(sid="ReadClaims", actions=["dynamodb:Query", "dynamodb:Scan"], resources=claims))
        buckets = [reaper.grants.bucket_arn(b) for b in s.state_buckets]
        objects = [f"{reaper.grants.bucket_arn(b)}/{p}*{LOCK_FILE_SUFFIX}" for b in s.state_buckets for p in b.prefixes or [""]]
        if s.state_activity_granted:
            objects += [f"{reaper.grants.bucket_arn(b)}/{p}*{STATE_FILE_SUFFIX}" for b in s.state_buckets
                        for p in b.prefixes or [""]]
        if buckets:
            statements.append(iam.PolicyStatement(sid="ListStateBuckets", actions=["s3:ListBucket"], resources=buckets))
            statements.append(iam.PolicyStatement(sid="ReadLockFiles", actions=["s3:GetObject"], resources=objects))
        if s.kms_key_arns:
            statements.append(iam.PolicyStatement(sid="DecryptWithNamedKeys", actions=["kms:Decrypt"],
                                                  resources=list(s.kms_key_arns)))
        self.role = iam.Role(
            self,
            "Role",
            role_name=sr.name,
            assumed_by=iam.AccountPrincipal(org.central_account).with_conditions(
                {"StringEquals": {"sts:ExternalId": sr.external_id}}
            ),
            description="Lock Reaper: read-only scan of this account's Terraform locks by the central account",
            max_session_duration=Duration.hours(1),
            inline_policies={"ScanReadOnly": iam.PolicyDocument(statements=statements)},
        )
        if sr.region:
            cfn_role = self.role.node.default_child
            cfn_role.cfn_options.condition = region_condition(self, sr.region)  # type: ignore[union-attr]
        for r in objects:
            acknowledge(
                self.role,
                f"AwsSolutions-IAM5[Resource::{nag_render(stack, r)}]",
                "The scan reads lock files (and, with state activity, heads state objects) named <state key>.tflock / "
                ".tfstate: the wildcard is limited to those keys of the configured state buckets (read only).",
            )


class ObservabilityLink(Construct):
    """``Link``: this account's metrics and log groups shared with the central sink (in the sink's region only)."""

    def __init__(self, scope: Construct, id: str, sink_arn: str) -> None:
        super().__init__(scope, id)
        sink_region = sink_arn.split(":")[3]
        self.link = oam.CfnLink(
            self,
            "Link",
            label_template="$AccountName",
            resource_types=["AWS::CloudWatch::Metric", "AWS::Logs::LogGroup"],
            sink_identifier=sink_arn,
        )
        self.link.cfn_options.condition = region_condition(self, sink_region)


class OrgMember(Construct):
    """``Org``: the member's organization parts that the context turns on."""

    def __init__(self, scope: Construct, id: str, reaper: LockReaper, org: OrgSettings, regions: list[str]) -> None:
        super().__init__(scope, id)
        m = org.member
        self.forwarding = EventForwarding(self, "Forwarding", reaper, org) if m.forward_events else None
        self.scan_role = ScanRole(self, "ScanRole", reaper, org, regions).role if m.scan_role.enabled else None
        self.link = ObservabilityLink(self, "Observability", m.observability_sink_arn) if m.observability_sink_arn else None
