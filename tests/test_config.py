"""The policy file: durations, defaults, one error line per bad field, env overrides, `validate`."""

from __future__ import annotations

import io
import re
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from reaper.cli import main
from reaper.policy import ConfigError, Policy, load_policy, parse_policy
from reaper.durations import format_duration, parse_duration

ROOT = Path(__file__).resolve().parent.parent


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        parse_policy(textwrap.dedent(text), source="policy.yaml", env=env)
    exc = exc_info.value
    assert exc.problems, "a ConfigError always says what is wrong"
    assert str(exc).startswith("policy.yaml: ")
    return exc.problems


# ---------------------------------------------------------------- durations
@pytest.mark.parametrize(
    "text,seconds",
    [("90m", 5400), ("6h", 21600), ("2d", 172800), ("1h30m", 5400), ("45s", 45), ("1w", 604800), (" 2H ", 7200),
     ("1d 12h", 129600)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "90", "6 hours", "1.5h", "-5m", "0m", "5x", "h", "m30", "1h-30m", "P1D"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_duration_round_trip() -> None:
    for text in ("90m", "6h", "2d", "1h30m"):
        assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


# ---------------------------------------------------------------- defaults
def test_defaults() -> None:
    p = parse_policy("")
    assert p.mode == "report"
    assert p.max_deletes_per_run == 10
    assert p.min_age == timedelta(minutes=15)
    assert p.stores == [] and p.rules == [] and p.exclude == []
    assert p.audit.enabled is False


def test_full_policy_parses() -> None:
    p = parse_policy(
        textwrap.dedent(
            """\
            mode: enforce
            max_deletes_per_run: 3
            min_age: 30m
            stores:
              - {type: dynamodb, table: terraform-locks, region: eu-west-1}
              - {type: dynamodb, table: other-locks, segments: 4}
            rules:
              - name: plans
                match: "*"
                operations: [OperationTypePlan]
                max_age: 2h
                hard_max_age: 12h
              - match: "*/prod/*"
                max_age: 1h30m
            exclude: "*/break-glass/*"
            audit: {local_dir: ./audit}
            """
        )
    )
    assert p.mode == "enforce" and p.max_deletes_per_run == 3 and p.min_age == timedelta(minutes=30)
    assert [s.name for s in p.stores] == ["dynamodb:terraform-locks", "dynamodb:other-locks"]
    assert p.stores[0].region == "eu-west-1" and p.stores[1].segments == 4
    assert p.rules[1].max_age == timedelta(minutes=90) and p.rules[1].hard_max_age is None
    assert p.rules[1].label == "*/prod/*"
    assert p.exclude == ["*/break-glass/*"]  # a single glob is accepted as a list
    assert p.rule_for("b/prod/x", "OperationTypePlan").name == "plans"
    assert p.rule_for("b/prod/x", "OperationTypeApply").label == "*/prod/*"
    assert p.rule_for("b/dev/x", "OperationTypeApply") is None


def test_shipped_policy_is_valid() -> None:
    p = load_policy(ROOT / "config" / "policy.yaml")
    assert p.mode == "report" and p.rules


# ---------------------------------------------------------------- one error line per bad field
@pytest.mark.parametrize(
    "doc,expected",
    [
        pytest.param("mode: report\nmax_delete_per_run: 3\n",
                     ["line 2: max_delete_per_run: unknown field"], id="mistyped-key"),
        pytest.param("rules:\n  - name: a\n    match: '*'\n    max_age: 6 hours\n",
                     ["line 4: rules[0].max_age: invalid duration '6 hours'"], id="bad-duration"),
        pytest.param("min_age: 90\n", ["line 1: min_age: bare number 90 has no unit"], id="bare-number"),
        pytest.param("rules:\n  - name: a\n    match: '*'\n    max_age: 6h\n    hard_max_age: 1h\n",
                     ["line 5: rules[0].hard_max_age: hard_max_age (1h) must not be shorter than max_age (6h)"],
                     id="hard-below-max"),
        pytest.param("# comment\nmode: delete\n", ["line 2: mode: Input should be 'report' or 'enforce', got 'delete'"],
                     id="bad-mode"),
        pytest.param("mode: report\nrules: [\n  - x: 1\n", ["line 3: not valid YAML"], id="yaml-syntax"),
        pytest.param("- a\n- b\n", ["line 1: the policy must be a mapping, got list"], id="list-document"),
        pytest.param("just text\n", ["line 1: the policy must be a mapping, got str"], id="scalar-document"),
        pytest.param("stores:\n  - type: dynamodb\n    tabel: locks\n",
                     ["line 2: stores[0].table: Field required", "line 3: stores[0].tabel: unknown field"],
                     id="store-typo"),
        pytest.param("max_deletes_per_run: -1\n", ["line 1: max_deletes_per_run: Input should be greater than or equal to 0"],
                     id="negative-cap"),
        pytest.param("mode: enforce\n", ["audit: mode 'enforce' needs an audit sink"], id="enforce-without-audit"),
        pytest.param("alerts:\n  sns_topic_arn: not-an-arn\n", ["line 2: alerts.sns_topic_arn: String should match pattern"],
                     id="bad-arn"),
    ],
)
def test_one_error_per_bad_field(doc: str, expected: list[str]) -> None:
    got = problems(doc)
    assert len(got) == len(expected), got
    for line, want in zip(got, expected):
        assert want in line, (want, got)


def test_every_bad_field_reported_at_once() -> None:
    doc = """\
        mode: x
        min_age: 5
        stores:
          - type: dynamodb
            table: ab
        rules:
          - match: '*'
            max_age: 2h
            hard_max_age: 1h
          - match: '*'
            max_age: 0m
        """
    got = problems(doc)
    assert [re.match(r"line (\d+): (\S+):", p).groups() for p in got] == [
        ("1", "mode"),
        ("2", "min_age"),
        ("5", "stores[0].table"),
        ("9", "rules[0].hard_max_age"),
        ("11", "rules[1].max_age"),
    ]


def test_enforce_without_audit_rejected_but_accepted_with_one() -> None:
    assert problems("mode: enforce\n")
    assert parse_policy("mode: enforce\naudit: {local_dir: ./audit}\n").mode == "enforce"
    assert parse_policy("mode: enforce\naudit: {s3_bucket: audit-bucket}\n").audit.enabled


def test_duplicate_stores_rejected() -> None:
    got = problems("stores:\n  - {type: dynamodb, table: locks}\n  - {type: dynamodb, table: locks}\n")
    assert got == ["line 1: stores: store dynamodb:locks is listed twice"]


# ---------------------------------------------------------------- env overrides
def test_env_overrides() -> None:
    env = {
        "REAPER_AUDIT_BUCKET": "audit-bucket",
        "REAPER_SNS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:lock-reaper",
        "REAPER_EVENT_BUS": "ops-bus",
        "REAPER_METRICS_NAMESPACE": "Ops/LockReaper",
        "UNRELATED": "x",
    }
    p = parse_policy("mode: enforce\naudit: {prefix: x/}\n", env=env)
    assert p.audit.s3_bucket == "audit-bucket" and p.audit.prefix == "x/"
    assert p.alerts.sns_topic_arn == env["REAPER_SNS_TOPIC_ARN"]
    assert p.alerts.event_bus == "ops-bus"
    assert p.alerts.metrics.namespace == "Ops/LockReaper"


def test_env_overrides_the_file_value() -> None:
    p = parse_policy("audit: {s3_bucket: from-file}\n", env={"REAPER_AUDIT_BUCKET": "from-env"})
    assert p.audit.s3_bucket == "from-env"


def test_empty_env_value_is_ignored() -> None:
    p = parse_policy("audit: {s3_bucket: from-file}\n", env={"REAPER_AUDIT_BUCKET": ""})
    assert p.audit.s3_bucket == "from-file"


def test_bad_env_value_names_the_variable() -> None:
    got = problems("mode: report\n", env={"REAPER_SNS_TOPIC_ARN": "nope"})
    assert len(got) == 1
    assert "alerts.sns_topic_arn" in got[0] and "REAPER_SNS_TOPIC_ARN" in got[0]


# ---------------------------------------------------------------- CLI validate
def _cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_validate_ok(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text("stores:\n  - {type: dynamodb, table: locks}\nrules:\n  - {match: '*', max_age: 6h}\n")
    code, out, err = _cli(["validate", "--config", str(f)])
    assert code == 0, err
    assert "OK" in out and "1 store(s), 1 rule(s)" in out
    code, out, _ = _cli(["validate", "--config", str(f), "--json"])
    assert code == 0
    import json

    doc = json.loads(out)
    assert doc["rules"][0]["max_age"] == "6h" and doc["min_age"] == "15m" and doc["max_deletes_per_run"] == 10


def test_cli_validate_bad_file_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text("mode: sometimes\nmin_age: 5\nrules:\n  - {match: '*', max_age: 1h, hard_max_age: 30m}\n")
    code, out, err = _cli(["validate", "--config", str(f)])
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert str(f) in lines[0]
    assert len(lines) == 4, err
    assert "line 1: mode:" in lines[1] and "line 2: min_age:" in lines[2] and "line 4: rules[0].hard_max_age:" in lines[3]


def test_cli_missing_file_exit_2(tmp_path: Path) -> None:
    code, _, err = _cli(["scan", "--config", str(tmp_path / "nope.yaml")])
    assert code == 2
    assert "cannot read the policy file" in err


@pytest.mark.parametrize("command", ["scan", "reap", "restore"])
def test_bad_config_exit_2_for_every_command(tmp_path: Path, command: str) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text("mode: enforce\n")
    args = [command, "--config", str(f)] + (["some-ref.json"] if command == "restore" else [])
    code, _, err = _cli(args)
    assert code == 2 and "audit sink" in err


def test_policy_model_is_frozen() -> None:
    p = Policy()
    with pytest.raises(Exception):
        p.mode = "enforce"  # type: ignore[misc]
