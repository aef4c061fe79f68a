"""What one scheduled invocation does: parse the event, load the shipped policy, take the run
lease, run a cycle (keeping its report, and the report-mode digest), release the lease."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .aws import cause_code
from .policy import load_policy
from .report import LOG_ALERT_ERROR, LOG_SKIPPED, LOG_SUMMARY, METRIC_RUNS_SKIPPED, RunReport
from .runs import RunReports

log = logging.getLogger("reaper.service")

# The stack copies the operators' policy file to the asset root (/var/task/policy.yaml).
DEFAULT_POLICY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "policy.yaml")


class InvalidEvent(ValueError):
    """The invocation's event cannot be used (e.g. an unknown mode)."""


class ScheduledEvent(BaseModel):
    """EventBridge Scheduler input. Any extra fields are ignored; ``mode`` overrides the policy for one run."""

    model_config = ConfigDict(extra="ignore")

    mode: Literal["report", "enforce"] | None = None


def run_scheduled(event: Mapping[str, Any] | None, env: Mapping[str, str], metrics: Any = None, build=None) -> dict[str, Any]:
    from .wiring import Deps, build_reaper

    try:
        parsed = ScheduledEvent.model_validate(event or {})
    except ValidationError as exc:  # one readable line, nothing scanned
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}"
            + (f", got {e['input']!r}" if e["loc"] else f", got {type(e['input']).__name__}")
            for e in exc.errors()
        )
        raise InvalidEvent(f"invalid event: {problems}") from None
    from .wiring import build_lease, build_run_reports, build_run_sinks

    policy = load_policy(env.get("REAPER_POLICY_FILE", DEFAULT_POLICY), env=env)
    deps = Deps(env=env)  # tokens from the invocation's env
    reaper = (build or build_reaper)(policy, deps, metrics=metrics)
    reaper.alerts = [*reaper.alerts, *build_run_sinks(policy, deps)]  # the digest, then the kept report
    mode = parsed.mode or policy.mode
    lease = build_lease(deps)
    if lease is not None:
        held = lease.acquire(reaper.run_id)
        if held is not None:
            return _skipped(reaper.run_id, mode, reaper.clock().isoformat(), held.describe(time.time()), metrics,
                            build_run_reports(policy, deps))
    try:
        report = reaper.run(mode=mode)
    finally:
        if lease is not None and not lease.release(reaper.run_id):
            log.warning("run lease was no longer held by this run at its end (it expired and was taken over)",
                        extra={"run_id": reaper.run_id})
    return {**report.model_dump(mode="json"), "status": "completed"}


def _skipped(run_id: str, mode: Literal["report", "enforce"], at: str, why: str, metrics: Any,
             kept: Sequence[RunReports] = ()) -> dict[str, Any]:
    """Another run holds the lease: nothing scanned, a ``skipped`` report (kept like any run's, so that
    ``report latest`` shows it, with who holds the lease), the RunsSkipped metric."""
    report = RunReport(run_id=run_id, mode=mode, started_at=at, finished_at=at, duration_seconds=0.0, max_deletes_per_run=0,
                       status="skipped", skipped_reason=why)
    log.warning(LOG_SKIPPED, extra={"run_id": run_id, "mode": mode, "reason": why})
    for store in kept:
        try:
            store.write(report)
        except Exception as exc:  # the skip is still logged and counted
            log.error(LOG_ALERT_ERROR, extra={"run_id": run_id, "sink": "run_report", "error_code": cause_code(exc),
                                              "error": f"{type(exc).__name__}: {exc}"})
    log.info(LOG_SUMMARY, extra=report.summary_fields(status="skipped"))
    if metrics is not None:
        from aws_lambda_powertools.metrics import MetricUnit

        metrics.add_metric(name=METRIC_RUNS_SKIPPED, unit=MetricUnit.Count, value=1)
    return {**report.model_dump(mode="json"), "status": "skipped", "skipped_reason": why}
