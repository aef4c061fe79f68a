"""The run-state table: the run lease (one run at a time), and the late-writer watch items.

A builder: it creates its resource in the given scope (see ``infra.constructs``).

A run takes the lease with a conditional ``PutItem`` on the one item
``{"pk": "run-lease"}`` (``REAPER_LEASE_TABLE``), with an expiry of the function
timeout (``REAPER_LEASE_SECONDS``), and deletes it at the end; a run that finds a
live lease exits as skipped. The late-writer watch (``reaper/watch.py``) keeps one
item per reaped lock, ``{"pk": "watch#<lock path>#<lock id>"}``, for a day (listed with
a ``Scan`` filtered on that prefix: the table holds a handful of items). TTL on
``expires_at`` only tidies up: the runtime compares the expiry itself, since TTL
deletes items up to days late.

The lease evidence keeps its observations here too (``lease#<Who>#<ClaimedAt>``: the
counter it saw and when, by its own clock; ``reaper.liveness.lease_observations``), with a
TTL a day past the claim's. Losing them only makes the reaper watch a lease again from
the start: a later death, never an earlier one.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from .nag import acknowledge

RUN_STATE_PARTITION_KEY = "pk"
RUN_STATE_TTL_ATTRIBUTE = "expires_at"


class RunStateTable:
    """``RunState``: on demand, TTL on ``expires_at``, no point-in-time recovery (nothing in it outlives a run)."""

    def __init__(self, scope: Construct) -> None:
        self.table = dynamodb.Table(
            scope,
            "RunState",
            partition_key=dynamodb.Attribute(name=RUN_STATE_PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute=RUN_STATE_TTL_ATTRIBUTE,
            # Like the claims table: encrypted at rest with the AWS owned key (the DynamoDB default).
            removal_policy=RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.table,
            "AwsSolutions-DDB3",
            "No point-in-time recovery: the table holds the run lease, which expires with the function "
            "timeout (losing it lets at most one extra run start, and restoring it would bring back a dead lease), "
            "and day-long late-writer watch items (losing them loses at most a day of watching).",
        )
