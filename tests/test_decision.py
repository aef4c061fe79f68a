"""The pure decision over a table of cases, plus proof that it stays pure."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from devtools.locks import info_json, lock_item
from reaper.policy import Policy
from reaper.decision import decide
from reaper.models import Action, Flag, Liveness, LivenessFact, LockRecord
from reaper.stores.dynamo_items import item_to_record

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
PATH = "corp-tfstate/prod/network/terraform.tfstate"

POLICY = Policy.model_validate(
    {
        "min_age": "15m",
        "clock_skew": "5m",
        "exclude": ["corp-tfstate/break-glass/*"],
        "rules": [
            # first match wins: plans anywhere get a short leash ...
            {"name": "plans", "match": "*", "operations": ["OperationTypePlan", "OperationTypeRefresh"],
             "max_age": "2h", "hard_max_age": "12h"},
            # ... a rule with max_age below min_age, to show the floor wins
            {"name": "scratch", "match": "corp-tfstate/scratch/*", "max_age": "5m", "hard_max_age": "1h"},
            # ... no hard_max_age: unknown holders are kept forever
            {"name": "no-hard", "match": "corp-tfstate/legacy/*", "max_age": "1h"},
            {"name": "prod-applies", "match": "corp-tfstate/prod/*", "max_age": "6h", "hard_max_age": "2d"},
        ],
    }
)

ALIVE = LivenessFact(state=Liveness.ALIVE, reason="GitHub run 42 is in_progress", checkers=("github",))
DEAD = LivenessFact(state=Liveness.DEAD, reason="GitHub run 42 completed (cancelled)", checkers=("github",))
UNKNOWN = LivenessFact.unknown("no liveness checker is configured")


def record(path: str = PATH, *, age: timedelta = timedelta(hours=1), operation: str = "OperationTypeApply",
           info: str | None = None, key: str | None = None, digits: int = 6) -> LockRecord:
    raw = info if info is not None else info_json(path, age, NOW, operation=operation, digits=digits)
    rec = item_to_record("dynamodb:locks", lock_item(key or path, raw))
    assert rec is not None
    return rec


@dataclass
class Case:
    id: str
    lock: LockRecord
    fact: LivenessFact | None
    action: Action
    needs_liveness: bool = False
    rule: str | None = None
    flags: set[Flag] = field(default_factory=set)
    mentions: tuple[str, ...] = ()  # substrings the reasons must contain (rule names, ages, ...)


H = timedelta(hours=1)
M = timedelta(minutes=1)

CASES = [
    Case("unparseable-not-json", record(info="{not json"), UNKNOWN, Action.KEEP,
         flags={Flag.UNPARSEABLE}, mentions=("unparseable", "not valid JSON")),
    Case("unparseable-missing-id", record(info=json.dumps({"Who": "a@b", "Created": "2026-01-01T00:00:00Z", "Path": PATH})),
         DEAD, Action.KEEP, flags={Flag.UNPARSEABLE}, mentions=("unparseable", "ID")),
    Case("path-mismatch", record(key=PATH, info=info_json("other-bucket/prod/terraform.tfstate", 30 * H, NOW)), DEAD,
         Action.KEEP, flags={Flag.PATH_MISMATCH}, mentions=("other-bucket/prod/terraform.tfstate", PATH, "suspicious")),
    Case("future-beyond-skew", record(age=-10 * M), DEAD, Action.KEEP,
         flags={Flag.FUTURE_CREATED}, mentions=("in the future", "10m", "5m clock skew")),
    Case("future-within-skew", record(age=-2 * M), DEAD, Action.KEEP,
         rule="prod-applies", mentions=("age 0s", "min_age floor 15m")),
    Case("excluded", record("corp-tfstate/break-glass/terraform.tfstate", age=100 * H), DEAD, Action.KEEP,
         flags={Flag.EXCLUDED}, mentions=("excluded by", "corp-tfstate/break-glass/*")),
    Case("no-rule", record("other-bucket/app/terraform.tfstate", age=100 * H), DEAD, Action.KEEP,
         flags={Flag.NO_RULE}, mentions=("no rule matches", "other-bucket/app/terraform.tfstate", "OperationTypeApply")),
    Case("below-min-age-floor", record("corp-tfstate/scratch/x.tfstate", age=10 * M), DEAD, Action.KEEP,
         rule="scratch", mentions=("age 10m", "below the min_age floor 15m")),
    Case("below-max-age", record(age=5 * H), DEAD, Action.KEEP,
         rule="prod-applies", mentions=("age 5h", "below max_age 6h", "rule prod-applies")),
    Case("first-match-operations-plan", record(age=3 * H, operation="OperationTypePlan"), DEAD, Action.REAP,
         rule="plans", flags={Flag.STALE}, mentions=("age 3h >= max_age 2h", "rule plans", "holder dead")),
    Case("first-match-apply-skips-plan-rule", record(age=3 * H, operation="OperationTypeApply"), DEAD, Action.KEEP,
         rule="prod-applies", mentions=("below max_age 6h", "rule prod-applies")),
    Case("unknown-operation-accepted", record(age=7 * H, operation="state-mv"), DEAD, Action.REAP,
         rule="prod-applies", flags={Flag.STALE}, mentions=("rule prod-applies",)),
    Case("needs-liveness", record(age=7 * H), None, Action.KEEP, needs_liveness=True,
         rule="prod-applies", flags={Flag.STALE}, mentions=("age 7h >= max_age 6h", "not checked")),
    Case("alive-kept", record(age=7 * H), ALIVE, Action.KEEP,
         rule="prod-applies", flags={Flag.STALE}, mentions=("holder alive", "in_progress", "never reaped")),
    Case("alive-past-hard-max-flagged", record(age=50 * H), ALIVE, Action.KEEP,
         rule="prod-applies", flags={Flag.STALE, Flag.ALIVE_PAST_HARD_MAX},
         mentions=("age 2d2h", "hard_max_age 2d", "alert")),
    Case("dead-reaped", record(age=7 * H), DEAD, Action.REAP,
         rule="prod-applies", flags={Flag.STALE}, mentions=("age 7h >= max_age 6h", "holder dead", "cancelled")),
    Case("unknown-below-hard-max", record(age=7 * H), UNKNOWN, Action.KEEP,
         rule="prod-applies", flags={Flag.STALE, Flag.KEPT_UNKNOWN}, mentions=("unknown means keep", "until hard_max_age 2d")),
    Case("unknown-above-hard-max", record(age=49 * H), UNKNOWN, Action.REAP,
         rule="prod-applies", flags={Flag.STALE}, mentions=("age 2d1h", "hard_max_age 2d", "allows reaping")),
    Case("unknown-exactly-hard-max", record(age=48 * H, digits=0), UNKNOWN, Action.REAP,
         rule="prod-applies", flags={Flag.STALE}, mentions=("hard_max_age 2d",)),
    Case("unknown-no-hard-max-kept-forever", record("corp-tfstate/legacy/terraform.tfstate", age=1000 * H), UNKNOWN,
         Action.KEEP, rule="no-hard", flags={Flag.STALE, Flag.KEPT_UNKNOWN}, mentions=("no hard_max_age",)),
    Case("dead-no-hard-max-reaped", record("corp-tfstate/legacy/terraform.tfstate", age=2 * H), DEAD, Action.REAP,
         rule="no-hard", flags={Flag.STALE}, mentions=("rule no-hard",)),
    Case("nanosecond-created", record(age=7 * H, digits=9), DEAD, Action.REAP, rule="prod-applies", flags={Flag.STALE}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decide(case: Case) -> None:
    d = decide(case.lock, POLICY, NOW, case.fact)
    assert d.action is case.action, d.reasons
    assert d.needs_liveness is case.needs_liveness
    assert d.rule == case.rule
    assert set(d.flags) == case.flags
    assert d.reasons, "every decision explains itself"
    text = " | ".join(d.reasons)
    for needle in case.mentions:
        assert needle in text, f"{needle!r} not in {text!r}"
    # readable sentences, not enum reprs or pydantic dumps
    assert "Flag." not in text and "Liveness." not in text and "Action." not in text
    assert all(r and r[0] != " " for r in d.reasons)


def test_age_reported_for_parsed_locks() -> None:
    d = decide(record(age=7 * H), POLICY, NOW, DEAD)
    assert d.age_seconds == pytest.approx(7 * 3600, abs=1)


def test_future_within_skew_age_is_clamped_to_zero() -> None:
    d = decide(record(age=-2 * M), POLICY, NOW, DEAD)
    assert d.age_seconds == 0.0


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(record(), POLICY, NOW.replace(tzinfo=None), DEAD)


def test_same_input_same_output() -> None:
    lock = record(age=49 * H)
    assert decide(lock, POLICY, NOW, UNKNOWN) == decide(lock, POLICY, NOW, UNKNOWN)


def test_workspace_lock_path_matches_rules() -> None:
    path = "corp-tfstate/env:/staging/prod/app.tfstate"
    policy = Policy.model_validate({"rules": [{"name": "ws", "match": "*/env:/staging/*", "max_age": "1h", "hard_max_age": "2h"}]})
    d = decide(record(path, age=3 * H), policy, NOW, UNKNOWN)
    assert d.action is Action.REAP and d.rule == "ws"


def test_decision_imports_no_boto3_and_reads_no_clock() -> None:
    code = (
        "import sys, json; import reaper.decision; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'moto', 's3transfer'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []

    source = (ROOT / "reaper" / "decision.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    calls = set()
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            calls.add(ast.unparse(node.func))
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    forbidden_calls = {c for c in calls if c.endswith(("now", "utcnow", "today", "time.time", "monotonic", "open"))}
    assert not forbidden_calls, forbidden_calls
    assert not {m for m in imported if m.split(".")[0] in ("boto3", "botocore", "time", "os", "socket", "requests", "urllib")}
