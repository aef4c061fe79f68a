"""The member template rolled out to the organization by CloudFormation StackSets (issue 13).

- ``MemberTemplate``: the member stack (``compose_member``: today's stack plus ``OrgMember``) as a
  ``cdk_stacksets.StackSetStack``: synthesized as a template only (no bootstrap version rule, no
  per-account CDK bootstrap needed in the members), its Lambda asset referenced in the bucket
  ``<asset_bucket_prefix>-<region>`` of the region each stack instance runs in.
- ``AssetBucketStack``: one per target region, in the stack set's administrator account: that bucket,
  readable by principals of the organization only (``aws:PrincipalOrgID``): StackSets' execution
  role in each member account reads the function's zip from it.
- ``LockReaperStackSetStack``: per target (``base`` and each override of the overrides file) one
  ``MemberTemplate`` and one service-managed ``AWS::CloudFormation::StackSet`` with auto-deployment,
  its OUs and regions, failure tolerance and concurrency; cdk-stacksets copies each asset into the
  regional buckets when this stack is deployed (a CDK ``BucketDeployment``: CDK's own machinery,
  no deployer of ours).

Why per-target stack sets and not parameter overrides: each target's effective policy is baked into
its own asset and its grants into its own template, both validated at synth; an account joining an
OU later gets exactly that template by auto-deployment, with nothing to override by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_cdk import CfnStackSet, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from cdk_stacksets import StackSetStack, StackSetTemplate
from constructs import Construct

from .constructs.nag import acknowledge
from .lock_reaper import LockReaperProps
from .org_settings import OrgSettings
from .stack import DESCRIPTION, compose_member
from .targets import BASE, InstanceGroup, MemberTarget, instance_groups

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]  # the scan role has a name (arn:...:role/LockReaperScan)


def asset_bucket_name(prefix: str, region: str) -> str:
    return f"{prefix}-{region}"


class MemberTemplate(StackSetStack):
    """The member stack of one target, as a stack set template."""

    def __init__(self, scope: Construct, id: str, *, target: MemberTarget, org: OrgSettings, props: LockReaperProps,
                 asset_buckets: Sequence[s3.IBucket], asset_bucket_prefix: str) -> None:
        super().__init__(scope, id, asset_buckets=list(asset_buckets), asset_bucket_prefix=asset_bucket_prefix)
        self.target = target
        self.template_options.description = f"{DESCRIPTION} (stack set target {target.name})"
        compose_member(self, props, org, list(org.stackset.regions))


class AssetBucketStack(Stack):
    """``Bucket``: ``<prefix>-<region>``, the members' function code; only the organization may read it."""

    def __init__(self, scope: Construct, id: str, *, prefix: str, org_id: str, **kwargs: Any) -> None:
        super().__init__(scope, id, description="Lock Reaper: the stack set's function code for this region", **kwargs)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=asset_bucket_name(prefix, self.region),
            encryption=s3.BucketEncryption.S3_MANAGED,  # an AWS managed KMS key could not be read by other accounts
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[s3.LifecycleRule(id="old-versions", noncurrent_version_expiration=Duration.days(90))],
        )
        self.bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OrgReadsTheFunctionCode",
                principals=[iam.AnyPrincipal()],
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[self.bucket.arn_for_objects("*")],
                conditions={"StringEquals": {"aws:PrincipalOrgID": org_id}},
            )
        )
        acknowledge(
            self.bucket,
            "AwsSolutions-S1",
            "Holds only the function zips the stack set deploys, written by this app's deploy and read by the "
            "organization's StackSets execution roles; CloudTrail records those calls (no access-log bucket).",
        )


class LockReaperStackSetStack(Stack):
    """Per target, a ``MemberTemplate`` and its ``StackSet`` (service managed, auto-deployment on)."""

    def __init__(self, scope: Construct, id: str, *, org: OrgSettings, targets: Sequence[MemberTarget],
                 project_root: Any, code: lambda_.Code | None = None, **kwargs: Any) -> None:
        super().__init__(scope, id, description="Lock Reaper: the stack sets that deploy it to the organization", **kwargs)
        ss = org.stackset
        assert ss.asset_bucket_prefix is not None  # load_org_settings requires it for the stack set
        self.asset_buckets = [
            s3.Bucket.from_bucket_name(self, f"AssetBucket-{r}", asset_bucket_name(ss.asset_bucket_prefix, r))
            for r in ss.regions
        ]
        self.asset_buckets_prefix, self.regions = ss.asset_bucket_prefix, list(ss.regions)
        groups = instance_groups(org, targets)
        self.templates: dict[str, MemberTemplate] = {}
        self.stack_sets: dict[str, CfnStackSet] = {}
        for t in targets:
            props = LockReaperProps(settings=t.settings, policy=t.policy, policy_file=t.policy_file,
                                    project_root=project_root, code=code)
            template = MemberTemplate(self, f"Member-{t.name}", target=t, org=org, props=props,
                                      asset_buckets=self.asset_buckets, asset_bucket_prefix=ss.asset_bucket_prefix)
            self.templates[t.name] = template
            self.stack_sets[t.name] = self._stack_set(t, template, groups[t.name], org)
        self._acknowledge_bucket_deployment()

    def _stack_set(self, t: MemberTarget, template: MemberTemplate, groups: list[InstanceGroup],
                   org: OrgSettings) -> CfnStackSet:
        ss = org.stackset
        name = ss.stack_set_name if t.name == BASE else f"{ss.stack_set_name}-{t.name}"
        return CfnStackSet(
            self,
            f"StackSet-{t.name}",
            stack_set_name=name,
            description=f"Lock Reaper for the organization: target {t.name}",
            permission_model="SERVICE_MANAGED",
            auto_deployment=CfnStackSet.AutoDeploymentProperty(
                enabled=True, retain_stacks_on_account_removal=ss.retain_stacks_on_account_removal
            ),
            call_as=ss.call_as,
            capabilities=CAPABILITIES,
            managed_execution={"Active": True},  # queue conflicting operations instead of failing them
            operation_preferences=CfnStackSet.OperationPreferencesProperty(
                failure_tolerance_percentage=ss.failure_tolerance_percentage,
                max_concurrent_percentage=ss.max_concurrent_percentage,
                region_concurrency_type="SEQUENTIAL",  # one region at a time: a bad template stops in the first
                region_order=list(ss.regions),
                concurrency_mode="SOFT_FAILURE_TOLERANCE",
            ),
            stack_instances_group=[
                CfnStackSet.StackInstancesProperty(
                    regions=list(ss.regions),
                    deployment_targets=CfnStackSet.DeploymentTargetsProperty(
                        organizational_unit_ids=list(g.organizational_units),
                        accounts=list(g.accounts) or None,
                        account_filter_type=g.account_filter,
                    ),
                )
                for g in groups
            ],
            template_url=StackSetTemplate.from_stack_set_stack(template).template_url,
        )

    def _acknowledge_bucket_deployment(self) -> None:
        """cdk-stacksets copies the assets with CDK's BucketDeployment (one singleton function): its findings."""
        deployers = [c for c in self.node.children if c.node.id.startswith("Custom::CDKBucketDeployment")]
        prefix = self.asset_buckets_prefix
        for d in deployers:
            acknowledge(
                d,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                "CDK's BucketDeployment function (cdk-stacksets copies the function code into each region's asset "
                "bucket with it) logs with the AWS managed basic execution policy, as CDK creates it.",
            )
            acknowledge(
                d,
                "AwsSolutions-L1",
                "CDK's BucketDeployment function (cdk-stacksets copies the function code into each region's asset "
                "bucket with it): its runtime is CDK's choice, updated with aws-cdk-lib.",
            )
            for finding in [
                *(f"Action::s3:{a}*" for a in ("GetBucket", "GetObject", "List", "Abort", "DeleteObject")),
                "Resource::arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/*",
                *(f"Resource::arn:<AWS::Partition>:s3:::{asset_bucket_name(prefix, r)}/*" for r in self.regions),
            ]:
                acknowledge(
                    d,
                    f"AwsSolutions-IAM5[{finding}]",
                    "CDK's BucketDeployment role (grantRead on the CDK staging bucket, grantReadWrite on each "
                    "region's asset bucket) copies the function zips: object wildcards of those buckets only.",
                )
