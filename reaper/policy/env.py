"""The one definition of the ``REAPER_*`` environment contract (the cookbook's ``env_vars.py``).

The stack (infra/) sets these on the function; the policy loader writes the
``ENV_OVERRIDES`` into the policy document; the CLI and ``claim`` read the rest.
"""

from __future__ import annotations

POLICY_FILE = "REAPER_POLICY_FILE"  # where the function finds the shipped policy file
AUDIT_BUCKET = "REAPER_AUDIT_BUCKET"
SNS_TOPIC_ARN = "REAPER_SNS_TOPIC_ARN"
EVENT_BUS = "REAPER_EVENT_BUS"
METRICS_NAMESPACE = "REAPER_METRICS_NAMESPACE"
CLAIMS_TABLE = "REAPER_CLAIMS_TABLE"
CLAIM_JOB_ID = "REAPER_CLAIM_JOB_ID"  # set by a GitHub job: ${{ job.check_run_id }}
LEASE_TABLE = "REAPER_LEASE_TABLE"  # the stack's run-state table: one run at a time (item pk = "run-lease")
LEASE_SECONDS = "REAPER_LEASE_SECONDS"  # the lease's lifetime: the function timeout, in seconds
# "false" when the stack grants no HeadObject on state objects (context.reaper.state_activity_evidence
# off, or no state buckets): the deployed function then never asks, instead of being refused every run.
STATE_ACTIVITY_ENABLED = "REAPER_STATE_ACTIVITY_ENABLED"

# Environment variables the deployed Lambda uses to learn the resources the
# stack created, so the operators' policy file need not hard-code ARNs.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    AUDIT_BUCKET: ("audit", "s3_bucket"),
    SNS_TOPIC_ARN: ("alerts", "sns_topic_arn"),
    EVENT_BUS: ("alerts", "event_bus"),
    METRICS_NAMESPACE: ("alerts", "metrics", "namespace"),
    CLAIMS_TABLE: ("liveness", "claims", "table"),
    STATE_ACTIVITY_ENABLED: ("liveness", "state_activity", "enabled"),
}
