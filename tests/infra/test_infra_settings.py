"""The cdk.json context, the policy cross-checks and the bundler's logic (no synth, except one subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cfn_helpers import ROOT, cdk_json_context

from infra import bundling
from infra.settings import ReaperSettings, SettingsError, load_checked_policy, load_settings

POLICY = (ROOT / "config" / "policy.yaml").read_text(encoding="utf-8")


def _problems(raw) -> str:
    with pytest.raises(SettingsError) as exc:
        load_settings(raw)
    return str(exc.value)


# ----- context ----------------------------------------------------------------------
def test_defaults():
    s = load_settings(None)
    assert s.schedule == "rate(15 minutes)"
    assert s.policy_file == "config/policy.yaml"
    assert s.claims_table == "lock-reaper-claims"
    assert s.account is None and s.region is None
    assert s.state_activity_evidence is False
    assert s.reserved_concurrency is None  # opt-in: a reservation fails the deploy on a new account


def test_cdk_json_reserves_no_concurrency():
    assert load_settings(cdk_json_context()["reaper"]).reserved_concurrency is None
    assert load_settings({"reserved_concurrency": 1}).reserved_concurrency == 1


def test_cdk_json_context_is_valid_and_matches_the_policy_file():
    ctx = cdk_json_context()
    settings = load_settings(ctx["reaper"])
    policy, path, warnings = load_checked_policy(settings, ROOT)
    assert path == ROOT / "config" / "policy.yaml"
    assert warnings == [], warnings
    assert json.loads((ROOT / "cdk.json").read_text())["app"].endswith("app.py")
    assert ctx["@aws-cdk/aws-iam:minimizePolicies"] is True  # the cdk init feature flags are present


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"schedule": "rate(1 minutes)"}, "context.reaper.schedule: 'rate(1 minutes)': write rate(1 minute)"),
        ({"schedule": "rate(5 minute)"}, "write rate(5 minutes)"),
        ({"schedule": "every 15 minutes"}, "context.reaper.schedule: 'every 15 minutes' is not an EventBridge Scheduler"),
        ({"schedul": "rate(1 hour)"}, "context.reaper.schedul: unknown field"),
        ({"alert_emails": ["ops"]}, "context.reaper.alert_emails[0]: 'ops' is not a valid email address"),
        ({"lock_tables": ["no spaces"]}, "context.reaper.lock_tables[0]: 'no spaces' is not a valid DynamoDB table name"),
        ({"state_buckets": ["Bad_Bucket"]}, "context.reaper.state_buckets[0].bucket: 'Bad_Bucket' is not a valid S3 bucket"),
        ({"state_buckets": [{"bucket": "ok-bucket", "prefixes": ["env/*"]}]}, "state_buckets[0].prefixes: prefix 'env/*'"),
        ({"log_retention_days": 10}, "context.reaper.log_retention_days: 10 is not a CloudWatch Logs retention"),
        ({"kms_key_arns": ["arn:aws:kms:eu-west-1:111122223333:alias/state"]}, "is an alias"),
        ({"ci_token_secrets": ["arn:aws:secretsmanager:oops"]}, "is not a Secrets Manager secret ARN"),
        ({"timeout_minutes": 16}, "context.reaper.timeout_minutes: Input should be less than or equal to 15"),
        ({"account": "12345"}, "context.reaper.account: '12345' is not a valid AWS account id"),
        ({"reserved_concurrency": 0}, "context.reaper.reserved_concurrency: Input should be greater than or equal to 1"),
        ("{not json", "context.reaper: not valid JSON"),
        (["a"], "context.reaper: must be an object, got list"),
    ],
)
def test_bad_context_names_the_field(raw, expected):
    assert expected in _problems(raw)


def test_context_given_as_json_string_and_bucket_shorthand():
    s = load_settings(json.dumps({"state_buckets": ["tf-state", {"bucket": "other-state", "prefixes": ["env:/"]}]}))
    assert [(b.bucket, b.prefixes) for b in s.state_buckets] == [("tf-state", []), ("other-state", ["env:/"])]


# ----- the policy file and its cross-checks ------------------------------------------------
def _policy(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def _line_of(text: str, exact: str) -> int:
    return next(i for i, t in enumerate(text.splitlines(), 1) if t == exact)


def _check(tmp_path: Path, text: str, **context):
    settings = ReaperSettings(policy_file=str(_policy(tmp_path, text)), **context)
    return load_checked_policy(settings, tmp_path)


def test_bad_policy_names_field_and_line(tmp_path):
    bad = POLICY.replace("max_age: 6h", "max_age: 6", 1)
    assert bad != POLICY
    with pytest.raises(SettingsError) as exc:
        _check(tmp_path, bad, lock_tables=["terraform-locks"])
    (problem,) = exc.value.problems
    line = next(i for i, text in enumerate(bad.splitlines(), 1) if text.strip() == "max_age: 6")
    assert f"line {line}: rules[1].max_age: bare number 6 has no unit" in problem


def test_policy_table_must_be_granted_in_context(tmp_path):
    with pytest.raises(SettingsError) as exc:
        _check(tmp_path, POLICY, lock_tables=["another-table"])
    (problem,) = exc.value.problems
    line = _line_of(POLICY, "    table: terraform-locks")
    expected = f"line {line}: stores[0].table: table 'terraform-locks' is not in context.reaper.lock_tables (another-table)"
    assert expected in problem


def test_granted_but_unused_table_is_a_warning(tmp_path):
    _, _, warnings = _check(tmp_path, POLICY, lock_tables=["terraform-locks", "spare-table"])
    source = tmp_path / "policy.yaml"
    assert warnings == [f"context.reaper.lock_tables: 'spare-table' is granted but no store in {source} scans it"]


def test_policy_bucket_and_prefixes_must_be_granted(tmp_path):
    text = POLICY.replace(
        "stores:\n", "stores:\n  - type: s3\n    bucket: tf-state\n    prefixes: [env:/, other/]\n", 1
    )
    with pytest.raises(SettingsError) as exc:
        _check(tmp_path, text, lock_tables=["terraform-locks"])
    assert "stores[0].bucket: bucket 'tf-state' is not in context.reaper.state_buckets" in str(exc.value)
    with pytest.raises(SettingsError) as exc:
        _check(tmp_path, text, lock_tables=["terraform-locks"], state_buckets=[{"bucket": "tf-state", "prefixes": ["env:/"]}])
    line = _line_of(text, "    prefixes: [env:/, other/]")
    assert exc.value.problems == [
        f"{tmp_path / 'policy.yaml'}: line {line}: stores[0].prefixes: prefix 'other/' of bucket 'tf-state' is outside "
        "the prefixes granted in context.reaper.state_buckets (env:/)"
    ]
    _check(tmp_path, text, lock_tables=["terraform-locks"], state_buckets=["tf-state"])  # whole bucket granted


def test_policy_secrets_must_be_granted(tmp_path):
    text = POLICY.replace(
        "stores:\n",
        "stores:\n  - type: hcp\n    organizations: [acme]\n    token_secret: lock-reaper/hcp-token\n",
        1,
    )
    with pytest.raises(SettingsError) as exc:
        _check(tmp_path, text, lock_tables=["terraform-locks"])
    line = _line_of(text, "    token_secret: lock-reaper/hcp-token")
    expected = f"line {line}: stores[0].token_secret: secret 'lock-reaper/hcp-token' is not in context.reaper.ci_token_secrets"
    assert expected in str(exc.value)
    arn = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:lock-reaper/hcp-token-AbCdEf"
    _check(tmp_path, text, lock_tables=["terraform-locks"], ci_token_secrets=[arn])  # by ARN is fine too


def test_token_env_in_deployed_policy_is_a_warning(tmp_path):
    text = POLICY.replace("stores:\n", "stores:\n  - type: hcp\n    organizations: [acme]\n    token_env: TFE_TOKEN\n", 1)
    _, _, warnings = _check(tmp_path, text, lock_tables=["terraform-locks"])
    assert any("stores[0].token_env: the deployed function has no environment variable 'TFE_TOKEN'" in w for w in warnings)


def test_state_activity_is_turned_off_in_the_deployed_policy_unless_granted(tmp_path):
    from reaper.policy import load_policy

    text = POLICY + "\nliveness:\n  state_activity:\n    window: 5m\n"
    line = _line_of(text, "  state_activity:")
    for extra, why in (
        ({}, "context.reaper.state_activity_evidence is false"),
        ({"state_activity_evidence": True}, "context.reaper.state_buckets is empty"),
    ):
        policy, _, warnings = _check(tmp_path, text, lock_tables=["terraform-locks"], **extra)
        assert policy.liveness.state_activity.enabled is False  # as the deployed function will load it
        assert [w for w in warnings if "state_activity" in w] == [
            f"{tmp_path / 'policy.yaml'}: line {line}: liveness.state_activity: enabled but {why}: the function may "
            "not read state objects, so the deployed function turns state activity off (REAPER_STATE_ACTIVITY_ENABLED=false)"
        ]
    # granted: the policy decides, no warning
    policy, _, warnings = _check(
        tmp_path, text, lock_tables=["terraform-locks"], state_activity_evidence=True, state_buckets=["tf-state"]
    )
    assert policy.liveness.state_activity.enabled is True and not [w for w in warnings if "state_activity" in w]
    # the default policy (state activity on by default) is turned off without a warning
    policy, _, warnings = _check(tmp_path, POLICY, lock_tables=["terraform-locks"])
    assert policy.liveness.state_activity.enabled is False and warnings == []
    # the loader honours the variable the stack sets
    (tmp_path / "p.yaml").write_text(POLICY)
    off = load_policy(tmp_path / "p.yaml", env={"REAPER_STATE_ACTIVITY_ENABLED": "false"})
    assert off.liveness.state_activity.enabled is False
    assert load_policy(tmp_path / "p.yaml").liveness.state_activity.enabled is True


# ----- bundling logic (pip faked; the lock file, the SDK, the .pyc and reproducibility: tests/test_asset.py) ----
def test_assemble_copies_package_and_policy_without_bytecode(tmp_path):
    deps = tmp_path / "deps"
    (deps / "pydantic").mkdir(parents=True)
    (deps / ".complete").write_text("ok")
    pkg = tmp_path / "src" / "reaper"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    policy = tmp_path / "my-policy.yaml"
    policy.write_text("mode: report\n")
    out = tmp_path / "out"
    bundling.assemble(out, deps, pkg, policy)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "policy.yaml",
        "pydantic",
        "reaper",
        "reaper/__init__.py",
    ]
    assert (out / "policy.yaml").read_text() == "mode: report\n"


def test_pip_failure_is_a_clear_bundling_error(monkeypatch):
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found for nope==9\n")

    monkeypatch.setattr(bundling.subprocess, "run", failing_run)
    with pytest.raises(bundling.BundlingError, match="No matching distribution found for nope==9"):
        bundling._run_pip(["install", "nope==9"])


# ----- cdk synth (as the CDK CLI runs the app) fails on a bad policy --------------------------
@pytest.mark.cdk
def test_synth_fails_on_a_bad_policy_naming_the_field(tmp_path):
    bad = _policy(tmp_path, POLICY.replace("mode: report", "mode: delete-everything", 1))
    ctx = cdk_json_context()
    ctx["reaper"] = dict(ctx["reaper"], policy_file=str(bad))
    env = dict(os.environ, CDK_CONTEXT_JSON=json.dumps(ctx), CDK_OUTDIR=str(tmp_path / "cdk.out"))
    proc = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if text.startswith("mode:"))
    assert "Lock Reaper: cannot synthesize, fix the configuration:" in proc.stderr
    assert f"{bad}: line {line}: mode: Input should be 'report' or 'enforce'" in proc.stderr
    assert not (tmp_path / "cdk.out" / "manifest.json").exists()
