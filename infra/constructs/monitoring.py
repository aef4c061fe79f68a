"""CloudWatch alarms (every one to the alert topic) and the dashboard.

A builder: it creates its resources in the given scope (see ``infra.constructs``).
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from reaper.report import LOG_LOCK, METRIC_DURATION, METRIC_RUNS_SKIPPED, METRIC_SERVICE, METRICS

ALARM_PERIOD = Duration.minutes(15)

# The per-lock JSON log lines (message "lock", reaper.report.LockEntry.log_fields) worth a look: what would
# be / was reaped, races, errors, and candidates kept because their holder's liveness is unknown (the
# kept_unknown flag: flags is a JSON list, which Logs Insights splits into flags.0, flags.1, ...).
LOCKS_QUERY = [
    "fields @timestamp, outcome, store, lock_path, lock_id, who, age_seconds, rule, liveness, decision, "
    "evidence_url, audit_ref",
    f'filter message = "{LOG_LOCK}" and '
    '(outcome in ["would_reap", "reaped", "raced", "error"] or @message like /"kept_unknown"/)',
    "sort @timestamp desc",
    "limit 200",
]

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
    "late_writers": (
        "LateWriter",
        "A reaped lock's holder wrote its state after the reap, with no new lock seen: the holder was alive (a "
        "false reap). Find the run report's late_writers entry and its audit record; see docs/late-writer.md.",
    ),
}


class Monitoring:
    """``<Id>Alarm`` for the function's errors, the DLQ and each of ``COUNT_ALARMS``; ``Dashboard``.

    ``lock_tables``: (table, region or None) of each lock table, for its contention graph.
    """

    def __init__(
        self,
        scope: Construct,
        namespace: str,
        function: lambda_.Function,
        dlq: sqs.IQueue,
        topic: sns.ITopic | None,
        log_group: logs.ILogGroup,
        lock_tables: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        self.scope = scope
        self.namespace = namespace
        self.function = function
        self.log_group = log_group
        self.lock_tables = list(lock_tables)
        self.action = cw_actions.SnsAction(topic) if topic is not None else None  # no topic: the alarms only change state
        self.alarms: dict[str, cw.Alarm] = {}
        self._add_alarms(dlq)
        self.dashboard = self._dashboard()

    def metric(self, key: str, statistic: str = "Sum") -> cw.Metric:
        """A run metric the package emits (``key`` of ``reaper.report.METRICS``, or a metric name)."""
        return cw.Metric(
            namespace=self.namespace,
            metric_name=METRICS[key] if key in METRICS else key,
            dimensions_map={"service": METRIC_SERVICE},
            statistic=statistic,
            period=ALARM_PERIOD,
        )

    def alarm(self, alarm_id: str, metric: cw.IMetric, description: str) -> cw.Alarm:
        """An alarm when ``metric`` is above zero in one period, to the topic."""
        alarm = cw.Alarm(
            self.scope,
            f"{alarm_id}Alarm",
            alarm_name=f"{Stack.of(self.scope).stack_name}-{alarm_id}",
            alarm_description=description,
            metric=metric,
            threshold=0,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        if self.action is not None:
            alarm.add_alarm_action(self.action)
        self.alarms[alarm_id] = alarm
        return alarm

    def _add_alarms(self, dlq: sqs.IQueue) -> None:
        self.alarm(
            "FunctionErrors",
            self.function.metric_errors(period=ALARM_PERIOD, statistic="Sum"),
            "The Lock Reaper function failed (crash or timeout). Nothing was reaped by that run; see its logs.",
        )
        self.alarm(
            "ScheduleDLQ",
            dlq.metric_approximate_number_of_messages_visible(period=Duration.minutes(5), statistic="Maximum"),
            "EventBridge Scheduler could not invoke the function: the failed invocations are in the dead-letter queue.",
        )
        for key, (alarm_id, meaning) in COUNT_ALARMS.items():
            if key not in METRICS:  # an optional metric the package does not emit (yet)
                continue
            self.alarm(alarm_id, self.metric(key, "Maximum" if key == "cap_hit" else "Sum"), meaning)

    def _dashboard(self) -> cw.Dashboard:
        def graph(title: str, metrics: list[cw.IMetric], right: list[cw.IMetric] | None = None) -> cw.GraphWidget:
            return cw.GraphWidget(title=title, left=metrics, right=right or [], width=12, height=6)

        m, fn = self.metric, self.function
        # One day: the locks table below lists the last day's lines (Logs Insights widgets follow the dashboard's range).
        dashboard = cw.Dashboard(self.scope, "Dashboard", default_interval=Duration.days(1))
        dashboard.add_widgets(
            cw.LogQueryWidget(
                title="Locks to review: would_reap, reaped, raced, kept_unknown, error (per-lock log lines)",
                log_group_names=[self.log_group.log_group_name],
                query_lines=LOCKS_QUERY,
                view=cw.LogQueryVisualizationType.TABLE,
                width=24,
                height=8,
            ),
        )
        dashboard.add_widgets(
            graph("Locks per run", [m(k) for k in ("locks_scanned", "stale", "would_reap", "reaped")]),
            graph(
                "Kept, raced, unparseable",
                [m(k) for k in ("raced", "gone", "kept_unknown", "unparseable", "alive_past_hard_max")],
            ),
        )
        dashboard.add_widgets(
            graph(
                "Errors, and late writers (false reaps: must stay zero)",
                [m("errors"), fn.metric_errors(period=ALARM_PERIOD, statistic="Sum"), m("late_writers")],
                [m("cap_hit", "Maximum")],
            ),
            graph(
                "Run duration (seconds)",
                [m(METRIC_DURATION, "Maximum"), fn.metric_duration(period=ALARM_PERIOD, statistic="Maximum")],
            ),
        )
        runs = graph(
            "Runs: skipped (a live run lease) and invocations",
            [m(METRIC_RUNS_SKIPPED), fn.metric_invocations(period=ALARM_PERIOD, statistic="Sum")],
        )
        row = [runs, *(self._contention(table, region) for table, region in self.lock_tables)]
        for i in range(0, len(row), 2):  # two graphs a row
            dashboard.add_widgets(*row[i : i + 2])
        dashboard.add_widgets(
            cw.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=24, height=4),
        )
        return dashboard

    def _contention(self, table: str, region: str | None) -> cw.GraphWidget:
        """A lock table's failed conditional writes (Terraform's failed lock acquisitions) beside the reaps."""
        failed = cw.Metric(
            namespace="AWS/DynamoDB",
            metric_name="ConditionalCheckFailedRequests",
            dimensions_map={"TableName": table},
            statistic="Sum",
            period=ALARM_PERIOD,
            region=region,
            label=f"{table}: failed lock acquisitions",
        )
        return cw.GraphWidget(
            title=f"Contention on {table}: failed lock acquisitions and reaps",
            left=[failed],
            right=[self.metric("reaped"), self.metric("would_reap")],
            width=12,
            height=6,
        )
