"""``lock-reaper run [--lease 2m] [--table T] -- terraform apply ...``: run a command under a lease.

The claim is the one ``claim`` writes (same ``Who``, same CI ids in GitHub Actions and GitLab
CI; ``Provider none`` elsewhere) plus the lease attributes of ``reaper.liveness.lease_fields``.
IAM: ``dynamodb:PutItem``, ``dynamodb:UpdateItem`` and ``dynamodb:GetItem`` on the claims table.
See docs/leases.md.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ..durations import parse_duration
from ..liveness.claims import ClaimError, claim_from_env
from ..liveness.identity import terraform_who
from ..liveness.lease_fields import LeaseState

EXIT_USAGE = 2

DESCRIPTION = """\
Run COMMAND (terraform, tofu, terragrunt, or anything) under a lease, so that Lock Reaper can
tell whether the lock it takes is still held by a live process, in any CI system or on a laptop.

Before the command starts, a claim is written to the claims table (the item `claim` writes,
with a lease: a heartbeat counter renewed every third of --lease). The command runs in its own
process group under a guard that kills the whole group if this wrapper dies, even by SIGKILL.
If the lease cannot be renewed, the command is stopped (SIGINT, SIGTERM, SIGKILL) before the
lease can expire. The first SIGINT or SIGTERM is passed to the command once, as one Ctrl-C;
repeated signals (a CI cancel's SIGTERM) are absorbed for --shield, so Terraform can cancel and
release its lock. When every process of the command has exited, the exit is recorded in the
claim. The exit code is the command's (128+N when a signal N ended it).

One line on stderr at the start and one at the end (--json: JSON objects; stdout is the
command's); the command's arguments and environment are never printed. See docs/leases.md.
"""


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--lease", default="2m", help="the lease: the heartbeat is renewed every third of it; the "
                    "command is stopped before a lease with no renewal could expire (default 2m, at least 4s)")
    sp.add_argument("--table", help="claims table (default: $REAPER_CLAIMS_TABLE)")
    sp.add_argument("--region", help="AWS region of the table (default: the usual AWS settings)")
    sp.add_argument("--who", help="override user@hostname (default: computed exactly as Terraform does)")
    sp.add_argument("--shield", default="20s", help="after the first SIGINT/SIGTERM (sent on to the command as one "
                    "interrupt), absorb repeated signals this long, then send SIGTERM and SIGKILL (default 20s)")
    sp.add_argument("--require-lease", action="store_true", help="exit 1 without running the command when the "
                    "claim cannot be written (default: run it anyway; its lock is then judged without a lease)")
    sp.add_argument("--ttl", default="7d", help="how long DynamoDB keeps the claim (default 7d)")
    sp.add_argument("--no-pidns", action="store_true", help="do not try a PID namespace for the command "
                    "(the guard still kills its group when the wrapper dies)")
    sp.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS ...]",
                    help="the command to run, after `--`")


def run(args: argparse.Namespace, err: Any, env: Mapping[str, str] | None = None,
        client_factory: Callable[..., Any] | None = None) -> int:
    from ..wrapper.lease import LeaseTable, bounded_client
    from ..wrapper.runner import Runner, RunOptions
    from ..wrapper.schedule import Shield, fence_schedule

    env = os.environ if env is None else env
    if not hasattr(os, "fork"):
        print("error: lock-reaper run needs a POSIX system (Linux, macOS): it forks a guard process", file=err)
        return EXIT_USAGE
    argv = list(args.argv or [])
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("error: no command: lock-reaper run [options] -- terraform apply ...", file=err)
        return EXIT_USAGE
    table = args.table or env.get("REAPER_CLAIMS_TABLE")
    if not table:
        print("error: no claims table: pass --table or set REAPER_CLAIMS_TABLE", file=err)
        return EXIT_USAGE
    try:
        schedule = fence_schedule(parse_duration(args.lease).total_seconds())
    except ValueError as exc:
        print(f"error: --lease: {exc}", file=err)
        return EXIT_USAGE
    try:
        shield = Shield(parse_duration(args.shield).total_seconds())
        ttl = parse_duration(args.ttl)
        who = args.who or terraform_who(env)
        claim_from_env(env, who, datetime.now().astimezone(), ttl, allow_none=True)  # fail early on bad CI variables
    except (ClaimError, ValueError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE

    def make_claim(now: datetime, lease: LeaseState) -> Any:
        return claim_from_env(env, who, now, ttl, allow_none=True).model_copy(update={"lease": lease})

    if client_factory is not None:
        client = renew_client = client_factory("dynamodb", args.region)
    else:
        client = bounded_client(args.region, timeout=max(1.0, schedule.call_timeout), attempts=2)
        renew_client = bounded_client(args.region, timeout=schedule.call_timeout, attempts=1)
    opts = RunOptions(argv=argv, schedule=schedule, shield=shield, require_lease=args.require_lease,
                      json=bool(getattr(args, "json", False)), quiet=bool(getattr(args, "quiet", False)),
                      table_name=table)
    runner = Runner(opts, LeaseTable(client, table, renew_client), make_claim, err, env=env,
                    try_pidns=not args.no_pidns)
    return runner.run()
