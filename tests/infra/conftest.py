"""Fixtures for the CDK tests: one synthesized app shared by the whole session.

The shared synth uses cdk.json's context (as ``cdk synth`` does) plus the
grants below, so every branch of the role (state buckets with and without
prefixes, KMS keys, secrets by name and by ARN, state-activity reads) is in the
one template the tests inspect. aws_cdk is imported inside the fixtures only, so
``-m "not cdk"`` runs never start jsii.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cfn_helpers import shared_context

# jsii silences its node end-of-life banner only for the major versions listed here.
_EOL = "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"
os.environ[_EOL] = ",".join(sorted({*os.environ.get(_EOL, "").split(","), "18", "20", "22"} - {"", "1"}))

@dataclass
class Synth:
    outdir: Path
    stack: Any  # infra.stack.LockReaperStack
    template: dict[str, Any]
    manifest: dict[str, Any]
    report: dict[str, Any]
    context: dict[str, Any]
    seconds: float

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == type_}

    def logical_id(self, construct: Any) -> str:
        return self.stack.get_logical_id(construct.node.default_child)

    def asset_dir(self) -> Path:
        (fn,) = self.resources("AWS::Lambda::Function").values()
        key = fn["Properties"]["Code"]["S3Key"]
        return self.outdir / f"asset.{key.removesuffix('.zip')}"


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    import time

    from app import build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    ctx = shared_context()
    started = time.monotonic()
    app = build_app(ctx, outdir=str(outdir))
    assembly = app.synth()
    seconds = time.monotonic() - started
    (stack_art,) = [a for a in assembly.stacks]
    stack = app.node.find_child(stack_art.stack_name)
    return Synth(
        outdir=outdir,
        stack=stack,
        template=stack_art.template,
        manifest=json.loads((outdir / "manifest.json").read_text()),
        report=json.loads((outdir / "validation-report.json").read_text()),
        context=ctx,
        seconds=seconds,
    )


@pytest.fixture(scope="session")
def template(synth: Synth):
    from aws_cdk.assertions import Template

    return Template.from_json(synth.template)
