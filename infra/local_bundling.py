"""The jsii side of local bundling: ``BundlingOptions(local=LocalPipBundling(...))``.

Kept apart from infra/bundling.py so the bundling logic can be used and tested
without starting the jsii runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsii
from aws_cdk import ILocalBundling

from .bundling import LAMBDA, Target, bundle


@jsii.implements(ILocalBundling)
class LocalPipBundling:
    """``ILocalBundling`` for ``BundlingOptions(local=...)``: builds the asset without Docker."""

    def __init__(
        self,
        project_root: Path,
        policy_file: Path,
        requirements_file: Path | None = None,
        cache_root: Path | None = None,
        lock_file: Path | None = None,
        target: Target = LAMBDA,
    ):
        self.project_root = Path(project_root)
        self.policy_file = Path(policy_file)
        self.requirements_file = requirements_file or self.project_root / "requirements.txt"
        self.lock_file = lock_file or self.project_root / "requirements.lock"
        self.cache_root = cache_root or self.project_root / ".cache" / "lambda-deps"
        self.target = target

    def try_bundle(self, output_dir: str, *_options: Any, **_kw: Any) -> bool:
        # jsii passes the BundlingOptions struct positionally; nothing in it is needed here.
        bundle(
            Path(output_dir),
            self.project_root,
            self.policy_file,
            lock_file=self.lock_file,
            requirements_file=self.requirements_file,
            cache_root=self.cache_root,
            target=self.target,
        )
        return True
