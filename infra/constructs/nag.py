"""cdk-nag 3 acknowledgements, recorded with their reason in the validation report."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Validations
from constructs import IConstruct

NAG = "AwsSolutions::"  # cdk-nag 3 acknowledgement prefix


def acknowledge(construct: IConstruct, finding: str, reason: str) -> None:
    """Acknowledge ``finding`` (``AwsSolutions-SQS3``, ``AwsSolutions-IAM5[Resource::...]``) on ``construct``."""
    Validations.of(construct).acknowledge(Acknowledgment(id=f"{NAG}{finding}", reason=reason))


def nag_render(scope: IConstruct, value: str) -> str:
    """Render a (possibly tokenized) string the way cdk-nag names it in a finding id."""
    resolved = Stack.of(scope).resolve(value)
    return _render(resolved)


def _render(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        if "Ref" in v:
            return f"<{v['Ref']}>"
        if "Fn::GetAtt" in v:
            a = v["Fn::GetAtt"]
            return f"<{a[0]}.{a[1]}>" if isinstance(a, list) else f"<{a}>"
        if "Fn::Join" in v:
            sep, parts = v["Fn::Join"]
            return sep.join(_render(p) for p in parts)
    return str(v)
