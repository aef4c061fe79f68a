"""Fuzzing the lock table with hypothesis (issue 6).

Generated lock-table items, most of them malformed:
- Info that is invalid JSON, truncated JSON, JSON of the wrong shape;
- wrong types, missing and extra fields, huge strings;
- Unicode (and escaped lone surrogates) in Who;
- Created with offsets, in the future, with 9-digit nanoseconds, or in odd formats;
- binary and numeric attributes where strings belong;
- Path different from LockID; items that look like state digests.

Property: the run never crashes, and an item is deleted only if it is a
well-formed Terraform lock that meets the policy. "Well-formed" and "meets the
policy" are computed here, from the item and the policy's numbers, without the
reaper's parser or decision. To show the property is not vacuous, well-formed
eligible locks are also checked to be deleted.

The bulk runs through the in-memory store (same item classification code as
the DynamoDB store); a smaller number goes through the real DynamoDB store in
in-process moto. The hypothesis settings are fixed (derandomized, no deadline,
no example database) so CI runs the same examples every time.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from reaper.alerts import sns_message
from reaper.policy import Policy
from reaper.engine import Reaper
from reaper.models import Liveness, LivenessFact, LockRecord, Outcome
from reaper.stores.memory import InMemoryLockStore
from testkit import ListAudit

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
BUCKET = "fuzz-tfstate"

# The policy under test, and the same numbers spelled out for the oracle.
POLICY = Policy.model_validate(
    {
        "mode": "enforce",
        "max_deletes_per_run": 1000,
        "min_age": "15m",
        "clock_skew": "5m",
        "exclude": ["*/protected/*"],
        "rules": [
            {"name": "prod", "match": "*/prod/*", "max_age": "6h", "hard_max_age": "3d"},
            {"name": "default", "match": "*", "max_age": "1h", "hard_max_age": "1d"},
        ],
        "audit": {"local_dir": "unused"},
    }
)
MIN_AGE = timedelta(minutes=15)
RULES = [("*/prod/*", timedelta(hours=6), timedelta(days=3)), ("*", timedelta(hours=1), timedelta(days=1))]
EXCLUDE = "*/protected/*"

FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# ---------------------------------------------------------------------------
# the oracle: what may be deleted, computed independently of the reaper
_CREATED = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?(Z|z|[+-][0-9]{2}:[0-9]{2})\Z"
)
_OPTIONAL_STR = {"Operation": 256, "Info": None, "Version": 256}
_REQUIRED_STR = {"ID": 256, "Who": 1024, "Path": 2048}


def oracle_created(value: Any) -> datetime | None:
    """RFC 3339 (section 5.6, ASCII digits), up to nanoseconds; None if not one."""
    if not isinstance(value, str):
        return None
    m = _CREATED.match(value)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        if tz in ("Z", "z"):
            off = timedelta(0)
        else:
            hh, mm = int(tz[1:3]), int(tz[4:6])
            if hh > 23 or mm > 59:
                return None
            off = timedelta(hours=hh, minutes=mm) * (1 if tz[0] == "+" else -1)
        local = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int((frac or "0").ljust(6, "0")[:6]))
        return (local - off).replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        return None


def liveness_of(who: str) -> Liveness:
    """The fake CI's answer, from the holder's name (the same rule as FakeLiveness)."""
    if who.startswith("dead@"):
        return Liveness.DEAD
    if who.startswith("alive@"):
        return Liveness.ALIVE
    return Liveness.UNKNOWN


def may_delete(item: dict[str, Any]) -> bool:
    """True only for a well-formed Terraform lock item whose lock meets POLICY."""
    lid = item.get("LockID")
    if not (isinstance(lid, dict) and list(lid) == ["S"] and isinstance(lid["S"], str)):
        return False
    key = lid["S"]
    if key.endswith("-md5"):
        return False
    info = item.get("Info")
    if not (isinstance(info, dict) and list(info) == ["S"] and isinstance(info["S"], str)):
        return False
    if len(info["S"].encode("utf-8", "surrogatepass")) > 64 * 1024:
        return False
    try:
        doc = json.loads(info["S"])
    except (ValueError, RecursionError):
        return False
    if not isinstance(doc, dict):
        return False
    for name, limit in _REQUIRED_STR.items():
        v = doc.get(name)
        if not isinstance(v, str) or not v or len(v) > limit:
            return False
    for name, limit in _OPTIONAL_STR.items():
        if name in doc and (not isinstance(doc[name], str) or (limit is not None and len(doc[name]) > limit)):
            return False
    created = oracle_created(doc.get("Created"))
    if created is None or doc["Path"] != key:
        return False
    age = NOW - created
    if fnmatch.fnmatchcase(key, EXCLUDE):
        return False
    max_age, hard = next((m, h) for pat, m, h in RULES if fnmatch.fnmatchcase(key, pat))
    if age < max(MIN_AGE, max_age):
        return False
    state = liveness_of(doc["Who"])
    return state is Liveness.DEAD or (state is Liveness.UNKNOWN and age >= hard)


# ---------------------------------------------------------------------------
# strategies
ENVS = ["dev", "dev", "prod", "staging", "env:/feature-x", "protected"]


@st.composite
def lock_paths(draw: st.DrawFn) -> str:
    env = draw(st.sampled_from(ENVS))
    name = draw(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,10}", fullmatch=True))
    return f"{BUCKET}/{env}/{name}/terraform.tfstate"


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    """A valid Created: offsets, 0..9 fractional digits, T/t/space, Z/z, past or future."""
    # mostly old enough to be reaped, so a malformation elsewhere is what decides
    old_enough = st.integers(min_value=7 * 3600, max_value=60 * 86400)
    age = timedelta(seconds=draw(st.one_of(old_enough, old_enough, st.integers(min_value=-3 * 86400, max_value=60 * 86400))))
    at = NOW - age
    hh = draw(st.integers(0, 14))
    mm = draw(st.sampled_from([0, 30, 45]))
    sign = draw(st.sampled_from([1, -1]))
    use_offset = draw(st.booleans())
    off = timedelta(hours=hh, minutes=mm) * sign if use_offset else timedelta(0)
    local = (at + off).replace(tzinfo=None)
    digits = draw(st.integers(0, 9))
    frac = ""
    if digits:
        frac = "." + (f"{local.microsecond:06d}" + f"{draw(st.integers(0, 999)):03d}")[:digits]
    sep = draw(st.sampled_from(["T", "T", "T", "t", " "]))
    if use_offset:
        tz = f"{'+' if sign > 0 else '-'}{hh:02d}:{mm:02d}"
    else:
        tz = draw(st.sampled_from(["Z", "Z", "z"]))
    return local.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + frac + tz


_ODD_STRINGS = st.sampled_from(
    [
        "",
        "2026-11-22",
        "2026-11-20T10:00:00.1234567891Z",  # 10 digits
        "2026-02-30T00:00:00Z",
        "2026-11-20T25:00:00Z",
        "2026-11-20T10:00:60Z",  # leap second
        "2026-11-20T10:00:00+24:00",
        "2026-11-20T10:00:00+0100",
        "2026-11-20T10:00:00+05:60",
        "0001-01-01T00:00:00+01:00",  # before datetime.min in UTC
        "9999-12-31T23:59:59-01:00",  # after datetime.max in UTC
        "0000-01-01T00:00:00Z",
        "+02026-11-20T10:00:00Z",
        "Fri Nov 20 10:00:00 UTC 2026",
        "1763632800",
        "yesterday",
    ]
)
_DIGIT_BLOCKS = [0x0660, 0x06F0, 0x0966, 0x09E6, 0xFF10, 0x1D7CE]  # Arabic-Indic, Persian, Devanagari, Bengali, ...


@st.composite
def odd_created(draw: st.DrawFn) -> Any:
    """A Created that is not RFC 3339: mostly a valid (old enough) one, damaged in one way."""
    base = draw(rfc3339())
    how = draw(st.sampled_from(["newline", "space", "unicode_digits", "no_zone", "ten_digits", "separator",
                                "offset_no_colon", "fixed", "fixed", "not_a_string"]))
    if how == "newline":
        return base + draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
    if how == "space":
        return draw(st.sampled_from([" " + base, base + " ", "\t" + base]))
    if how == "unicode_digits":
        block = draw(st.sampled_from(_DIGIT_BLOCKS))
        positions = [i for i, ch in enumerate(base) if ch.isdigit()]
        chosen = set(draw(st.lists(st.sampled_from(positions), min_size=1, max_size=len(positions))))
        return "".join(chr(block + int(ch)) if i in chosen else ch for i, ch in enumerate(base))
    if how == "no_zone":
        return re.sub(r"(Z|z|[+-]\d\d:\d\d)$", "", base)
    if how == "ten_digits":
        return re.sub(r"(\.\d+)?(Z|z|[+-]\d\d:\d\d)$", r".1234567891\2", base)
    if how == "separator":
        return base[:10] + draw(st.sampled_from(["_", "/", "", "TT", "\u2009"])) + base[11:]
    if how == "offset_no_colon":
        return re.sub(r"([+-]\d\d):(\d\d)$", r"\1\2", base) if base[-3:-2] == ":" else base[:-1] + "+0000"
    if how == "fixed":
        return draw(_ODD_STRINGS)
    return draw(st.one_of(st.integers(min_value=-(2**63), max_value=2**63), st.floats(), st.none(), st.booleans(),
                          st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))


WRONG_TYPES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)

UNICODE_WHO = st.one_of(
    st.text(min_size=1, max_size=60),
    st.sampled_from(["dead@\u0440\u0430\u043d\u043d\u0435\u0440-7", "dead@\U0001f525runner", "alive@\u202eevil",
                     "dead@nul\x00byte", "dead@tab\tand\nnewline", "dead@" + "\u0301" * 20]),
)


@st.composite
def well_formed_info(draw: st.DrawFn, path: str) -> dict[str, Any]:
    who = draw(st.one_of(st.sampled_from(["dead@ci-runner-1", "dead@ci-runner-1", "alive@ci-runner-2", "someone@laptop"]),
                         UNICODE_WHO.map(lambda w: "dead@" + w)))
    return {
        "ID": draw(st.uuids()).hex if draw(st.booleans()) else str(draw(st.uuids())),
        "Operation": draw(st.sampled_from(["OperationTypeApply", "OperationTypePlan", "OperationTypeInvalid", "", "Migrate"])),
        "Info": draw(st.sampled_from(["", "manual unlock test", "\u00e9t\u00e9"])),
        "Who": who,
        "Version": draw(st.sampled_from(["1.0.3", "1.5.7", "1.11.4", ""])),
        "Created": draw(rfc3339()),
        "Path": path,
    }


def _dump(doc: Any, ensure_ascii: bool) -> str:
    return json.dumps(doc, ensure_ascii=ensure_ascii, separators=(",", ":"), allow_nan=True)


@st.composite
def info_text(draw: st.DrawFn, path: str) -> tuple[str, str]:
    """(kind, raw Info string)."""
    doc = draw(well_formed_info(path))
    kind = draw(
        st.sampled_from(
            ["valid", "valid", "odd_created", "odd_created", "truncated", "invalid_json", "not_object", "wrong_type",
             "missing", "extra", "huge",
             "unicode_who", "escaped_surrogate_who", "odd_created", "path_mismatch", "deep_nesting"]
        )
    )
    ensure_ascii = draw(st.booleans())
    if kind == "valid":
        return kind, _dump(doc, ensure_ascii)
    if kind == "truncated":
        text = _dump(doc, ensure_ascii)
        return kind, text[: draw(st.integers(0, len(text) - 1))]
    if kind == "invalid_json":
        text = _dump(doc, ensure_ascii)
        bad = draw(st.sampled_from([
            text.replace('"', "'"), text[:-1] + ",}", "{" + text, text.replace(":", "=", 1), "{ID: 1}", "\x00" + text,
            text + "garbage", "",
        ]))
        return kind, bad
    if kind == "not_object":
        return kind, _dump(draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=10), st.integers(),
                                          st.none(), st.just([doc]))), True)
    if kind == "wrong_type":
        field = draw(st.sampled_from(sorted(doc)))
        doc[field] = draw(WRONG_TYPES)
    elif kind == "missing":
        for field in draw(st.lists(st.sampled_from(sorted(doc)), min_size=1, max_size=4, unique=True)):
            del doc[field]
    elif kind == "extra":
        extra = draw(st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in doc),
                                     st.one_of(st.text(max_size=20), st.integers(), st.none(),
                                               st.lists(st.integers(), max_size=2)),
                                     min_size=1, max_size=4))
        doc.update(extra)
    elif kind == "huge":
        field = draw(st.sampled_from(["ID", "Who", "Path", "Info", "Operation", "Version"]))
        size = draw(st.sampled_from([257, 1025, 2049, 70_000]))
        doc[field] = draw(st.sampled_from(["x", "\u00e9", "dead@"])) * size
    elif kind == "unicode_who":
        doc["Who"] = draw(UNICODE_WHO)
    elif kind == "escaped_surrogate_who":
        text = _dump({**doc, "Who": "WHO"}, True)
        return kind, text.replace('"WHO"', '"dead@\\ud800runner"')
    elif kind == "odd_created":
        doc["Created"] = draw(odd_created())
    elif kind == "path_mismatch":
        doc["Path"] = draw(st.one_of(lock_paths(), st.just(path + " "), st.just(path.upper()), st.just(path + "-md5"),
                                     st.just(path.replace(BUCKET + "/", "", 1))))
    elif kind == "deep_nesting":
        return kind, "[" * 100_000 + "]" * 100_000
    return kind, _dump(doc, ensure_ascii)


@st.composite
def lock_items(draw: st.DrawFn, index: int) -> tuple[str, dict[str, Any]]:
    """(kind, one lock-table item in DynamoDB wire format); kind is "<info kind>[+<item shape>]"."""
    path = draw(lock_paths()).replace("/terraform.tfstate", f"-{index}/terraform.tfstate")
    kind, info = draw(info_text(path))
    shape = draw(st.sampled_from(["plain"] * 12 + ["digest_key", "digest_attr", "binary_info", "number_info", "no_info",
                                                  "binary_key", "number_key", "extra_binary_attr", "digest_only"]))
    item: dict[str, Any] = {"LockID": {"S": path}, "Info": {"S": info}}
    if shape == "plain":
        return kind, item
    if shape == "digest_key":  # a digest's key with Info: never a lock
        item["LockID"] = {"S": path + "-md5"}
    elif shape == "digest_attr":
        item["Digest"] = {"S": "0" * 32}
    elif shape == "binary_info":
        item["Info"] = {"B": info.encode("utf-8", "surrogatepass")}
    elif shape == "number_info":
        item["Info"] = {"N": "12345"}
    elif shape == "no_info":
        del item["Info"]
        item["Who"] = {"S": "dead@ci-runner-1"}
    elif shape == "binary_key":
        item["LockID"] = {"B": path.encode()}
    elif shape == "number_key":
        item["LockID"] = {"N": str(index)}
    elif shape == "extra_binary_attr":
        item["Blob"] = {"B": draw(st.binary(max_size=64))}
    elif shape == "digest_only":
        item = {"LockID": {"S": path + "-md5"}, "Digest": {"S": draw(st.from_regex(r"[0-9a-f]{32}", fullmatch=True))}}
    return f"{kind}+{shape}", item


@st.composite
def tables(draw: st.DrawFn, max_items: int = 6) -> list[tuple[str, dict[str, Any]]]:
    n = draw(st.integers(1, max_items))
    return [draw(lock_items(i)) for i in range(n)]


# ---------------------------------------------------------------------------
# the run
class FakeLiveness:
    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        who = lock.info.Who if lock.info else ""
        state = liveness_of(who)
        return LivenessFact(state=state, reason=f"fake CI says {state.value}", checkers=("fuzz",))

    def stats(self) -> dict[str, Any]:
        return {}


class RenderingSink:
    """An alert sink that renders everything the real sinks render (SNS text + JSON, the table)."""

    name = "render"
    order = 10

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def publish(self, report: Any) -> str | None:
        subject, body = sns_message(report)
        body.encode("utf-8")  # SNS takes UTF-8
        json.loads(report.to_json())
        report.render_table()
        self.sizes.append(len(body))
        return "rendered"


def run_cycle(store: Any) -> tuple[Any, ListAudit]:
    audit = ListAudit()
    sink = RenderingSink()
    report = Reaper(POLICY, [store], lambda: NOW, liveness=FakeLiveness(), audit=audit, alerts=[sink]).run()
    assert report.stores[0].status == "ok", report.stores[0].error
    assert report.alerts and report.alerts[0].status == "sent", report.alerts
    errors = [e.reasons for e in report.locks if e.outcome is Outcome.ERROR]
    assert not errors, errors
    return report, audit


def _key(item: dict[str, Any], i: int) -> str:
    lid = item.get("LockID")
    if isinstance(lid, dict) and isinstance(lid.get("S"), str):
        return lid["S"]
    return f"non-string-key-{i}"


def check_memory(table: list[tuple[str, dict[str, Any]]], stats: dict[str, int]) -> None:
    store = InMemoryLockStore(name="memory:fuzz")
    items: dict[str, dict[str, Any]] = {}
    for i, (_, item) in enumerate(table):
        items[_key(item, i)] = item
    store.items = {k: v for k, v in items.items()}
    report, audit = run_cycle(store)

    deleted = set(store.deleted)
    for key in deleted:
        assert may_delete(items[key]), f"deleted an item the oracle says must stay: {items[key]!r:.400}"
    reaped = {e.key for e in report.locks if e.outcome is Outcome.REAPED}
    assert reaped == deleted
    assert {r["key"] for r in audit.records} == deleted, "every delete has its audit record, and only deletes"
    for key, item in items.items():
        if key not in deleted:
            assert store.items.get(key) == item, f"kept item changed: {key!r}"
    # not vacuous: well-formed eligible locks are deleted
    for kind, item in table:
        if kind == "valid" and may_delete(item):
            assert _key(item, 0) in deleted, f"a well-formed eligible lock was kept: {item!r:.400}"
            stats["_eligible_valid"] = stats.get("_eligible_valid", 0) + 1
    # digests never count as locks
    digest_like = [k for k, it in items.items() if "Info" not in it and ("Digest" in it or k.endswith("-md5"))]
    assert report.summary.digests_skipped == len(digest_like)
    assert report.summary.locks_scanned == len(items) - len(digest_like)
    for kind, _ in table:
        stats[kind] = stats.get(kind, 0) + 1
    stats["_items"] = stats.get("_items", 0) + len(table)
    stats["_malformed"] = stats.get("_malformed", 0) + sum(1 for k, _ in table if k != "valid")
    stats["_deleted"] = stats.get("_deleted", 0) + len(deleted)


def fuzz_in_memory(stats: dict[str, int], examples: int = 400, **extra: Any) -> None:
    @settings(FUZZ, max_examples=examples, **extra)
    @given(tables())
    def lock_table_fuzz(table: list[tuple[str, dict[str, Any]]]) -> None:
        check_memory(table, stats)

    lock_table_fuzz()


def test_fuzz_in_memory() -> None:
    stats: dict[str, int] = {}
    fuzz_in_memory(stats)
    assert stats["_malformed"] >= 200, stats
    assert stats["_deleted"] >= 20, f"too few deletes to show the property is not vacuous: {stats}"
    assert stats["_eligible_valid"] >= 20, stats


LENIENT_CREATED = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$")


def test_fuzz_catches_a_lenient_created_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzzer has teeth: with the Created parser this suite once caught (Unicode digits and a
    trailing newline accepted), the same examples must find a deleted malformed lock."""
    import reaper.models

    monkeypatch.setattr(reaper.models, "_RFC3339", LENIENT_CREATED)
    with pytest.raises(AssertionError, match="deleted an item the oracle says must stay"):
        fuzz_in_memory({}, phases=[Phase.explicit, Phase.generate])


def test_oracle_rejects_what_it_should() -> None:
    """The oracle itself must be able to say no (and yes)."""
    path = f"{BUCKET}/dev/app/terraform.tfstate"
    good = {"ID": "x", "Operation": "OperationTypeApply", "Info": "", "Who": "dead@ci", "Version": "1.0.3",
            "Created": "2026-11-20T10:00:00.123456789Z", "Path": path}

    def item(**changes: Any) -> dict[str, Any]:
        return {"LockID": {"S": path}, "Info": {"S": json.dumps({**good, **changes})}}

    assert may_delete(item())
    assert may_delete(item(Created="2026-11-20T12:00:00+02:00"))
    assert not may_delete(item(Who="alive@ci"))
    assert not may_delete(item(Created="2026-11-22T11:30:00Z"))  # 30 minutes old
    assert not may_delete(item(Created="2026-11-22T12:01:00Z"))  # future
    assert not may_delete(item(Path=path + "x"))
    assert not may_delete(item(ID=1))
    assert not may_delete(item(Created="2026-11-20T10:00:00"))
    assert not may_delete(item(Created="\u0662\u0660\u0662\u0666-11-20T10:00:00Z"))
    assert not may_delete({"LockID": {"S": path}, "Info": {"B": b"{}"}})
    assert not may_delete({"LockID": {"S": path + "-md5"}, "Info": {"S": json.dumps({**good, "Path": path + "-md5"})}})
    assert may_delete(item(Who="someone@laptop", Created="2026-11-10T10:00:00Z"))  # unknown, past hard_max_age
    assert not may_delete(item(Who="someone@laptop", Created="2026-11-22T09:00:00Z"))  # unknown, under hard_max_age
    assert not may_delete({"LockID": {"S": path.replace("/dev/", "/protected/")},
                           "Info": {"S": json.dumps({**good, "Path": path.replace("/dev/", "/protected/")})}})


# ---------------------------------------------------------------------------
# the same property through the real DynamoDB store (in-process moto)
def test_fuzz_dynamodb_moto(aws) -> None:
    import boto3
    from botocore.exceptions import ClientError

    from devtools.locks import LOCK_TABLE_SCHEMA
    from reaper.stores.dynamodb import DynamoDBLockStore

    client = boto3.client("dynamodb", region_name="us-east-1")
    counter = {"n": 0, "items": 0, "deleted": 0}

    @settings(FUZZ, max_examples=40)
    @given(tables(max_items=5))
    def one(table: list[tuple[str, dict[str, Any]]]) -> None:
        counter["n"] += 1
        name = f"fuzz-{counter['n']}"
        client.create_table(TableName=name, **LOCK_TABLE_SCHEMA)
        try:
            stored: dict[str, dict[str, Any]] = {}
            for _, item in table:
                try:
                    client.put_item(TableName=name, Item=item)
                except ClientError as exc:  # e.g. a binary key: DynamoDB refuses it, so it cannot be in a lock table
                    assert exc.response["Error"]["Code"] == "ValidationException", exc
                    continue
                stored[item["LockID"]["S"]] = item
            assume(stored)
            report, audit = run_cycle(DynamoDBLockStore(client, name))
            after = {it["LockID"]["S"]: it for it in client.scan(TableName=name)["Items"]}
            deleted = set(stored) - set(after)
            for key in deleted:
                assert may_delete(stored[key]), f"deleted an item the oracle says must stay: {stored[key]!r:.400}"
            assert {e.key for e in report.locks if e.outcome is Outcome.REAPED} == deleted
            assert {r["key"] for r in audit.records} == deleted
            for key in set(stored) & set(after):
                assert _normalise(after[key]) == _normalise(stored[key]), key
            for kind, item in table:
                if kind == "valid" and may_delete(item):
                    assert item["LockID"]["S"] in deleted
            counter["items"] += len(stored)
            counter["deleted"] += len(deleted)
        finally:
            client.delete_table(TableName=name)

    one()
    assert counter["items"] >= 60 and counter["deleted"] >= 3, counter


def _normalise(item: dict[str, Any]) -> dict[str, Any]:
    return {k: ({"B": base64.b64encode(bytes(v["B"])).decode()} if "B" in v else v) for k, v in item.items()}


@pytest.mark.parametrize(
    "created",
    ["2026-11-20T10:00:00.123456789Z", "2026-11-20T12:00:00+02:00", "2026-11-20t10:00:00z", "2026-11-20T10:00:00Z"],
)
def test_valid_created_formats_are_reaped(created: str) -> None:
    """The positive side, spelled out: these Created values are RFC 3339 and the locks are reaped."""
    path = f"{BUCKET}/dev/app/terraform.tfstate"
    store = InMemoryLockStore()
    store.put_lock(path, json.dumps({"ID": "a", "Operation": "OperationTypeApply", "Info": "", "Who": "dead@ci",
                                     "Version": "1.0.3", "Created": created, "Path": path}))
    report, _ = run_cycle(store)
    assert [e.outcome for e in report.locks] == [Outcome.REAPED]
