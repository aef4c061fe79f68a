"""Command line: ``lock-reaper`` (or ``python -m reaper``) ``{scan,reap,restore,validate,explain,claim,run}``.

Exit codes: 0 success, 1 a lock, store or alert errored (or restore refused),
2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .aws import cause_code
from .policy import ConfigError, Policy, check_policy_file

EXIT_OK, EXIT_ERRORS, EXIT_CONFIG = 0, 1, 2


def _global_flags(after_command: bool) -> argparse.ArgumentParser:
    """-v, --quiet and --json, accepted before or after the subcommand. After it they default to
    "not given" (SUPPRESS), so that a flag given before the subcommand is not reset."""
    flags = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS if after_command else False
    flags.add_argument("-v", "--verbose", action="store_true", default=default, help="log progress details to stderr")
    flags.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="no progress lines on stderr (claim: print nothing on success)")
    flags.add_argument("--json", action="store_true", default=default, help="print one JSON document instead of a table")
    return flags


def _prog() -> str:
    """``lock-reaper`` when run as the console script, else ``python -m reaper``."""
    return "lock-reaper" if os.path.basename(sys.argv[0] or "") == "lock-reaper" else "python -m reaper"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_prog(), description="Find and safely remove stale Terraform state locks.",
                                parents=[_global_flags(after_command=False)])
    p.add_argument("--version", action="version", version=f"lock-reaper {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    after = [_global_flags(after_command=True)]

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=after)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", required=True, metavar="FILE", help="policy file (YAML)")

    from .commands import accounts as accounts_cli

    sp = add("scan", "list every lock with its age and decision; never deletes, sends no alerts")
    common(sp)
    sp.add_argument("--wide", action="store_true", help="never cut table cells (they are cut only on a terminal)")
    accounts_cli.add_arguments(sp)  # --role-arn, --accounts | --org, ...: one table across accounts
    sp = add("reap", "one cycle; deletes only in enforce mode")
    common(sp)
    sp.add_argument("--wide", action="store_true", help="never cut table cells (they are cut only on a terminal)")
    sp.add_argument("--enforce", action="store_true", help="delete stale locks in this run, whatever the policy's mode")
    accounts_cli.add_arguments(sp)  # refused (see main), with a message that says why
    sp = add("restore", "put a reaped lock back from its audit record (never overwrites a lock)")
    common(sp)
    sp.add_argument("audit_ref", metavar="AUDIT_REF", help="s3://bucket/key or a local audit file path")
    sp = add("validate", "check the policy file and print it normalised")
    common(sp)
    sp.add_argument("--strict", action="store_true", help="warnings are errors too (exit 2)")
    sp = add("explain", "the full chain for one lock: rule, age, liveness evidence, decision")
    common(sp)
    sp.add_argument("lock_path", metavar="LOCK_PATH", help="the lock's path (<bucket>/<state key>) or store key")
    sp.add_argument("--check-anyway", action="store_true", help="ask the liveness checkers even if the lock is not a candidate")
    sp = add("report", "print a kept run report (the scheduled runs keep one each): the latest, or RUN_ID's")
    common(sp)
    sp.add_argument("run_id", metavar="RUN_ID", nargs="?", default="latest", help="a run id, or `latest` (the default)")
    sp.add_argument("--wide", action="store_true", help="never cut table cells (they are cut only on a terminal)")
    from .commands import claim as claim_cli

    sp = add("claim", "in a CI job, before terraform: record which run will hold this machine's locks")
    claim_cli.add_arguments(sp, output_flags=False)  # --json and --quiet are the global flags
    from .commands import run as run_cli

    sp = sub.add_parser("run", help="run terraform (or any command) under a lease: lock-reaper run -- terraform apply",
                        parents=after, description=run_cli.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_cli.add_arguments(sp)
    return p


def main(argv: Sequence[str] | None = None, *, build: Callable[..., Any] | None = None, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=err,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "claim":  # runs in CI jobs: needs no policy file
        from .commands import claim as claim_cli

        return claim_cli.run(args, out, err)
    if args.command == "run":  # wraps terraform; needs no policy file
        from .commands import run as run_cli

        return run_cli.run(args, err)
    try:  # validate only warns of a policy without stores; for a run it is an error
        policy, warnings = check_policy_file(args.config, env=os.environ, run=args.command != "validate")
    except ConfigError as exc:
        if args.command == "validate" and args.json:
            doc = {"valid": False, "source": exc.source, "errors": [p.as_dict() for p in exc.problems],
                   "warnings": [w.as_dict() for w in exc.warnings]}
            print(json.dumps(doc, indent=2), file=out)
            return EXIT_CONFIG
        print(f"error: invalid policy {exc.source}:", file=err)
        for problem in exc.problems:
            print(f"  {problem}", file=err)
        return EXIT_CONFIG

    if args.command == "validate":
        return _validate(policy, warnings, args, out, err)
    if args.command == "restore":
        return _restore(policy, args, out, err, build)
    if args.command == "explain":
        return _explain(policy, args, out, err)
    if args.command == "report":
        return _report(policy, args, out, err)
    from .commands import accounts as accounts_cli

    if accounts_cli.wanted(args):  # scan across accounts (reap: refused)
        if args.command == "reap":
            print(accounts_cli.REAP_REFUSED, file=err)
            return EXIT_CONFIG
        return accounts_cli.run(policy, args, out, err)
    return _cycle(policy, args, out, err, build)


def _progress(args: argparse.Namespace, err) -> Callable[[str], None] | None:
    if args.quiet:
        return None
    return lambda msg: print(msg, file=err, flush=True)


def _cycle(policy: Policy, args: argparse.Namespace, out, err, build) -> int:
    from .wiring import build_reaper

    build = build or build_reaper
    enforce = args.command == "reap" and (args.enforce or policy.mode == "enforce")
    if enforce and not (policy.audit.s3_bucket or policy.audit.local_dir):
        print("error: reap --enforce needs an audit sink, so that every deleted lock can be restored: set `audit:` in "
              "the policy (audit.s3_bucket or audit.local_dir, or REAPER_AUDIT_BUCKET). Nothing was scanned.", file=err)
        return EXIT_CONFIG
    try:
        reaper = build(policy, progress=_progress(args, err))
    except Exception as exc:  # e.g. botocore NoRegionError: a setup problem, not a traceback
        print(f"error: cannot set up the run: {type(exc).__name__}: {exc}", file=err)
        if "region" in str(exc).lower():
            print("  set AWS_REGION (or AWS_DEFAULT_REGION), or `region:` on the store in the policy", file=err)
        return EXIT_CONFIG
    reaper.errors_in_output = True  # store and alert errors are printed once, in the report below
    if args.command == "scan":
        reaper.alerts = []  # scan is read-only and silent
        mode = "report"
    else:
        mode = "enforce" if args.enforce else policy.mode
    report = reaper.run(mode=mode)
    if args.json:
        print(report.to_json(), file=out)
    else:
        isatty = getattr(out, "isatty", None)
        print(report.render_table(cut=bool(callable(isatty) and isatty()) and not args.wide), file=out)
    return EXIT_ERRORS if report.exit_code else EXIT_OK


def _report(policy: Policy, args: argparse.Namespace, out, err) -> int:
    """A kept run report, printed as ``scan`` prints a run (``--json``: the report itself)."""
    from .runs import NoRunReport
    from .wiring import build_run_reports

    kept = build_run_reports(policy)
    if not kept:
        print("error: run reports are kept in the audit bucket or directory: the policy has no `audit:` "
              "(audit.s3_bucket or audit.local_dir, or REAPER_AUDIT_BUCKET)", file=err)
        return EXIT_CONFIG
    try:
        report = kept[0].latest() if args.run_id == "latest" else kept[0].read(args.run_id)
    except NoRunReport as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERRORS
    except Exception as exc:  # AWS errors: one line with the code
        print(f"error: cannot read run reports ({cause_code(exc)}): {exc}", file=err)
        return EXIT_ERRORS
    if args.json:
        print(report.to_json(), file=out)
    else:
        isatty = getattr(out, "isatty", None)
        print(f"run {report.run_id} ({report.mode} mode), started {report.started_at}", file=out)
        print(report.render_table(cut=bool(callable(isatty) and isatty()) and not args.wide), file=out)
    return EXIT_OK


def _validate(policy: Policy, warnings: list[Any], args: argparse.Namespace, out, err) -> int:
    failed = bool(args.strict and warnings)
    if args.json:
        doc = {"valid": not failed, "warnings": [w.as_dict() for w in warnings], **policy.model_dump(mode="json")}
        print(json.dumps(doc, indent=2), file=out)
        return EXIT_CONFIG if failed else EXIT_OK
    for w in warnings:
        print(f"warning: {w}", file=err)
    if failed:
        print(f"error: invalid policy {args.config}: {len(warnings)} warning(s), errors with --strict", file=err)
        return EXIT_CONFIG
    print(f"{args.config}: OK — mode {policy.mode}, {len(policy.stores)} store(s), {len(policy.rules)} rule(s)", file=out)
    return EXIT_OK


class _Usage(Exception):
    """The command's argument itself is wrong (no such audit record, not an audit record): exit 2."""




def _restore(policy: Policy, args: argparse.Namespace, out, err, build) -> int:
    from .ports import RestoreConflict

    result: dict[str, Any] = {"audit_ref": args.audit_ref}
    try:
        record = _read_audit_record(args.audit_ref, policy)
        result.update(store=record["store"], lock_path=record["lock_path"], lock_id=record.get("lock_id"))
        result.update(status="restored", message=_put_back(policy, record))
        code = EXIT_OK
    except _Usage as exc:
        result.update(status="error", message=str(exc))
        code = EXIT_CONFIG
    except RestoreConflict as exc:
        result.update(status="refused", message=str(exc))
        code = EXIT_ERRORS
    except ValueError as exc:  # a record that cannot be restored says why
        result.update(status="error", message=str(exc))
        code = EXIT_ERRORS
    except Exception as exc:  # AWS errors: say so, lose nothing
        result.update(status="error", message=f"{type(exc).__name__}: {exc}")
        code = EXIT_ERRORS
    if args.json:
        print(json.dumps(result, indent=2), file=out)
    elif code == EXIT_OK:
        print(result["message"], file=out)
    else:
        print(f"{result['status']}: {result['message']}", file=err)
    return code


def _audit_reader(ref: str, policy: Policy) -> Any:
    from pathlib import Path

    from .audit import LocalDirAuditSink, S3AuditSink, split_s3_ref
    from .aws import client as _client
    from .wiring import build_audit

    if ref.startswith("s3://"):
        try:
            split_s3_ref(ref)
        except ValueError as exc:
            raise _Usage(str(exc)) from None
        return S3AuditSink(_client("s3"), bucket="")  # the ref names its bucket
    if Path(ref).is_file():
        return LocalDirAuditSink(Path(ref).parent)  # a local record, whatever the policy's sinks
    audit = build_audit(policy)  # a key in the policy's audit bucket or directory
    if audit is None:
        raise _Usage(f"no audit record at {ref}: no such file")
    return audit


def _read_audit_record(ref: str, policy: Policy) -> dict[str, Any]:
    from .audit import NotAnAuditRecord, validate_record

    try:
        return validate_record(_audit_reader(ref, policy).read(ref), ref)
    except NotAnAuditRecord as exc:
        raise _Usage(str(exc)) from None
    except FileNotFoundError:
        raise _Usage(f"no audit record at {ref}: no such file") from None
    except IsADirectoryError:
        raise _Usage(f"no audit record at {ref}: it is a directory; give one record's file") from None
    except _Usage:
        raise
    except Exception as exc:
        code = cause_code(exc)
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise _Usage(f"no audit record at {ref}: no such object ({code})") from None
        raise


def _put_back(policy: Policy, record: dict[str, Any]) -> str:
    from .wiring import build_stores

    if not record.get("restorable"):
        raise ValueError(f"the audit record says this lock cannot be re-created: {record.get('restore_note', 'not restorable')}")
    stores = {s.name: s for s in build_stores(policy)}
    store = stores.get(record["store"])
    if store is None:
        raise ValueError(f"store {record['store']!r} from the audit record is not in the policy's stores "
                         f"({', '.join(stores) or 'none'})")
    return store.restore(record["item"])


def _explain(policy: Policy, args: argparse.Namespace, out, err) -> int:
    from .commands.explain import explain_lock, render, to_json
    from .wiring import Deps, build_components

    deps = Deps.default(observe=False)  # explain reads the lease observations, never records them
    try:  # the stores and checkers a run builds (the HCP run checker too): explain shows what a run decides
        parts = build_components(policy, deps, sinks=False)
    except Exception as exc:
        return _explain_error(args, out, err, EXIT_CONFIG, "setup_error", f"cannot set up: {type(exc).__name__}: {exc}")
    locks, near, failed = _lookup(parts.stores, args.lock_path)
    if not locks:
        return _explain_missing(args, out, err, parts.stores, near, failed)
    for f in failed:
        print(f"warning: cannot read store {f['store']} ({f['code']}): {f['message']}", file=err)
    docs = [explain_lock(lock, policy, parts.liveness, deps.clock(), check_anyway=args.check_anyway) for lock in locks]
    if args.json:
        print(to_json(docs), file=out)
    else:
        print("\n\n".join(render(d) for d in docs), file=out)
    return EXIT_ERRORS if failed else EXIT_OK


def _lookup(stores: list[Any], lock_path: str) -> tuple[list[Any], list[str], list[dict[str, str]]]:
    """The locks whose path or key is ``lock_path``; the paths that end with it (hints); the stores that failed."""
    found: list[Any] = []
    near: set[str] = set()
    failed: list[dict[str, str]] = []
    tail = "/" + lock_path.lstrip("/")
    for store in stores:
        try:
            store.validate()
            for lock in store.scan():
                if lock_path in (lock.lock_path, lock.key):
                    found.append(lock)
                elif lock.lock_path.endswith(tail) or lock.key.endswith(tail):
                    near.add(lock.lock_path)
        except Exception as exc:  # one store that cannot be read: named, never "no lock"
            failed.append({"store": store.name, "code": cause_code(exc), "message": str(exc) or type(exc).__name__})
    return found, sorted(near), failed


def _explain_missing(args: argparse.Namespace, out, err, stores: list[Any], near: list[str],
                     failed: list[dict[str, str]]) -> int:
    if failed:
        msg = "; ".join(f"cannot read store {f['store']} ({f['code']}): {f['message']}" for f in failed)
        return _explain_error(args, out, err, EXIT_ERRORS, "store_error", msg, stores=failed)
    msg = f"no lock with path or key {args.lock_path!r} in {', '.join(s.name for s in stores) or 'no store'}"
    hints = [f"did you mean {p!r}?" for p in near[:5]]
    hints.append("locks' paths are <bucket>/<state key>, as `scan` lists them")
    return _explain_error(args, out, err, EXIT_ERRORS, "not_found", msg, hints=hints, did_you_mean=near[:5])


def _explain_error(args: argparse.Namespace, out, err, code: int, kind: str, message: str,
                   hints: Sequence[str] = (), **extra: Any) -> int:
    if args.json:
        doc = {"error": kind, "lock_path": args.lock_path, "message": message, **extra}
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(f"error: {message}", file=err)
        for hint in hints:
            print(f"  {hint}", file=err)
    return code
