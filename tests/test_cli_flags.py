"""The command line as a user types it (issue 11): ``--version``, and the global flags
``-v``/``--quiet``/``--json`` before or after the subcommand, with the same result."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from reaper import __version__
from reaper.cli import main

POLICY = """\
stores:
  - type: dynamodb
    table: terraform-locks
rules:
  - match: "*"
    max_age: 2h
"""


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def policy(tmp_path: Path) -> str:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    return str(p)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["--version"])
    assert exc_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lock-reaper {__version__}"


@pytest.mark.parametrize("argv", [
    ["--json", "validate", "--config", "{p}"],
    ["validate", "--json", "--config", "{p}"],
    ["validate", "--config", "{p}", "--json"],
])
def test_json_before_or_after_the_subcommand(policy: str, argv: list[str]) -> None:
    code, out, err = run(*[a.format(p=policy) for a in argv])
    assert code == 0, err
    assert json.loads(out)["valid"] is True


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_verbose_before_or_after(policy: str, where: str) -> None:
    flags = ["--quiet", "-v"]
    argv = [*flags, "validate", "--config", policy] if where == "before" else ["validate", "--config", policy, *flags]
    code, out, err = run(*argv)
    assert code == 0, err
    assert "OK" in out and "1 store(s)" in out


def test_claim_takes_the_global_json_flag_before_the_subcommand() -> None:
    env_argv = ["--json", "claim", "--dry-run", "--provider", "github", "--repo", "acme/infra", "--run-id", "7", "--who",
                "runner@fv-az1-2"]
    code, out, err = run(*env_argv)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["who"] == "runner@fv-az1-2" and doc["provider"] == "github" and doc["dry_run"] is True


def test_the_program_is_named_as_it_was_called(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/lock-reaper", "--help"])
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("usage: lock-reaper")
