"""The parts ``LockReaper`` is composed of, one module each.

- ``audit``: the KMS key (shared with the topic), the audit bucket and its access-log bucket;
- ``alerts``: the SNS alert topic (KMS encrypted, CloudWatch alarms may publish) and its email subscriptions;
- ``claims``: the claims table (CI jobs write, the function queries);
- ``run_state``: the run-state table (the run lease: one run at a time);
- ``function``: the function, its log group, role and code (local bundling); ``grants``: its least-privilege role;
- ``schedule``: the EventBridge Scheduler schedule, its role and dead-letter queue;
- ``monitoring``: the alarms (all to the topic) and the dashboard;
- ``nag``: cdk-nag acknowledgements;
- ``org_member`` (issue 13): a member's forwarding to the central bus, scan role and observability link
  (child constructs of ``Org``: new resources only); ``central``: the central stack's parts.

Why builders and not ``Construct`` subclasses: CloudFormation logical IDs derive
from the construct path. A child construct (``LockReaper/Audit/Bucket``) would
give every resource a new logical ID, which CloudFormation deploys as a
replacement: a new, empty audit bucket and claims table, a new key. So each part
is a small class that takes the ``LockReaper`` scope and creates its resources
*in that scope*, with the ids they always had (``LockReaper/LockReaper/Audit``);
no ``override_logical_id`` is needed, and the cdk-nag acknowledgements, which
name resource paths, apply as before. The parts are created in the order the
resources always had, so the template is unchanged byte for byte.
"""

from .alerts import AlertTopic
from .audit import AuditStorage, StackKey
from .claims import ClaimsTable
from .function import ReaperFunction
from .monitoring import COUNT_ALARMS, Monitoring
from .nag import NAG, nag_render
from .run_state import RunStateTable
from .schedule import ReaperSchedule

__all__ = [
    "COUNT_ALARMS",
    "NAG",
    "AlertTopic",
    "AuditStorage",
    "ClaimsTable",
    "Monitoring",
    "ReaperFunction",
    "ReaperSchedule",
    "RunStateTable",
    "StackKey",
    "nag_render",
]
