"""Issue 9: bad policy files that used to pass `validate` (or crash it), and how `validate` reports them."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest

from reaper.cli import main
from reaper.policy import ConfigError, load_policy, parse_policy

STORE = "stores:\n  - {type: dynamodb, table: locks}\n"


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        parse_policy(textwrap.dedent(text), source="policy.yaml", env=env)
    return exc_info.value.problems


def validate(tmp_path: Path, content: str | bytes, *flags: str, command: str = "validate") -> tuple[int, str, str]:
    f = tmp_path / "policy.yaml"
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(textwrap.dedent(content), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    code = main([command, "--config", str(f), *flags], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- nothing to do
@pytest.mark.parametrize("content", ["", "\n\n", "# just a comment\n# and another\n", "---\n"])
def test_empty_or_comment_only_file_is_an_error(tmp_path: Path, content: str) -> None:
    code, out, err = validate(tmp_path, content)
    assert code == 2 and out == ""
    assert "line 1: the policy file is empty" in err and "would do nothing" in err


def test_no_store_warns_in_validate_and_fails_a_run(tmp_path: Path) -> None:
    doc = "mode: report\nrules:\n  - {match: '*', max_age: 6h}\n"
    code, out, err = validate(tmp_path, doc)
    assert code == 0 and "0 store(s)" in out
    assert "warning: line 1: stores: no store is configured" in err
    code, _, err = validate(tmp_path, doc, "--strict")
    assert code == 2 and "warning: line 1: stores: no store is configured" in err
    code, _, err = validate(tmp_path, doc, command="scan")
    assert code == 2 and "line 1: stores: no store is configured" in err and "would scan nothing" in err


def test_no_store_points_at_an_empty_stores_list(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("mode: report\nstores: []\n")
    with pytest.raises(ConfigError) as exc_info:
        load_policy(tmp_path / "p.yaml")  # what the Lambda and cdk synth load
    assert [str(p) for p in exc_info.value.problems] == [
        "line 2: stores: no store is configured: the reaper would scan nothing (add a dynamodb, s3, hcp or gitlab store)"
    ]


# ---------------------------------------------------------------- operations
def test_unknown_operation_names_value_field_line_and_accepted_names() -> None:
    got = problems("""\
        rules:
          - name: plans
            match: '*'
            operations: [Plan, OperationTypeAppply]
            max_age: 2h
        """)
    assert len(got) == 1, got
    assert got[0].startswith("line 4: rules[0].operations[1]: unknown operation 'OperationTypeAppply'")
    for name in ("OperationTypeInvalid", "OperationTypeRefresh", "OperationTypePlan", "OperationTypeApply", "state-mv"):
        assert name in got[0]


def test_short_operation_names_stand_for_the_type_names() -> None:
    p = parse_policy("rules:\n  - {match: '*', operations: [Plan, Refresh], max_age: 2h}\n")
    assert p.rules[0].operations == ["OperationTypePlan", "OperationTypeRefresh"]
    assert p.rule_for("b/x", "OperationTypePlan") is p.rules[0]
    assert p.rule_for("b/x", "OperationTypeApply") is None


def test_terraform_command_operations_and_empty_are_accepted() -> None:
    p = parse_policy("rules:\n  - {match: '*', operations: [state-mv, taint, ''], max_age: 2h}\n")
    assert p.rule_for("b/x", "state-mv") is p.rules[0] and p.rule_for("b/x", "") is p.rules[0]


def test_empty_operations_list_is_an_error() -> None:
    got = problems("rules:\n  - match: '*'\n    operations: []\n    max_age: 2h\n")
    assert len(got) == 1 and got == ["line 3: rules[0].operations: an empty list matches no lock: leave operations out to match every operation"], got


# ---------------------------------------------------------------- duplicates
def test_duplicate_top_level_key_names_both_lines() -> None:
    got = problems("""\
        # policy
        mode: report
        stores:
          - {type: dynamodb, table: locks}
        audit: {local_dir: ./audit}
        max_deletes_per_run: 3
        mode: enforce
        """)
    assert got == ["line 7: mode: duplicate key 'mode' (first at line 2)"]


def test_duplicate_nested_key_names_its_path() -> None:
    got = problems("rules:\n  - match: '*'\n    max_age: 1h\n    max_age: 2h\n")
    assert got == ["line 4: rules[0].max_age: duplicate key 'max_age' (first at line 3)"]


def test_duplicate_rule_names_name_both_rules() -> None:
    got = problems("""\
        rules:
          - name: prod
            match: '*/prod/*'
            max_age: 1h
          - name: prod
            match: '*'
            max_age: 6h
        """)
    assert got == ["line 5: rules[1].name: duplicate rule name 'prod' (first at rules[0], line 2)"]


# ---------------------------------------------------------------- warnings
def test_max_age_below_min_age_warns(tmp_path: Path) -> None:
    doc = STORE + "min_age: 30m\nrules:\n  - name: quick\n    match: '*'\n    max_age: 10m\n"
    code, out, err = validate(tmp_path, doc)
    assert code == 0 and "OK" in out
    assert err.splitlines() == [
        "warning: line 7: rules[0].max_age: max_age (10m) is shorter than min_age (30m): "
        "no lock younger than min_age is touched, so this rule acts as max_age 30m"
    ]
    code, _, _ = validate(tmp_path, doc, "--strict")
    assert code == 2


@pytest.mark.parametrize(
    "first,second",
    [
        ("{match: '*', max_age: 6h}", "{name: late, match: '*/prod/*', max_age: 1h}"),
        ("{match: ['*/prod/*', '*/dev/*'], max_age: 6h}", "{name: late, match: '*/prod/*', operations: [Plan], max_age: 1h}"),
        ("{match: '*/prod/*', max_age: 6h}", "{name: late, match: '*/prod/app/*', max_age: 1h}"),
        ("{match: '*', operations: [Plan, Apply], max_age: 6h}", "{name: late, match: '*', operations: [Apply], max_age: 1h}"),
    ],
)
def test_shadowed_rule_warns(tmp_path: Path, first: str, second: str) -> None:
    code, _, err = validate(tmp_path, f"{STORE}rules:\n  - {first}\n  - {second}\n")
    assert code == 0
    assert err.splitlines() == [
        "warning: line 5: rules[1]: rule 'late' can never match: rules[0] before it matches every lock it matches "
        "(first match wins)"
    ]


@pytest.mark.parametrize(
    "first,second",
    [
        ("{match: '*', operations: [Plan], max_age: 6h}", "{match: '*', max_age: 1h}"),  # the shipped policy's shape
        ("{match: '*/prod/*', max_age: 6h}", "{match: '*', max_age: 1h}"),
        ("{match: '*/prod/?', max_age: 6h}", "{match: '*/prod/*', max_age: 1h}"),
        ("{match: '*/[ab]/*', max_age: 6h}", "{match: '*/a/*', max_age: 1h}"),  # not proven: no warning
        ("{match: '*', operations: [Plan], max_age: 6h}", "{match: '*', operations: [Plan, Apply], max_age: 1h}"),
    ],
)
def test_rule_that_can_match_does_not_warn(tmp_path: Path, first: str, second: str) -> None:
    code, _, err = validate(tmp_path, f"{STORE}rules:\n  - {first}\n  - {second}\n", "--strict")
    assert code == 0 and err == ""


def test_shipped_policy_has_no_warnings() -> None:
    root = Path(__file__).resolve().parent.parent
    out, err = io.StringIO(), io.StringIO()
    assert main(["validate", "--config", str(root / "config" / "policy.yaml"), "--strict"], out=out, err=err) == 0
    assert err.getvalue() == ""


# ---------------------------------------------------------------- encoding, lines, one round
def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    code, out, err = validate(tmp_path, b"mode: report\nstores: []\n# caf\xe9\n")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "line 3: not UTF-8: byte 0xe9 at offset 29" in err


def test_enforce_without_audit_points_at_the_mode_line() -> None:
    got = problems(STORE + "max_deletes_per_run: 3\nmode: enforce\n")
    assert len(got) == 1 and got[0].startswith("line 4: audit: mode 'enforce' needs an audit sink"), got


def test_rule_mapping_without_liveness_section_points_at_the_rule() -> None:
    got = problems("rules:\n  - name: prod\n    match: '*'\n    max_age: 1h\n    liveness:\n      gitlab_projects: [7]\n")
    assert got == ["line 5: liveness: rules[0] (prod).liveness maps gitlab projects but liveness.providers has no gitlab provider"]


def test_field_and_cross_field_errors_are_reported_in_one_round() -> None:
    got = problems("""\
        mode: enforce
        min_age: 5
        rules:
          - name: prod
            match: 42
            max_age: 1h
            liveness:
              github_repos: [acme/infra]
          - name: prod
            match: '*'
            operations: [Aply]
            max_age: 1h
        """)
    assert [p.split(": ", 2)[:2] for p in got] == [
        ["line 1", "audit"],
        ["line 2", "min_age"],
        ["line 5", "rules[0].match"],
        ["line 7", "liveness"],
        ["line 9", "rules[1].name"],
        ["line 11", "rules[1].operations[0]"],
    ], got


def test_match_not_a_glob_says_what_is_accepted() -> None:
    got = problems("rules:\n  - match: 42\n    max_age: 1h\n")
    assert got == ["line 2: rules[0].match: should be a glob string or a list of globs, got 42"]


# ---------------------------------------------------------------- --json
def test_validate_json_on_a_bad_file(tmp_path: Path) -> None:
    code, out, err = validate(tmp_path, "mode: report\nrules:\n  - {match: '*', max_age: 1h, max_age: 2h}\n", "--json")
    assert code == 2 and err == ""
    doc = json.loads(out)
    assert doc["valid"] is False and doc["source"].endswith("policy.yaml")
    assert doc["errors"] == [{"line": 3, "field": "rules[0].max_age", "message": "duplicate key 'max_age' (first at line 3)"}]
    assert doc["warnings"] == [{"line": 1, "field": "stores", "message": doc["warnings"][0]["message"]}]
    assert "no store is configured" in doc["warnings"][0]["message"]


def test_validate_json_on_a_good_file_has_valid_and_warnings(tmp_path: Path) -> None:
    code, out, _ = validate(tmp_path, STORE + "rules:\n  - {match: '*', max_age: 6h}\n  - {match: x, max_age: 1h}\n", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["valid"] is True and doc["rules"][0]["max_age"] == "6h" and doc["stores"][0]["table"] == "locks"
    assert doc["warnings"] == [{"line": 5, "field": "rules[1]", "message": doc["warnings"][0]["message"]}]
    code, out, _ = validate(tmp_path, STORE + "rules:\n  - {match: '*', max_age: 6h}\n  - {match: x, max_age: 1h}\n",
                            "--json", "--strict")
    assert code == 2 and json.loads(out)["valid"] is False
