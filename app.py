#!/usr/bin/env python3
"""CDK app: one Lock Reaper stack per AWS account, or, for an organization, the central stack and the stack sets.

Configuration is the ``reaper`` block of cdk.json's context plus the policy file
it names; both are validated before anything is built, so a bad field fails the
synth with a message naming it. No AWS calls are made at synth time, and the
stack is environment-agnostic unless ``account``/``region`` are set in the context.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.org_app import add_stacks
from infra.settings import SettingsError

ROOT = Path(__file__).resolve().parent


def build_app(context: Mapping[str, Any] | None = None, outdir: str | None = None, root: Path = ROOT) -> cdk.App:
    """Build the app (not synthesized). Raises SettingsError on a bad context or policy.

    ``context.org.synth`` selects the stacks (infra/org_app.py): the member stack alone by default.
    """
    app = cdk.App(context=dict(context) if context is not None else None, outdir=outdir)
    for stack, warnings in add_stacks(app, root):
        for w in warnings:
            cdk.Annotations.of(stack).add_warning_v2("lock-reaper:context", str(w))
    # cdk-nag 3: AWS Solutions checks run as a policy validation plugin at synth.
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


def main() -> int:
    try:
        app = build_app()
    except SettingsError as exc:
        print("Lock Reaper: cannot synthesize, fix the configuration:", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
