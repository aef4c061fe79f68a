"""End to end: the CLI over HTTP against moto_server (locks, claims, secrets, state) and the fake CI.

- a lock whose claimed run completed 10 minutes ago is reaped;
- a lock whose claimed run is in progress is kept;
- a lock whose provider answers 500 is kept and reported;
- a GitLab runner lock whose project has no live job is reaped;
- ``explain`` shows the chain with its evidence URLs.
With real Terraform: the lock a killed apply leaves is joined to the claim the
"CI job" wrote before it, kept while the run is in progress, reaped once it is over.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.fake_ci import FakeCI
from devtools.locks import create_claims_table, create_lock_table, digest_item, info_json, lock_item
from reaper.cli import main
from reaper.commands import claim as claim_cli
from reaper.models import parse_created

pytestmark = pytest.mark.e2e

GH_TOKEN = "ghp_e2eTokenValue000000000000000000000"
GL_TOKEN = "glpat-e2eTokenValue000"
TABLE, CLAIMS, BUCKET = "terraform-locks", "lock-reaper-claims", "tf-state"

POLICY = """\
mode: enforce
max_deletes_per_run: 10
min_age: 15m
stores:
  - type: dynamodb
    table: {table}
rules:
  - name: default
    match: "*"
    max_age: 2h
    hard_max_age: 2d
audit:
  local_dir: {audit}
alerts:
  metrics: {{enabled: false}}
liveness:
  grace: 5m
  providers:
    - type: github
      api_url: {gh}
      token_secret: lock-reaper/github-token
    - type: gitlab
      api_url: {gl}
      token_env: E2E_GITLAB_TOKEN
      runner_hosts: ["runner-*-project-*-concurrent-*"]
  http: {{timeout: 2s}}
"""


def claim(argv: list[str], env: dict[str, str], now: datetime) -> None:
    p = argparse.ArgumentParser()
    claim_cli.add_arguments(p)
    out, err = io.StringIO(), io.StringIO()
    env = {**env, "REAPER_CLAIMS_TABLE": CLAIMS}  # what the CI job's environment would carry
    assert claim_cli.run(p.parse_args(argv), out, err, env=env, now=now) == 0, err.getvalue()


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def world(moto_env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_lock_table(ddb, TABLE)
    create_claims_table(ddb, CLAIMS)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="lock-reaper/github-token", SecretString=json.dumps({"token": GH_TOKEN}))
    monkeypatch.setenv("REAPER_CLAIMS_TABLE", CLAIMS)  # as the stack sets it
    monkeypatch.setenv("E2E_GITLAB_TOKEN", GL_TOKEN)
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN) as fake:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(table=TABLE, audit=tmp_path / "audit", gh=fake.github_api, gl=fake.gitlab_api))
        yield fake, ddb, policy


def put_lock(ddb: Any, path: str, who: str, created: datetime) -> str:
    raw = info_json(path, timedelta(0), created, who=who)
    ddb.put_item(TableName=TABLE, Item=lock_item(path, raw))
    return raw


def exists(ddb: Any, path: str) -> bool:
    return "Item" in ddb.get_item(TableName=TABLE, Key={"LockID": {"S": path}}, ConsistentRead=True)


def test_reap_keep_and_report_over_http(world) -> None:
    fake, ddb, policy = world
    now = datetime.now(timezone.utc)
    created = now - timedelta(hours=3)
    a, b, c, d = (f"{BUCKET}/prod/{x}.tfstate" for x in "abcd")
    who = {a: "runner@fv-az111-1", b: "runner@fv-az222-2", c: "runner@fv-az333-3", d: "root@runner-k3y-project-42-concurrent-0"}
    # the CI jobs claim before terraform runs ...
    claim(["--who", who[a]], fake.github_job_env("acme/infra", 1001, "GitHub Actions 1"), created - timedelta(seconds=40))
    claim(["--who", who[b]], fake.github_job_env("acme/infra", 1002, "GitHub Actions 2"), created - timedelta(seconds=40))
    claim(["--who", who[c]], fake.github_job_env("acme/broken", 1003, "GitHub Actions 3"), created - timedelta(seconds=40))
    # ... then terraform takes its locks (and leaves them behind)
    for path in (a, b, c, d):
        put_lock(ddb, path, who[path], created)
    ddb.put_item(TableName=TABLE, Item=digest_item(a))
    fake.add_github_job("acme/infra", 1001, 11, status="completed", conclusion="cancelled", runner_name="GitHub Actions 1",
                        started_at=created - timedelta(minutes=1), completed_at=now - timedelta(minutes=10))
    fake.add_github_job("acme/infra", 1002, 12, status="in_progress", runner_name="GitHub Actions 2",
                        started_at=created - timedelta(minutes=1))
    fake.fault(r"/repos/acme/broken/", 500)
    fake.gl_jobs[42] = []
    fake.add_gitlab_job(42, 50, status="success", started_at=created - timedelta(minutes=5), finished_at=created + timedelta(minutes=1))

    code, out, err = run_cli("reap", "--config", str(policy), "--json", "--quiet")
    assert code == 0, err
    report = json.loads(out)
    entries = {e["lock_path"]: e for e in report["locks"]}
    assert set(entries) == {a, b, c, d}, "the digest is not a lock"

    ra = entries[a]
    assert ra["outcome"] == "reaped" and ra["liveness"] == "dead"
    assert any("finished 10m ago (completed/cancelled)" in r for r in ra["reasons"])
    assert f"{fake.web}/acme/infra/actions/runs/1001/job/11" in [e["url"] for e in ra["evidence"]]
    assert not exists(ddb, a) and "Item" in ddb.get_item(TableName=TABLE, Key={"LockID": {"S": a + "-md5"}})
    record = json.loads(Path(ra["audit_ref"]).read_text())
    assert record["liveness"]["state"] == "dead" and record["liveness"]["checkers"][0] == "claims"

    rb = entries[b]
    assert rb["outcome"] == "kept" and rb["liveness"] == "alive" and exists(ddb, b)
    assert any("is in_progress" in r for r in rb["reasons"])

    rc = entries[c]
    assert rc["outcome"] == "kept" and rc["liveness"] == "unknown" and exists(ddb, c)
    assert "kept_unknown" in rc["flags"] and any("HTTP 500" in r for r in rc["reasons"])
    assert report["summary"]["kept_unknown"] == 1

    rd = entries[d]
    assert rd["outcome"] == "reaped" and rd["liveness"] == "dead" and not exists(ddb, d)
    assert any("project 42" in r for r in rd["reasons"])

    calls = report["liveness_api_calls"]
    assert calls["by_kind"]["github.attempt_jobs"] == 3 and calls["by_kind"]["gitlab.live_jobs"] == 1
    # the claims table is read once per run (one scan), whatever the number of candidates
    assert calls["by_kind"]["claims.scan"] == 1 and calls["by_kind"]["s3.head_object"] == 4
    assert fake.count(r"/repos/acme/broken/") == 1, "a 500 is not retried"

    # a second cycle: what is left is asked again, and unchanged answers come back as 304
    code, out, err = run_cli("reap", "--config", str(policy), "--quiet")
    assert code == 0, err
    assert "liveness:" in out and "304 Not Modified" in out
    assert exists(ddb, b) and exists(ddb, c)


def test_explain_shows_the_chain(world) -> None:
    fake, ddb, policy = world
    now = datetime.now(timezone.utc)
    created = now - timedelta(hours=3)
    path = f"{BUCKET}/prod/c.tfstate"
    claim(["--who", "runner@fv-az333-3"], fake.github_job_env("acme/broken", 1003, "GitHub Actions 3"),
          created - timedelta(seconds=40))
    put_lock(ddb, path, "runner@fv-az333-3", created)
    fake.fault(r"/repos/acme/broken/", 500)

    code, out, err = run_cli("explain", path, "--config", str(policy), "--quiet")
    assert code == 0, err
    assert "rule       default: max_age 2h, hard_max_age 2d" in out
    assert "candidate  yes" in out and "checkers   claims, state-activity" in out
    assert "HTTP 500" in out and f"{fake.github_api}/repos/acme/broken/actions/runs/1003/attempts/1/jobs" in out
    assert f"{fake.web}/acme/broken/actions/runs/1003" in out  # the claim's link for humans
    assert "decision   KEEP" in out and "unknown means keep" in out

    code, out, err = run_cli("explain", path, "--config", str(policy), "--json")
    doc = json.loads(out)
    assert doc["candidate"] is True and doc["liveness"]["state"] == "unknown"
    assert [a["checker"] for a in doc["answers"]] == ["claims", "state-activity"]
    assert doc["decision"]["action"] == "keep" and "kept_unknown" in doc["decision"]["flags"]
    assert doc["answers"][0]["evidence"][1]["status"] == "500"

    code, _, err = run_cli("explain", f"{BUCKET}/nope", "--config", str(policy))
    assert code == 1 and "no lock with path" in err


# ---------------------------------------------------------------------- with real Terraform
@pytest.mark.terraform
def test_real_terraform_lock_joined_to_its_claim(world, tmp_path: Path) -> None:
    from devtools.terraform import S3Backend, TerraformWorkdir
    from reaper.policy import load_policy
    from reaper.liveness.identity import terraform_who
    from reaper.wiring import Deps, build_reaper
    from terraform_kit import require_terraform

    binary = require_terraform("1.0.3")
    fake, ddb, policy_path = world
    backend = S3Backend(endpoint=os.environ["AWS_ENDPOINT_URL"], bucket=BUCKET, key="prod/app.tfstate", table=TABLE)
    tf = TerraformWorkdir(binary, tmp_path / "tf", backend)
    tf.init()
    tf.apply("v1")

    # the CI job: claim (Who computed by the reaper from the job's environment), then terraform apply
    env = {**tf.env(), **fake.github_job_env("acme/infra", 2001, "GitHub Actions 5")}
    claim([], env, datetime.now(timezone.utc))
    held = tf.hold_lock("v2", ddb)
    assert held.info["Who"] == terraform_who(tf.env()), "Who is computed exactly as Terraform does"
    held.kill()  # the runner dies: a stale lock
    created = parse_created(held.info["Created"])
    job = fake.add_github_job("acme/infra", 2001, 21, status="in_progress", runner_name="GitHub Actions 5",
                              started_at=created - timedelta(minutes=1))

    policy = load_policy(policy_path, env=os.environ)
    later = created + timedelta(hours=3)
    report = build_reaper(policy, Deps(clock=lambda: later)).run(mode="enforce")
    [entry] = [e for e in report.locks if e.lock_path == backend.lock_id()]
    assert entry.outcome.value == "kept" and entry.liveness == "alive", entry.reasons

    job["status"], job["conclusion"] = "completed", "cancelled"
    job["completed_at"] = (later - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = build_reaper(load_policy(policy_path, env=os.environ), Deps(clock=lambda: later)).run(mode="enforce")
    [entry] = [e for e in report.locks if e.lock_path == backend.lock_id()]
    assert entry.outcome.value == "reaped" and entry.liveness == "dead", entry.reasons
    assert tf.plan("v2").returncode == 0, "terraform works again"
