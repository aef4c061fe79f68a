"""The installable package: the wheel's contents, a fresh venv, the ``lock-reaper`` console script.

Slow (a wheel build and a venv with the runtime from the index, once per session, with
pip's cache): marked ``e2e`` so ``make test`` runs them and ``-m "not e2e"`` can leave them out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from packaging.requirements import Requirement

from devtools.locks import create_lock_table, info_json, lock_item
from reaper import __version__
from reaper.liveness.identity import terraform_who

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e

# What a simulated GitHub Actions job looks like to `lock-reaper claim`.
GITHUB_ENV = {
    "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/infra", "GITHUB_RUN_ID": "16123456789",
    "GITHUB_RUN_ATTEMPT": "2", "GITHUB_JOB": "apply", "GITHUB_API_URL": "https://api.github.com",
    "GITHUB_SERVER_URL": "https://github.com", "GITHUB_WORKFLOW": "terraform", "GITHUB_SHA": "0" * 40,
    "RUNNER_NAME": "GitHub Actions 12", "RUNNER_OS": "Linux", "RUNNER_ARCH": "X64", "RUNNER_ENVIRONMENT": "github-hosted",
}
# The claim path may import these distributions and nothing else (README "Claims" lists them).
CLAIM_DISTRIBUTIONS = {
    "boto3", "botocore", "jmespath", "python-dateutil", "six", "urllib3", "s3transfer",
    "pydantic", "pydantic_core", "annotated-types", "typing_extensions", "typing-inspection", "PyYAML",
}


def copy_source(dest: Path) -> Path:
    """What `pip install .` reads, copied, so building never writes build/ or *.egg-info into the work tree."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "reaper", dest / "reaper", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any CI variables (and without this venv), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GITHUB_", "RUNNER_", "CI_", "GITLAB_", "REAPER_", "VIRTUAL_ENV", "PYTHONPATH"))
           and k not in ("CI",)}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = copy_source(tmp_path_factory.mktemp("src") / "lock-reaper")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(src)],
                   check=True, env=clean_env(), timeout=300)
    [whl] = out.glob("*.whl")
    return whl


@pytest.fixture(scope="session")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (not this one) with the wheel and its dependencies from the index."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                   check=True, env=clean_env(), timeout=600)
    return root


def run(venv: Path, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "lock-reaper"), *argv], capture_output=True, text=True,
                          env=env or clean_env(), cwd=cwd, timeout=120)


# ---------------------------------------------------------------------- pyproject.toml
def test_dependencies_are_the_runtime_of_requirements_txt() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = {Requirement(d).name.lower(): Requirement(d) for d in project["dependencies"]}
    pins = [Requirement(line.split("#")[0].strip()) for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.split("#")[0].strip() and not line.startswith("-")]
    assert set(deps) == {p.name.lower() for p in pins}
    for pin in pins:
        dep = deps[pin.name.lower()]
        assert dep.extras == pin.extras, pin
        pinned = [s.version for s in pin.specifier if s.operator == "=="]
        for version in pinned:  # the pinned version is allowed by the range
            assert dep.specifier.contains(version), (str(dep), version)
    assert "version" in project["dynamic"] and "version" not in project
    assert project["scripts"] == {"lock-reaper": "reaper.cli:main"}
    dev_only = {"moto", "pytest", "hypothesis", "ruff", "mypy", "aws-cdk-lib", "constructs", "cdk-nag", "check-jsonschema"}
    assert not dev_only & set(deps)


# ---------------------------------------------------------------------- the wheel
def test_wheel_holds_only_the_reaper_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = f"lock_reaper-{__version__}.dist-info/"
        assert wheel.name == f"lock_reaper-{__version__}-py3-none-any.whl"
        strays = [n for n in names if not (n.startswith("reaper/") or n.startswith(dist_info))]
        assert strays == []
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        for package in ("reaper/__init__.py", "reaper/commands/claim.py", "reaper/liveness/identity.py",
                        "reaper/policy/__init__.py", "reaper/stores/__init__.py", "reaper/http/__init__.py"):
            assert package in names
        entry_points = z.read(dist_info + "entry_points.txt").decode()
        assert "lock-reaper = reaper.cli:main" in entry_points
        metadata = z.read(dist_info + "METADATA").decode()
    assert f"Version: {__version__}" in metadata
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert {Requirement(r).name for r in requires} == {"aws-lambda-powertools", "pydantic", "PyYAML", "rsa", "boto3", "botocore"}


def test_console_script_is_the_cli_with_an_exit_code(venv: Path) -> None:
    result = run(venv, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("scan", "reap", "restore", "validate", "explain", "claim"):
        assert command in result.stdout
    bad = run(venv, "no-such-command")
    assert bad.returncode == 2  # argparse's usage error, through sys.exit(main())
    version = run(venv, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"lock-reaper {__version__}"
    helped = run(venv, "--help")
    assert helped.stdout.startswith("usage: lock-reaper "), helped.stdout[:80]


def test_claim_dry_run_under_github_actions(venv: Path, tmp_path: Path) -> None:
    env = clean_env(**GITHUB_ENV, REAPER_CLAIM_JOB_ID="51725241954")
    result = run(venv, "claim", "--dry-run", "--json", env=env, cwd=tmp_path)  # not the repository: the installed code
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["who"] == terraform_who(env)
    assert doc["provider"] == "github" and doc["dry_run"] is True and doc["table"] is None
    item = doc["item"]
    assert item["Repo"] == {"S": "acme/infra"} and item["RunId"] == {"N": "16123456789"}
    assert item["RunAttempt"] == {"N": "2"} and item["JobId"] == {"N": "51725241954"}
    assert item["RunnerName"] == {"S": "GitHub Actions 12"} and item["JobName"] == {"S": "apply"}
    assert doc["url"] == "https://github.com/acme/infra/actions/runs/16123456789/job/51725241954"


def test_scan_against_moto_server(venv: Path, moto_env: Any, tmp_path: Path) -> None:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(ddb, "tf-locks")
    path = "tf-state/prod/terraform.tfstate"
    ddb.put_item(TableName="tf-locks", Item=lock_item(path, info_json(path, timedelta(hours=30), datetime.now(UTC))))
    policy = tmp_path / "policy.yaml"
    policy.write_text("""
mode: report
rules:
  - name: default
    match: "*"
    max_age: 3h
    hard_max_age: 1d
stores:
  - type: dynamodb
    table: tf-locks
""", encoding="utf-8")
    env = clean_env(**moto_env.env())
    result = run(venv, "scan", "--config", str(policy), "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [s["status"] for s in doc["stores"]] == ["ok"]
    assert path in result.stdout
    table = run(venv, "scan", "--config", str(policy), "--wide", env=env, cwd=tmp_path)
    assert table.returncode == 0 and path in table.stdout


# ---------------------------------------------------------------------- what the claim path imports
MEASURE = r"""
import io, json, os, sys
from importlib.metadata import packages_distributions
before = set(sys.modules)
import reaper.commands.claim
after_import = set(sys.modules)
from reaper.cli import main
rc_dry = main(["claim", "--dry-run", "--json"], out=io.StringIO(), err=sys.stderr)
rc_write = main(["claim", "--table", "claims", "--region", "us-east-1"], out=io.StringIO(), err=sys.stderr)
after = set(sys.modules)
dists = packages_distributions()
def names(mods):
    tops = {m.split(".")[0] for m in mods}
    return sorted({d for t in tops for d in dists.get(t, []) if d != "lock-reaper"})
print(json.dumps({"rc": [rc_dry, rc_write], "import": names(after_import - before), "run": names(after - before)}))
"""


def test_the_claim_path_imports_only_what_it_needs(venv: Path, moto_env: Any, tmp_path: Path) -> None:
    from devtools.locks import create_claims_table

    create_claims_table(boto3.client("dynamodb", region_name="us-east-1"), "claims")
    env = clean_env(**GITHUB_ENV, **moto_env.env())
    result = subprocess.run([str(venv / "bin" / "python"), "-c", MEASURE], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.splitlines()[-1])
    assert doc["rc"] == [0, 0], result.stderr
    print("claim path imports:", doc)
    assert set(doc["import"]) <= {"pydantic", "pydantic_core", "annotated-types", "typing_extensions", "typing-inspection"}
    assert set(doc["run"]) <= CLAIM_DISTRIBUTIONS, set(doc["run"]) - CLAIM_DISTRIBUTIONS
    assert {"aws-lambda-powertools", "rsa", "aws-xray-sdk", "wrapt", "pyasn1"}.isdisjoint(doc["run"])
    assert {"boto3", "botocore", "pydantic", "PyYAML"} <= set(doc["run"])
    [item] = boto3.client("dynamodb", region_name="us-east-1").scan(TableName="claims")["Items"]
    assert item["Who"]["S"] == terraform_who(env)
