"""``scan`` across accounts: ``--role-arn 'arn:aws:iam::{account}:role/LockReaperScan'`` with
``--accounts 111111111111,222222222222`` or ``--org`` (the organization's ACTIVE accounts).

Each account is scanned with an assumed role (STS AssumeRole, session ``lock-reaper-scan-<account>``,
``--external-id`` when given): its credentials go into a client factory of its own, and that into the
account's ``Deps``; nothing global changes. Accounts run in a thread pool of ``--parallel`` workers.
An account that cannot be assumed, or whose scan fails, is reported with its error code and the
others go on. Read-only like ``scan``: report mode, no alert sinks, never a delete. ``reap`` does not
take accounts (each member's own scheduled function reaps there).
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from .. import aws
from ..aws import cause_code, error_code, error_message
from ..policy import Policy
from ..report import RunReport

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2
ACCOUNT_PLACEHOLDER = "{account}"
DEFAULT_PARALLEL = 4
MAX_PARALLEL = 32
SESSION_SECONDS = 3600  # the AssumeRole default; a scan longer than this fails with ExpiredToken (reported)

_ACCOUNT = re.compile(r"\d{12}")
_ROLE_ARN = re.compile(r"arn:(aws|aws-cn|aws-us-gov|aws-iso|aws-iso-b|aws-iso-e|aws-iso-f|aws-eusc):iam::"
                       r"(\d{12}|\{account\}):role/([\w+=,.@/-]{1,512})")
_EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}")  # STS AssumeRole ExternalId
_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-\d{1,2}")

Stage = Literal["assume_role", "scan"]


class UsageError(ValueError):
    """A bad flag value: exit 2, nothing scanned. The message names the flag."""


# ---------------------------------------------------------------------------- arguments
def add_arguments(sp: argparse.ArgumentParser) -> None:
    """The cross-account flags (on ``scan``; ``reap`` has them only to refuse them clearly)."""
    g = sp.add_argument_group("across accounts")
    g.add_argument("--role-arn", metavar="ARN",
                   help="role to assume in each account, with {account} in place of the account id, e.g. "
                        "'arn:aws:iam::{account}:role/LockReaperScan'")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--accounts", metavar="IDS", help="comma-separated 12-digit account ids")
    which.add_argument("--org", action="store_true",
                       help="every ACTIVE account of the organization (organizations:ListAccounts)")
    g.add_argument("--exclude", metavar="IDS", help="comma-separated account ids to leave out")
    g.add_argument("--external-id", metavar="X", help="the external id the role's trust policy requires")
    g.add_argument("--parallel", type=int, metavar="N",
                   help=f"accounts scanned at once (default {DEFAULT_PARALLEL}, at most {MAX_PARALLEL})")
    g.add_argument("--region", metavar="R", help="region for STS and for stores without one (default: the usual AWS settings)")
    g.add_argument("--overrides", metavar="FILE",
                   help="per-account / per-OU overrides of the policy (the stack set's overrides file): each account is "
                        "scanned with the policy its own function runs")


def wanted(args: argparse.Namespace) -> bool:
    """Whether any cross-account flag was given."""
    return any(getattr(args, k, None) not in (None, False)
               for k in ("role_arn", "accounts", "org", "exclude", "external_id", "parallel", "region", "overrides"))


def parse_account_ids(text: str, flag: str) -> list[str]:
    """``111111111111,222222222222`` -> the ids, in order, without repeats; a bad one is a UsageError."""
    ids: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not _ACCOUNT.fullmatch(part):
            raise UsageError(f"{flag}: {part!r} is not an AWS account id (12 digits)")
        if part not in ids:
            ids.append(part)
    if not ids:
        raise UsageError(f"{flag}: no account id given")
    return ids


def check_role_arn(template: str, accounts: Sequence[str] | None) -> None:
    """``template`` must be an IAM role ARN with ``{account}`` as its account; or, for exactly one
    account given with ``--accounts``, that account's own role ARN."""
    m = _ROLE_ARN.fullmatch(template)
    if not m or template.count(ACCOUNT_PLACEHOLDER) > 1:
        raise UsageError(f"--role-arn: {template!r} is not an IAM role ARN such as "
                         "'arn:aws:iam::{account}:role/LockReaperScan'")
    if m.group(2) == ACCOUNT_PLACEHOLDER:
        return
    if accounts is None:
        raise UsageError("--role-arn: with --org the ARN must contain {account} where the account id goes")
    if len(accounts) != 1:
        raise UsageError(f"--role-arn: {len(accounts)} accounts given, so the ARN must contain {{account}} where the "
                         f"account id goes (it names account {m.group(2)} only)")
    if accounts[0] != m.group(2):
        raise UsageError(f"--role-arn: the ARN names account {m.group(2)}, but --accounts is {accounts[0]}")


def role_arn_for(template: str, account: str) -> str:
    return template.replace(ACCOUNT_PLACEHOLDER, account)


def session_name(account: str) -> str:
    """The AssumeRole session name: CloudTrail in the member account shows who asked, and for which account."""
    return f"lock-reaper-scan-{account}"


@dataclass(frozen=True)
class Plan:
    """What to scan, from the flags."""

    role_arn: str
    accounts: list[str] | None  # None: --org, listed at run time
    exclude: list[str]
    external_id: str | None
    parallel: int
    region: str | None


def plan_from_args(args: argparse.Namespace) -> Plan:
    if not args.role_arn:
        raise UsageError("--role-arn is required to scan other accounts (e.g. 'arn:aws:iam::{account}:role/LockReaperScan')")
    if not args.accounts and not args.org:
        raise UsageError("--role-arn needs the accounts: --accounts 111111111111,222222222222 or --org")
    accounts = parse_account_ids(args.accounts, "--accounts") if args.accounts else None
    exclude = parse_account_ids(args.exclude, "--exclude") if args.exclude else []
    check_role_arn(args.role_arn, accounts)
    if args.external_id is not None and not _EXTERNAL_ID.fullmatch(args.external_id):
        raise UsageError("--external-id: 2 to 1224 characters of letters, digits and _+=,.@:/-")
    parallel = DEFAULT_PARALLEL if args.parallel is None else args.parallel
    if not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(f"--parallel: {parallel} is not between 1 and {MAX_PARALLEL}")
    if args.region is not None and not _REGION.fullmatch(args.region):
        raise UsageError(f"--region: {args.region!r} is not an AWS region such as eu-west-1")
    return Plan(args.role_arn, accounts, exclude, args.external_id, parallel, args.region)


# ---------------------------------------------------------------------------- AWS calls
def org_accounts(organizations: Any) -> list[str]:
    """The organization's ACTIVE accounts, every page of ``ListAccounts`` (``State``; ``Status``, retired
    by AWS in 2026, where an older endpoint still sends only that)."""
    found: list[str] = []
    for page in organizations.get_paginator("list_accounts").paginate():
        for acct in page.get("Accounts", []):
            if (acct.get("State") or acct.get("Status")) == "ACTIVE":
                found.append(acct["Id"])
    return found


def assume_role(sts: Any, role_arn: str, account: str, external_id: str | None) -> dict[str, Any]:
    """The STS ``Credentials`` of ``role_arn`` (AccessKeyId, SecretAccessKey, SessionToken, Expiration)."""
    kwargs: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": session_name(account),
                              "DurationSeconds": SESSION_SECONDS}
    if external_id:
        kwargs["ExternalId"] = external_id
    creds: dict[str, Any] = sts.assume_role(**kwargs)["Credentials"]
    return creds


# ---------------------------------------------------------------------------- the fan-out
@dataclass
class AccountResult:
    account: str
    role_arn: str
    report: RunReport | None = None
    error_stage: Stage | None = None  # where it failed before a report: assuming the role, or the scan itself
    error_code: str | None = None
    error: str | None = None
    override: str | None = None  # the name of the override its policy came from (--overrides)

    @property
    def failed(self) -> bool:
        """No report, or a report with an errored store or lock."""
        return self.report is None or bool(self.report.exit_code)

    @property
    def code_and_message(self) -> tuple[str | None, str | None]:
        """The error to show: the account's own, else the first failed store's, else the first errored lock's."""
        if self.error_code or self.report is None:
            return self.error_code, self.error
        for st in self.report.stores:
            if st.status == "error":
                return st.error_code, f"{st.name}: {st.error}"
        for e in self.report.locks:
            if e.outcome.value == "error":
                return (e.reason_codes[-1] if e.reason_codes else None), f"{e.lock_path}: {e.reasons[-1] if e.reasons else ''}"
        return None, None

    def to_dict(self) -> dict[str, Any]:
        code, message = self.code_and_message
        doc: dict[str, Any] = {"account": self.account, "role_arn": self.role_arn, "override": self.override,
                               "status": "error" if self.failed else "ok", "error_stage": self.error_stage,
                               "error_code": code, "error": message,
                               "summary_line": self.report.summary_line() if self.report else None, "report": None}
        if self.report is not None:
            report = self.report.model_dump(mode="json")
            for entry in report["locks"]:
                entry["account"] = self.account
            doc["report"] = report
        return doc


OpenAccount = Callable[[str], aws.ClientFactory]  # account -> its client factory (assumes the role)
ScanAccount = Callable[[str, aws.ClientFactory], RunReport]  # account, its factory -> its report


def scan_accounts(accounts: Sequence[str], role_arn: str, open_account: OpenAccount, scan: ScanAccount,
                  parallel: int, override_of: Callable[[str], str | None] = lambda _account: None) -> list[AccountResult]:
    """Each account opened and scanned in a pool of at most ``parallel`` threads; one that fails is a
    result with its error, never an exception. Sorted by account id."""

    def one(account: str) -> AccountResult:
        arn, override = role_arn_for(role_arn, account), override_of(account)
        try:
            factory = open_account(account)
        except Exception as exc:  # AccessDenied, ExpiredToken of the caller's own session, no credentials, ...
            return AccountResult(account, arn, error_stage="assume_role", error_code=error_code(exc),
                                 error=error_message(exc), override=override)
        try:
            return AccountResult(account, arn, report=scan(account, factory), override=override)
        except Exception as exc:  # the run itself raised (stores' errors are in the report, not here)
            return AccountResult(account, arn, error_stage="scan", error_code=cause_code(exc),
                                 error=f"{type(exc).__name__}: {exc}", override=override)

    if not accounts:
        return []
    with ThreadPoolExecutor(max_workers=min(parallel, len(accounts)), thread_name_prefix="lock-reaper-account") as pool:
        results = list(pool.map(one, accounts))
    return sorted(results, key=lambda r: r.account)


# ---------------------------------------------------------------------------- output
def total_summary(results: Sequence[AccountResult]) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    keys = ("locks_scanned", "digests_skipped", "items_scanned", "stale", "unparseable", "kept_unknown",
            "alive_past_hard_max", "store_errors")
    sums = dict.fromkeys(keys, 0)
    for r in results:
        if r.report is None:
            continue
        outcomes.update(r.report.summary.outcomes)
        for k in keys:
            sums[k] += getattr(r.report.summary, k)
    failed = [r.account for r in results if r.failed]
    order = ("kept", "would_reap", "reaped", "raced", "gone", "error")
    return {"accounts": len(results), "accounts_ok": len(results) - len(failed), "accounts_failed": len(failed),
            "failed_accounts": failed, **sums,
            "outcomes": {k: outcomes.get(k, 0) for k in order} | {k: v for k, v in outcomes.items() if k not in order}}


def total_line(summary: dict[str, Any]) -> str:
    n = summary["accounts"]
    failed = f" ({summary['accounts_failed']} failed)" if summary["accounts_failed"] else ""
    parts = [f"{n} account{'s' if n != 1 else ''}{failed}", f"{summary['locks_scanned']} locks"]
    parts += [f"{v} {k}" for k, v in summary["outcomes"].items() if v]
    if summary["store_errors"]:
        parts.append(f"{summary['store_errors']} store errors")
    return "total: " + ", ".join(parts)


def to_json(results: Sequence[AccountResult], role_arn: str) -> str:
    summary = total_summary(results)
    doc = {"mode": "report", "role_arn": role_arn, "accounts": [r.to_dict() for r in results], "summary": summary,
           "summary_line": total_line(summary)}
    return json.dumps(doc, indent=2)


def render_table(results: Sequence[AccountResult], *, cut: bool = False, width: int = 60) -> str:
    """One table with an ACCOUNT column (by account, then store, then lock path), then each failed
    account or store, a summary line per account, and the total."""
    entries = [(r.account, e) for r in results if r.report for e in r.report.locks]
    lines: list[str] = []
    if entries:
        merged = RunReport(run_id="accounts", mode="report", started_at="", max_deletes_per_run=0,
                           locks=[e for _, e in entries])
        lines += merged.lock_table_lines(width if cut else None, accounts=[a for a, _ in entries])
    else:
        read = sum(1 for r in results if r.report is not None)
        lines.append(f"no locks found in {read} account{'s' if read != 1 else ''}")
    lines.append("")
    for r in results:
        if r.report is None:
            what = "cannot assume " + r.role_arn if r.error_stage == "assume_role" else "scan failed"
            lines.append(f"ACCOUNT ERROR {r.account} ({r.error_code}, {what}): {r.error}")
            continue
        for st in r.report.stores:
            if st.status == "error":
                lines.append(f"STORE ERROR {r.account} {st.name}: {st.error}")
    for r in results:
        via = f" (override {r.override})" if r.override else ""
        lines.append(f"{r.account}{via}: {r.report.summary_line() if r.report else 'FAILED (' + str(r.error_code) + ')'}")
    lines.append(total_line(total_summary(results)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- per-account overrides
class _OverrideProblems(Exception):
    def __init__(self, lines: list[str]):
        super().__init__("; ".join(lines))
        self.lines = lines


class AccountPolicies:
    """The policy each account's own function runs: the policy file, merged with the override that
    names the account, else the one that names its nearest OU (an ancestor OU counts, as a stack set's
    OU target does; the root ``r-...`` too). Every override is validated before anything is asked of AWS."""

    def __init__(self, base_text: str, base_source: str, base: Policy, overrides: Any,
                 organizations: aws.ClientFactory | None) -> None:
        self.base_text, self.base_source, self.base = base_text, base_source, base
        self.overrides = overrides  # reaper.policy.overrides.OverridesFile
        self.organizations = organizations  # the caller's client factory, when an override names OUs
        self.chosen: dict[str, int | None] = {}  # account -> index of its override
        self.policies: dict[int, Policy] = {}

    @classmethod
    def load(cls, policy_file: str, overrides_file: str, base: Policy, base_factory: aws.ClientFactory) -> AccountPolicies:
        from pathlib import Path

        from ..policy import ConfigError
        from ..policy.overrides import load_overrides

        try:
            overrides = load_overrides(overrides_file)
        except ConfigError as exc:
            raise _OverrideProblems([f"{exc.source}: {p}" for p in exc.problems]) from None
        text = Path(policy_file).read_text(encoding="utf-8")
        needs_org = any(o.organizational_units for o in overrides.overrides.overrides)
        chosen = cls(text, policy_file, base, overrides, base_factory if needs_org else None)
        problems: list[str] = []
        for index, o in enumerate(overrides.overrides.overrides):  # each one as its target's function loads it
            try:
                chosen.policies[index] = chosen._policy(index)
            except _OverrideProblems as exc:
                problems += [f"override {o.name!r}: {line}" for line in exc.lines]
        if problems:
            raise _OverrideProblems(problems)
        return chosen

    def place(self, accounts: Sequence[str]) -> AccountPolicies:
        """Choose each account's override: the one naming it, else its nearest named OU's, else none."""
        by_ou = self._accounts_under_named_ous(self.organizations("organizations")) if self.organizations else {}
        for account in accounts:
            named = self.overrides.overrides.for_account(account)
            self.chosen[account] = named[0] if named else by_ou.get(account)
        return self

    def _policy(self, index: int) -> Policy:
        from ..policy import ConfigError, parse_policy
        from ..policy.lines import load_yaml
        from ..policy.overrides import Attribution, effective_document

        o = self.overrides.overrides.overrides[index]
        text = effective_document(self.base_text, o)
        try:
            return parse_policy(text, f"{self.base_source} + {o.name}", env=None)
        except ConfigError as exc:
            root = load_yaml(self.base_text, self.base_source)[0]
            attribution = Attribution(self.base_source, root, self.overrides, index)
            lines = []
            for problem in exc.problems:
                source, p = attribution.policy(problem)
                lines.append(f"{source}: {p}")
            raise _OverrideProblems(lines) from None

    def _accounts_under_named_ous(self, org: Any) -> dict[str, int]:
        """account -> the override of its nearest named OU, walking down from each named OU."""
        best: dict[str, tuple[int, int]] = {}  # account -> (depth below the named OU, override index)
        for index, o in enumerate(self.overrides.overrides.overrides):
            for ou in o.organizational_units:
                frontier, depth = [ou], 0
                while frontier:
                    children: list[str] = []
                    for parent in frontier:
                        for page in org.get_paginator("list_accounts_for_parent").paginate(ParentId=parent):
                            for acct in page.get("Accounts", []):
                                if acct["Id"] not in best or best[acct["Id"]][0] > depth:
                                    best[acct["Id"]] = (depth, index)
                        for page in org.get_paginator("list_organizational_units_for_parent").paginate(ParentId=parent):
                            children += [u["Id"] for u in page.get("OrganizationalUnits", [])]
                    frontier, depth = children, depth + 1
        return {account: index for account, (_, index) in best.items()}

    def policy_for(self, account: str) -> Policy:
        index = self.chosen.get(account)
        return self.base if index is None else self.policies[index]

    def override_of(self, account: str) -> str | None:
        index = self.chosen.get(account)
        return None if index is None else self.overrides.overrides.overrides[index].name


# ---------------------------------------------------------------------------- the command
def run(policy: Policy, args: argparse.Namespace, out: Any, err: Any, *, build: Callable[..., Any] | None = None,
        base_factory: aws.ClientFactory | None = None, policy_for: Callable[[str], Policy] | None = None) -> int:
    """``scan`` over the accounts of ``args``. ``build(policy, deps, progress=...)`` makes each account's run
    (default ``reaper.wiring.build_reaper``); ``base_factory`` makes the caller's own STS and Organizations
    clients (default ``reaper.aws.client``); ``policy_for(account)`` the account's policy (default: ``policy``)."""
    try:
        plan = plan_from_args(args)
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    base = base_factory or aws.client
    chosen: AccountPolicies | None = None
    if getattr(args, "overrides", None):  # every override validated before any AWS call
        chosen, failed = _overrides(lambda: AccountPolicies.load(args.config, args.overrides, policy, base), err)
        if chosen is None:
            return failed
        policy_for = chosen.policy_for
    accounts = plan.accounts
    if accounts is None:
        try:
            accounts = org_accounts(base("organizations"))
        except Exception as exc:
            print(f"error: cannot list the organization's accounts ({cause_code(exc)}): {error_message(exc)}", file=err)
            print("  --org needs organizations:ListAccounts, in the management account or a delegated administrator",
                  file=err)
            return EXIT_ERRORS
    accounts = [a for a in accounts if a not in plan.exclude]
    if not accounts:
        print("error: no account left to scan" + (" after --exclude" if plan.exclude else ""), file=err)
        return EXIT_USAGE
    try:
        sts = base("sts", plan.region)  # one client, shared by the workers (boto3 clients are thread-safe)
    except Exception as exc:  # e.g. no region
        print(f"error: cannot set up the run: {type(exc).__name__}: {exc}", file=err)
        return EXIT_USAGE

    def open_account(account: str) -> aws.ClientFactory:
        creds = assume_role(sts, role_arn_for(plan.role_arn, account), account, plan.external_id)
        return aws.credentials_client_factory(creds, plan.region)

    if chosen is not None:
        placed, failed = _overrides(lambda: chosen.place(accounts), err)
        if placed is None:
            return failed
    scan = account_scanner(policy_for or (lambda _account: policy), build, _progress(args, err))
    results = scan_accounts(accounts, plan.role_arn, open_account, scan, plan.parallel,
                            chosen.override_of if chosen else (lambda _account: None))
    if args.json:
        print(to_json(results, plan.role_arn), file=out)
    else:
        isatty = getattr(out, "isatty", None)
        print(render_table(results, cut=bool(callable(isatty) and isatty()) and not args.wide), file=out)
    return EXIT_ERRORS if any(r.failed for r in results) else EXIT_OK


def _overrides(step: Callable[[], AccountPolicies], err: Any) -> tuple[AccountPolicies | None, int]:
    """``step`` (loading the overrides, or placing the accounts); or (None, exit code) after saying why."""
    try:
        return step(), EXIT_OK
    except _OverrideProblems as exc:
        print("error: invalid overrides for the accounts scanned:", file=err)
        for line in exc.lines:
            print(f"  {line}", file=err)
        return None, EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror or exc}", file=err)
        return None, EXIT_USAGE
    except Exception as exc:  # an Organizations call refused: never scan an account with a guessed policy
        print(f"error: cannot tell which override applies ({cause_code(exc)}): {error_message(exc)}", file=err)
        print("  OU overrides need organizations:ListAccountsForParent and ListOrganizationalUnitsForParent", file=err)
        return None, EXIT_ERRORS


def account_scanner(policy_for: Callable[[str], Policy], build: Callable[..., Any] | None = None,
                    say: Callable[[str], None] | None = None) -> ScanAccount:
    """Scans one account as ``scan`` does (report mode, no alerts), its clients from the given factory."""
    from ..wiring import Deps, build_reaper

    make = build or build_reaper

    def scan(account: str, factory: aws.ClientFactory) -> RunReport:
        progress = (lambda msg: say(f"{account}: {msg}")) if say else None
        reaper = make(policy_for(account), Deps(client_factory=factory), progress=progress)
        reaper.errors_in_output = True
        reaper.alerts = []  # scan is read-only and silent, in every account
        report: RunReport = reaper.run(mode="report")
        return report

    return scan


def _progress(args: argparse.Namespace, err: Any) -> Callable[[str], None] | None:
    if args.quiet:
        return None
    guard = threading.Lock()

    def say(msg: str) -> None:
        with guard:
            print(msg, file=err, flush=True)

    return say


REAP_REFUSED = ("error: reap does not take --role-arn/--accounts/--org: across accounts, each account's own "
                "scheduled function reaps (the member stack), with its own audit bucket and alerts. "
                "Use `scan --role-arn ... --accounts ...` to see every account's locks in one table. Nothing was scanned.")
