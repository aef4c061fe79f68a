"""``python -m reaper claim``: run in a CI job before Terraform.

Needs no policy file: the table comes from ``--table`` or REAPER_CLAIMS_TABLE,
the job's identity from GITHUB_* / CI_* variables, ``Who`` from this machine
exactly as Terraform computes it. IAM: ``dynamodb:PutItem`` on the table.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from .. import aws
from ..aws import error_code, error_message
from ..durations import format_duration, parse_duration
from ..liveness.claims import ClaimError, ClaimStore, claim_from_env, claim_time
from ..liveness.identity import terraform_who

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


def add_arguments(sp: argparse.ArgumentParser, output_flags: bool = True) -> None:
    """The claim's options; ``output_flags=False`` when the caller's parser already has --json and --quiet."""
    sp.add_argument("--table", help="claims table (default: $REAPER_CLAIMS_TABLE)")
    sp.add_argument("--region", help="AWS region of the table (default: the usual AWS settings)")
    sp.add_argument("--ttl", default="7d", help="how long DynamoDB keeps the claim (default 7d)")
    sp.add_argument("--who", help="override user@hostname (default: computed exactly as Terraform does)")
    sp.add_argument("--provider", choices=["github", "gitlab"], help="default: detected from the CI variables")
    sp.add_argument("--api-url", help="the CI API base URL (default: GITHUB_API_URL / CI_API_V4_URL)")
    sp.add_argument("--repo", help="GitHub owner/name (default: GITHUB_REPOSITORY)")
    sp.add_argument("--run-id", type=int, help="GitHub run id / GitLab pipeline id")
    sp.add_argument("--run-attempt", type=int, help="GitHub run attempt (default: GITHUB_RUN_ATTEMPT)")
    sp.add_argument("--job-id", type=int, help="numeric job id (GitHub: ${{ job.check_run_id }}; GitLab: CI_JOB_ID)")
    sp.add_argument("--project-id", type=int, help="GitLab project id (default: CI_PROJECT_ID)")
    sp.add_argument("--dry-run", action="store_true", help="print the claim, write nothing")
    if output_flags:
        sp.add_argument("--json", action="store_true", help="print the claim as JSON")
        sp.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace, out: Any, err: Any, env: Mapping[str, str] | None = None,
        client_factory: Callable[..., Any] | None = None, now: datetime | None = None) -> int:
    env = os.environ if env is None else env
    now = now or datetime.now(UTC)
    table = args.table or env.get("REAPER_CLAIMS_TABLE")
    if not table and not args.dry_run:
        print("error: no claims table: pass --table or set REAPER_CLAIMS_TABLE", file=err)
        return EXIT_USAGE
    try:
        ttl = parse_duration(args.ttl)
        who = args.who or terraform_who(env)
        claim = claim_from_env(env, who, now, ttl, overrides={
            "provider": args.provider, "api_url": args.api_url, "repo": args.repo, "run_id": args.run_id,
            "run_attempt": args.run_attempt, "job_id": args.job_id, "project_id": args.project_id,
        })
    except (ClaimError, ValueError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    if who.startswith("@") or who.endswith("@"):
        print(f"warning: Who {who!r} lacks a user or host name; Terraform would write the same", file=err)
    doc = {"table": table, "who": claim.who, "claimed_at": claim_time(claim.claimed_at), "provider": claim.provider,
           "claim": claim.describe(), "url": claim.url, "expires_at": claim.expires_at, "dry_run": bool(args.dry_run),
           "item": claim.to_item()}
    if table and not args.dry_run:
        factory = client_factory or aws.client
        try:
            ClaimStore(factory("dynamodb", args.region), table).put(claim)
        except Exception as exc:
            code, msg = error_code(exc), error_message(exc)
            print(f"error: could not write the claim to {table}: {code}: {msg[:300]}", file=err)
            print("  the lock this job takes will be judged without a claim (unknown means keep)", file=err)
            return EXIT_ERRORS
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    elif not args.quiet:
        verb = "would claim" if args.dry_run else "claimed"
        print(f"{verb} {claim.who} for {claim.describe()} in {table or '(no table)'} "
              f"at {doc['claimed_at']} (kept {format_duration(ttl)})", file=out)
    return EXIT_OK
