"""The one definition of the ``REAPER_*`` environment contract (the cookbook's ``env_vars.py``).

The stack (infra/) sets these on the function; the policy loader writes the
``ENV_OVERRIDES`` into the policy document; the CLI and ``claim`` read the rest.
"""

from __future__ import annotations

from collections.abc import Mapping

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
# The state objects the role may read (HeadObject; ListObjectVersions), as the stack grants them:
# comma-separated ``<bucket>/<key prefix>`` (the prefix may be empty), each meaning the keys
# ``<prefix>*.tfstate`` of that bucket; ``none`` (or empty): none. Unset (the CLI, with the operator's own
# role): every state object may be asked. State activity and the late-writer watch ask no other.
STATE_OBJECTS = "REAPER_STATE_OBJECTS"
STATE_OBJECT_SUFFIX = ".tfstate"
NO_STATE_OBJECTS = "none"

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


class StateObjectGrants:
    """Which state objects the function may read, from ``REAPER_STATE_OBJECTS`` (see there)."""

    def __init__(self, grants: list[tuple[str, str]]):
        self.grants = grants

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StateObjectGrants | None:
        """None when the variable is unset: no limit (the CLI)."""
        value = env.get(STATE_OBJECTS)
        if value is None:
            return None
        grants: list[tuple[str, str]] = []
        if value.strip() == NO_STATE_OBJECTS:
            return cls(grants)
        for part in (p.strip() for p in value.split(",")):
            bucket, _, prefix = part.partition("/")
            if bucket:
                grants.append((bucket, prefix))
        return cls(grants)

    def allows(self, bucket: str, key: str) -> bool:
        return key.endswith(STATE_OBJECT_SUFFIX) and any(b == bucket and key.startswith(p) for b, p in self.grants)

    def describe(self) -> str:
        return ", ".join(f"s3://{b}/{p}*{STATE_OBJECT_SUFFIX}" for b, p in self.grants) or "none"
