"""``make demo``: Lock Reaper against a local AWS emulator, with realistic locks.

What it does, in order:
1. starts ``moto_server`` on a free 127.0.0.1 port;
2. creates the lock table ``terraform-locks``, an audit bucket, an SNS topic with
   an SQS queue subscribed (to show the alert actually sent) and an EventBridge
   rule that forwards ``Terraform Lock Reaped`` events to a second queue;
3. fills the table with locks like the ones CI leaves behind (GitHub-hosted and
   GitLab runners, plan and apply, fresh and hours old, a workspace lock), an
   ``-md5`` digest for every state, and three suspicious items (malformed Info,
   Created in the future, Path different from LockID);
4. writes a policy file into ``.demo/`` and runs the real CLI as subprocesses:
   ``python -m reaper scan`` then ``python -m reaper reap --enforce``;
5. shows what was reaped and kept and why, the audit records, the SNS message
   and the EventBridge events; then stops the emulator (also on Ctrl-C or errors).

Run: ``python -m devtools.demo [--workdir DIR]``. Exit 0 when the demo ran.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from .locks import create_lock_table, digest_item, info_json, lock_id as new_lock_id
from .motoserver import MotoServer

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
TABLE = "terraform-locks"
STATE_BUCKET = "acme-tf-state"
AUDIT_BUCKET = "acme-lock-reaper-audit"
AUDIT_PREFIX = "lock-reaper/audit/"
TOPIC = "lock-reaper-alerts"
ALERTS_QUEUE = "lock-reaper-alerts-inbox"
EVENTS_QUEUE = "lock-reaper-events-inbox"
EVENT_RULE = "lock-reaper-reaped"
DETAIL_TYPE = "Terraform Lock Reaped"

GITHUB_AZ = "runner@fv-az581-229"  # GitHub-hosted runner (Azure VM naming)
GITHUB_VM = "runner@runnervmg1sw1"  # GitHub-hosted runner (newer images)
GITLAB = "root@runner-t3zn2hkp-project-4217-concurrent-0"  # GitLab runner, docker executor

POLICY = f"""\
# Demo policy written by `make demo`. Same format as config/policy.yaml.
mode: report                 # the CLI's --enforce turns deletes on for one run
max_deletes_per_run: 10
min_age: 15m
clock_skew: 5m
stores:
  - type: dynamodb
    table: {TABLE}
rules:                       # first match wins
  - name: plans
    match: "*"
    operations: [OperationTypePlan, OperationTypeRefresh]
    max_age: 1h
    hard_max_age: 4h
  - name: prod-applies
    match: "*/prod/*"
    max_age: 6h
    hard_max_age: 12h
  - name: default
    match: "*"
    max_age: 2h
    hard_max_age: 6h
exclude:
  - "*/bootstrap/*"
audit:
  s3_bucket: {AUDIT_BUCKET}
  prefix: {AUDIT_PREFIX}
alerts:
  sns_topic_arn: arn:aws:sns:{REGION}:{ACCOUNT}:{TOPIC}
  event_bus: default
  metrics:
    enabled: false
"""


@dataclass(frozen=True)
class Seed:
    lock_id: str  # the table key
    note: str  # what the item stands for (shown before the run)
    info: str | None = None  # raw Info string (None for digest-only states)
    who: str = ""
    operation: str = ""
    age: timedelta | None = None


def _path(key: str) -> str:
    return f"{STATE_BUCKET}/{key}"


def seed_items(now: datetime) -> list[Seed]:
    """The demo's lock items, relative to ``now``."""
    def lock(key: str, age: timedelta, op: str, who: str, note: str, version: str = "1.5.7") -> Seed:
        p = _path(key)
        return Seed(p, note, info_json(p, age, now, operation=op, who=who, version=version), who, op, age)

    h = timedelta(hours=1)
    m = timedelta(minutes=1)
    seeds = [
        lock("prod/network/terraform.tfstate", 4 * m, "OperationTypeApply", GITHUB_AZ,
             "apply running right now on a GitHub-hosted runner"),
        lock("prod/dns/terraform.tfstate", 30 * h, "OperationTypeApply", GITLAB,
             "apply from a GitLab job killed yesterday", version="1.9.8"),
        lock("prod/eks/terraform.tfstate", 8 * h, "OperationTypeApply", GITHUB_VM,
             "prod apply, 8 hours old (cancelled workflow)"),
        lock("staging/app/terraform.tfstate", 7 * h, "OperationTypePlan", GITHUB_VM,
             "plan from a cancelled pull-request workflow"),
        lock("dev/sandbox/terraform.tfstate", 3 * h, "OperationTypeApply", GITHUB_AZ,
             "dev apply, 3 hours old"),
        lock("env:/staging/services/api/terraform.tfstate", 9 * h, "OperationTypeApply", GITLAB,
             "workspace 'staging' lock (env:/ prefix)", version="1.9.8"),
        lock("bootstrap/org/terraform.tfstate", 5 * 24 * h, "OperationTypeApply", "alice@laptop-7",
             "bootstrap state, excluded by the policy"),
        lock("prod/data/terraform.tfstate", -2 * h, "OperationTypeApply", GITHUB_AZ,
             "Created 2 hours in the future (bad clock)"),
    ]
    # Info is not JSON: a truncated write.
    bad = _path("legacy/terraform.tfstate")
    seeds.append(Seed(bad, "malformed Info (truncated JSON)",
                      '{"ID":"' + new_lock_id() + '","Operation":"OperationTypeApply","Who":"runner@fv-az5'))
    # Path differs from LockID: someone copied an item by hand.
    iam = _path("prod/iam/terraform.tfstate")
    other = _path("prod/iam-old/terraform.tfstate")
    info = json.loads(info_json(other, 2 * 24 * h, now, who=GITHUB_AZ))
    seeds.append(Seed(iam, "Info.Path differs from LockID (hand-copied item)",
                      json.dumps(info, separators=(",", ":")), GITHUB_AZ, "OperationTypeApply", 2 * 24 * h))
    return seeds


STATES_WITHOUT_LOCKS = [
    "prod/vpc/terraform.tfstate",
    "prod/rds/terraform.tfstate",
    "staging/network/terraform.tfstate",
    "env:/qa/services/api/terraform.tfstate",
    "shared/iam-roles/terraform.tfstate",
]


# ---------------------------------------------------------------------------
class Out:
    """Plain, readable output: numbered headings and indented blocks."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.step = 0

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def heading(self, title: str) -> None:
        self.step += 1
        text = f"{self.step}. {title}"
        self.line()
        self.line(text)
        self.line("=" * len(text))

    def sub(self, title: str) -> None:
        self.line()
        self.line(f"-- {title}")

    def block(self, text: str, indent: str = "  ") -> None:
        for ln in text.rstrip("\n").splitlines():
            self.line((indent + ln).rstrip())


def _clients(endpoint: str) -> dict[str, Any]:
    import boto3

    kw = {"region_name": REGION, "endpoint_url": endpoint,
          "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return {name: boto3.client(name, **kw) for name in ("dynamodb", "s3", "sns", "sqs", "events")}


def _age(td: timedelta | None) -> str:
    if td is None:
        return "-"
    secs = int(td.total_seconds())
    sign = "-" if secs < 0 else ""
    secs = abs(secs)
    if secs >= 86400:
        return f"{sign}{secs // 86400}d{(secs % 86400) // 3600}h"
    if secs >= 3600:
        return f"{sign}{secs // 3600}h{(secs % 3600) // 60:02d}m"
    return f"{sign}{secs // 60}m"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _all_items(ddb: Any) -> dict[str, dict[str, Any]]:
    items: dict[str, dict[str, Any]] = {}
    for page in ddb.get_paginator("scan").paginate(TableName=TABLE, ConsistentRead=True):
        for it in page["Items"]:
            items[it["LockID"]["S"]] = it
    return items


# ---------------------------------------------------------------------------
def setup_aws(c: dict[str, Any]) -> dict[str, str]:
    """Lock table, audit bucket, SNS topic -> SQS, EventBridge rule -> SQS."""
    create_lock_table(c["dynamodb"], TABLE)
    c["s3"].create_bucket(Bucket=AUDIT_BUCKET)
    c["s3"].create_bucket(Bucket=STATE_BUCKET)
    topic_arn = c["sns"].create_topic(Name=TOPIC)["TopicArn"]
    alerts_url = c["sqs"].create_queue(QueueName=ALERTS_QUEUE)["QueueUrl"]
    alerts_arn = c["sqs"].get_queue_attributes(QueueUrl=alerts_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    c["sns"].subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=alerts_arn)
    events_url = c["sqs"].create_queue(QueueName=EVENTS_QUEUE)["QueueUrl"]
    events_arn = c["sqs"].get_queue_attributes(QueueUrl=events_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    c["events"].put_rule(
        Name=EVENT_RULE,
        EventPattern=json.dumps({"source": ["lock-reaper"], "detail-type": [DETAIL_TYPE]}),
        State="ENABLED",
    )
    c["events"].put_targets(Rule=EVENT_RULE, Targets=[{"Id": "inbox", "Arn": events_arn}])
    return {"topic_arn": topic_arn, "alerts_url": alerts_url, "events_url": events_url}


def fill_table(ddb: Any, seeds: list[Seed]) -> int:
    """Write the seeded locks and one digest per state; returns the number of digests."""
    digests = 0
    for s in seeds:
        if s.info is not None:
            ddb.put_item(TableName=TABLE, Item={"LockID": {"S": s.lock_id}, "Info": {"S": s.info}})
    for path in sorted({s.lock_id for s in seeds} | {_path(k) for k in STATES_WITHOUT_LOCKS}):
        ddb.put_item(TableName=TABLE, Item=digest_item(path))
        digests += 1
    return digests


def run_cli(out: Out, args: list[str], env: dict[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    shown = "python -m reaper " + " ".join(args)
    out.line(f"$ {shown}")
    proc = subprocess.run([sys.executable, "-m", "reaper", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.stderr.strip():
        out.block(proc.stderr, indent="  > ")
    out.block(proc.stdout)
    out.line(f"  (exit code {proc.returncode})")
    return proc


def _receive(sqs: Any, url: str, want: int, wait: float = 5.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    while len(got) < want and time.monotonic() < deadline:
        resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        got.extend(resp.get("Messages", []))
    return got


def _report_from_sns(body: str) -> dict[str, Any] | None:
    for marker in ("--- JSON ---\n", "--- JSON (kept locks omitted) ---\n"):
        if marker in body:
            try:
                return json.loads(body.split(marker, 1)[1])
            except ValueError:
                return None
    return None


def _main_reason(lock: dict[str, Any]) -> str:
    reasons = [r for r in lock.get("reasons", []) if r != "report mode: not deleted"]
    if not reasons:
        return "-"
    if lock.get("outcome") == "reaped":
        return "; ".join(r for r in reasons if not r.startswith("deleted"))
    return reasons[-1]


# ---------------------------------------------------------------------------
def run_demo(out: Out, workdir: Path) -> dict[str, Any]:
    """The demo itself. Returns the figures the test checks."""
    started = time.monotonic()
    result: dict[str, Any] = {}

    out.heading("Start a local AWS emulator (moto_server)")
    server = MotoServer()
    out.line(f"  starting moto_server on {server.endpoint} ...")
    try:
        server.start()
        out.line("  ready. No AWS account is used: everything below talks to this emulator.")
        c = _clients(server.endpoint)
        res = setup_aws(c)
        out.line(f"  created DynamoDB lock table  {TABLE} (key LockID, as Terraform's S3 backend expects)")
        out.line(f"  created S3 audit bucket      s3://{AUDIT_BUCKET}/{AUDIT_PREFIX}")
        out.line(f"  created SNS topic            {res['topic_arn']}")
        out.line(f"     subscribed SQS queue      {ALERTS_QUEUE} (so we can read the alert)")
        out.line(f"  created EventBridge rule     {EVENT_RULE}: detail-type '{DETAIL_TYPE}' -> SQS {EVENTS_QUEUE}")

        out.heading("Fill the lock table with what CI leaves behind")
        now = datetime.now(timezone.utc)
        seeds = seed_items(now)
        n_digests = fill_table(c["dynamodb"], seeds)
        rows = []
        for s in seeds:
            rows.append([s.lock_id, s.operation.replace("OperationType", "") or "?", s.who or "?", _age(s.age), s.note])
        out.block(_table(rows, ["LOCK ID (bucket/state key)", "OP", "WHO", "AGE", "WHAT IT IS"]))
        out.line(f"  + {n_digests} '-md5' state digests (one per state; never locks, never touched)")
        before = _all_items(c["dynamodb"])
        digests_before = {k: v for k, v in before.items() if "Digest" in v}
        result["digests"] = len(digests_before)

        out.heading("Write the policy file")
        workdir.mkdir(parents=True, exist_ok=True)
        policy_path = workdir / "policy.yaml"
        policy_path.write_text(POLICY, encoding="utf-8")
        shown = os.path.relpath(policy_path, ROOT) if policy_path.is_relative_to(ROOT) else str(policy_path)
        out.line(f"  {shown}:")
        out.block(POLICY, indent="  | ")
        out.line("  No CI liveness checker is configured in this demo, so every holder is 'unknown':")
        out.line("  unknown means keep, unless a lock is older than its rule's hard_max_age.")

        env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")}
        env.update(server.env())
        env.update({"AWS_EC2_METADATA_DISABLED": "true", "PYTHONWARNINGS": "ignore"})

        out.heading("Scan (read-only: lists every lock with its decision, deletes nothing)")
        scan = run_cli(out, ["scan", "--config", shown], env)
        result["scan_exit"] = scan.returncode
        after_scan = _all_items(c["dynamodb"])
        result["scan_deleted"] = len(before) - len(after_scan)

        out.heading("Reap (enforce mode: audit first, then a conditional delete, then alerts)")
        reap = run_cli(out, ["reap", "--config", shown, "--enforce"], env)
        result["reap_exit"] = reap.returncode
        after = _all_items(c["dynamodb"])

        # ---- what happened: ground truth from the table, reasons from the alert ----
        sns_msgs = _receive(c["sqs"], res["alerts_url"], want=1)
        alert = json.loads(sns_msgs[0]["Body"]) if sns_msgs else None
        report = _report_from_sns(alert.get("Message", "")) if alert else None
        reasons = {lk["lock_path"]: lk for lk in (report or {}).get("locks", [])}

        gone = sorted(k for k, v in before.items() if "Info" in v and k not in after)
        kept = sorted(k for k, v in after.items() if "Info" in v)
        digests_after = {k: v for k, v in after.items() if "Digest" in v}
        result.update(reaped=len(gone), kept=len(kept), reaped_ids=gone,
                      digests_unchanged=digests_after == digests_before)

        out.heading("What happened")
        out.line(f"  Reaped ({len(gone)}): deleted from {TABLE}, each recorded in the audit bucket first")
        for k in gone:
            out.line(f"    - {k}")
            out.line(f"        {_main_reason(reasons.get(k, {}))}")
        out.line(f"  Kept ({len(kept)}): still in {TABLE}")
        for k in kept:
            out.line(f"    - {k}")
            out.line(f"        {_main_reason(reasons.get(k, {}))}")
        out.line(f"  State digests: {len(digests_before)} before, {len(digests_after)} after, "
                 + ("all unchanged" if result["digests_unchanged"] else "CHANGED (this is a bug)"))

        out.heading("Audit records (written before each delete; `restore` reads them)")
        objs = c["s3"].list_objects_v2(Bucket=AUDIT_BUCKET, Prefix=AUDIT_PREFIX).get("Contents", [])
        result["audit_records"] = len(objs)
        for o in objs:
            out.line(f"  s3://{AUDIT_BUCKET}/{o['Key']}  ({o['Size']} bytes)")
        if objs:
            rec = json.loads(c["s3"].get_object(Bucket=AUDIT_BUCKET, Key=objs[0]["Key"])["Body"].read())
            excerpt = {k: rec.get(k) for k in ("run_id", "recorded_at", "store", "lock_path", "lock_id", "rule", "reasons")}
            excerpt["item"] = rec.get("item")
            out.sub("first record (excerpt)")
            out.block(json.dumps(excerpt, indent=2), indent="  | ")
            out.line("  To put a reaped lock back (never overwrites a newer lock):")
            out.line(f"    python -m reaper restore --config {shown} s3://{AUDIT_BUCKET}/{objs[0]['Key']}")

        out.heading("The SNS alert that was sent (read back from the subscribed SQS queue)")
        result["sns_received"] = len(sns_msgs)
        if alert:
            text = alert.get("Message", "")
            readable = text.split("\n\n--- JSON", 1)[0]
            result["sns_subject"] = alert.get("Subject", "")
            out.line(f"  Subject: {alert.get('Subject', '')}")
            out.block(readable, indent="  | ")
            extra = len(text) - len(readable)
            if extra > 0:
                out.line(f"  | ... followed by the full run report as JSON ({extra} characters)")
        else:
            out.line("  no SNS message arrived")

        out.heading("EventBridge events (one per reaped lock, routed by the rule to SQS)")
        events = _receive(c["sqs"], res["events_url"], want=max(len(gone), 1), wait=5.0 if gone else 1.0)
        result["events"] = len(events)
        for msg in events:
            ev = json.loads(msg["Body"])
            d = ev.get("detail", {})
            out.line(f"  {ev.get('source')} / {ev.get('detail-type')}: {d.get('lock_path')} "
                     f"(lock {str(d.get('lock_id', ''))[:8]}, by {d.get('who')}, outcome {d.get('outcome')})")
        if not events:
            out.line("  no events arrived")
    finally:
        server.stop()
    result["seconds"] = round(time.monotonic() - started, 1)
    out.heading("Done")
    out.line(f"  Emulator stopped. The demo took {result['seconds']} s.")
    out.line("  Next: edit config/policy.yaml, then `python -m reaper validate --config config/policy.yaml`.")
    return result


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, stream: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(ROOT / ".demo"), help="where the demo policy is written (default .demo/)")
    args = parser.parse_args(argv)
    out = Out(stream or sys.stdout)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `kill <pid>` stops the demo like Ctrl-C does: the emulator is stopped on the way out.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    out.line("Lock Reaper demo: stale Terraform locks, found and removed safely, against a local AWS emulator.")
    try:
        result = run_demo(out, Path(args.workdir))
    except KeyboardInterrupt:
        out.line("\ninterrupted: the emulator was stopped.")
        return 130
    except Exception as exc:  # a readable line, no stack trace
        out.line(f"\ndemo failed: {type(exc).__name__}: {textwrap.shorten(str(exc), 400)}")
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    problems = []
    if result.get("scan_deleted") != 0:
        problems.append("scan changed the table")
    if not result.get("digests_unchanged"):
        problems.append("a state digest changed")
    if result.get("reap_exit") != 0 or result.get("scan_exit") != 0:
        problems.append("the CLI reported errors")
    if problems:
        out.line("demo finished with problems: " + "; ".join(problems))
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
