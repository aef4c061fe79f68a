"""The deployed package, tested as deployed (issue 14).

The asset is built by the bundling code ``cdk synth`` runs (``infra.bundling.bundle``),
for the host platform instead of the Lambda's arm64, with a Python 3.13 that also
writes its ``.pyc``. ``reaper.handler.lambda_handler`` is then run from that
directory in an isolated 3.13 interpreter:

- ``python3.13 -I -S``: ``-I`` drops PYTHONPATH, the user site and the script dir,
  ``-S`` also drops the interpreter's own site-packages (``-I`` alone keeps them);
  the ``-c`` code puts the asset dir first on ``sys.path``, as the Lambda runtime
  puts ``/var/task``. The child prints its ``sys.path`` and every imported module's
  file, and the test checks that nothing comes from outside the asset and the stdlib;
- the environment is the function's ``Environment.Variables`` from the template
  synthesized in-process (``app.build_app``) with a context naming this test's lock
  table and state bucket; every ``Ref``/``Fn::GetAtt`` in it is resolved to a
  moto_server resource created for that logical resource (the table schemas are
  the template's), and an unresolvable value fails the test;
- plus moto_server's endpoint, fake credentials, the region, and a fake Lambda context.

One report-mode run, then one enforce run over a DynamoDB lock and an S3 ``.tflock``
file, checking the JSON logs, the EMF metrics, the audit records in the audit
bucket, the SNS message (through an SQS subscription) and the EventBridge events
(through a rule targeting an SQS queue). Then the late-writer watch: the S3 lock's
holder writes its state after the reap, and the next run reports a late writer.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.locks import create_lock_table, digest_item, info_json, lock_item
from devtools.motoserver import FAKE_CREDENTIALS, MotoServer
from infra import bundling

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
REGION = FAKE_CREDENTIALS["AWS_REGION"]
ACCOUNT = "123456789012"  # moto's default account
LOCK_TABLE = "tf-locks-e2e"
STATE_BUCKET = "tf-state-e2e"
EVENT_BUS = "lock-reaper-e2e"  # an operator's bus: named in the context, a plain string in the template
AUDIT_PREFIX = "lock-reaper/audit/"
NAMESPACE = "LockReaperE2E"
DDB_PATH = f"{STATE_BUCKET}/prod/network/terraform.tfstate"  # a DynamoDB lock (S3 backend + dynamodb_table)
S3_STATE_KEY = "prod/app/terraform.tfstate"  # an S3 lock file (S3 backend + use_lockfile)
S3_LOCK_KEY = S3_STATE_KEY + ".tflock"
S3_PATH = f"{STATE_BUCKET}/{S3_STATE_KEY}"
POLICY = f"""\
mode: report
stores:
  - type: dynamodb
    table: {LOCK_TABLE}
  - type: s3
    bucket: {STATE_BUCKET}
rules:
  - name: default
    match: "*"
    max_age: 2h
    hard_max_age: 1d
audit:
  prefix: {AUDIT_PREFIX}
alerts:
  metrics:
    enabled: true
    namespace: {NAMESPACE}
liveness:
  state_activity:
    enabled: false
"""

# `make test-arm64` (never the default): the real arm64 asset (LOCK_REAPER_ASSET_TARGET=lambda), run by the
# command in LOCK_REAPER_ASSET_RUNNER (qemu-aarch64-static with Debian's arm64 python3.13) instead of a host 3.13,
# each invocation allowed LOCK_REAPER_ASSET_TIMEOUT seconds (emulation is slow).
RUNNER = shlex.split(os.environ.get("LOCK_REAPER_ASSET_RUNNER", ""))
LAMBDA_TARGET = os.environ.get("LOCK_REAPER_ASSET_TARGET") == "lambda"
INVOKE_TIMEOUT = float(os.environ.get("LOCK_REAPER_ASSET_TIMEOUT") or 120)

# The child: the asset dir is the only entry added to sys.path (Lambda's /var/task).
CHILD = r"""
import sys
asset = sys.argv[1]
sys.path.insert(0, asset)
import json, sysconfig, types
from reaper.handler import lambda_handler
context = types.SimpleNamespace(
    function_name="lock-reaper",
    memory_limit_in_mb=512,
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:lock-reaper",
    aws_request_id="c6af9ac6-7b61-11e6-9a41-93e812345678",
)
result = lambda_handler(json.loads(sys.argv[2]), context)
probe = {
    "sys_path": sys.path,
    "stdlib": [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"], sys.base_prefix],
    "modules": sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)}),
    "version": list(sys.version_info[:2]),
    "result": result,
}
print(json.dumps({"as_deployed_probe": probe}, default=str), flush=True)
"""


# ----- the asset and the template ------------------------------------------------------------
@pytest.fixture(scope="session")
def python313() -> str:
    if RUNNER:
        return shlex.join(RUNNER)
    python = bundling.find_python("3.13")
    if python is None:
        pytest.skip("no Python 3.13 interpreter found (infra.bundling.find_python): "
                    "the as-deployed test runs the asset with the runtime's version")
    return python


@pytest.fixture(scope="session")
def e2e_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("e2e-policy") / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def host_asset(python313: str, e2e_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The asset as ``cdk synth`` builds it, for this machine's platform (dependency cache: .cache/lambda-deps)."""
    asset = bundling.bundle(tmp_path_factory.mktemp("host-asset") / "asset", ROOT, e2e_policy,
                            target=bundling.LAMBDA if LAMBDA_TARGET else bundling.host_target("3.13"))
    return asset


@pytest.fixture(scope="session")
def deployed_template(e2e_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The stack synthesized in-process, with cdk.json's context naming this test's table, bucket, bus and policy."""
    eol = "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"
    os.environ[eol] = ",".join(sorted({*os.environ.get(eol, "").split(","), "18", "20", "22"} - {""}))
    from app import build_app

    ctx = json.loads((ROOT / "cdk.json").read_text(encoding="utf-8"))["context"]
    ctx["reaper"] = {
        **ctx["reaper"],
        "policy_file": str(e2e_policy),
        "lock_tables": [LOCK_TABLE],
        "state_buckets": [STATE_BUCKET],
        "state_activity_evidence": True,  # the grant the late-writer watch reads state objects with
        "event_bus": EVENT_BUS,
    }
    app = build_app(ctx, outdir=str(tmp_path_factory.mktemp("e2e-cdk.out")))
    (stack,) = app.synth().stacks
    return stack.template


def function_environment(template: dict[str, Any]) -> dict[str, Any]:
    (fn,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    return dict(fn["Properties"]["Environment"]["Variables"])


# ----- moto_server resources for the template's references --------------------------------------
class Resolver:
    """Creates, once per logical id, the moto_server resource a ``Ref``/``Fn::GetAtt`` names."""

    def __init__(self, template: dict[str, Any], clients: dict[str, Any]):
        self.resources = template["Resources"]
        self.c = clients
        self.made: dict[str, dict[str, str]] = {}  # logical id -> {"Ref": ..., attr: ...}
        self.types: dict[str, str] = {}

    def _make(self, lid: str) -> dict[str, str]:
        if lid in self.made:
            return self.made[lid]
        res = self.resources.get(lid)
        if res is None:
            raise LookupError(f"{lid} is not a resource of the template")
        kind, props = res["Type"], res.get("Properties", {})
        name = f"e2e-{lid.lower()}"[:63]
        if kind == "AWS::S3::Bucket":
            self.c["s3"].create_bucket(Bucket=name)
            out = {"Ref": name, "Arn": f"arn:aws:s3:::{name}"}
        elif kind == "AWS::SNS::Topic":
            arn = self.c["sns"].create_topic(Name=name)["TopicArn"]
            out = {"Ref": arn, "TopicArn": arn, "TopicName": name}
        elif kind == "AWS::DynamoDB::Table":  # the template's own key schema
            self.c["ddb"].create_table(TableName=name, KeySchema=props["KeySchema"],
                                       AttributeDefinitions=props["AttributeDefinitions"], BillingMode="PAY_PER_REQUEST")
            arn = self.c["ddb"].describe_table(TableName=name)["Table"]["TableArn"]
            out = {"Ref": name, "Arn": arn}
        elif kind == "AWS::Events::EventBus":
            arn = self.c["events"].create_event_bus(Name=name)["EventBusArn"]
            out = {"Ref": name, "Name": name, "Arn": arn}
        else:
            raise LookupError(f"{lid} is a {kind}: no moto_server resource is made for that type")
        self.made[lid], self.types[lid] = out, kind
        return out

    def value(self, v: Any) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, dict) and len(v) == 1:
            ((fn, arg),) = v.items()
            if fn == "Ref":
                return self._make(arg)["Ref"]
            if fn == "Fn::GetAtt":
                lid, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                made = self._make(lid)
                if attr not in made:
                    raise LookupError(f"{lid}.{attr}: attribute not resolved for a {self.types[lid]}")
                return made[attr]
        raise LookupError(f"cannot resolve {json.dumps(v)}")

    def environment(self, variables: dict[str, Any]) -> dict[str, str]:
        out, problems = {}, []
        for k, v in variables.items():
            try:
                out[k] = self.value(v)
            except LookupError as exc:
                problems.append(f"{k}: {exc}")
        if problems:
            pytest.fail("template environment variables not resolved to moto_server resources:\n  " + "\n  ".join(problems))
        return out

    def logical_for(self, kind: str, variable: str, variables: dict[str, Any]) -> str:
        v = variables[variable]
        lid = v.get("Ref") if isinstance(v, dict) else None
        assert lid and self.types.get(lid) == kind, f"{variable} should be a Ref to the stack's {kind}: {v}"
        return lid


# ----- running the asset ----------------------------------------------------------------------
def run_asset(python: str, asset: Path, env: dict[str, str], event: dict[str, Any]) -> dict[str, Any]:
    command = RUNNER or [python]
    proc = subprocess.run([*command, "-I", "-S", "-c", CHILD, str(asset), json.dumps(event)], cwd=asset, env=env,
                          capture_output=True, text=True, timeout=INVOKE_TIMEOUT)
    assert proc.returncode == 0, f"the handler failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
    lines = []
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a stdout line is not JSON: {line[:300]!r}\nstderr:\n{proc.stderr[-2000:]}")
    (probe,) = [d["as_deployed_probe"] for d in lines if "as_deployed_probe" in d]
    return {"lines": [d for d in lines if "as_deployed_probe" not in d], "probe": probe, "stderr": proc.stderr}


def check_isolated(probe: dict[str, Any], asset: Path) -> None:
    assert probe["version"] == [3, 13]
    stdlib_roots = [Path(p) for p in probe["stdlib"][:2]]
    base_lib = Path(probe["stdlib"][2]) / "lib"

    def stdlib(p: Path) -> bool:
        if "site-packages" in p.parts or "dist-packages" in p.parts:
            return False
        return any(p == r or r in p.parents for r in stdlib_roots) or (p.parent == base_lib and p.suffix == ".zip")

    path = [Path(p) for p in probe["sys_path"]]
    assert path[0] == asset, probe["sys_path"]
    outside = [str(p) for p in path[1:] if not stdlib(p)]
    assert not outside, f"sys.path has entries outside the asset and the stdlib: {outside}"
    strays = [m for m in probe["modules"] if not (asset in Path(m).parents or stdlib(Path(m)))]
    assert not strays, f"modules imported from outside the asset and the stdlib: {strays[:10]}"
    for pkg in ("reaper", "boto3", "botocore", "aws_lambda_powertools", "yaml", "pydantic"):
        assert any(Path(m).is_relative_to(asset / pkg) for m in probe["modules"]), f"{pkg} not imported from the asset"


def log_lines(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in run["lines"] if "_aws" not in d]


def emf_metrics(run: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in run["lines"]:
        for directive in d.get("_aws", {}).get("CloudWatchMetrics", []):
            assert directive["Namespace"] == NAMESPACE
            for m in directive["Metrics"]:
                v = d[m["Name"]]  # Powertools writes a list of values per metric
                out[m["Name"]] = out.get(m["Name"], 0) + (sum(v) if isinstance(v, list) else v)
    return out


def drain(sqs: Any, url: str, want: int, seconds: float = 10.0) -> list[dict[str, Any]]:
    import time

    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while len(got) < want and time.monotonic() < deadline:
        got += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    return got


# ----- the test ----------------------------------------------------------------------------------
def test_the_asset_runs_as_deployed(python313: str, host_asset: Path, deployed_template: dict[str, Any],
                                    moto_env: MotoServer) -> None:
    asset = host_asset
    # The asset is the bundler's: the package, the pinned SDK, the policy at the root, 3.13 .pyc.
    assert (asset / "policy.yaml").read_text(encoding="utf-8") == POLICY
    assert (asset / "boto3").is_dir() and (asset / "botocore").is_dir()
    assert list((asset / "reaper" / "__pycache__").glob("handler.cpython-313.pyc"))

    clients = {n: boto3.client(n, region_name=REGION, endpoint_url=moto_env.endpoint)
               for n in ("s3", "sns", "sqs", "events", "dynamodb")}
    clients["ddb"] = clients["dynamodb"]
    s3, sqs, ddb = clients["s3"], clients["sqs"], clients["ddb"]

    variables = function_environment(deployed_template)
    for var in ("REAPER_POLICY_FILE", "REAPER_AUDIT_BUCKET", "REAPER_SNS_TOPIC_ARN", "REAPER_EVENT_BUS",
                "REAPER_CLAIMS_TABLE", "REAPER_LEASE_TABLE", "REAPER_LEASE_SECONDS", "POWERTOOLS_SERVICE_NAME",
                "POWERTOOLS_METRICS_NAMESPACE"):
        assert var in variables, f"{var} missing from the function's environment: {sorted(variables)}"
    assert variables["REAPER_POLICY_FILE"] == "/var/task/policy.yaml"
    assert variables["REAPER_EVENT_BUS"] == EVENT_BUS

    # Plain strings naming resources the stack does not own: the operator's bus, lock table, state bucket.
    clients["events"].create_event_bus(Name=EVENT_BUS)
    create_lock_table(ddb, LOCK_TABLE)
    s3.create_bucket(Bucket=STATE_BUCKET)
    resolver = Resolver(deployed_template, clients)
    resolved = resolver.environment(variables)  # fails the test on any value it cannot resolve
    audit_bucket = resolved["REAPER_AUDIT_BUCKET"]
    topic_arn = resolved["REAPER_SNS_TOPIC_ARN"]
    assert resolver.logical_for("AWS::S3::Bucket", "REAPER_AUDIT_BUCKET", variables)
    assert resolver.logical_for("AWS::SNS::Topic", "REAPER_SNS_TOPIC_ARN", variables)
    assert resolver.logical_for("AWS::DynamoDB::Table", "REAPER_CLAIMS_TABLE", variables)
    lease_lid = resolver.logical_for("AWS::DynamoDB::Table", "REAPER_LEASE_TABLE", variables)
    assert resolved["REAPER_CLAIMS_TABLE"] != resolved["REAPER_LEASE_TABLE"]

    # Deliveries: SNS -> SQS, EventBridge rule on the bus -> SQS.
    def queue(name: str) -> tuple[str, str]:
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    alerts_url, alerts_arn = queue("e2e-alerts")
    clients["sns"].subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=alerts_arn)
    events_url, events_arn = queue("e2e-events")
    clients["events"].put_rule(Name="e2e-reaped", EventBusName=EVENT_BUS,
                               EventPattern=json.dumps({"detail-type": ["Terraform Lock Reaped",
                                                                        "Terraform Lock Late Writer"]}))
    clients["events"].put_targets(Rule="e2e-reaped", EventBusName=EVENT_BUS, Targets=[{"Id": "q", "Arn": events_arn}])

    # Two stale locks (2 days > hard_max_age 1d), their digest / state objects, and a fresh lock.
    now = datetime.now(UTC)
    ddb_info = info_json(DDB_PATH, timedelta(days=2), now)
    ddb.put_item(TableName=LOCK_TABLE, Item=lock_item(DDB_PATH, ddb_info))
    digest = digest_item(DDB_PATH)
    ddb.put_item(TableName=LOCK_TABLE, Item=digest)
    fresh = f"{STATE_BUCKET}/dev/app/terraform.tfstate"
    ddb.put_item(TableName=LOCK_TABLE, Item=lock_item(fresh, info_json(fresh, timedelta(minutes=1), now)))
    s3_info = info_json(S3_PATH, timedelta(days=2), now)
    s3.put_object(Bucket=STATE_BUCKET, Key=S3_LOCK_KEY, Body=s3_info.encode())
    state_body = b'{"version": 4, "serial": 7}'
    s3.put_object(Bucket=STATE_BUCKET, Key=S3_STATE_KEY, Body=state_body)

    # The environment: the template's variables, resolved, and nothing of this process's own.
    env = {**resolved, **FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": moto_env.endpoint,
           "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}
    # Only REAPER_POLICY_FILE is overridden: the template's /var/task/policy.yaml is the asset's
    # policy.yaml, and the asset is not unpacked at /var/task here.
    env["REAPER_POLICY_FILE"] = str(asset / "policy.yaml")

    def lock_present(path: str) -> bool:
        return "Item" in ddb.get_item(TableName=LOCK_TABLE, Key={"LockID": {"S": path}})

    def s3_lock_present() -> bool:
        return s3.list_objects_v2(Bucket=STATE_BUCKET, Prefix=S3_LOCK_KEY)["KeyCount"] == 1

    def audit_records() -> list[dict[str, Any]]:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=audit_bucket, Prefix=AUDIT_PREFIX).get("Contents", [])]
        return [json.loads(s3.get_object(Bucket=audit_bucket, Key=k)["Body"].read()) | {"_key": k}
                for k in keys if not k.startswith(AUDIT_PREFIX + "runs/")]

    # (1) report mode: the policy's mode. Both stale locks would be reaped; nothing is deleted.
    report = run_asset(python313, asset, env, {})
    check_isolated(report["probe"], asset)
    result = report["probe"]["result"]
    assert result["mode"] == "report"
    outcomes = {e["lock_path"]: e["outcome"] for e in result["locks"]}
    assert outcomes == {DDB_PATH: "would_reap", S3_PATH: "would_reap", fresh: "kept"}, outcomes
    assert lock_present(DDB_PATH) and lock_present(fresh) and s3_lock_present()
    logs = log_lines(report)
    (summary,) = [d for d in logs if d.get("message") == "run summary"]
    assert summary["mode"] == "report" and summary["level"] == "INFO"
    would = [d for d in logs if d.get("message") == "lock" and d.get("outcome") == "would_reap"]
    assert sorted(d["lock_path"] for d in would) == sorted([DDB_PATH, S3_PATH])
    assert audit_records() == []
    assert drain(sqs, alerts_url, 1, seconds=2) == []  # no reap, no per-run SNS message
    assert "Item" not in ddb.get_item(TableName=resolved["REAPER_LEASE_TABLE"], Key={"pk": {"S": "run-lease"}}), \
        f"the run lease ({lease_lid}) is released at the end of the run"

    # (2) enforce: the event's mode. Both stale locks deleted, the digest and the state object untouched.
    enforce = run_asset(python313, asset, env, {"mode": "enforce"})
    check_isolated(enforce["probe"], asset)
    result = enforce["probe"]["result"]
    assert result["mode"] == "enforce"
    outcomes = {e["lock_path"]: e["outcome"] for e in result["locks"]}
    assert outcomes == {DDB_PATH: "reaped", S3_PATH: "reaped", fresh: "kept"}, outcomes
    assert not lock_present(DDB_PATH) and not s3_lock_present() and lock_present(fresh)
    assert ddb.get_item(TableName=LOCK_TABLE, Key={"LockID": digest["LockID"]})["Item"] == digest
    assert s3.get_object(Bucket=STATE_BUCKET, Key=S3_STATE_KEY)["Body"].read() == state_body

    # JSON logs: the run summary and one lock line per reaped lock.
    logs = log_lines(enforce)
    (summary,) = [d for d in logs if d.get("message") == "run summary"]
    assert summary["mode"] == "enforce" and summary["service"] == variables["POWERTOOLS_SERVICE_NAME"]
    reaped_lines = {d["lock_path"]: d for d in logs if d.get("message") == "lock" and d.get("outcome") == "reaped"}
    assert set(reaped_lines) == {DDB_PATH, S3_PATH}
    assert json.loads(ddb_info)["ID"] == reaped_lines[DDB_PATH]["lock_id"]
    assert json.loads(s3_info)["ID"] == reaped_lines[S3_PATH]["lock_id"]
    assert all(d["audit_ref"].startswith(f"s3://{audit_bucket}/{AUDIT_PREFIX}") for d in reaped_lines.values())
    print("run summary line:", json.dumps(summary))  # shown with -s / -rP: real log lines for the notes
    print("lock line:", json.dumps(reaped_lines[S3_PATH]))

    # EMF metrics on stdout, in the template's namespace.
    metrics = emf_metrics(enforce)
    assert metrics.get("LocksReaped") == 2, metrics

    # Audit records: one per reaped lock, in the audit bucket under the prefix.
    records = audit_records()
    assert len(records) == 2, [r["_key"] for r in records]
    assert all(r.get("schema") for r in records)
    assert sorted(r["lock_path"] for r in records) == sorted([DDB_PATH, S3_PATH])
    assert {f"s3://{audit_bucket}/{r['_key']}" for r in records} == {d["audit_ref"] for d in reaped_lines.values()}

    # The SNS message, delivered to the subscribed queue.
    (msg,) = drain(sqs, alerts_url, 1)
    envelope = json.loads(msg["Body"])
    assert envelope["TopicArn"] == topic_arn
    assert envelope["Subject"].startswith("Lock Reaper: 2 reaped")
    assert DDB_PATH in envelope["Message"] and S3_PATH in envelope["Message"]

    # The events, delivered by the bus's rule to its queue.
    events = [json.loads(m["Body"]) for m in drain(sqs, events_url, 2)]
    assert sorted(e["detail"]["lock_path"] for e in events) == sorted([DDB_PATH, S3_PATH]), events
    assert all(e["detail-type"] == "Terraform Lock Reaped" and e["source"] == "lock-reaper" for e in events)
    assert all(e["detail"]["run_id"] == result["run_id"] and e["detail"]["outcome"] == "reaped" for e in events)

    # (3) the late-writer watch: the S3 lock's "dead" holder writes its state after the reap. The next run finds it
    # with the template's grants (REAPER_STATE_OBJECTS, HeadObject) and the run-state table's watch items.
    assert variables["REAPER_STATE_OBJECTS"] == f"{STATE_BUCKET}/"
    s3.put_object(Bucket=STATE_BUCKET, Key=S3_STATE_KEY, Body=b'{"version": 4, "serial": 8}')
    late = run_asset(python313, asset, env, {})
    (finding,) = late["probe"]["result"]["late_writers"]
    assert (finding["lock_path"], finding["audit_ref"]) == (S3_PATH, reaped_lines[S3_PATH]["audit_ref"])
    assert emf_metrics(late).get("LateWriter") == 1
    assert [d["lock_path"] for d in log_lines(late) if d.get("message") == "late writer"] == [S3_PATH]
    # (drain leaves messages in their queue: under emulation the earlier ones are visible again, hence the filters)
    subjects = [json.loads(m["Body"])["Subject"] for m in drain(sqs, alerts_url, 1)]
    assert len([s for s in subjects if "LATE WRITER" in s]) == 1, subjects
    events = [json.loads(m["Body"]) for m in drain(sqs, events_url, 1)]
    (event,) = [e for e in events if e["detail-type"] == "Terraform Lock Late Writer"]
    assert event["detail"]["lock_path"] == S3_PATH
