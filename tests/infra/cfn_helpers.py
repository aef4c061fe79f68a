"""Small helpers for reading synthesized CloudFormation in the CDK tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

KMS_KEY = "arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d-1111-2222-3333-444455556666"
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:lock-reaper/hcp-token-AbCdEf"
EXTRA = {
    "state_buckets": ["tf-state-a", {"bucket": "tf-state-b", "prefixes": ["env:/", "teams/"]}],
    "kms_key_arns": [KMS_KEY],
    "ci_token_secrets": ["lock-reaper/github-token", SECRET_ARN],
    "alert_emails": ["ops@example.com", "oncall@example.com"],
    "state_activity_evidence": True,
}


def cdk_json_context() -> dict[str, Any]:
    return json.loads((ROOT / "cdk.json").read_text(encoding="utf-8"))["context"]


def shared_context() -> dict[str, Any]:
    ctx = cdk_json_context()
    reaper = dict(ctx.get("reaper") or {})
    for key, value in EXTRA.items():
        if isinstance(value, list):
            have = reaper.get(key) or []
            reaper[key] = have + [v for v in value if v not in have]
        else:
            reaper[key] = value
    ctx["reaper"] = reaper
    return ctx



def render(value: Any) -> str:
    """A CloudFormation value as one string: Ref -> ${Name}, GetAtt -> ${Id.Attr}, Join joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return json.dumps(value)
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            return "${" + arg + "}"
        if fn == "Fn::GetAtt":
            return "${" + (".".join(arg) if isinstance(arg, list) else arg) + "}"
        if fn == "Fn::Join":
            sep, parts = arg
            return sep.join(render(p) for p in parts)
        if fn == "Fn::Sub":
            return arg if isinstance(arg, str) else arg[0]
    return json.dumps(value, sort_keys=True)


def as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def statements(template: dict[str, Any], policy_logical_id: str | None = None) -> list[dict[str, Any]]:
    """Every statement of every AWS::IAM::Policy (optionally one) and of the roles' inline policies."""
    out = []
    for lid, res in template["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::IAM::Policy" and (policy_logical_id is None or lid == policy_logical_id):
            out += props["PolicyDocument"]["Statement"]
        if res["Type"] == "AWS::IAM::Role" and policy_logical_id is None:
            for p in props.get("Policies", []):
                out += p["PolicyDocument"]["Statement"]
    return out
