"""``scan --role-arn ... --accounts ... | --org``: the flags, the fan-out (bound, failures, order) and
one table / one JSON document across accounts. In-process: fakes for the fan-out, moto for STS,
DynamoDB and Organizations (moto serves the account named in an assumed role's ARN)."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from devtools.locks import create_lock_table, digest_item, info_json, lock_item
from reaper.cli import main
from reaper.commands import accounts as acc
from reaper.policy import Policy
from reaper.report import RunReport, StoreReport
from reaper.wiring import Deps, build_reaper

A, B, C = "111111111111", "222222222222", "333333333333"
ROLE = "arn:aws:iam::{account}:role/LockReaperScan"
TABLE = "terraform-locks"


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def write_policy(tmp_path: Path, mode: str = "report") -> Path:
    f = tmp_path / "policy.yaml"
    f.write_text(f"mode: {mode}\nstores:\n  - {{type: dynamodb, table: {TABLE}}}\n"
                 "rules:\n  - {name: default, match: '*', max_age: 6h, hard_max_age: 1d}\n"
                 f"audit: {{local_dir: '{tmp_path / 'audit'}'}}\n")
    return f


def denied(op: str = "AssumeRole") -> ClientError:
    return ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized to perform: sts:AssumeRole"}}, op)


def report_for(account: str, locks: int = 0, store_error: str | None = None) -> RunReport:
    r = RunReport(run_id=account, mode="report", started_at="x", max_deletes_per_run=10)
    r.stores.append(StoreReport(name="dynamodb:t", status="error" if store_error else "ok", error=store_error,
                                error_code="ExpiredTokenException" if store_error else None, locks=locks))
    r.summary.store_errors = 1 if store_error else 0
    r.summary.locks_scanned = locks
    return r


# ---------------------------------------------------------------- the flags
@pytest.mark.parametrize("argv, message", [
    (["--accounts", "111,222"], "--accounts: '111' is not an AWS account id (12 digits)"),
    (["--accounts", f"{A},12345678901x"], "'12345678901x' is not an AWS account id"),
    (["--accounts", ","], "--accounts: no account id given"),
    (["--accounts", f"{A},{B}", "--exclude", "abc"], "--exclude: 'abc' is not an AWS account id"),
    (["--accounts", f"{A},{B}", "--role-arn", f"arn:aws:iam::{A}:role/LockReaperScan"],
     "2 accounts given, so the ARN must contain {account}"),
    (["--org", "--role-arn", f"arn:aws:iam::{A}:role/LockReaperScan"], "with --org the ARN must contain {account}"),
    (["--accounts", B, "--role-arn", f"arn:aws:iam::{A}:role/LockReaperScan"], "the ARN names account 111111111111, but"),
    (["--accounts", A, "--role-arn", "arn:aws:iam::{account}:user/LockReaperScan"], "is not an IAM role ARN"),
    (["--accounts", A, "--role-arn", "LockReaperScan"], "is not an IAM role ARN"),
    (["--accounts", A, "--role-arn", "arn:aws:iam::{account}:role/{account}"], "is not an IAM role ARN"),
    (["--accounts", A, "--parallel", "0"], "--parallel: 0 is not between 1 and 32"),
    (["--accounts", A, "--external-id", "x"], "--external-id: 2 to 1224 characters"),
    (["--accounts", A, "--region", "Europe"], "--region: 'Europe' is not an AWS region"),
    (["--accounts", f"{A}", "--exclude", A], "no account left to scan after --exclude"),
])
def test_bad_flags_are_named_and_nothing_is_scanned(tmp_path: Path, argv: list[str], message: str) -> None:
    if "--role-arn" not in argv:
        argv = [*argv, "--role-arn", ROLE]
    code, out, err = run(["scan", "--config", str(write_policy(tmp_path)), *argv])
    assert code == 2, err
    assert message in err and out == ""


def test_role_arn_and_accounts_need_each_other(tmp_path: Path) -> None:
    policy = str(write_policy(tmp_path))
    code, _, err = run(["scan", "--config", policy, "--accounts", A])
    assert code == 2 and "--role-arn is required" in err
    code, _, err = run(["scan", "--config", policy, "--role-arn", ROLE])
    assert code == 2 and "--accounts 111111111111,222222222222 or --org" in err


def test_org_and_accounts_are_exclusive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["scan", "--config", str(write_policy(tmp_path)), "--role-arn", ROLE, "--org", "--accounts", A])
    assert exc.value.code == 2
    assert "argument --accounts: not allowed with argument --org" in capsys.readouterr().err


def test_single_account_arn_for_one_account() -> None:
    acc.check_role_arn(f"arn:aws:iam::{A}:role/path/LockReaperScan", [A])
    acc.check_role_arn("arn:aws-us-gov:iam::{account}:role/LockReaperScan", None)
    assert acc.parse_account_ids(f" {B},{A},{B} ", "--accounts") == [B, A]
    assert acc.role_arn_for(ROLE, A) == "arn:aws:iam::111111111111:role/LockReaperScan"


def test_reap_refuses_accounts_and_deletes_nothing(aws: None, tmp_path: Path) -> None:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(ddb, TABLE)
    path = "corp/prod/terraform.tfstate"
    ddb.put_item(TableName=TABLE, Item=lock_item(path, info_json(path, timedelta(days=3), datetime.now(timezone.utc))))
    code, out, err = run(["reap", "--config", str(write_policy(tmp_path)), "--enforce", "--role-arn", ROLE, "--accounts", A])
    assert code == 2 and out == ""
    assert "reap does not take --role-arn/--accounts/--org" in err and "scan --role-arn" in err
    assert "Item" in ddb.get_item(TableName=TABLE, Key={"LockID": {"S": path}}), "nothing was reaped"


# ---------------------------------------------------------------- the fan-out
def test_parallelism_bound_is_respected() -> None:
    active, peak, guard = 0, 0, threading.Lock()
    both = threading.Barrier(2, timeout=10)  # two at once must happen (else the pool is serial)

    def scan(account: str, factory: Any) -> RunReport:
        nonlocal active, peak
        with guard:
            active += 1
            peak = max(peak, active)
        try:
            if account in (A, B):
                both.wait()
            time.sleep(0.05)
            return report_for(account)
        finally:
            with guard:
                active -= 1

    accounts = [A, B, C, "444444444444", "555555555555", "666666666666"]
    results = acc.scan_accounts(accounts, ROLE, lambda a: (lambda *x: None), scan, parallel=2)
    assert [r.failed for r in results] == [False] * 6, [r.error for r in results]
    assert peak == 2


def test_failing_account_is_reported_and_the_others_scanned() -> None:
    scanned: list[str] = []

    def open_account(account: str) -> Any:
        if account == B:
            raise denied()
        return lambda *x: None

    def scan(account: str, factory: Any) -> RunReport:
        scanned.append(account)
        if account == C:
            raise RuntimeError("boom")
        return report_for(account, locks=2)

    results = acc.scan_accounts([C, B, A], ROLE, open_account, scan, parallel=3)
    assert sorted(scanned) == [A, C]
    by = {r.account: r for r in results}
    assert not by[A].failed and by[A].report is not None and by[A].report.summary.locks_scanned == 2
    assert by[B].failed and by[B].error_stage == "assume_role" and by[B].error_code == "AccessDenied"
    assert by[B].role_arn == f"arn:aws:iam::{B}:role/LockReaperScan" and "sts:AssumeRole" in (by[B].error or "")
    assert by[C].failed and by[C].error_stage == "scan" and by[C].error == "RuntimeError: boom"
    table = acc.render_table(results)
    assert f"ACCOUNT ERROR {B} (AccessDenied, cannot assume arn:aws:iam::{B}:role/LockReaperScan)" in table
    assert table.splitlines()[-1] == "total: 3 accounts (2 failed), 2 locks"


def test_results_are_sorted_whatever_finishes_first() -> None:
    delays = {A: 0.15, B: 0.1, C: 0.0}

    def scan(account: str, factory: Any) -> RunReport:
        time.sleep(delays[account])
        return report_for(account)

    results = acc.scan_accounts([C, A, B], ROLE, lambda a: (lambda *x: None), scan, parallel=3)
    assert [r.account for r in results] == [A, B, C]


def test_a_store_error_in_one_account_is_that_account_failing(aws: None) -> None:
    """An expired token mid-scan (the store's call fails): the account is an error with the code; exit 1 follows."""
    policy = Policy.model_validate({"stores": [{"type": "dynamodb", "table": TABLE}],
                                    "rules": [{"match": "*", "max_age": "6h", "hard_max_age": "1d"}]})
    create_lock_table(boto3.client("dynamodb", region_name="us-east-1"), TABLE)

    def factory_for(account: str) -> Any:
        def make(service: str, region: str | None = None) -> Any:
            c = boto3.client(service, region_name=region or "us-east-1")
            if account == B:
                stub = Stubber(c)
                stub.add_client_error("describe_table", "ExpiredTokenException", "The security token included in the "
                                      "request is expired")
                stub.activate()
            return c
        return make

    scan = acc.account_scanner(lambda a: policy)
    results = acc.scan_accounts([A, B], ROLE, factory_for, scan, parallel=2)
    assert [r.failed for r in results] == [False, True]
    code, message = results[1].code_and_message
    assert code == "ExpiredTokenException" and "expired" in (message or "")
    doc = results[1].to_dict()
    assert doc["status"] == "error" and doc["error_code"] == "ExpiredTokenException" and doc["report"] is not None


# ---------------------------------------------------------------- Organizations
def test_org_accounts_pages_and_active_only() -> None:
    org = boto3.client("organizations", region_name="us-east-1")
    stub = Stubber(org)
    joined = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def account(id_: str, state: str | None, status: str | None = None) -> dict[str, Any]:
        a: dict[str, Any] = {"Id": id_, "Arn": f"arn:aws:organizations::{A}:account/o-x/{id_}", "Name": id_,
                             "Email": f"{id_}@example.com", "JoinedMethod": "CREATED", "JoinedTimestamp": joined}
        if state:
            a["State"] = state
        if status:
            a["Status"] = status
        return a

    stub.add_response("list_accounts", {"Accounts": [account(A, "ACTIVE"), account(B, "SUSPENDED", "SUSPENDED")],
                                        "NextToken": "page2"}, {})
    stub.add_response("list_accounts", {"Accounts": [account(C, "PENDING_CLOSURE"), account("444444444444", None, "ACTIVE")]},
                      {"NextToken": "page2"})
    with stub:
        assert acc.org_accounts(org) == [A, "444444444444"]
    stub.assert_no_pending_responses()


def test_org_listing_failure_is_one_clear_error(tmp_path: Path) -> None:
    org = boto3.client("organizations", region_name="us-east-1")
    stub = Stubber(org)
    stub.add_client_error("list_accounts", "AWSOrganizationsNotInUseException", "Your account is not a member of an "
                          "organization.")
    out, err = io.StringIO(), io.StringIO()
    args = _args(tmp_path, ["--org", "--role-arn", ROLE])
    with stub:
        code = acc.run(_policy(tmp_path), args, out, err, base_factory=lambda service, region=None: org)
    assert code == 1 and out.getvalue() == ""
    assert "cannot list the organization's accounts (AWSOrganizationsNotInUseException)" in err.getvalue()


def _args(tmp_path: Path, extra: list[str]) -> Any:
    from reaper.cli import _parser

    return _parser().parse_args(["scan", "--config", str(write_policy(tmp_path)), "--quiet", *extra])


def _policy(tmp_path: Path) -> Policy:
    from reaper.policy import load_policy

    return load_policy(str(write_policy(tmp_path)))


# ---------------------------------------------------------------- the CLI over moto, three accounts
def _seed_account(account: str, paths: dict[str, timedelta], now: datetime) -> dict[str, str]:
    sts = boto3.client("sts", region_name="us-east-1")
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/setup", RoleSessionName="setup")["Credentials"]
    ddb = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id=creds["AccessKeyId"],
                       aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    create_lock_table(ddb, TABLE)
    infos = {}
    for path, age in paths.items():
        infos[path] = info_json(path, age, now)
        ddb.put_item(TableName=TABLE, Item=lock_item(path, infos[path]))
        ddb.put_item(TableName=TABLE, Item=digest_item(path))
    return infos


def test_scan_accounts_one_table_and_one_document(aws: None, tmp_path: Path) -> None:
    from moto.backends import get_backend

    now = datetime.now(timezone.utc)
    a_infos = _seed_account(A, {"corp-a/prod/terraform.tfstate": timedelta(days=2),
                                "corp-a/dev/terraform.tfstate": timedelta(minutes=5)}, now)
    b_infos = _seed_account(B, {"corp-b/net/terraform.tfstate": timedelta(hours=8)}, now)  # stale, unknown: kept
    # C has no lock table: its store fails, it is reported, A and B are still scanned
    policy = str(write_policy(tmp_path, mode="enforce"))  # enforce in the policy: scan still never deletes
    base = ["scan", "--config", policy, "--role-arn", ROLE, "--accounts", f"{C},{B},{A}", "--external-id", "ops-7"]

    code, out, err = run([*base, "--json"])
    assert code == 1, err
    doc = json.loads(out)
    assert [s["account"] for s in doc["accounts"]] == [A, B, C]
    sa, sb, sc = doc["accounts"]
    assert sa["status"] == sb["status"] == "ok" and sc["status"] == "error"
    assert sc["error_code"] == "ResourceNotFoundException" and f"dynamodb:{TABLE}" in sc["error"]
    assert sa["role_arn"] == f"arn:aws:iam::{A}:role/LockReaperScan"
    assert {e["lock_path"]: e["outcome"] for e in sa["report"]["locks"]} == {
        "corp-a/dev/terraform.tfstate": "kept", "corp-a/prod/terraform.tfstate": "would_reap"}
    assert [e["lock_path"] for e in sb["report"]["locks"]] == ["corp-b/net/terraform.tfstate"]
    assert all(e["account"] == s["account"] for s in doc["accounts"] for e in s["report"]["locks"])
    assert sa["report"]["mode"] == "report" and sa["report"]["alerts"] == []
    assert doc["summary"] == {"accounts": 3, "accounts_ok": 2, "accounts_failed": 1, "failed_accounts": [C],
                              "locks_scanned": 3, "digests_skipped": 3, "items_scanned": 6, "stale": 2, "unparseable": 0,
                              "kept_unknown": 1, "alive_past_hard_max": 0, "store_errors": 1,
                              "outcomes": {"kept": 2, "would_reap": 1, "reaped": 0, "raced": 0, "gone": 0, "error": 0}}

    # each account was entered with its own session and the external id (moto keeps the AssumeRole calls)
    for account in (A, B, C):
        roles = [r for r in get_backend("sts")[account]["global"].assumed_roles
                 if r.role_arn.endswith(":role/LockReaperScan")]
        assert [(r.session_name, r.external_id) for r in roles] == [(f"lock-reaper-scan-{account}", "ops-7")]

    code, out, err = run(base)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ACCOUNT", "STORE", "LOCK"]
    rows = [line.split()[:3] for line in lines[1:4]]
    assert rows == [[A, f"dynamodb:{TABLE}", "corp-a/dev/terraform.tfstate"],
                    [A, f"dynamodb:{TABLE}", "corp-a/prod/terraform.tfstate"],
                    [B, f"dynamodb:{TABLE}", "corp-b/net/terraform.tfstate"]]
    assert f"STORE ERROR {C} dynamodb:{TABLE}:" in out
    assert f"{A}: [report] 2 locks, 2 digests skipped, 1 kept, 1 would_reap" in lines
    assert lines[-1] == "total: 3 accounts (1 failed), 3 locks, 2 kept, 1 would_reap, 1 store errors"
    assert f"{A}: dynamodb:{TABLE}: scanning" in err, "progress lines name the account"

    # nothing deleted anywhere, no audit written
    for account, infos in ((A, a_infos), (B, b_infos)):
        table = get_backend("dynamodb")[account]["us-east-1"].tables[TABLE]
        assert {i.attrs["LockID"].value: i.attrs["Info"].value for i in table.all_items() if "Info" in i.attrs} == infos
    assert not (tmp_path / "audit").exists()


def test_assume_role_failure_in_every_account_is_exit_1(aws: None, tmp_path: Path) -> None:
    """The caller's own session expired: every AssumeRole fails; each account says so, nothing crashes."""
    sts = boto3.client("sts", region_name="us-east-1")
    stub = Stubber(sts)
    for _ in range(2):
        stub.add_client_error("assume_role", "ExpiredToken", "The security token included in the request is expired")
    args = _args(tmp_path, ["--accounts", f"{A},{B}", "--role-arn", ROLE, "--json", "--parallel", "1"])
    out, err = io.StringIO(), io.StringIO()
    with stub:
        code = acc.run(_policy(tmp_path), args, out, err, base_factory=lambda service, region=None: sts)
    assert code == 1
    doc = json.loads(out.getvalue())
    assert [(s["account"], s["status"], s["error_stage"], s["error_code"]) for s in doc["accounts"]] == [
        (A, "error", "assume_role", "ExpiredToken"), (B, "error", "assume_role", "ExpiredToken")]
    assert doc["summary_line"] == "total: 2 accounts (2 failed), 0 locks"


def test_per_account_policy_hook(aws: None, tmp_path: Path) -> None:
    """``policy_for`` gives each account its own policy (per-account overrides plug in here)."""
    now = datetime.now(timezone.utc)
    _seed_account(A, {"a/terraform.tfstate": timedelta(days=2)}, now)
    _seed_account(B, {"b/terraform.tfstate": timedelta(days=2)}, now)
    base = _policy(tmp_path)
    rule = base.rules[0].model_copy(update={"max_age": timedelta(days=3), "hard_max_age": timedelta(days=7)})
    longer = base.model_copy(update={"rules": [rule]})
    args = _args(tmp_path, ["--accounts", f"{A},{B}", "--role-arn", ROLE, "--json"])
    out = io.StringIO()
    code = acc.run(base, args, out, io.StringIO(), policy_for=lambda a: longer if a == B else base)
    assert code == 0
    outcomes = {s["account"]: s["report"]["locks"][0]["outcome"] for s in json.loads(out.getvalue())["accounts"]}
    assert outcomes == {A: "would_reap", B: "kept"}


def test_build_gets_each_accounts_factory(aws: None, tmp_path: Path) -> None:
    """Each account's run is built from a Deps whose factory signs as that account (never the caller's)."""
    seen: dict[str, str] = {}

    def build(policy: Policy, deps: Deps, progress: Any = None) -> Any:
        ident = deps.client_factory("sts").get_caller_identity()
        seen[ident["Account"]] = ident["Arn"]
        return build_reaper(policy, deps, progress=progress)

    _seed_account(A, {}, datetime.now(timezone.utc))
    _seed_account(B, {}, datetime.now(timezone.utc))
    args = _args(tmp_path, ["--accounts", f"{A},{B}", "--role-arn", ROLE])
    code = acc.run(_policy(tmp_path), args, io.StringIO(), io.StringIO(), build=build)
    assert code == 0
    assert seen == {a: f"arn:aws:sts::{a}:assumed-role/LockReaperScan/lock-reaper-scan-{a}" for a in (A, B)}


# ---------------------------------------------------------------- --overrides: the policy each account's function runs
def test_overrides_by_account_and_by_nearest_ou(aws: None, tmp_path: Path) -> None:
    org = boto3.client("organizations", region_name="us-east-1")
    org.create_organization(FeatureSet="ALL")
    root = org.list_roots()["Roots"][0]["Id"]
    sandbox = org.create_organizational_unit(ParentId=root, Name="sandbox")["OrganizationalUnit"]["Id"]
    team = org.create_organizational_unit(ParentId=sandbox, Name="team")["OrganizationalUnit"]["Id"]
    ids = [org.create_account(AccountName=f"a{i}", Email=f"a{i}@example.com")["CreateAccountStatus"]["AccountId"]
           for i in range(3)]
    plain, nested, named = ids
    org.move_account(AccountId=nested, SourceParentId=root, DestinationParentId=team)
    org.move_account(AccountId=named, SourceParentId=root, DestinationParentId=sandbox)
    now = datetime.now(timezone.utc)
    for a in ids:
        _seed_account(a, {f"{a}/terraform.tfstate": timedelta(days=2)}, now)
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(
        "overrides:\n"
        "  - name: sandbox-patient\n"
        f"    organizational_units: [{sandbox}]\n"
        "    policy:\n"
        "      rules: [{name: patient, match: '*', max_age: 3d, hard_max_age: 7d}]\n"
        "  - name: one-account\n"
        f"    accounts: ['{named}']\n"
        "    policy:\n"
        "      rules: [{name: strict, match: '*', max_age: 1h, hard_max_age: 1d}]\n")
    args = _args(tmp_path, ["--accounts", ",".join(ids), "--role-arn", ROLE, "--overrides", str(overrides), "--json"])
    out = io.StringIO()
    code = acc.run(_policy(tmp_path), args, out, io.StringIO())
    assert code == 0
    doc = json.loads(out.getvalue())
    got = {s["account"]: (s["override"], s["report"]["locks"][0]["rule"], s["report"]["locks"][0]["outcome"])
           for s in doc["accounts"]}
    assert got == {plain: (None, "default", "would_reap"),  # the policy file itself
                   nested: ("sandbox-patient", "patient", "kept"),  # under sandbox, two levels down
                   named: ("one-account", "strict", "would_reap")}  # named itself, although in sandbox too

    out = io.StringIO()
    code = acc.run(_policy(tmp_path), _args(tmp_path, ["--accounts", ",".join(ids), "--role-arn", ROLE, "--overrides",
                                                       str(overrides)]), out, io.StringIO())
    assert f"{nested} (override sandbox-patient): [report] 1 locks" in out.getvalue()


def test_an_invalid_override_stops_the_scan_naming_its_line(aws: None, tmp_path: Path) -> None:
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("overrides:\n  - name: broken\n    accounts: ['111111111111']\n    policy:\n"
                         "      rules: [{match: '*', max_age: soon, hard_max_age: 1d}]\n")
    err = io.StringIO()
    args = _args(tmp_path, ["--accounts", f"{A},{B}", "--role-arn", ROLE, "--overrides", str(overrides)])
    code = acc.run(_policy(tmp_path), args, io.StringIO(), err,
                   base_factory=lambda *a, **k: pytest.fail("nothing may be called before the overrides are valid"))
    assert code == 2
    text = err.getvalue()
    assert "override 'broken'" in text and f"{overrides}: line 5" in text and "max_age" in text, text
