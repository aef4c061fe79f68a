"""Local (Docker-free) bundling of the Lambda asset.

The asset is:

- the runtime requirements from requirements.txt, installed as manylinux2014
  aarch64 / CPython 3.13 binary wheels with ``pip install --platform ...
  --only-binary=:all: --target``, EXCEPT what the Lambda Python runtime already
  ships (boto3 and its dependency closure): that keeps the asset well under
  15 MB and lets the function use the runtime's SDK;
- the ``reaper/`` package (no ``__pycache__``);
- the operators' policy file, as ``policy.yaml`` at the asset root.

pip runs twice: a ``--dry-run --report`` resolves the full dependency set for
the target platform (PyPI serves metadata only, no wheel download), then the
resolved pins minus the excluded ones are installed with ``--no-deps``.

A few files no scheduled function uses are pruned (see ``PRUNE``).

The pip result is cached under ``.cache/lambda-deps/<hash>/``, keyed by the
requirements and the target platform, so repeated synths (tests, ``make
synth``) copy it instead of reinstalling. The cache is filled atomically, so
concurrent synths are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PYTHON_VERSION = "3.13"
PLATFORM = "manylinux2014_aarch64"
IMPLEMENTATION = "cp"
# The AWS Lambda Python runtime provides boto3 and everything it depends on.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"})
CACHE_LAYOUT = "4"  # bump when the layout of the cached tree (or PRUNE) changes
_SKIP_DIRS = {"__pycache__", "bin"}
# Files removed from the installed dependencies, each unused by a scheduled, non-HTTP function:
PRUNE = (
    # Swagger UI browser assets (1.7 MB), read only when an API Gateway resolver serves /swagger.
    "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui-bundle.min.js",
    "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui.min.css",
    # Type stubs: for type checkers, never imported.
    "**/*.pyi",
    "*-stubs",
)


class BundlingError(RuntimeError):
    pass


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements(requirements_file: Path) -> list[str]:
    """The requirement lines to bundle: comments, options and runtime-provided packages removed."""
    out = []
    for raw in requirements_file.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if not m:
            raise BundlingError(f"{requirements_file.name}: cannot read requirement {raw!r}")
        if canonical(m.group(1)) in RUNTIME_PROVIDED:
            continue
        out.append(line)
    return out


def _pip_platform_args() -> list[str]:
    return [
        "--platform",
        PLATFORM,
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        IMPLEMENTATION,
    ]


def _run_pip(args: list[str]) -> str:
    cmd = [sys.executable, "-m", "pip", *args]
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BundlingError(
            "pip could not fetch the Lambda dependencies for "
            f"{PLATFORM}/cp{PYTHON_VERSION.replace('.', '')} (is the package index reachable?):\n{tail}"
        )
    return proc.stdout


def resolve(requirements: list[str]) -> list[str]:
    """Exact pins (name==version) of the full dependency closure for the Lambda platform, minus runtime-provided ones."""
    with tempfile.TemporaryDirectory(prefix="reaper-resolve-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        report_path = Path(tmp) / "report.json"
        _run_pip(
            [
                "install",
                "--quiet",
                "--dry-run",
                "--ignore-installed",
                "--report",
                str(report_path),
                *_pip_platform_args(),
                "--target",
                str(Path(tmp) / "unused"),
                "-r",
                str(req),
            ]
        )
        report = json.loads(report_path.read_text(encoding="utf-8"))
    pins = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name, version = meta.get("name"), meta.get("version")
        if not name or not version:
            continue
        if canonical(name) in RUNTIME_PROVIDED:
            continue
        pins.append(f"{name}=={version}")
    if not pins:
        raise BundlingError("pip resolved no Lambda dependencies: check requirements.txt")
    return sorted(pins, key=str.lower)


def cache_key(requirements: list[str]) -> str:
    h = hashlib.sha256()
    for part in [CACHE_LAYOUT, PLATFORM, PYTHON_VERSION, IMPLEMENTATION, *sorted(RUNTIME_PROVIDED), *requirements]:
        h.update(part.encode("utf-8") + b"\0")
    return h.hexdigest()[:20]


def build_dependencies(requirements: list[str], cache_root: Path) -> Path:
    """Install (or reuse) the dependency tree for ``requirements``; returns the cached directory."""
    target = cache_root / cache_key(requirements)
    if (target / ".complete").is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    pins = resolve(requirements)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_root))
    try:
        _run_pip(["install", "--quiet", "--no-deps", "--no-compile", *_pip_platform_args(), "--target", str(staging), *pins])
        for extra in _SKIP_DIRS:
            shutil.rmtree(staging / extra, ignore_errors=True)
        prune(staging)
        (staging / ".pins.txt").write_text("\n".join(pins) + "\n", encoding="utf-8")
        (staging / ".complete").write_text("ok\n", encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:
            if not (target / ".complete").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def prune(tree: Path) -> None:
    for pattern in PRUNE:
        for p in sorted(tree.glob(pattern), reverse=True):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo")) or n.startswith(".")}


def assemble(output_dir: Path, deps_dir: Path, package_dir: Path, policy_file: Path) -> None:
    """Fill ``output_dir`` with the dependencies, the package and the policy file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(deps_dir, output_dir, dirs_exist_ok=True, ignore=_ignore)
    dest = output_dir / package_dir.name
    if dest.exists():
        raise BundlingError(f"a dependency installed a top-level {package_dir.name!r}: it would shadow the Lambda package")
    shutil.copytree(package_dir, dest, ignore=_ignore)
    shutil.copyfile(policy_file, output_dir / "policy.yaml")


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
