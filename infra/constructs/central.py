"""The central account's parts (issue 13): the org's event bus, the one alert topic, a rule per alert kind,
the event log and dashboard, the optional archive and observability sink.

- ``CentralBus``: the event bus whose resource policy admits ``events:PutEvents`` from principals of
  the organization only (``aws:PrincipalOrgID``); an optional archive of its Lock Reaper events.
- ``CentralAlerts``: a KMS key, one SNS topic (SSL only) with the email subscriptions, and one rule per
  alert kind (``ALERT_KINDS``) to it, each message naming the account and region.
- ``EventLog``: every event on the bus into a log group (native resource policy, no custom resource),
  which the dashboard's Logs Insights widgets count per account.
- ``CentralDashboard``: events per account and kind, the latest reaped locks, the rules' matches, and,
  with cross-account observability, the members' run metrics (a metrics SEARCH across the linked accounts).
- ``ObservabilitySink``: a CloudWatch cross-account observability sink the organization's accounts may link to.
"""

from __future__ import annotations

from dataclasses import dataclass

import jsii
from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_oam as oam
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

from reaper.report import METRIC_SERVICE, METRICS

from ..settings import RETENTION_DAYS
from .monitoring import COUNT_ALARMS
from .org_member import ALARM_STATE_CHANGE

DETAIL_TYPE_REAPED = "Terraform Lock Reaped"  # reaper.alerts.DETAIL_TYPE_REAPED (infra may not import reaper.alerts)


@dataclass(frozen=True)
class AlertKind:
    """One central rule: the reaper's events of some detail-types, or the state changes of one member alarm."""

    rule_id: str
    title: str
    detail_types: tuple[str, ...] = ()  # reaper events (source = the policy's event_source)
    alarm_suffix: str | None = None  # "-<AlarmId>": member alarms are named <stack name>-<AlarmId>
    other_reaper_events: bool = False  # any reaper event whose detail-type is not one of the kinds above


def _alarm_kinds() -> list[AlertKind]:
    ids = [(alarm_id, meaning) for key, (alarm_id, meaning) in COUNT_ALARMS.items() if key != "reaped"]
    ids += [
        ("FunctionErrors", "The member's function failed (crash or timeout)."),
        ("ScheduleDLQ", "EventBridge Scheduler could not invoke the member's function."),
        ("LocksRaced", "A member run found a new holder between its read and its delete (kept, not an error)."),
        ("ForwardingDLQ", "A member could not deliver events to this bus: look in its forwarding DLQ."),
    ]
    return [AlertKind(f"Alarm{alarm_id}", meaning, alarm_suffix=f"-{alarm_id}") for alarm_id, meaning in ids]


# The reaped locks come as events (one per lock, with its path); the LocksReaped alarm would repeat them.
ALERT_KINDS: list[AlertKind] = [
    AlertKind("Reaped", "A member reaped a stale lock (audited, restorable).", detail_types=(DETAIL_TYPE_REAPED,)),
    AlertKind("OtherReaperEvents", "A member's reaper put another kind of event (e.g. a late writer).",
              other_reaper_events=True),
    *_alarm_kinds(),
]


class CentralBus(Construct):
    """``Bus`` (``events:PutEvents`` from the organization only) and, optionally, ``Archive``."""

    def __init__(self, scope: Construct, id: str, *, bus_name: str, org_id: str, event_source: str,
                 archive_days: int | None) -> None:
        super().__init__(scope, id)
        self.bus = events.EventBus(self, "Bus", event_bus_name=bus_name, description="Lock Reaper: the organization's events")
        self.bus.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OrgMembersPutEvents",
                principals=[iam.AnyPrincipal()],
                actions=["events:PutEvents"],
                resources=[self.bus.event_bus_arn],
                conditions={"StringEquals": {"aws:PrincipalOrgID": org_id}},
            )
        )
        self.archive = None
        if archive_days is not None:
            self.archive = events.Archive(
                self,
                "Archive",
                source_event_bus=self.bus,
                description="Lock Reaper: the organization's events, for replay and audit",
                event_pattern=events.EventPattern(source=[event_source, "aws.cloudwatch"]),
                retention=Duration.days(archive_days) if archive_days else None,
            )


@jsii.implements(events.IRuleTarget)
class _LogGroupTarget:
    """A log group as a rule target, without CDK's custom resource: the log group's policy is a native resource."""

    def __init__(self, log_group: logs.ILogGroup) -> None:
        self.log_group = log_group

    def bind(self, _rule: events.IRule, _id: str | None = None) -> events.RuleTargetConfig:
        return events.RuleTargetConfig(arn=self.log_group.log_group_arn)


class EventLog(Construct):
    """``Logs``, the ``ToLogs`` rule (every event of the bus) and the log group's ``Policy`` for EventBridge."""

    def __init__(self, scope: Construct, id: str, bus: events.IEventBus, event_source: str, retention_days: int) -> None:
        super().__init__(scope, id)
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/events/{bus.event_bus_name}",
            retention=getattr(logs.RetentionDays, RETENTION_DAYS[retention_days]),
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.rule = events.Rule(
            self,
            "ToLogs",
            description="Lock Reaper: every event of the central bus into its log group (the dashboard counts them)",
            event_bus=bus,
            event_pattern=events.EventPattern(source=[event_source, "aws.cloudwatch"]),
            targets=[_LogGroupTarget(self.log_group)],  # type: ignore[list-item]  # jsii.implements
        )
        self.policy = logs.ResourcePolicy(
            self,
            "Policy",
            policy_statements=[
                iam.PolicyStatement(
                    sid="EventBridgeWritesTheCentralEventLog",
                    principals=[iam.ServicePrincipal("events.amazonaws.com"),
                                iam.ServicePrincipal("delivery.logs.amazonaws.com")],
                    actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                    resources=[f"{self.log_group.log_group_arn}"],
                    conditions={"ArnEquals": {"aws:SourceArn": self.rule.rule_arn}},
                )
            ],
        )


class CentralAlerts(Construct):
    """``Key``, ``Topic`` (KMS, SSL only, email subscriptions) and one ``<Kind>`` rule per ``ALERT_KINDS`` entry."""

    def __init__(self, scope: Construct, id: str, bus: events.IEventBus, event_source: str, emails: list[str]) -> None:
        super().__init__(scope, id)
        self.key = kms.Key(
            self,
            "Key",
            description="Lock Reaper central: encrypts the organization's alert topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowEventBridgeToUseTheKey",
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
            )
        )
        self.topic = sns.Topic(
            self, "Topic", display_name="Lock Reaper: the organization's alerts", master_key=self.key, enforce_ssl=True
        )
        for email in emails:
            self.topic.add_subscription(subs.EmailSubscription(email))
        self.rules: dict[str, events.Rule] = {}
        for kind in ALERT_KINDS:
            self.rules[kind.rule_id] = events.Rule(
                self,
                kind.rule_id,
                description=f"Lock Reaper central: {kind.title}"[:512],
                event_bus=bus,
                event_pattern=_pattern(kind, event_source),
                targets=[targets.SnsTopic(self.topic, message=_message(kind))],
            )


def _pattern(kind: AlertKind, event_source: str) -> events.EventPattern:
    if kind.alarm_suffix:
        return events.EventPattern(
            source=["aws.cloudwatch"],
            detail_type=[ALARM_STATE_CHANGE],
            detail={"alarmName": events.Match.suffix(kind.alarm_suffix), "state": {"value": ["ALARM"]}},
        )
    if kind.other_reaper_events:
        known = [t for k in ALERT_KINDS for t in k.detail_types]
        return events.EventPattern(source=[event_source], detail_type=events.Match.anything_but(*known))
    return events.EventPattern(source=[event_source], detail_type=list(kind.detail_types))


def _message(kind: AlertKind) -> events.RuleTargetInput:
    where = f"account {events.EventField.account} in {events.EventField.region}"
    if kind.alarm_suffix:
        return events.RuleTargetInput.from_text(
            f"Lock Reaper alarm {events.EventField.from_path('$.detail.alarmName')} is ALARM in {where}: {kind.title} "
            f"Reason: {events.EventField.from_path('$.detail.state.reason')}"
        )
    return events.RuleTargetInput.from_text(
        f"Lock Reaper ({events.EventField.detail_type}) in {where}: lock "
        f"{events.EventField.from_path('$.detail.lock_path')} (who {events.EventField.from_path('$.detail.who')}, "
        f"outcome {events.EventField.from_path('$.detail.outcome')}, audit {events.EventField.from_path('$.detail.audit_ref')})"
    )


EVENTS_PER_ACCOUNT_QUERY = [
    "fields account, region, `detail-type`, detail.alarmName",
    "stats count(*) as events by account, region, `detail-type`, detail.alarmName",
    "sort events desc",
    "limit 500",
]
REAPED_QUERY = [
    "fields @timestamp, account, region, detail.lock_path, detail.who, detail.age_seconds, detail.rule, "
    "detail.liveness, detail.audit_ref",
    f'filter `detail-type` = "{DETAIL_TYPE_REAPED}"',
    "sort @timestamp desc",
    "limit 200",
]


class CentralDashboard(Construct):
    """``Dashboard``: the organization's view."""

    def __init__(self, scope: Construct, id: str, *, bus_name: str, log_group: logs.ILogGroup,
                 rules: dict[str, events.Rule], namespace: str, cross_account_metrics: bool) -> None:
        super().__init__(scope, id)
        d = cw.Dashboard(self, "Dashboard", default_interval=Duration.days(7))
        for title, query in (("Events per account (reaped locks, alarm changes): the central bus's event log",
                              EVENTS_PER_ACCOUNT_QUERY),
                             ("Reaped locks, every account", REAPED_QUERY)):
            d.add_widgets(cw.LogQueryWidget(title=title, log_group_names=[log_group.log_group_name], query_lines=query,
                                            view=cw.LogQueryVisualizationType.TABLE, width=24, height=8))
        matched = [
            cw.Metric(namespace="AWS/Events", metric_name="MatchedEvents",
                      dimensions_map={"EventBusName": bus_name, "RuleName": r.rule_name},
                      statistic="Sum", period=Duration.hours(1), label=rid)
            for rid, r in rules.items()
        ]
        d.add_widgets(cw.GraphWidget(title="Alerts per kind (rule matches)", left=matched[:10], right=matched[10:],
                                     width=24, height=6))
        if cross_account_metrics:
            # In a monitoring account, SEARCH covers the linked source accounts: one line per account.
            graphs = [
                cw.GraphWidget(
                    title=f"{METRICS[key]} per account (cross-account observability)",
                    left=[cw.MathExpression(
                        expression=f"SEARCH('{{{namespace},service}} service=\"{METRIC_SERVICE}\" "
                                   f"MetricName=\"{METRICS[key]}\"', 'Sum', 900)",
                        label="",
                        period=Duration.minutes(15),
                    )],
                    width=12,
                    height=6,
                )
                for key in ("reaped", "would_reap", "errors", "alive_past_hard_max")
                if key in METRICS
            ]
            for i in range(0, len(graphs), 2):
                d.add_widgets(*graphs[i : i + 2])
        self.dashboard = d


class ObservabilitySink(Construct):
    """``Sink``: the organization's accounts may link their metrics and log groups (CloudWatch OAM)."""

    def __init__(self, scope: Construct, id: str, org_id: str) -> None:
        super().__init__(scope, id)
        self.sink = oam.CfnSink(
            self,
            "Sink",
            name="lock-reaper",
            policy={
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": ["oam:CreateLink", "oam:UpdateLink"],
                        "Resource": "*",
                        "Condition": {
                            "StringEquals": {"aws:PrincipalOrgID": org_id},
                            "ForAllValues:StringEquals": {
                                "oam:ResourceTypes": ["AWS::CloudWatch::Metric", "AWS::Logs::LogGroup"]
                            },
                        },
                    }
                ],
            },
        )
