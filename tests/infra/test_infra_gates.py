"""Gates on the synthesized app: cdk-nag, cfn-lint, the bundled asset, a variant synth."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from cfn_helpers import ROOT, as_list, cdk_json_context, render, statements

pytestmark = pytest.mark.cdk

MAX_ASSET_BYTES = 60 * 1000 * 1000  # issue 14: SDK included


# ----- cdk-nag (AwsSolutionsChecks through Validations.of(app).add_plugins) -----------
def _nag_report(report: dict) -> dict:
    (nag,) = [p for p in report["pluginReports"] if p["pluginName"] == "AwsSolutions"]
    return nag


def test_cdk_nag_has_no_unacknowledged_findings(synth):
    nag = _nag_report(synth.report)
    assert nag["conclusion"] == "success", json.dumps(nag["violations"], indent=1)
    assert nag["violations"] == []


def test_every_acknowledgement_is_used_and_has_a_real_reason(synth):
    nag = _nag_report(synth.report)
    suppressed = nag.get("suppressedViolations", [])
    assert suppressed, "the shared synth acknowledges known findings (IAM5 on *.tflock, L1, ...)"
    for v in suppressed:
        assert len(v["reason"]) >= 60 and v["reason"].strip()[-1] in ".)", v
    used = {v["acknowledgedId"] for v in suppressed}
    meta = json.loads((synth.outdir / f"{synth.stack.stack_name}.metadata.json").read_text())
    acknowledged = {
        rule
        for entries in meta.values()
        for e in entries
        if e["type"] == "aws:cdk:acknowledged-rules"
        for rule in e["data"]
    }
    assert acknowledged == used, f"unused acknowledgements: {sorted(acknowledged - used)}"
    # wildcard acknowledgements are only for the documented cases
    for rule in acknowledged:
        if "IAM5" in rule:
            assert rule.endswith(("*.tflock]", "*.tfstate]", "/lock-reaper/audit/*]", "[Resource::*]")), rule


def test_cdk_nag_gate_fails_a_synth_with_a_finding(tmp_path):
    """The same plugin wiring as app.py stops a synth on an unacknowledged finding."""
    import aws_cdk as cdk
    from aws_cdk import aws_sqs as sqs
    from cdk_nag import AwsSolutionsChecks

    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Bad")
    sqs.Queue(stack, "Plain")  # no DLQ, no SSL-only policy
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(Exception, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    rules = {v["ruleName"] for v in _nag_report(report)["violations"]}
    assert "AwsSolutions-SQS4" in rules


# ----- cfn-lint --------------------------------------------------------------------
def _lint(template: dict, tmp_path: Path) -> list:
    from cfnlint.api import ManualArgs, lint_file

    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    return lint_file(path, config=ManualArgs(ignore_checks=["W3005"], regions=["us-east-1", "eu-west-1", "ap-southeast-2"]))


def test_cfn_lint_is_clean_except_w3005(synth, tmp_path):
    matches = _lint(synth.template, tmp_path)
    assert matches == [], "\n".join(str(m) for m in matches)


def test_cfn_lint_catches_a_broken_template(synth, tmp_path):
    broken = copy.deepcopy(synth.template)
    (fn,) = [r for r in broken["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    fn["Properties"]["Runtime"] = "python2.0"
    fn["Properties"]["Timeout"] = 3600
    rules = {m.rule.id for m in _lint(broken, tmp_path)}
    assert rules & {"E3030", "E3034", "E2531", "W2531", "E3012"}, rules


# ----- the bundled asset ----------------------------------------------------------------
def test_asset_is_arm64_with_policy_sdk_and_under_60_mb(synth):
    asset = synth.asset_dir()
    assert asset.is_dir(), asset
    sos = sorted(p.name for p in asset.rglob("*.so"))
    core = [n for n in sos if n.startswith("_pydantic_core.")]
    assert len(core) == 1 and "aarch64" in core[0] and "cpython-313" in core[0], sos
    assert not [n for n in sos if "x86_64" in n or "amd64" in n], sos
    assert (asset / "policy.yaml").read_bytes() == (ROOT / "config" / "policy.yaml").read_bytes()
    assert (asset / "reaper" / "handler.py").is_file()
    # .pyc: only 3.13's (precompiled when a 3.13 interpreter is found), never another version's
    assert not [p for p in asset.rglob("*.pyc") if ".cpython-313." not in p.name or p.read_bytes()[:4] != b"\xf3\r\r\n"]
    for sdk in ("boto3", "botocore", "s3transfer"):
        assert (asset / sdk / "__init__.py").is_file(), f"{sdk} is bundled (the SDK the tests use)"
    size = sum(p.stat().st_size for p in asset.rglob("*") if p.is_file())
    print(f"\nasset unzipped: {size / 1e6:.2f} MB; synth took {synth.seconds:.1f} s")
    assert size < MAX_ASSET_BYTES, f"{size / 1e6:.2f} MB"


def test_asset_hash_is_the_output_hash(synth):
    assets = json.loads((synth.outdir / f"{synth.stack.stack_name}.assets.json").read_text())
    (fn,) = [r for r in synth.template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    key = fn["Properties"]["Code"]["S3Key"].removesuffix(".zip")
    assert assets["files"][key]["source"] == {"path": f"asset.{key}", "packaging": "zip"}


# ----- a variant: account/region given, no state buckets, state-activity flag off, reserved concurrency ----------
@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    import aws_cdk as cdk
    from aws_cdk import aws_lambda as lambda_

    from infra.lock_reaper import LockReaperProps
    from infra.settings import load_checked_policy, load_settings
    from infra.stack import LockReaperStack

    ctx = cdk_json_context()
    reaper = dict(ctx["reaper"], account="123456789012", region="eu-central-1", schedule="cron(0/30 * * * ? *)")
    reaper.update(state_buckets=[], ci_token_secrets=[], kms_key_arns=[], state_activity_evidence=False)
    reaper.update(log_retention_days=30, schedule_enabled=False, reserved_concurrency=1, timeout_minutes=5)
    settings = load_settings(reaper)
    policy, path, _ = load_checked_policy(settings, ROOT)
    app = cdk.App(context=ctx, outdir=str(tmp_path_factory.mktemp("variant")))
    stack = LockReaperStack(
        app,
        "Variant",
        env=cdk.Environment(account=settings.account, region=settings.region),
        reaper=LockReaperProps(
            settings=settings,
            policy=policy,
            policy_file=path,
            project_root=ROOT,
            code=lambda_.Code.from_inline("def lambda_handler(event, context):\n    return {}\n"),
        ),
    )
    art = app.synth().get_stack_artifact(stack.artifact_id)
    return art.template, art.environment


def test_variant_is_bound_to_the_given_account_and_region(variant):
    template, env = variant
    assert (env.account, env.region) == ("123456789012", "eu-central-1")
    fn_statements = statements(template)
    tables = [render(r) for st in fn_statements if st.get("Sid") == "LockTables" for r in as_list(st["Resource"])]
    assert tables == ["arn:aws:dynamodb:eu-central-1:123456789012:table/terraform-locks"]


def test_variant_without_buckets_secrets_or_keys_grants_none(variant):
    template, _ = variant
    actions = {a for st in statements(template) for a in as_list(st["Action"])}
    assert not {a for a in actions if a.startswith("s3:") and a not in ("s3:GetObject", "s3:PutObject")}
    assert "secretsmanager:GetSecretValue" not in actions
    sids = {st.get("Sid") for st in statements(template)}
    assert not sids & {"ListStateBuckets", "StateLockFiles", "StateObjectsHead", "DecryptWithNamedKeys", "ReadTokenSecrets"}
    # the only object reads left are the audit records
    for st in statements(template):
        if "s3:GetObject" in as_list(st["Action"]):
            assert st["Sid"] == "AuditRecords"


def test_variant_reserves_concurrency_when_asked_and_turns_state_activity_off(variant):
    template, _ = variant
    (fn,) = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    assert fn["ReservedConcurrentExecutions"] == 1
    env = fn["Environment"]["Variables"]
    # no StateObjectsHead grant (test above), so the function must not head state objects at all
    assert env["REAPER_STATE_ACTIVITY_ENABLED"] == "false"
    assert env["REAPER_LEASE_SECONDS"] == "300" == str(fn["Timeout"])


def test_variant_schedule_and_retention_follow_the_context(variant):
    template, _ = variant
    (sched,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::Scheduler::Schedule"]
    assert sched["Properties"]["ScheduleExpression"] == "cron(0/30 * * * ? *)"
    assert sched["Properties"]["State"] == "DISABLED"
    (logs,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert logs["Properties"]["RetentionInDays"] == 30


def test_digest_may_tell_a_missing_marker_from_a_refusal(tmp_path):
    """With the digest on, ListBucket on the audit bucket: else S3 answers the first marker read with 403, not 404."""
    import aws_cdk as cdk
    from aws_cdk import aws_iam as iam
    from aws_cdk import aws_kms as kms
    from aws_cdk import aws_s3 as s3

    from infra.constructs.grants import RoleGrants
    from infra.settings import load_settings
    from reaper.policy import parse_policy

    text = (ROOT / "config" / "policy.yaml").read_text(encoding="utf-8")
    found = {}
    for enabled in (False, True):
        policy = parse_policy(text + f"\n  digest:\n    enabled: {str(enabled).lower()}\n")
        assert policy.alerts.digest.enabled is enabled
        stack = cdk.Stack(cdk.App(outdir=str(tmp_path / str(enabled))), "Digest")
        role = iam.Role(stack, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        bucket, key = s3.Bucket(stack, "Audit"), kms.Key(stack, "Key")
        RoleGrants(role, load_settings({}), policy).audit_records(bucket, key)
        template = cdk.assertions.Template.from_stack(stack).to_json()
        found[enabled] = {st["Sid"]: (as_list(st["Action"]), [render(r) for r in as_list(st["Resource"])])
                          for st in statements(template)}
    assert "AuditBucketList" not in found[False]
    bucket_id = next(iter(found[True]["AuditBucketList"][1]))
    assert found[True]["AuditBucketList"] == (["s3:ListBucket"], [bucket_id]) and bucket_id.endswith(".Arn}")
