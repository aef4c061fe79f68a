"""The central stack (issue 13), for an ops or security account: compose-only, like ``LockReaperStack``.

Its parts are in ``infra.constructs.central``: the organization's event bus (only
``aws:PrincipalOrgID`` may put events), one alert topic with the email
subscriptions, a rule per alert kind, the event log and the org-wide dashboard,
and, as the context asks, an archive and a cross-account observability sink.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from reaper.policy import Policy

from .constructs.central import CentralAlerts, CentralBus, CentralDashboard, EventLog, ObservabilitySink
from .org_settings import OrgSettings


class CentralStack(Stack):
    def __init__(self, scope: Construct, id: str, *, org: OrgSettings, policy: Policy, **kwargs: Any) -> None:
        super().__init__(
            scope, id, description="Lock Reaper central: the organization's events, alerts and dashboard", **kwargs
        )
        c = org.central
        assert org.org_id is not None  # load_org_settings requires it for the central stack
        source = policy.alerts.event_source
        self.bus = CentralBus(
            self, "Bus", bus_name=org.central_bus_name, org_id=org.org_id, event_source=source,
            archive_days=c.archive_retention_days if c.archive else None,
        )
        self.event_log = EventLog(self, "EventLog", self.bus.bus, source, c.log_retention_days)
        self.alerts = CentralAlerts(self, "Alerts", self.bus.bus, source, list(c.alert_emails))
        self.sink = ObservabilitySink(self, "Observability", org.org_id) if c.observability_sink else None
        self.dashboard = CentralDashboard(
            self,
            "Dashboard",
            bus_name=org.central_bus_name,
            log_group=self.event_log.log_group,
            rules=self.alerts.rules,
            namespace=policy.alerts.metrics.namespace,
            cross_account_metrics=c.observability_sink,
        ).dashboard
        CfnOutput(self, "CentralBusArn", value=self.bus.bus.event_bus_arn,
                  description="Members forward their events here (context.org.member.forward_events)")
        CfnOutput(self, "AlertTopicArn", value=self.alerts.topic.topic_arn, description="The organization's alerts")
        if self.sink is not None:
            CfnOutput(self, "ObservabilitySinkArn", value=self.sink.sink.attr_arn,
                      description="Set context.org.member.observability_sink_arn to this ARN")
