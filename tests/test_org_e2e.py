"""Issue 13 end to end over moto_server: an organization with a central account and member accounts.

moto keeps every service's state per account, the account taken from the request's credentials:
after ``sts:AssumeRole`` into ``arn:aws:iam::<member>:role/...`` it serves that member. The test:

- the central (management) account makes the organization; three member accounts are created in it
  and a fourth is closed (SUSPENDED, so ``--org`` leaves it out);
- members 1 and 2 have a lock table with real-shape Terraform locks (devtools.locks) and the read-only
  scan role (``LockReaperScan``: DescribeTable and Scan only, trusting the central account with an
  external id); member 3 has a lock table but no scan role (the StackSet has not reached it);
- with moto's IAM enforcement on, the central operator (an IAM user allowed sts:AssumeRole on the two
  deployed roles and organizations:ListAccounts) runs ``scan --org`` and ``scan --accounts``: one
  table, both members, member 3 reported with AccessDenied and the others scanned;
- then each member runs ``reap --enforce`` as its own scheduled function would (the CLI with that
  member's credentials, the same policy file, the member's audit bucket and event bus from the
  environment as the stack sets them): reaps in both, audit records in each member's bucket;
- events: each member's EventBridge sink puts "Terraform Lock Reaped" on the member's default bus; a
  rule there copies them to a member SQS queue (what each member put), and a second rule forwards them
  to the central bus, where a rule delivers them to a central queue.

What moto does not prove (H5's synth tests check the templates instead): moto evaluates neither a
role's trust policy across accounts (so member 3's AccessDenied comes from the central principal's
own policy, which names only the deployed roles, not from a missing role or trust policy), nor the
external-id condition, nor the central bus's resource policy (aws:PrincipalOrgID), nor the rule
target's role. It does deliver a rule's event to an event bus of another account.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import create_lock_table, digest_item, info_json, lock_item

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
CENTRAL = "999999999999"
TABLE = "terraform-locks"
SCAN_ROLE = "LockReaperScan"
ROLE_TEMPLATE = "arn:aws:iam::{account}:role/" + SCAN_ROLE
EXTERNAL_ID = "lock-reaper-ops"
CENTRAL_BUS = "lock-reaper-central"
POLICY = f"""\
mode: report
stores:
  - {{type: dynamodb, table: {TABLE}}}
rules:
  - {{name: default, match: '*', max_age: 6h, hard_max_age: 1d}}
liveness:
  state_activity: {{enabled: false}}
"""


class Account:
    """Clients signing as one account: an assumed role there (moto needs no such role while IAM is off)."""

    def __init__(self, endpoint: str, account: str, role: str = "OrganizationAccountAccessRole") -> None:
        sts = boto3.client("sts", region_name=REGION, endpoint_url=endpoint)
        c = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/{role}", RoleSessionName="setup")["Credentials"]
        self.id = account
        self.endpoint = endpoint
        self.env = {"AWS_ACCESS_KEY_ID": c["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
                    "AWS_SESSION_TOKEN": c["SessionToken"]}

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint,
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
                            aws_session_token=self.env["AWS_SESSION_TOKEN"])


def iam_enforced(endpoint: str, on: bool) -> None:
    """moto's IAM simulation: every request signed and checked against the caller's policies (on), or none."""
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf", method="POST",
                                 headers={"Content-Type": "text/plain"})  # not a form: moto reads the raw body
    with urllib.request.urlopen(req, timeout=10):
        pass


@pytest.fixture
def enforced_iam(moto_env: Any) -> Iterator[Any]:
    try:
        yield lambda on: iam_enforced(moto_env.endpoint, on)
    finally:
        iam_enforced(moto_env.endpoint, False)  # the session's moto_server serves the other tests unenforced


def seed_member(member: Account, now: datetime) -> dict[str, str]:
    """A lock table as Terraform's S3 backend leaves it: a stale apply, a fresh plan, their digests."""
    ddb = member.client("dynamodb")
    create_lock_table(ddb, TABLE)
    paths = {f"tfstate-{member.id}/prod/network/terraform.tfstate": timedelta(days=2),
             f"tfstate-{member.id}/dev/app/terraform.tfstate": timedelta(minutes=4)}
    infos = {}
    for path, age in paths.items():
        op = "OperationTypeApply" if age > timedelta(hours=1) else "OperationTypePlan"
        infos[path] = info_json(path, age, now, operation=op, who=f"runner@ip-10-0-{member.id[-2:]}-7")
        ddb.put_item(TableName=TABLE, Item=lock_item(path, infos[path]))
        ddb.put_item(TableName=TABLE, Item=digest_item(path))
    member.client("s3").create_bucket(Bucket=f"lock-reaper-audit-{member.id}")
    return infos


def add_scan_role(member: Account) -> None:
    """The member stack's read-only scan role: trusts the central account with the external id; reads only."""
    iam = member.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{CENTRAL}:root"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}}}]}
    iam.create_role(RoleName=SCAN_ROLE, AssumeRolePolicyDocument=json.dumps(trust))
    # moto checks DynamoDB permissions by action (its resource is "*"): no delete, no put, no S3 write
    read = {"Version": "2012-10-17", "Statement": [{
        "Sid": "ReadLockTables", "Effect": "Allow", "Action": ["dynamodb:DescribeTable", "dynamodb:Scan"], "Resource": "*"}]}
    iam.put_role_policy(RoleName=SCAN_ROLE, PolicyName="read-locks", PolicyDocument=json.dumps(read))


def add_event_routes(member: Account) -> str:
    """Rules on the member's default bus: into a member queue, and to the central bus. Returns the queue URL."""
    sqs, events = member.client("sqs"), member.client("events")
    url = sqs.create_queue(QueueName="lock-reaper-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = json.dumps({"source": ["lock-reaper"]})
    events.put_rule(Name="lock-reaper-local", EventPattern=pattern)
    events.put_targets(Rule="lock-reaper-local", Targets=[{"Id": "queue", "Arn": arn}])
    events.put_rule(Name="lock-reaper-to-central", EventPattern=pattern)
    events.put_targets(Rule="lock-reaper-to-central", Targets=[{
        "Id": "central", "Arn": f"arn:aws:events:{REGION}:{CENTRAL}:event-bus/{CENTRAL_BUS}",
        "RoleArn": f"arn:aws:iam::{member.id}:role/lock-reaper-forward"}])
    return url


def setup_central(central: Account, deployed: list[str]) -> tuple[dict[str, str], str]:
    """The operator (an IAM user of the central account) and the central bus's queue."""
    iam = central.client("iam")
    iam.create_user(UserName="ops")
    allow = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": [ROLE_TEMPLATE.format(account=a) for a in deployed]},
        {"Effect": "Allow", "Action": "organizations:ListAccounts", "Resource": "*"}]}
    iam.put_user_policy(UserName="ops", PolicyName="scan-members", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="ops")["AccessKey"]
    events, sqs = central.client("events"), central.client("sqs")
    events.create_event_bus(Name=CENTRAL_BUS)
    url = sqs.create_queue(QueueName="lock-reaper-central")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="reaped", EventBusName=CENTRAL_BUS,
                    EventPattern=json.dumps({"source": ["lock-reaper"], "detail-type": ["Terraform Lock Reaped"]}))
    events.put_targets(Rule="reaped", EventBusName=CENTRAL_BUS, Targets=[{"Id": "queue", "Arn": arn}])
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}, url


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while True:
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not msgs:
            return got
        got += [json.loads(m["Body"]) for m in msgs]
        for m in msgs:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def cli(tmp_path: Path, moto_env: Any, creds: dict[str, str], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("REAPER_")}
    full = {**base, **moto_env.env(), "PYTHONPATH": str(ROOT), **env}
    full.pop("AWS_SESSION_TOKEN", None)
    full.update(creds)  # an IAM user's key has no session token; an assumed role's has one
    return subprocess.run([sys.executable, "-m", "reaper", *args], cwd=tmp_path, env=full, capture_output=True, text=True,
                          timeout=120)


def test_organization_scan_reap_and_events(moto_env: Any, enforced_iam: Any, tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    central = Account(moto_env.endpoint, CENTRAL)
    org = central.client("organizations")
    org.create_organization(FeatureSet="ALL")
    ids = [org.create_account(AccountName=f"team-{i}", Email=f"team-{i}@example.com")["CreateAccountStatus"]["AccountId"]
           for i in range(1, 5)]
    m1, m2, m3, closed = ids
    org.close_account(AccountId=closed)
    members = {a: Account(moto_env.endpoint, a) for a in (m1, m2, m3)}
    infos = {a: seed_member(members[a], now) for a in (m1, m2, m3)}
    for a in (m1, m2):
        add_scan_role(members[a])
    queues = {a: add_event_routes(members[a]) for a in (m1, m2)}
    ops, central_queue = setup_central(central, deployed=[m1, m2])
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    stale = {a: f"tfstate-{a}/prod/network/terraform.tfstate" for a in (m1, m2, m3)}

    # ---- the central view, with IAM enforced: --org lists the ACTIVE accounts; member 3 is AccessDenied
    enforced_iam(True)
    scan = cli(tmp_path, moto_env, ops, "scan", "--config", str(policy), "--role-arn", ROLE_TEMPLATE, "--org",
               "--exclude", CENTRAL, "--external-id", EXTERNAL_ID, "--json", "--quiet")
    assert scan.returncode == 1, scan.stderr  # one account failed
    (tmp_path / "scan-org.json").write_text(scan.stdout)  # docs/many-accounts-cli.md shows a run of this
    doc = json.loads(scan.stdout)
    assert [s["account"] for s in doc["accounts"]] == sorted([m1, m2, m3]), "ACTIVE members only, sorted; closed one left out"
    by = {s["account"]: s for s in doc["accounts"]}
    assert by[m3]["status"] == "error" and by[m3]["error_stage"] == "assume_role"
    assert by[m3]["error_code"] == "AccessDenied" and by[m3]["report"] is None
    for a in (m1, m2):
        assert by[a]["status"] == "ok", by[a]
        outcomes = {e["lock_path"]: (e["outcome"], e["account"]) for e in by[a]["report"]["locks"]}
        assert outcomes == {stale[a]: ("would_reap", a), f"tfstate-{a}/dev/app/terraform.tfstate": ("kept", a)}
    assert doc["summary"]["accounts_failed"] == 1 and doc["summary"]["outcomes"]["would_reap"] == 2

    table = cli(tmp_path, moto_env, ops, "scan", "--config", str(policy), "--role-arn", ROLE_TEMPLATE,
                "--accounts", f"{m3},{m2},{m1}", "--external-id", EXTERNAL_ID, "--wide")
    assert table.returncode == 1, table.stderr
    (tmp_path / "scan-table.txt").write_text(table.stdout)  # docs/many-accounts-cli.md shows a run of this
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["ACCOUNT", "STORE"]
    rows = [line.split() for line in lines[1:5]]
    assert [(r[0], r[2]) for r in rows] == sorted((a, p) for a in (m1, m2) for p in infos[a]), "by account, then path"
    assert any(line.startswith(f"ACCOUNT ERROR {m3} (AccessDenied, cannot assume arn:aws:iam::{m3}:role/{SCAN_ROLE})")
               for line in lines)
    assert lines[-1] == "total: 3 accounts (1 failed), 4 locks, 2 kept, 2 would_reap"
    for a in (m1, m2):
        assert f"{a}: {a}: dynamodb:{TABLE}: scanning" not in table.stderr
        assert f"{a}: dynamodb:{TABLE}: scanning" in table.stderr
    enforced_iam(False)

    # nothing was deleted by the scans, and no event was put
    for a in (m1, m2, m3):
        assert _lock_infos(members[a]) == infos[a]
    for a in (m1, m2):
        assert drain(members[a].client("sqs"), queues[a]) == []

    # ---- each member reaps with its own credentials (its function's role), the same policy file
    for a in (m1, m2):
        function = Account(moto_env.endpoint, a, role="lock-reaper-function")
        reap = cli(tmp_path, moto_env, function.env, "reap", "--config", str(policy), "--enforce", "--json",
                   REAPER_AUDIT_BUCKET=f"lock-reaper-audit-{a}", REAPER_EVENT_BUS="default")
        assert reap.returncode == 0, reap.stderr
        report = json.loads(reap.stdout)
        assert [e["lock_path"] for e in report["locks"] if e["outcome"] == "reaped"] == [stale[a]]
        assert [al["status"] for al in report["alerts"] if al["sink"] == "eventbridge"] == ["sent"]
        left = _lock_infos(members[a])
        assert stale[a] not in left and left == {p: i for p, i in infos[a].items() if p != stale[a]}
        s3 = members[a].client("s3")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=f"lock-reaper-audit-{a}").get("Contents", [])]
        records = [json.loads(s3.get_object(Bucket=f"lock-reaper-audit-{a}", Key=k)["Body"].read()) for k in keys]
        assert [r["lock_path"] for r in records if r.get("lock_path")] == [stale[a]], keys
    assert _lock_infos(members[m3]) == infos[m3], "member 3 has no function here: untouched"

    # what each member put on its own bus (a rule there into the member's queue; moto's copy has no
    # `account` field, real EventBridge's has the member's: the lock path names the member here)
    for a in (m1, m2):
        put = drain(members[a].client("sqs"), queues[a])
        assert [(e["detail-type"], e["source"], e["detail"]["lock_path"], e["detail"]["outcome"]) for e in put] == [
            ("Terraform Lock Reaped", "lock-reaper", stale[a], "reaped")]
        assert put[0]["detail"]["audit_ref"].startswith(f"s3://lock-reaper-audit-{a}/")
    # and what reached the central bus: moto delivers a rule's event to another account's bus (it checks
    # neither the central bus's policy nor the rule's role: H5's synth tests check those templates)
    central_events = drain(central.client("sqs"), central_queue)
    assert sorted(e["detail"]["lock_path"] for e in central_events) == sorted(stale[a] for a in (m1, m2))
    assert {e["detail-type"] for e in central_events} == {"Terraform Lock Reaped"}

    # ---- the central view after the reaps: only the fresh plans are left, kept
    enforced_iam(True)
    after = cli(tmp_path, moto_env, ops, "scan", "--config", str(policy), "--role-arn", ROLE_TEMPLATE,
                "--accounts", f"{m1},{m2}", "--external-id", EXTERNAL_ID, "--json", "--quiet")
    assert after.returncode == 0, after.stderr
    doc = json.loads(after.stdout)
    assert {(e["account"], e["outcome"]) for s in doc["accounts"] for e in s["report"]["locks"]} == {(m1, "kept"), (m2, "kept")}
    assert doc["summary_line"] == "total: 2 accounts, 2 locks, 2 kept"


def _lock_infos(member: Account) -> dict[str, str]:
    items = member.client("dynamodb").scan(TableName=TABLE, ConsistentRead=True)["Items"]
    return {i["LockID"]["S"]: i["Info"]["S"] for i in items if "Info" in i}
