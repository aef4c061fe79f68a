"""The ``org`` context block of cdk.json: what to synthesize, and the organization it is for (issue 13).

``load_org_settings`` validates the raw context into :class:`OrgSettings`, then
checks what one target needs from another (the central stack needs the org id,
forwarding needs the central account and region, ...). Every problem names its
key (``context.org.stackset.organizational_units[1]: ...``), through the same
formatter as ``context.reaper`` (``reaper.policy.errors``), and fails the synth
before anything is built. Nothing here talks to AWS: whether an OU exists, or an
account is in the organization, is for the deploy to find out (docs/many-accounts.md).

- ``synth``: any of ``member`` (today's stack, the default), ``central`` (the
  ops/security account's bus, topic, rules and dashboard), ``stackset`` (the
  member template rolled out to OUs and regions, and its asset buckets).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from reaper.policy import Problem
from reaper.policy.errors import pydantic_problems
from reaper.policy.types import Strict, matching

from .settings import RetentionDays, SettingsError, context_object

ORG_KEY = "org"
ORG = f"context.{ORG_KEY}"  # how problems name the block

ORG_ID = r"^o-[a-z0-9]{10,32}$"
OU_ID = r"^ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}$"
ROOT_ID = r"^r-[0-9a-z]{4,32}$"
ACCOUNT_ID = r"^\d{12}$"
REGION = r"^[a-z]{2}(-[a-z]+)+-\d$"
ROLE_NAME = r"^[\w+=,.@-]{1,64}$"
EXTERNAL_ID = r"^[\w+=,.@:/-]{2,1224}$"  # STS AssumeRole's ExternalId
BUS_NAME = r"^[\w.\-]{1,256}$"
SINK_ARN = r"^arn:aws[a-z-]*:oam:([a-z]{2}(-[a-z]+)+-\d):(\d{12}):sink/[\w-]+$"
ASSET_PREFIX = r"^[a-z0-9][a-z0-9-]{1,40}$"  # + "-<region>" stays a valid S3 bucket name (at most 63)
STACK_NAME = r"^[A-Za-z][A-Za-z0-9-]{0,127}$"
STACK_SET_NAME = r"^[a-zA-Z][-a-zA-Z0-9]{0,127}$"

DEFAULT_SCAN_ROLE = "LockReaperScan"  # `lock-reaper scan --role-arn 'arn:aws:iam::{account}:role/LockReaperScan'`
DEFAULT_CENTRAL_BUS = "lock-reaper-central"
LONGEST_REGION = 16  # e.g. ap-southeast-5 is 14; kept generous for the bucket-name length check

Synth = Literal["member", "central", "stackset"]


OrgId = Annotated[str, matching(ORG_ID, "organization id (o- and 10 to 32 lowercase letters or digits)")]
OuId = Annotated[str, matching(f"{OU_ID}|{ROOT_ID}", "organizational unit id (ou-xxxx-xxxxxxxx) or root id (r-xxxx)")]
AccountId = Annotated[str, matching(ACCOUNT_ID, "AWS account id (12 digits)")]
Region = Annotated[str, matching(REGION, "AWS region name (like eu-west-1)")]
AssetPrefix = Annotated[str, matching(ASSET_PREFIX, "asset bucket prefix (lowercase letters, digits, -)")]


class ScanRoleSettings(Strict):
    """``member.scan_role``: the read-only role the central account assumes for ``lock-reaper scan --role-arn``."""

    enabled: bool = False
    name: Annotated[str, matching(ROLE_NAME, "IAM role name")] = DEFAULT_SCAN_ROLE
    external_id: Annotated[str, matching(EXTERNAL_ID, "STS external id (2 to 1224 of letters, digits, _+=,.@:/-)")] | None = None
    # IAM is global: a stack set in several regions creates the role in this one only.
    region: Region | None = None


class MemberSettings(Strict):
    """``member``: what the member stack (and the stack set's template) adds to today's stack."""

    forward_events: bool = Field(default=False, description="forward the reaper's events and alarm changes to the central bus")
    scan_role: ScanRoleSettings = Field(default_factory=ScanRoleSettings)
    observability_sink_arn: Annotated[str, matching(SINK_ARN, "CloudWatch observability (OAM) sink ARN")] | None = None


class CentralSettings(Strict):
    """``central``: the ops or security account's stack."""

    stack_name: Annotated[str, matching(STACK_NAME, "CloudFormation stack name")] = "LockReaperCentral"
    alert_emails: list[Annotated[str, matching(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "email address")]] = Field(default_factory=list)
    archive: bool = Field(default=False, description="keep an archive of the bus's Lock Reaper events (replay, audit)")
    archive_retention_days: int = Field(default=365, ge=0, description="0 keeps archived events forever")
    log_retention_days: RetentionDays = 365
    observability_sink: bool = Field(default=False, description="create a CloudWatch cross-account observability sink")


class StackSetSettings(Strict):
    """``stackset``: the member template rolled out by a service-managed stack set."""

    stack_name: Annotated[str, matching(STACK_NAME, "CloudFormation stack name")] = "LockReaperStackSet"
    stack_set_name: Annotated[str, matching(STACK_SET_NAME, "stack set name")] = "lock-reaper"
    organizational_units: list[OuId] = Field(default_factory=list)
    regions: list[Region] = Field(default_factory=list)
    call_as: Literal["SELF", "DELEGATED_ADMIN"] = "SELF"
    admin_account: AccountId | None = None  # the management or delegated administrator account
    home_region: Region | None = None  # where the stack set (and its stack) lives
    asset_bucket_prefix: AssetPrefix | None = None
    failure_tolerance_percentage: int = Field(default=10, ge=0, le=100)
    max_concurrent_percentage: int = Field(default=25, ge=1, le=100)
    retain_stacks_on_account_removal: bool = False
    overrides_file: str | None = Field(default=None, min_length=1)


class OrgSettings(Strict):
    """cdk.json ``context.org``. The defaults synthesize today's single member stack, nothing else."""

    synth: list[Synth] = Field(default_factory=lambda: list[Synth](["member"]), min_length=1)
    org_id: OrgId | None = None
    central_account: AccountId | None = None
    central_region: Region | None = None
    central_bus_name: Annotated[str, matching(BUS_NAME, "event bus name")] = DEFAULT_CENTRAL_BUS
    member: MemberSettings = Field(default_factory=MemberSettings)
    central: CentralSettings = Field(default_factory=CentralSettings)
    stackset: StackSetSettings = Field(default_factory=StackSetSettings)

    def wants(self, what: Synth) -> bool:
        return what in self.synth

    def central_bus_arn(self, partition: str = "aws") -> str:
        """The central bus's ARN (requires central_account and central_region: checked by ``load_org_settings``)."""
        return f"arn:{partition}:events:{self.central_region}:{self.central_account}:event-bus/{self.central_bus_name}"


def _need(value: Any, key: str, why: str) -> Iterable[Problem]:
    if value in (None, "", []):
        yield Problem(None, f"{ORG}.{key}", f"required {why}")


def _unique(values: list[str], key: str) -> Iterable[Problem]:
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if v in seen:
            yield Problem(None, f"{ORG}.{key}[{i}]", f"{v!r} is listed twice (first at {key}[{seen[v]}])")
        seen.setdefault(v, i)


def cross_problems(s: OrgSettings) -> list[Problem]:
    """What one selected target needs from the rest of the block, each naming the missing key."""
    out: list[Problem] = list(_unique(list(s.synth), "synth"))
    m = s.member
    forwards = s.wants("member") or s.wants("stackset")
    if forwards and m.forward_events:
        out += _need(s.central_account, "central_account", "when member.forward_events is true (the central bus's account)")
        out += _need(s.central_region, "central_region", "when member.forward_events is true (the central bus's region)")
    if forwards and m.scan_role.enabled:
        out += _need(s.central_account, "central_account", "when member.scan_role.enabled is true (who may assume it)")
        out += _need(m.scan_role.external_id, "member.scan_role.external_id", "when member.scan_role.enabled is true")
        if s.wants("stackset") and len(s.stackset.regions) > 1:
            out += _need(m.scan_role.region, "member.scan_role.region",
                         "when the stack set has several regions (IAM roles are global: one region creates it)")
        if m.scan_role.region and s.wants("stackset") and s.stackset.regions and m.scan_role.region not in s.stackset.regions:
            out.append(Problem(None, f"{ORG}.member.scan_role.region",
                               f"{m.scan_role.region!r} is not one of stackset.regions ({', '.join(s.stackset.regions)})"))
    if s.wants("central"):
        out += _need(s.org_id, "org_id", "for the central stack (its bus admits only the organization)")
        out += _need(s.central_account, "central_account", "for the central stack (the account it is deployed to)")
        out += _need(s.central_region, "central_region", "for the central stack (the region of its bus)")
    if s.wants("stackset"):
        ss = s.stackset
        out += _need(s.org_id, "org_id", "for the stack set (its asset buckets admit only the organization)")
        out += _need(ss.organizational_units, "stackset.organizational_units", "for the stack set (the OUs it deploys to)")
        out += _need(ss.regions, "stackset.regions", "for the stack set (the regions it deploys to)")
        out += _need(ss.asset_bucket_prefix, "stackset.asset_bucket_prefix",
                     "for the stack set (one bucket <prefix>-<region> per region holds the function's code)")
        out += _unique(list(ss.organizational_units), "stackset.organizational_units")
        out += _unique(list(ss.regions), "stackset.regions")
        roots = [ou for ou in ss.organizational_units if ou.startswith("r-")]
        if roots and len(ss.organizational_units) > 1:
            out.append(Problem(None, f"{ORG}.stackset.organizational_units",
                               f"the root {roots[0]} already contains every OU: list it alone, or list OUs only"))
    return out


def _locate(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], int | None]:
    return (ORG, *(p for p in loc if not str(p).startswith(("function-", "list[", "literal[")))), None


def load_org_settings(raw: Any) -> OrgSettings:
    """Validate the raw ``org`` context value (a dict, a JSON string from ``-c org=...``, or None for the defaults)."""
    raw = context_object(raw, ORG)
    try:
        settings = OrgSettings.model_validate(dict(raw))
    except ValidationError as exc:
        raise SettingsError(pydantic_problems(exc, _locate)) from None
    problems = cross_problems(settings)
    if problems:
        raise SettingsError(problems)
    return settings
