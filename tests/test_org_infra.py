"""Issue 13, the infrastructure: the member, central and stack set stacks of one app, synthesized offline.

One synth of the whole organization (``synth: [member, central, stackset]``, two stack set regions,
two OUs, an OU override and an account override, forwarding, the scan role, the observability link
and sink, the archive) with real local bundling, shared by the module; the context, override and
target checks need no synth. What an offline synth cannot prove is in docs/many-accounts.md.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from infra.org_settings import load_org_settings
from infra.settings import SettingsError, load_settings
from infra.targets import check_stackset_targets, instance_groups, load_targets
from reaper.policy import ConfigError
from reaper.policy.overrides import parse_overrides

ROOT = Path(__file__).resolve().parents[1]
ORG_ID = "o-abcdefghij"
CENTRAL = "999988887777"
CENTRAL_REGION = "eu-west-1"
REGIONS = ["eu-west-1", "us-east-1"]
OUS = ["ou-ab12-workload1", "ou-ab12-platform1"]
SANDBOX_OU = "ou-ab12-sandbox01"
LEGACY_ACCOUNT = "222233334444"
EXTERNAL_ID = "lock-reaper-central-scan"
PREFIX = "acme-lock-reaper-assets"
SINK = "arn:aws:oam:eu-west-1:999988887777:sink/0123abcd-0000-1111-2222-333344445555"
BUS_ARN = f"arn:aws:events:{CENTRAL_REGION}:{CENTRAL}:event-bus/lock-reaper-central"
READ_ONLY = {"dynamodb:Scan", "dynamodb:DescribeTable", "dynamodb:Query", "s3:ListBucket", "s3:GetObject", "kms:Decrypt"}

OVERRIDES = f"""\
overrides:
  - name: sandbox
    organizational_units: [{SANDBOX_OU}]
    policy:
      mode: enforce
  - name: legacy
    accounts: ["{LEGACY_ACCOUNT}"]
    policy:
      stores:
        - type: dynamodb
          table: legacy-locks
    settings:
      lock_tables: [legacy-locks]
"""


def base_context() -> dict[str, Any]:
    return json.loads((ROOT / "cdk.json").read_text(encoding="utf-8"))["context"]


def org_block(overrides_file: Path | None = None) -> dict[str, Any]:
    return {
        "synth": ["member", "central", "stackset"],
        "org_id": ORG_ID,
        "central_account": CENTRAL,
        "central_region": CENTRAL_REGION,
        "member": {
            "forward_events": True,
            "scan_role": {"enabled": True, "external_id": EXTERNAL_ID, "region": "eu-west-1"},
            "observability_sink_arn": SINK,
        },
        "central": {"alert_emails": ["ops@example.com"], "archive": True, "observability_sink": True},
        "stackset": {
            "organizational_units": OUS,
            "regions": REGIONS,
            "asset_bucket_prefix": PREFIX,
            "overrides_file": str(overrides_file) if overrides_file else None,
        },
    }


def render(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and len(v) == 1:
        (fn, arg), = v.items()
        if fn == "Ref":
            return "${" + arg + "}"
        if fn == "Fn::GetAtt":
            return "${" + ".".join(arg) + "}"
        if fn == "Fn::Join":
            return arg[0].join(render(p) for p in arg[1])
    return json.dumps(v, sort_keys=True)


def arn(v: Any) -> str:
    """An ARN as the template writes it, in the aws partition (env-agnostic stacks use AWS::Partition)."""
    return render(v).replace("${AWS::Partition}", "aws")


def as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def of_type(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def role_statements(template: dict[str, Any], role_id: str) -> list[dict[str, Any]]:
    """Every statement of a role: its inline policies and the AWS::IAM::Policy resources attached to it."""
    role = template["Resources"][role_id]["Properties"]
    out = [s for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    for res in of_type(template, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in res["Properties"].get("Roles", []):
            out += res["Properties"]["PolicyDocument"]["Statement"]
    return out


# ----- the one synth --------------------------------------------------------------------------
class Org:
    def __init__(self, outdir: Path, assembly: Any) -> None:
        self.outdir = outdir
        self.stacks = {s.stack_name: s.template for s in assembly.stacks}
        self.stackset_templates = {
            p.name.split("Member", 1)[1].split(".")[0][:-8]: json.loads(p.read_text())
            for p in outdir.glob("*.stackset.template.json")
        }
        self.report = json.loads((outdir / "validation-report.json").read_text())

    def all_templates(self) -> dict[str, dict[str, Any]]:
        return {**self.stacks, **{f"stackset:{k}": v for k, v in self.stackset_templates.items()}}


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Org:
    from app import build_app

    tmp = tmp_path_factory.mktemp("org")
    overrides = tmp / "overrides.yaml"
    overrides.write_text(OVERRIDES, encoding="utf-8")
    ctx = base_context()
    ctx["org"] = org_block(overrides)
    outdir = tmp / "cdk.out"
    assembly = build_app(ctx, outdir=str(outdir)).synth()
    return Org(outdir, assembly)




# ----- the central bus ------------------------------------------------------------------------
@pytest.mark.cdk
def test_central_bus_admits_only_the_organization(org):
    central = org.stacks["LockReaperCentral"]
    (bus_id, bus), = of_type(central, "AWS::Events::EventBus").items()
    assert bus["Properties"]["Name"] == "lock-reaper-central"
    policies = of_type(central, "AWS::Events::EventBusPolicy").values()
    statements = [p["Properties"]["Statement"] for p in policies]
    assert statements, "the bus has a resource policy"
    for st in statements:
        assert st["Effect"] == "Allow" and st["Action"] == "events:PutEvents"
        assert st["Principal"] in ("*", {"AWS": "*"})
        # the only thing that admits a principal is the organization id
        assert st["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": ORG_ID}}, st
    # an archive of the bus's events, and the OAM sink also admits the organization only
    (archive,) = of_type(central, "AWS::Events::Archive").values()
    assert archive["Properties"]["RetentionDays"] == 365
    (sink,) = of_type(central, "AWS::Oam::Sink").values()
    (sst,) = sink["Properties"]["Policy"]["Statement"]
    assert sst["Condition"]["StringEquals"] == {"aws:PrincipalOrgID": ORG_ID}


@pytest.mark.cdk
def test_central_has_one_encrypted_ssl_only_topic_and_a_rule_per_alert_kind(org):
    from infra.constructs.central import ALERT_KINDS

    central = org.stacks["LockReaperCentral"]
    (topic_id, topic), = of_type(central, "AWS::SNS::Topic").items()
    assert "KmsMasterKeyId" in topic["Properties"]
    (sub,) = of_type(central, "AWS::SNS::Subscription").values()
    assert sub["Properties"]["Endpoint"] == "ops@example.com"
    denies = [s for p in of_type(central, "AWS::SNS::TopicPolicy").values()
              for s in p["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies)
    to_topic = [r for r in of_type(central, "AWS::Events::Rule").values()
                if any(t["Arn"] == {"Ref": topic_id} for t in r["Properties"].get("Targets", []))]
    assert len(to_topic) == len(ALERT_KINDS)
    bus_ref = {"Ref": next(iter(of_type(central, "AWS::Events::EventBus")))}
    assert all(r["Properties"]["EventBusName"] == bus_ref for r in to_topic)
    alarm_suffixes = {r["Properties"]["EventPattern"]["detail"]["alarmName"][0]["suffix"]
                      for r in to_topic if r["Properties"]["EventPattern"]["source"] == ["aws.cloudwatch"]}
    # every alarm a member defines has its central rule, except LocksReaped (its events come one per lock)
    member_alarms = {a["Properties"]["AlarmName"] for a in of_type(org.stacks["LockReaper"], "AWS::CloudWatch::Alarm").values()}
    assert member_alarms, "the member has alarms"
    for name in member_alarms:
        if name.endswith("-LocksReaped"):
            continue
        assert any(name.endswith(s) for s in alarm_suffixes), f"no central rule for {name}"
    reaped = [r for r in to_topic if r["Properties"]["EventPattern"].get("detail-type") == ["Terraform Lock Reaped"]]
    assert len(reaped) == 1 and reaped[0]["Properties"]["EventPattern"]["source"] == ["lock-reaper"]


@pytest.mark.cdk
def test_central_dashboard_counts_events_per_account_and_the_members_metrics(org):
    central = org.stacks["LockReaperCentral"]
    (dash,) = of_type(central, "AWS::CloudWatch::Dashboard").values()
    body = render(dash["Properties"]["DashboardBody"])
    assert "stats count(*) as events by account" in body
    assert "SEARCH(" in body and "LocksReaped" in body  # cross-account observability: one line per linked account
    (lg_id, lg), = of_type(central, "AWS::Logs::LogGroup").items()
    (policy,) = of_type(central, "AWS::Logs::ResourcePolicy").values()
    doc = json.loads(render(policy["Properties"]["PolicyDocument"]).replace("${" + lg_id + ".Arn}", "LOGS"))
    (st,) = doc["Statement"]
    assert set(as_list(st["Action"])) == {"logs:CreateLogStream", "logs:PutLogEvents"} and "aws:SourceArn" in json.dumps(st)
    assert not [r for r in central["Resources"].values() if r["Type"].startswith("Custom::")], "no custom resource"


# ----- the member: forwarding, the scan role, the link --------------------------------------
def _forwarding(template: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    rules = [r for r in of_type(template, "AWS::Events::Rule").values()
             if any(arn(t["Arn"]) == BUS_ARN for t in r["Properties"].get("Targets", []))]
    (role_id,) = {t["RoleArn"]["Fn::GetAtt"][0] for r in rules for t in r["Properties"]["Targets"]}
    return rules, role_id


@pytest.mark.cdk
@pytest.mark.parametrize("which", ["member", "stackset:base", "stackset:sandbox"])
def test_member_events_reach_the_central_bus_through_a_put_events_only_role(org, which):
    template = org.all_templates()["LockReaper" if which == "member" else which]
    rules, role_id = _forwarding(template)
    patterns = [r["Properties"]["EventPattern"] for r in rules]
    assert {"source": ["lock-reaper"]} in patterns  # every event the function puts (reaped, late writer, ...)
    (alarms_rule,) = [p for p in patterns if p.get("source") == ["aws.cloudwatch"]]
    assert alarms_rule["detail-type"] == ["CloudWatch Alarm State Change"]
    alarm_ids = set(of_type(template, "AWS::CloudWatch::Alarm"))
    forwarded = {r["Fn::GetAtt"][0] for r in alarms_rule["resources"]}
    not_forwarded = {a for a in alarm_ids - forwarded if not a.startswith("OrgForwardingDLQAlarm")}
    assert not not_forwarded, f"alarms whose changes never reach the central account: {not_forwarded}"
    # the role: trusted by EventBridge of this account only, allowed PutEvents on the central bus only
    role = template["Resources"][role_id]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "events.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    sts = role_statements(template, role_id)
    assert [(as_list(s["Action"]), [arn(r) for r in as_list(s["Resource"])], s["Effect"]) for s in sts] == [
        (["events:PutEvents"], [BUS_ARN], "Allow")]
    # undelivered events land in a dead-letter queue
    assert all("DeadLetterConfig" in t for r in rules for t in r["Properties"]["Targets"])


@pytest.mark.cdk
@pytest.mark.parametrize("which", ["member", "stackset:base"])
def test_scan_role_trusts_the_central_account_with_the_external_id_and_only_reads(org, which):
    template = org.all_templates()["LockReaper" if which == "member" else which]
    roles = {k: v for k, v in of_type(template, "AWS::IAM::Role").items() if v["Properties"].get("RoleName") == "LockReaperScan"}
    (role_id, role), = roles.items()
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Action"] == "sts:AssumeRole"
    assert render(trust["Principal"]["AWS"]) == f"arn:${{AWS::Partition}}:iam::{CENTRAL}:root"
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}}
    actions = {a for s in role_statements(template, role_id) for a in as_list(s["Action"])}
    assert {"dynamodb:Scan", "dynamodb:DescribeTable"} <= actions <= READ_ONLY, actions
    assert not [a for a in actions if any(w in a for w in ("Delete", "Put", "Update", "Write", "*"))]
    # IAM is global: a stack set in two regions creates it in one
    cond = role["Condition"]
    assert template["Conditions"][cond] == {"Fn::Equals": [{"Ref": "AWS::Region"}, "eu-west-1"]}
    if which == "stackset:base":
        tables = [arn(r) for s in role_statements(template, role_id) if s.get("Sid") == "ReadLockTables"
                  for r in as_list(s["Resource"])]
        assert {arn(t).split(":")[3] for t in tables} == set(REGIONS)  # the lock tables of every stack set region


@pytest.mark.cdk
def test_observability_link_only_in_the_sinks_region(org):
    base = org.stackset_templates["base"]
    (link,) = of_type(base, "AWS::Oam::Link").values()
    assert link["Properties"]["SinkIdentifier"] == SINK
    assert base["Conditions"][link["Condition"]] == {"Fn::Equals": [{"Ref": "AWS::Region"}, "eu-west-1"]}


# ----- the stack sets ---------------------------------------------------------------------------
@pytest.mark.cdk
def test_stack_sets_are_service_managed_with_auto_deployment_to_disjoint_targets(org):
    stack = org.stacks["LockReaperStackSet"]
    sets = {s["Properties"]["StackSetName"]: s["Properties"] for s in of_type(stack, "AWS::CloudFormation::StackSet").values()}
    assert set(sets) == {"lock-reaper", "lock-reaper-sandbox", "lock-reaper-legacy"}
    for p in sets.values():
        assert p["PermissionModel"] == "SERVICE_MANAGED"
        assert p["AutoDeployment"] == {"Enabled": True, "RetainStacksOnAccountRemoval": False}
        assert set(p["Capabilities"]) == {"CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"}
        prefs = p["OperationPreferences"]
        assert prefs["FailureTolerancePercentage"] == 10 and prefs["MaxConcurrentPercentage"] == 25
        assert prefs["RegionConcurrencyType"] == "SEQUENTIAL" and prefs["RegionOrder"] == REGIONS
        assert all(g["Regions"] == REGIONS for g in p["StackInstancesGroup"])
        assert "TemplateURL" in p
    (base,) = sets["lock-reaper"]["StackInstancesGroup"]
    assert base["DeploymentTargets"] == {"OrganizationalUnitIds": OUS, "Accounts": [LEGACY_ACCOUNT],
                                         "AccountFilterType": "DIFFERENCE"}
    (sandbox,) = sets["lock-reaper-sandbox"]["StackInstancesGroup"]
    assert sandbox["DeploymentTargets"] == {"OrganizationalUnitIds": [SANDBOX_OU], "Accounts": [LEGACY_ACCOUNT],
                                            "AccountFilterType": "DIFFERENCE"}
    (legacy,) = sets["lock-reaper-legacy"]["StackInstancesGroup"]
    assert legacy["DeploymentTargets"] == {"OrganizationalUnitIds": [*OUS, SANDBOX_OU], "Accounts": [LEGACY_ACCOUNT],
                                           "AccountFilterType": "INTERSECTION"}


@pytest.mark.cdk
def test_each_target_runs_its_effective_policy_from_an_org_readable_bucket_of_its_region(org):
    stack = org.stacks["LockReaperStackSet"]
    copies = [r["Properties"] for r in of_type(stack, "Custom::CDKBucketDeployment").values()]
    for name, template in org.stackset_templates.items():
        assert "Rules" not in template and "BootstrapVersion" not in template.get("Parameters", {}), "no CDK bootstrap"
        (fn,) = of_type(template, "AWS::Lambda::Function").values()
        code = fn["Properties"]["Code"]
        assert code["S3Bucket"] == {"Fn::Join": ["-", [PREFIX, {"Ref": "AWS::Region"}]]}
        key = code["S3Key"]
        # the deploy copies exactly that zip into the bucket of every region
        assert sorted(c["DestinationBucketName"] for c in copies if c["SourceObjectKeys"] == [key]) == sorted(
            f"{PREFIX}-{r}" for r in REGIONS), name
        policy = (org.outdir / f"asset.{key.removesuffix('.zip')}" / "policy.yaml").read_text()
        assert ("mode: enforce" in policy) == (name == "sandbox"), name
        assert ("legacy-locks" in policy) == (name == "legacy"), name
        tables = {render(r).rsplit("/", 1)[1] for r in
                  [r for s in role_statements(template, fn["Properties"]["Role"]["Fn::GetAtt"][0]) if s.get("Sid") == "LockTables"
                   for r in as_list(s["Resource"])]}
        assert tables == ({"legacy-locks"} if name == "legacy" else {"terraform-locks"}), name
    for region in REGIONS:
        bucket_stack = org.stacks[f"LockReaperAssets-{region}"]
        (bucket,) = of_type(bucket_stack, "AWS::S3::Bucket").values()
        assert render(bucket["Properties"]["BucketName"]) == f"{PREFIX}-${{AWS::Region}}" or \
            bucket["Properties"]["BucketName"] == f"{PREFIX}-{region}"
        sts = [s for p in of_type(bucket_stack, "AWS::S3::BucketPolicy").values()
               for s in p["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
        (read,) = sts
        assert read["Principal"] == {"AWS": "*"} and read["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": ORG_ID}}
        assert set(as_list(read["Action"])) == {"s3:GetObject", "s3:GetObjectVersion"}


# ----- gates: cdk-nag and cfn-lint on every template ----------------------------------------------
@pytest.mark.cdk
def test_cdk_nag_is_clean_on_every_stack_and_stack_set_template(org):
    (nag,) = [p for p in org.report["pluginReports"] if p["pluginName"] == "AwsSolutions"]
    assert nag["conclusion"] == "success" and nag["violations"] == [], json.dumps(nag["violations"], indent=1)[:3000]
    checked = {v["constructPath"].split("/")[1] for s in nag.get("suppressedViolations", [])
               for v in s.get("violatingConstructs", []) if v["constructPath"].startswith("LockReaperStackSet/")}
    assert {"Member-base", "Member-sandbox", "Member-legacy"} <= checked, "nag saw the stack set templates"
    for v in nag.get("suppressedViolations", []):
        assert len(v["reason"]) >= 60 and v["reason"].strip()[-1] in ".)", v


@pytest.mark.cdk
def test_cfn_lint_is_clean_on_every_template(org, tmp_path):
    from cfnlint.api import ManualArgs, lint_file

    templates = org.all_templates()
    assert len(templates) == 1 + 1 + 1 + len(REGIONS) + 3
    for name, template in templates.items():
        path = tmp_path / f"{name.replace(':', '_')}.json"
        path.write_text(json.dumps(template))
        matches = lint_file(path, config=ManualArgs(ignore_checks=["W3005"], regions=["us-east-1", "eu-west-1"]))
        assert matches == [], f"{name}:\n" + "\n".join(str(m) for m in matches)


# ----- the member without a local topic (inline code: no bundling) -------------------------------
@pytest.mark.cdk
def test_member_without_its_topic_alerts_only_through_the_central_account(tmp_path):
    import aws_cdk as cdk
    from aws_cdk import aws_lambda as lambda_

    from infra.lock_reaper import LockReaperProps
    from infra.settings import load_checked_policy
    from infra.stack import LockReaperStack

    ctx = base_context()
    settings = load_settings(dict(ctx["reaper"], alert_topic=False))
    org_settings = load_org_settings({"central_account": CENTRAL, "central_region": CENTRAL_REGION,
                                      "member": {"forward_events": True}})
    policy, path, _ = load_checked_policy(settings, ROOT)
    app = cdk.App(context=ctx, outdir=str(tmp_path))
    stack = LockReaperStack(app, "NoTopic", org=org_settings, reaper=LockReaperProps(
        settings=settings, policy=policy, policy_file=path, project_root=ROOT,
        code=lambda_.Code.from_inline("def lambda_handler(event, context):\n    return {}\n")))
    template = app.synth().get_stack_artifact(stack.artifact_id).template
    assert not of_type(template, "AWS::SNS::Topic")
    assert all("AlarmActions" not in a["Properties"] for a in of_type(template, "AWS::CloudWatch::Alarm").values())
    (fn,) = of_type(template, "AWS::Lambda::Function").values()
    assert "REAPER_SNS_TOPIC_ARN" not in fn["Properties"]["Environment"]["Variables"]
    fn_role = fn["Properties"]["Role"]["Fn::GetAtt"][0]
    assert not [s for s in role_statements(template, fn_role) if s.get("Sid") == "PublishAlerts"]
    rules, _ = _forwarding(template)
    assert len(rules) == 2 and "AlertTopicArn" not in template.get("Outputs", {})


# ----- context validation: every error names its key ------------------------------------------------
@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"org_id": "org-1"}, "context.org.org_id", "not a valid organization id"),
        ({"stackset": {"organizational_units": ["ou-ab12-workload1", "sandbox"]}},
         "context.org.stackset.organizational_units[1]", "not a valid organizational unit id"),
        ({"stackset": {"regions": ["eu-west-1", "Europe"]}}, "context.org.stackset.regions[1]", "not a valid AWS region"),
        ({"stackset": {"regions": ["eu-west-1", "eu-west-1"]}}, "context.org.stackset.regions[1]", "listed twice"),
        ({"central_account": "12345"}, "context.org.central_account", "12 digits"),
        ({"central_account": None}, "context.org.central_account", "required"),
        ({"central_region": None}, "context.org.central_region", "required"),
        ({"synth": ["member", "everything"]}, "context.org.synth[1]", "'member', 'central' or 'stackset'"),
        ({"member": {"scan_role": {"enabled": True}}}, "context.org.member.scan_role.external_id", "required"),
        ({"member": {"scan_role": {"enabled": True, "external_id": "x1"}}}, "context.org.member.scan_role.region",
         "several regions"),
        ({"member": {"observability_sink_arn": "arn:aws:oam:eu-west-1:1:sink/x"}},
         "context.org.member.observability_sink_arn", "not a valid"),
        ({"stackset": {"organizational_units": ["r-ab12", "ou-ab12-workload1"]}},
         "context.org.stackset.organizational_units", "root"),
        ({"stackset": {"max_concurrent_percentage": 0}}, "context.org.stackset.max_concurrent_percentage", "greater than"),
        ({"stackset": {"asset_bucket_prefix": None}}, "context.org.stackset.asset_bucket_prefix", "required"),
        ({"stackset": {"colour": "blue"}}, "context.org.stackset.colour", "unknown field"),
        ({"central": {"log_retention_days": 5000}}, "context.org.central.log_retention_days", "not a CloudWatch Logs retention"),
    ],
)
def test_org_context_errors_name_the_bad_key(change, key, words):
    raw = org_block()
    for k, v in change.items():
        if isinstance(v, dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    with pytest.raises(SettingsError) as exc:
        load_org_settings(raw)
    mine = [p for p in exc.value.problems if p.startswith(f"{key}: ")]
    assert mine and words in mine[0], exc.value.problems


def test_default_org_context_is_the_single_member_stack():
    s = load_org_settings(None)
    assert s.synth == ["member"] and not s.member.forward_events and not s.member.scan_role.enabled


# ----- overrides: validated per target, each error at its file and line ----------------------------
def _targets(tmp_path: Path, overrides: str, stackset: dict[str, Any] | None = None):
    path = tmp_path / "overrides.yaml"
    path.write_text(overrides, encoding="utf-8")
    raw = base_context()["reaper"]
    settings = load_settings(raw)
    org_raw = org_block(path)
    if stackset:
        org_raw["stackset"].update(stackset)
    org_settings = load_org_settings(org_raw)
    targets, parsed = load_targets(copy.deepcopy(raw), settings, ROOT, str(path), tmp_path / "policies")
    check_stackset_targets(org_settings, parsed)
    return targets, org_settings


def test_overrides_give_each_target_its_effective_policy_and_grants(tmp_path):
    targets, org_settings = _targets(tmp_path, OVERRIDES)
    by = {t.name: t for t in targets}
    assert (by["base"].policy.mode, by["sandbox"].policy.mode, by["legacy"].policy.mode) == ("report", "enforce", "report")
    assert [s.table for s in by["legacy"].policy.stores] == ["legacy-locks"]
    assert by["legacy"].settings.lock_tables == ["legacy-locks"] and by["base"].settings.lock_tables == ["terraform-locks"]
    assert by["base"].policy_file == ROOT / "config" / "policy.yaml"  # no override: the file itself
    assert by["sandbox"].policy_file.read_text().startswith("# Effective policy of target 'sandbox'")
    groups = instance_groups(org_settings, targets)
    assert [g.account_filter for g in groups["legacy"]] == ["INTERSECTION"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a bad value in the override: the overrides file's line and the override's path
        ("overrides:\n  - name: sandbox\n    organizational_units: [ou-ab12-sandbox01]\n    policy:\n      mode: enfroce\n",
         "overrides.yaml: line 5: overrides[0].policy.mode: Input should be 'report' or 'enforce'"),
        ("overrides:\n  - name: x\n    accounts: ['111122223333']\n    policy:\n      rules:\n        - name: r\n"
         "          match: '*'\n          max_age: 6x\n          hard_max_age: 1d\n",
         "overrides.yaml: line 8: overrides[0].policy.rules[0].max_age: invalid duration '6x'"),
        # a store the override adds but whose table the stack would not grant
        ("overrides:\n  - name: x\n    accounts: ['111122223333']\n    policy:\n      stores:\n        - type: dynamodb\n"
         "          table: other-locks\n",
         "overrides.yaml: line 7: overrides[0].policy.stores[0].table: table 'other-locks' is not in "
         "context.reaper.lock_tables"),
        ("overrides:\n  - name: x\n    accounts: ['111122223333']\n    settings:\n      lock_tables: ['a b']\n",
         "overrides.yaml: line 5: overrides[0].settings.lock_tables[0]: 'a b' is not a valid DynamoDB table name"),
        # the file's own shape
        ("overrides:\n  - name: Sandbox\n    organizational_units: [ou-ab12-sandbox01]\n    policy: {mode: enforce}\n",
         "overrides.yaml: line 2: overrides[0].name: 'Sandbox' is not a valid override name"),
        ("overrides:\n  - name: a\n    accounts: ['111122223333']\n    policy: {mode: enforce}\n"
         "  - name: b\n    accounts: ['111122223333']\n    policy: {mode: report}\n",
         "overrides.yaml: line 6: overrides[1].accounts[0]: 111122223333 is already a target of overrides[0]"),
        ("overrides:\n  - name: a\n    accounts: ['111122223333']\n    settings: {stack_name: Other}\n",
         "overrides.yaml: line 4: overrides[0].settings.stack_name: stack_name is the same for every target"),
        ("overrides:\n  - name: a\n    accounts: ['111122223333']\n",
         "overrides.yaml: line 2: overrides[0]: changes nothing"),
        # an OU both in the base and in an override would get two stack sets
        ("overrides:\n  - name: a\n    organizational_units: [ou-ab12-workload1]\n    policy: {mode: enforce}\n",
         "overrides.yaml: line 3: overrides[0].organizational_units[0]: ou-ab12-workload1 is also in "
         "context.org.stackset.organizational_units"),
    ],
)
def test_override_errors_name_the_file_line_and_field(tmp_path, text, expected):
    with pytest.raises(SettingsError) as exc:
        _targets(tmp_path, text)
    shown = [p.replace(str(tmp_path) + "/", "") for p in exc.value.problems]
    assert any(p.startswith(expected) for p in shown), shown


def test_a_problem_the_override_did_not_cause_names_the_policy_file():
    """Attribution: a bad value the override set is the override's; any other is the policy file's."""
    from reaper.policy import Problem
    from reaper.policy.lines import load_yaml
    from reaper.policy.overrides import Attribution

    base_text = (ROOT / "config" / "policy.yaml").read_text()
    ov = parse_overrides("overrides:\n  - name: x\n    accounts: ['111122223333']\n    policy:\n      mode: enforce\n"
                         "      rules:\n        - name: r\n          match: '*'\n          max_age: 1h\n", "ov.yaml")
    a = Attribution("config/policy.yaml", load_yaml(base_text, "p")[0], ov, 0)
    assert a.policy(Problem(3, "rules[0].max_age", "bad")) == (
        "ov.yaml", Problem(9, "overrides[0].policy.rules[0].max_age", "bad"))
    source, p = a.policy(Problem(40, "max_deletes_per_run", "bad"))
    line = next(i for i, t in enumerate(base_text.splitlines(), 1) if t.startswith("max_deletes_per_run:"))
    assert (source, p.line, p.field) == ("config/policy.yaml", line, "max_deletes_per_run")
    with pytest.raises(ConfigError, match="overrides: Input should be a valid list"):
        parse_overrides("overrides: 3\n", "ov.yaml")


@pytest.mark.cdk
def test_a_single_member_stack_runs_the_override_that_names_its_account(tmp_path):
    from infra.org_app import _member_target

    targets, _ = _targets(tmp_path, OVERRIDES)
    assert _member_target(targets, LEGACY_ACCOUNT).name == "legacy"
    assert _member_target(targets, "111111111111").name == "base"
    assert _member_target(targets, None).name == "base"  # no account: OU membership is unknown offline
