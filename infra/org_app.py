"""Which stacks the app synthesizes (``context.org.synth``, issue 13): member, central, stackset, or several.

``member`` alone (the default) is today's single stack, unchanged. Every target is
validated before anything is built: the ``reaper`` and ``org`` blocks, the policy
file, the overrides file and each target's effective policy (``infra.targets``).
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_

from reaper.policy import Problem

from .central import CentralStack
from .lock_reaper import LockReaperProps
from .org_settings import ORG_KEY, load_org_settings
from .settings import CONTEXT, CONTEXT_KEY, load_settings
from .stack import LockReaperStack
from .stackset import AssetBucketStack, LockReaperStackSetStack, asset_bucket_name
from .targets import BASE, MemberTarget, check_stackset_targets, load_targets

POLICIES_DIR = "lock-reaper-policies"  # in the cloud assembly: each override target's effective policy


def add_stacks(app: cdk.Stage, root: Path, code: lambda_.Code | None = None) -> list[tuple[cdk.Stack, list[Problem]]]:
    """Build the selected stacks in ``app`` (the app, or a ``Stage`` of a pipeline); (stack, its warnings) each.

    Raises SettingsError.
    """
    settings = load_settings(app.node.try_get_context(CONTEXT_KEY))
    org = load_org_settings(app.node.try_get_context(ORG_KEY))
    raw = settings.model_dump(mode="json", exclude_unset=True)
    targets, overrides = load_targets(raw, settings, root, org.stackset.overrides_file, Path(app.outdir) / POLICIES_DIR)
    out: list[tuple[cdk.Stack, list[Problem]]] = []
    base = targets[0]
    if org.wants("member"):
        mine = _member_target(targets, settings.account)
        env = cdk.Environment(account=settings.account, region=settings.region) if settings.account or settings.region else None
        stack = LockReaperStack(
            app,
            settings.stack_name,
            env=env,
            reaper=LockReaperProps(settings=mine.settings, policy=mine.policy, policy_file=mine.policy_file,
                                   project_root=root, code=code),
            org=org,
        )
        out.append((stack, mine.warnings))
    if org.wants("central"):
        central = CentralStack(
            app, org.central.stack_name, org=org, policy=base.policy,
            env=cdk.Environment(account=org.central_account, region=org.central_region),
        )
        out.append((central, []))
    if org.wants("stackset"):
        check_stackset_targets(org, overrides)
        ss = org.stackset
        assert ss.asset_bucket_prefix is not None and org.org_id is not None
        env = cdk.Environment(account=ss.admin_account, region=ss.home_region) if ss.admin_account or ss.home_region else None
        stackset = LockReaperStackSetStack(app, ss.stack_name, org=org, targets=targets, project_root=root, code=code, env=env)
        for region in ss.regions:
            buckets = AssetBucketStack(
                app, f"LockReaperAssets-{region}", prefix=ss.asset_bucket_prefix, org_id=org.org_id,
                env=cdk.Environment(account=ss.admin_account, region=region),
                stack_name=f"LockReaperAssets-{region}",
            )
            stackset.add_stack_dependency(buckets, f"{asset_bucket_name(ss.asset_bucket_prefix, region)} holds the code")
        warnings = [Problem(None, f"{CONTEXT} ({t.name})", str(w)) for t in targets for w in t.warnings]
        out.append((stackset, warnings))
    return out


def _member_target(targets: list[MemberTarget], account: str | None) -> MemberTarget:
    """The target of a single member stack: the override that names its account, else ``base``."""
    for t in targets:
        if t.name != BASE and account and account in t.accounts:
            return t
    return targets[0]
