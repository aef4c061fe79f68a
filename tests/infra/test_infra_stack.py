"""Template assertions on the one synthesized Lock Reaper stack (see conftest.synth)."""

from __future__ import annotations

import json

import pytest
from cfn_helpers import KMS_KEY, SECRET_ARN, as_list, render, statements

from reaper.report import METRIC_DURATION, METRIC_SERVICE, METRICS

pytestmark = pytest.mark.cdk

PARTITION = "${AWS::Partition}"
REGION_ACCOUNT = "${AWS::Region}:${AWS::AccountId}"
XRAY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def _ids(synth):
    r = synth.stack.reaper
    return {
        "function": synth.logical_id(r.function),
        "topic": synth.logical_id(r.topic),
        "key": synth.logical_id(r.key),
        "audit": synth.logical_id(r.audit_bucket),
        "access_logs": synth.logical_id(r.access_logs),
        "claims": synth.logical_id(r.claims_table),
        "run_state": synth.logical_id(r.run_state_table),
        "dlq": synth.logical_id(r.dlq),
        "logs": synth.logical_id(r.log_group),
        "role_policy": synth.stack.get_logical_id(r.role.node.find_child("DefaultPolicy").node.default_child),
        "schedule_role": synth.logical_id(r.schedule_role),
        "schedule_policy": synth.stack.get_logical_id(r.schedule_role.node.find_child("DefaultPolicy").node.default_child),
    }


# ----- the function ---------------------------------------------------------------
def test_function_runtime_architecture_concurrency_timeout(synth, template):
    from aws_cdk import aws_lambda as lambda_

    fn = synth.stack.reaper.function
    # jsii enums and enum-like classes: compare by name, never with ==
    assert fn.runtime.name == lambda_.Runtime.PYTHON_3_13.name
    assert fn.runtime.family.name == lambda_.RuntimeFamily.PYTHON.name
    assert fn.architecture.name == lambda_.Architecture.ARM_64.name
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Runtime": "python3.13",
            "Architectures": ["arm64"],
            "Handler": "reaper.handler.lambda_handler",
            "Timeout": 14 * 60,
            "MemorySize": 512,
            "TracingConfig": {"Mode": "Active"},
        },
    )
    # reserved concurrency is opt-in (cdk.json's reserved_concurrency is null): the run lease keeps runs apart
    assert synth.context["reaper"].get("reserved_concurrency") is None
    (props,) = [f["Properties"] for f in synth.resources("AWS::Lambda::Function").values()]
    assert "ReservedConcurrentExecutions" not in props
    # a failed run is not retried by Lambda: the next scheduled run is the retry
    template.has_resource_properties("AWS::Lambda::EventInvokeConfig", {"MaximumRetryAttempts": 0, "Qualifier": "$LATEST"})


def test_function_environment(synth):
    ids = _ids(synth)
    (fn,) = synth.resources("AWS::Lambda::Function").values()
    env = {k: render(v) for k, v in fn["Properties"]["Environment"]["Variables"].items()}
    assert env == {
        "REAPER_POLICY_FILE": "/var/task/policy.yaml",
        "REAPER_AUDIT_BUCKET": "${" + ids["audit"] + "}",
        "REAPER_SNS_TOPIC_ARN": "${" + ids["topic"] + "}",
        "REAPER_EVENT_BUS": "default",
        "REAPER_CLAIMS_TABLE": "${" + ids["claims"] + "}",
        "REAPER_LEASE_TABLE": "${" + ids["run_state"] + "}",
        "REAPER_LEASE_SECONDS": str(14 * 60),
        # the state objects the role may read (StateObjectsHead): state activity and the watch ask no other
        "REAPER_STATE_OBJECTS": "tf-state-a/,tf-state-b/env:/,tf-state-b/teams/",
        "POWERTOOLS_SERVICE_NAME": METRIC_SERVICE,
        "POWERTOOLS_METRICS_NAMESPACE": synth.stack.reaper.namespace,
    }
    assert fn["Properties"]["LoggingConfig"] == {"LogGroup": {"Ref": ids["logs"]}}


def test_log_group_retention_from_context(synth, template):
    days = synth.context["reaper"]["log_retention_days"]
    template.has_resource("AWS::Logs::LogGroup", {"Properties": {"RetentionInDays": days}, "DeletionPolicy": "Retain"})


# ----- the schedule ---------------------------------------------------------------
def test_schedule_expression_retry_and_dead_letter_queue(synth):
    ids = _ids(synth)
    (sched,) = synth.resources("AWS::Scheduler::Schedule").values()
    p = sched["Properties"]
    assert p["ScheduleExpression"] == synth.context["reaper"]["schedule"] == "rate(15 minutes)"
    assert p["State"] == "ENABLED"
    assert p["FlexibleTimeWindow"] == {"Mode": "OFF"}
    t = p["Target"]
    assert render(t["Arn"]) == "${" + ids["function"] + ".Arn}"
    assert render(t["RoleArn"]) == "${" + ids["schedule_role"] + ".Arn}"
    assert render(t["DeadLetterConfig"]["Arn"]) == "${" + ids["dlq"] + ".Arn}"
    assert t["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert 60 <= t["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 900
    assert json.loads(t["Input"]) == {"source": "lock-reaper-schedule"}


def test_dead_letter_queue_encrypted_and_ssl_only(synth, template):
    ids = _ids(synth)
    template.has_resource_properties("AWS::SQS::Queue", {"SqsManagedSseEnabled": True, "MessageRetentionPeriod": 14 * 86400})
    (qp,) = synth.resources("AWS::SQS::QueuePolicy").values()
    assert qp["Properties"]["Queues"] == [{"Ref": ids["dlq"]}]
    (deny,) = qp["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


# ----- IAM ----------------------------------------------------------------------
def test_no_wildcard_resource_on_write_actions_and_no_wildcard_actions(synth):
    all_statements = statements(synth.template)
    assert len(all_statements) > 10
    for st in all_statements:
        assert st["Effect"] == "Allow", st
        actions = set(as_list(st["Action"]))
        assert not any("*" in a for a in actions), f"wildcard action in {st}"
        resources = [render(r) for r in as_list(st["Resource"])]
        if "*" in resources:
            # only X-Ray (active tracing) has no resource-level permissions
            assert actions <= XRAY, f"Resource '*' on {sorted(actions)}"
        for r in resources:
            assert r == "*" or r.startswith(("arn:", "${")), r


def test_lambda_role_statements_are_exactly_the_named_grants(synth):
    ids = _ids(synth)
    found = {}
    for st in statements(synth.template, ids["role_policy"]):
        sid = st.get("Sid", "XRay" if set(as_list(st["Action"])) == XRAY else "Logs")
        assert sid not in found, f"statement {sid} twice"
        found[sid] = (sorted(as_list(st["Action"])), sorted(render(r) for r in as_list(st["Resource"])), st.get("Condition"))
    s3 = f"arn:{PARTITION}:s3:::"
    expected = {
        "XRay": (sorted(XRAY), ["*"], None),
        "Logs": (["logs:CreateLogStream", "logs:PutLogEvents"], ["${" + ids["logs"] + ".Arn}"], None),
        "LockTables": (
            ["dynamodb:DeleteItem", "dynamodb:DescribeTable", "dynamodb:Scan"],
            [f"arn:{PARTITION}:dynamodb:{REGION_ACCOUNT}:table/terraform-locks"],
            None,
        ),
        "ClaimsQuery": (["dynamodb:Query", "dynamodb:Scan"], ["${" + ids["claims"] + ".Arn}"], None),
        "RunLease": (
            ["dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem"],
            ["${" + ids["run_state"] + ".Arn}"],
            {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["run-lease", "watch#*"]}},
        ),
        "LeaseObservations": (
            ["dynamodb:GetItem", "dynamodb:PutItem"],
            ["${" + ids["run_state"] + ".Arn}"],
            {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["lease#*"]}},
        ),
        "RunWatch": (["dynamodb:Scan"], ["${" + ids["run_state"] + ".Arn}"], None),
        "ListStateBuckets": (["s3:ListBucket"], [f"{s3}tf-state-a", f"{s3}tf-state-b"], None),
        # the late-writer watch: one state key's versions, *.tfstate prefixes only, per bucket
        "StateObjectVersions0": (["s3:ListBucketVersions"], [f"{s3}tf-state-a"],
                                 {"StringLike": {"s3:prefix": ["*.tfstate"]}}),
        "StateObjectVersions1": (["s3:ListBucketVersions"], [f"{s3}tf-state-b"],
                                 {"StringLike": {"s3:prefix": ["env:/*.tfstate", "teams/*.tfstate"]}}),
        "StateLockFiles": (
            ["s3:DeleteObject", "s3:GetObject"],
            sorted([f"{s3}tf-state-a/*.tflock", f"{s3}tf-state-b/env:/*.tflock", f"{s3}tf-state-b/teams/*.tflock"]),
            None,
        ),
        "StateObjectsHead": (
            ["s3:GetObject"],
            sorted([f"{s3}tf-state-a/*.tfstate", f"{s3}tf-state-b/env:/*.tfstate", f"{s3}tf-state-b/teams/*.tfstate"]),
            None,
        ),
        "DecryptWithNamedKeys": (["kms:Decrypt"], [KMS_KEY], None),
        "ReadTokenSecrets": (
            ["secretsmanager:GetSecretValue"],
            sorted([f"arn:{PARTITION}:secretsmanager:{REGION_ACCOUNT}:secret:lock-reaper/github-token-??????", SECRET_ARN]),
            None,
        ),
        "PublishAlerts": (["sns:Publish"], ["${" + ids["topic"] + "}"], None),
        "PutReapedEvents": (["events:PutEvents"], [f"arn:{PARTITION}:events:{REGION_ACCOUNT}:event-bus/default"], None),
        "AuditRecords": (["s3:GetObject", "s3:PutObject"], ["${" + ids["audit"] + ".Arn}/lock-reaper/audit/*"], None),
        "UseStackKey": (["kms:Decrypt", "kms:GenerateDataKey"], ["${" + ids["key"] + ".Arn}"], None),
    }
    assert found == expected


def test_table_grants_only_on_context_tables(synth):
    tables = synth.context["reaper"]["lock_tables"]
    ids = _ids(synth)
    own = ([f"${{{ids['run_state']}.Arn}}"], [f"${{{ids['claims']}.Arn}}"])
    for st in statements(synth.template):
        actions = set(as_list(st["Action"]))
        resources = [render(r) for r in as_list(st["Resource"])]
        if resources in own:
            continue  # the stack's own tables (test_run_state_table, test_claims_table)
        if actions & {"dynamodb:Scan", "dynamodb:DeleteItem", "dynamodb:PutItem", "dynamodb:DescribeTable"}:
            assert sorted(r.rsplit(":table/", 1)[1] for r in resources) == sorted(tables)
        # restore is the CLI's: the function never writes a lock table
        if any(":table/" in r for r in resources):
            assert "dynamodb:PutItem" not in actions, st


def test_s3_delete_only_on_tflock_keys(synth):
    deletes = [st for st in statements(synth.template) if any(a.startswith("s3:Delete") for a in as_list(st["Action"]))]
    assert deletes, "the state buckets of the shared context must produce a delete grant"
    for st in deletes:
        assert set(as_list(st["Action"])) <= {"s3:GetObject", "s3:DeleteObject"}
        for r in map(render, as_list(st["Resource"])):
            assert r.endswith("*.tflock") and r.split(":::", 1)[1].split("/", 1)[0] in ("tf-state-a", "tf-state-b"), r
    # and nothing else may read objects of the state buckets except the *.tfstate heads (flag on)
    for st in statements(synth.template):
        for r in map(render, as_list(st["Resource"])):
            if ":::tf-state-" in r and "/" in r.split(":::", 1)[1]:
                assert r.endswith((".tflock", ".tfstate")), r


def test_scheduler_role_can_only_invoke_the_function_and_feed_the_dlq(synth, template):
    ids = _ids(synth)
    found = {
        st["Sid"]: (as_list(st["Action"]), [render(r) for r in as_list(st["Resource"])])
        for st in statements(synth.template, ids["schedule_policy"])
    }
    assert found == {
        "InvokeReaper": (["lambda:InvokeFunction"], ["${" + ids["function"] + ".Arn}"]),
        "DeadLetter": (["sqs:SendMessage"], ["${" + ids["dlq"] + ".Arn}"]),
    }
    role = synth.template["Resources"][ids["schedule_role"]]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert render(trust["Condition"]["StringEquals"]["aws:SourceAccount"]) == "${AWS::AccountId}"
    assert "ManagedPolicyArns" not in role


def test_no_managed_policies_anywhere(synth):
    for lid, role in synth.resources("AWS::IAM::Role").items():
        assert "ManagedPolicyArns" not in role["Properties"], lid


# ----- alarms ---------------------------------------------------------------------
def test_alarms_cover_the_failure_modes_and_notify_the_topic(synth):
    ids = _ids(synth)
    alarms = synth.resources("AWS::CloudWatch::Alarm")
    by_metric = {(a["Properties"]["Namespace"], a["Properties"]["MetricName"]): a["Properties"] for a in alarms.values()}
    ns = synth.stack.reaper.namespace
    required = [
        ("AWS/Lambda", "Errors"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        (ns, METRICS["reaped"]),
        (ns, METRICS["cap_hit"]),
        (ns, METRICS["unparseable"]),
        (ns, METRICS["alive_past_hard_max"]),
        (ns, METRICS["errors"]),
        (ns, METRICS["double_lock_partial"]),
        (ns, METRICS["late_writers"]),
    ]
    for key in required:
        assert key in by_metric, f"no alarm on {key}"
    for props in (a["Properties"] for a in alarms.values()):
        assert props["AlarmActions"] == [{"Ref": ids["topic"]}]
        assert props["Threshold"] == 0 and props["ComparisonOperator"] == "GreaterThanThreshold"
        assert props["TreatMissingData"] == "notBreaching"
        assert props["AlarmDescription"]
    for (namespace, _name), props in by_metric.items():
        if namespace == ns:
            assert props["Dimensions"] == [{"Name": "service", "Value": METRIC_SERVICE}]
    assert by_metric[("AWS/Lambda", "Errors")]["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": ids["function"]}}]
    dlq_dims = by_metric[("AWS/SQS", "ApproximateNumberOfMessagesVisible")]["Dimensions"]
    assert dlq_dims == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [ids["dlq"], "QueueName"]}}]


def test_dashboard_shows_scanned_reaped_raced_kept_unknown_errors_duration(synth):
    (dash,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    body = render(dash["Properties"]["DashboardBody"])
    for name in (
        METRICS["locks_scanned"],
        METRICS["reaped"],
        METRICS["raced"],
        METRICS["kept_unknown"],
        METRICS["errors"],
        METRIC_DURATION,
    ):
        assert f'"{name}"' in body, name
    assert '"Duration"' in body and '"AWS/Lambda"' in body


# ----- topic, key, buckets ------------------------------------------------------------
def test_topic_is_kms_encrypted_ssl_only_and_alarm_publishable(synth, template):
    ids = _ids(synth)
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": {"Fn::GetAtt": [ids["key"], "Arn"]}})
    (policy,) = synth.resources("AWS::SNS::TopicPolicy").values()
    sts = policy["Properties"]["PolicyDocument"]["Statement"]
    deny = [s for s in sts if s["Effect"] == "Deny"]
    assert len(deny) == 1 and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny[0]["Resource"] == {"Ref": ids["topic"]}
    (allow,) = [s for s in sts if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "cloudwatch.amazonaws.com"} and allow["Action"] == "sns:Publish"
    assert render(allow["Condition"]["ArnLike"]["aws:SourceArn"]) == f"arn:{PARTITION}:cloudwatch:{REGION_ACCOUNT}:alarm:*"
    emails = sorted(s["Properties"]["Endpoint"] for s in synth.resources("AWS::SNS::Subscription").values())
    assert emails == sorted(synth.context["reaper"]["alert_emails"])
    assert all(s["Properties"]["Protocol"] == "email" for s in synth.resources("AWS::SNS::Subscription").values())


def test_key_rotates_and_lets_only_cloudwatch_in_besides_the_account(synth):
    ids = _ids(synth)
    key = synth.template["Resources"][ids["key"]]
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == "Retain"
    principals = [s["Principal"] for s in key["Properties"]["KeyPolicy"]["Statement"]]
    services = [p["Service"] for p in principals if "Service" in p]
    assert services == ["cloudwatch.amazonaws.com"]
    (cw,) = [s for s in key["Properties"]["KeyPolicy"]["Statement"] if "Service" in s["Principal"]]
    assert sorted(as_list(cw["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    # only for this account's alarms (confused deputy)
    assert {k: {c: render(v) for c, v in vs.items()} for k, vs in cw["Condition"].items()} == {
        "StringEquals": {"aws:SourceAccount": "${AWS::AccountId}"}
    }


def _ssl_and_tls_denies(bucket_policy):
    sts = bucket_policy["Properties"]["PolicyDocument"]["Statement"]
    conditions = [s["Condition"] for s in sts if s["Effect"] == "Deny"]
    assert {"Bool": {"aws:SecureTransport": "false"}} in conditions
    assert {"NumericLessThan": {"s3:TlsVersion": 1.2}} in conditions
    return sts


def test_audit_bucket(synth):
    ids = _ids(synth)
    bucket = synth.template["Resources"][ids["audit"]]
    assert bucket["DeletionPolicy"] == "Retain" and bucket["UpdateReplacePolicy"] == "Retain"
    p = bucket["Properties"]
    assert p["VersioningConfiguration"] == {"Status": "Enabled"}
    (enc,) = p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert enc["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": [ids["key"], "Arn"]},
    }
    assert enc["BucketKeyEnabled"] is True
    assert p["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert p["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": ids["access_logs"]}
    rules = {r["Id"]: r for r in p["LifecycleConfiguration"]["Rules"]}
    assert rules["noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 365
    assert rules["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert all(r["Status"] == "Enabled" for r in rules.values())
    (policy,) = [
        b for b in synth.resources("AWS::S3::BucketPolicy").values() if b["Properties"]["Bucket"] == {"Ref": ids["audit"]}
    ]
    sts = _ssl_and_tls_denies(policy)
    assert all(s["Effect"] == "Deny" for s in sts), "nothing may be granted through the audit bucket's policy"


def test_access_log_bucket(synth):
    ids = _ids(synth)
    bucket = synth.template["Resources"][ids["access_logs"]]
    assert bucket["DeletionPolicy"] == "Retain"
    p = bucket["Properties"]
    assert p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    assert all(p["PublicAccessBlockConfiguration"].values())
    (policy,) = [
        b for b in synth.resources("AWS::S3::BucketPolicy").values() if b["Properties"]["Bucket"] == {"Ref": ids["access_logs"]}
    ]
    sts = _ssl_and_tls_denies(policy)
    (allow,) = [s for s in sts if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "logging.s3.amazonaws.com"} and allow["Action"] == "s3:PutObject"
    assert render(allow["Condition"]["ArnLike"]["aws:SourceArn"]) == "${" + ids["audit"] + ".Arn}"


# ----- claims table ------------------------------------------------------------------
def test_claims_table(synth, template):
    ids = _ids(synth)
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "TableName": synth.context["reaper"]["claims_table"],
            "KeySchema": [{"AttributeName": "Who", "KeyType": "HASH"}, {"AttributeName": "ClaimedAt", "KeyType": "RANGE"}],
            "AttributeDefinitions": [
                {"AttributeName": "Who", "AttributeType": "S"},
                {"AttributeName": "ClaimedAt", "AttributeType": "S"},
            ],
            "BillingMode": "PAY_PER_REQUEST",
            "TimeToLiveSpecification": {"AttributeName": "ExpiresAt", "Enabled": True},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        },
    )
    # the same key schema and TTL attribute the claims code reads and writes
    from reaper.liveness import claims

    table = synth.template["Resources"][ids["claims"]]
    assert table["Properties"]["KeySchema"] == claims.KEY_SCHEMA
    assert table["Properties"]["AttributeDefinitions"] == claims.ATTRIBUTE_DEFINITIONS
    assert table["Properties"]["TimeToLiveSpecification"]["AttributeName"] == claims.TTL_ATTRIBUTE
    # the Lambda only reads it (one Scan per run, else a Query per lock); writing claims is for CI roles (README, Deploy)
    claims_arn = "${" + ids["claims"] + ".Arn}"
    for st in statements(synth.template):
        if claims_arn in [render(r) for r in as_list(st["Resource"])]:
            assert sorted(as_list(st["Action"])) == ["dynamodb:Query", "dynamodb:Scan"]


# ----- environment, outputs ---------------------------------------------------------
def test_environment_agnostic_without_account_and_region(synth):
    art = synth.manifest["artifacts"][synth.stack.stack_name]
    assert art["environment"] == "aws://unknown-account/unknown-region"
    text = json.dumps(synth.template)
    assert '"Ref": "AWS::Region"' in text and '"Ref": "AWS::AccountId"' in text


def test_outputs(synth):
    outputs = synth.template["Outputs"]
    assert {"FunctionName", "AlertTopicArn", "AuditBucketName", "ClaimsTableName", "ClaimsTableArn", "ScheduleDLQUrl"} <= set(
        outputs
    )
    assert all(o.get("Description") for o in outputs.values())


# ----- run-state table (the run lease) ------------------------------------------------
def test_run_state_table(synth):
    ids = _ids(synth)
    table = synth.template["Resources"][ids["run_state"]]
    p = table["Properties"]
    assert p["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert p["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert "TableName" not in p, "a generated name: the function learns it from REAPER_LEASE_TABLE"
    # encrypted like the claims table (the DynamoDB default, AWS owned key)
    assert p.get("SSESpecification") == synth.template["Resources"][ids["claims"]]["Properties"].get("SSESpecification")
    # only the function uses it, and only to take, read and release the lease
    arn = "${" + ids["run_state"] + ".Arn}"
    users = [st for st in statements(synth.template) if arn in [render(r) for r in as_list(st["Resource"])]]
    assert [(st["Sid"], sorted(as_list(st["Action"])), len(as_list(st["Resource"]))) for st in users] == [
        ("RunLease", ["dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem"], 1),
        ("LeaseObservations", ["dynamodb:GetItem", "dynamodb:PutItem"], 1),  # the lease evidence's lease# items
        ("RunWatch", ["dynamodb:Scan"], 1),  # the late-writer watch lists its watch# items (state objects granted)
    ]


def test_run_state_item_writes_are_bound_to_their_keys(synth):
    """Every write on the run-state table names the table (no ``*`` resource) and the keys it may write:
    the run lease and watch# items, or the lease evidence's lease# items (the runtime's own prefixes)."""
    from infra.constructs.grants import LEASE_OBSERVATION_PREFIX, RUN_LEASE_KEY, WATCH_KEY_PREFIX
    from reaper.lease import LEASE_KEY
    from reaper.liveness.lease_observations import KEY_PREFIX
    from reaper.watch import WATCH_PREFIX

    assert (RUN_LEASE_KEY, WATCH_KEY_PREFIX, LEASE_OBSERVATION_PREFIX) == (LEASE_KEY, WATCH_PREFIX, KEY_PREFIX)
    ids = _ids(synth)
    arn = "${" + ids["run_state"] + ".Arn}"
    writes = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"}
    writers = [st for st in statements(synth.template) if writes & set(as_list(st["Action"]))]
    assert writers, "the role writes something"
    for st in writers:
        resources = [render(r) for r in as_list(st["Resource"])]
        assert "*" not in resources and not any(r.endswith("*") for r in resources), st
        if arn in resources:
            keys = st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
            assert keys and all(k != "*" for k in keys), st
    lease = [st for st in statements(synth.template) if st.get("Sid") == "LeaseObservations"]
    assert [sorted(as_list(st["Action"])) for st in lease] == [["dynamodb:GetItem", "dynamodb:PutItem"]]


def test_lease_seconds_is_the_function_timeout(synth):
    (fn,) = synth.resources("AWS::Lambda::Function").values()
    env = fn["Properties"]["Environment"]["Variables"]
    assert int(env["REAPER_LEASE_SECONDS"]) == fn["Properties"]["Timeout"]


def test_state_activity_is_left_to_the_policy_when_granted(synth):
    # the shared context grants StateObjectsHead, so the stack does not turn state activity off
    (fn,) = synth.resources("AWS::Lambda::Function").values()
    assert "REAPER_STATE_ACTIVITY_ENABLED" not in fn["Properties"]["Environment"]["Variables"]
    assert any(st.get("Sid") == "StateObjectsHead" for st in statements(synth.template))


# ----- dashboard: the locks to review, contention, skipped runs ------------------------------
def _dashboard(synth) -> dict:
    (dash,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    body = dash["Properties"]["DashboardBody"]
    # the body is a Fn::Join of JSON text and tokens: render tokens as plain strings, then parse
    parts = body["Fn::Join"][1] if isinstance(body, dict) else [body]
    text = "".join(p if isinstance(p, str) else "TOKEN" + json.dumps(p, sort_keys=True).replace('"', "'") for p in parts)
    return json.loads(text)


def test_dashboard_lists_the_days_locks_to_review_from_the_logs(synth):
    ids = _ids(synth)
    d = _dashboard(synth)
    assert d["start"] == "-P1D"
    logs_widgets = [w for w in d["widgets"] if w["type"] == "log"]
    (w,) = logs_widgets
    q = w["properties"]["query"]
    assert q.startswith("SOURCE 'TOKEN") and f"'Ref': '{ids['logs']}'" in q.split("|")[0]
    assert 'filter message = "lock"' in q
    for outcome in ("would_reap", "reaped", "raced", "error"):
        assert f'"{outcome}"' in q, outcome
    assert "kept_unknown" in q
    # the keys of the runtime's lock line
    from reaper.models import Outcome
    from reaper.report import LockEntry

    entry = LockEntry(
        store="dynamodb:terraform-locks", key="k", lock_path="b/k", lock_id="id", operation="OperationTypeApply",
        who="ci@runner", created=None, age_seconds=1.0, decision="reap", outcome=Outcome.WOULD_REAP, reasons=[],
    )
    keys = set(entry.log_fields())
    fields = [f.strip() for f in q.split("|")[1].strip().removeprefix("fields ").split(",")]
    for field in ("outcome", "store", "lock_path", "lock_id", "who", "age_seconds", "rule", "liveness", "decision"):
        assert field in fields, field
    assert set(fields) - {"@timestamp"} <= keys, set(fields) - keys
    assert {"would_reap", "reaped", "raced", "error"} <= {o.value for o in Outcome}
    assert "sort @timestamp desc" in q and "limit 200" in q
    assert w["properties"]["view"] == "table"


def test_dashboard_has_a_contention_graph_per_lock_table_beside_the_reaps(synth):
    d = _dashboard(synth)
    ns = synth.stack.reaper.namespace
    graphs = [w for w in d["widgets"] if w["type"] == "metric"]
    for table in synth.context["reaper"]["lock_tables"]:
        (w,) = [g for g in graphs if table in g["properties"].get("title", "")]
        metrics = w["properties"]["metrics"]
        assert ["AWS/DynamoDB", "ConditionalCheckFailedRequests", "TableName", table] == metrics[0][:4]
        reaps = [m for m in metrics if m[:2] == [ns, METRICS["reaped"]]]
        assert reaps and reaps[0][-1].get("yAxis") == "right"


def test_dashboard_graphs_skipped_runs(synth):
    d = _dashboard(synth)
    ns = synth.stack.reaper.namespace
    found = [m for w in d["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"] if m[:2] == [ns, "RunsSkipped"]]
    assert found and found[0][2:4] == ["service", METRIC_SERVICE]
    # the name the runtime emits
    from reaper.report import METRIC_RUNS_SKIPPED

    assert METRIC_RUNS_SKIPPED == "RunsSkipped"
