"""Claims: Who computed as Terraform does, the claim from CI variables, the table, the CLI."""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from devtools.locks import create_claims_table
from reaper.cli import main
from reaper.commands import claim as claim_cli
from reaper.liveness.claims import (
    TTL_ATTRIBUTE,
    Claim,
    ClaimError,
    ClaimStore,
    claim_from_env,
    claim_time,
)
from reaper.liveness.identity import gitlab_project_from_host, parse_who, terraform_user, terraform_who

NOW = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=timezone.utc)


# ---------------------------------------------------------------------- Who, as Terraform computes it
def test_user_from_etc_passwd_like_go_without_cgo(tmp_path) -> None:
    uid = os.getuid()
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "# comment\n"
        f"+nisuser:x:{uid}:{uid}::/:/bin/sh\n"            # NIS lines are ignored by Go
        f"short:x:{uid}:{uid}\n"                          # fewer than 6 colons: skipped
        f"badgid:x:{uid}:notanumber::/home/x:/bin/sh\n"   # gid must parse
        f"   runner:x:{uid}:{uid}:GitHub,,,:/home/runner:/bin/bash\n"
        f"second:x:{uid}:{uid}::/home/second:/bin/sh\n"
    )
    assert terraform_user({}, passwd_file=str(passwd), platform="linux") == "runner"


def test_user_falls_back_to_user_and_home_only_together(tmp_path) -> None:
    passwd = tmp_path / "passwd"
    other = os.getuid() + 1  # a file that does not list the current uid
    passwd.write_text(f"svc:x:{other}:{other}::/home/svc:/bin/sh\n")
    assert terraform_user({"USER": "ci", "HOME": "/home/ci"}, passwd_file=str(passwd), platform="linux") == "ci"
    assert terraform_user({"USER": "ci"}, passwd_file=str(passwd), platform="linux") == ""  # Go: "requires cgo or $HOME"
    assert terraform_user({}, passwd_file=str(tmp_path / "missing"), platform="linux") == ""


def test_windows_user_is_domain_backslash_user() -> None:
    assert terraform_user({"USERNAME": "runneradmin", "USERDOMAIN": "fv-az12-34"}, platform="win32") == "fv-az12-34\\runneradmin"


def test_who_is_user_at_hostname() -> None:
    import socket

    assert terraform_who() == f"{terraform_user()}@{socket.gethostname()}"


@pytest.mark.parametrize("who,user,host", [
    ("runner@fv-az581-229", "runner", "fv-az581-229"),
    ("me@corp@laptop", "me@corp", "laptop"),
    ("@host", "", "host"),
    ("nohost", "", "nohost"),
])
def test_parse_who(who: str, user: str, host: str) -> None:
    w = parse_who(who)
    assert (w.user, w.host) == (user, host)


@pytest.mark.parametrize("host,project", [
    ("runner-abcd1234-project-42-concurrent-0", 42),
    ("runner-t3st-tok3n-project-7-concurrent-12", 7),
    ("runner-zxwgkjap-project-25-concurrent-0-f1q2w3e4", 25),  # Kubernetes pod suffix
    ("runner-abc-project-x-concurrent-0", None),
    ("gitlab-runner-1", None),
    ("fv-az581-229", None),
])
def test_gitlab_hostnames(host: str, project: int | None) -> None:
    assert gitlab_project_from_host(host) == project


@pytest.mark.parametrize("host,hosted", [("fv-az581-229", True), ("runnervmg1sw1", True), ("gh-runner-1", False)])
def test_github_hosted_hostnames(host: str, hosted: bool) -> None:
    assert parse_who(f"runner@{host}").github_hosted is hosted


# ---------------------------------------------------------------------- claims from CI variables
GITHUB_ENV = {
    "GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/infra", "GITHUB_RUN_ID": "16123456789", "GITHUB_RUN_ATTEMPT": "2",
    "GITHUB_JOB": "apply", "RUNNER_NAME": "GitHub Actions 12", "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_API_URL": "https://api.github.com",
}
GITLAB_ENV = {
    "GITLAB_CI": "true", "CI_PROJECT_ID": "42", "CI_PROJECT_PATH": "group/infra", "CI_PIPELINE_ID": "1001", "CI_JOB_ID": "5555",
    "CI_JOB_NAME": "terraform:apply", "CI_JOB_URL": "https://gitlab.example.com/group/infra/-/jobs/5555",
    "CI_JOB_STARTED_AT": "2026-11-22T11:58:00Z", "CI_API_V4_URL": "https://gitlab.example.com/api/v4",
    "CI_RUNNER_DESCRIPTION": "docker-runner-1",
}


def test_github_claim_from_env() -> None:
    c = claim_from_env(GITHUB_ENV, "runner@fv-az1-2", NOW)
    assert (c.provider, c.repo, c.run_id, c.run_attempt, c.job_name, c.runner_name) == (
        "github", "acme/infra", 16123456789, 2, "apply", "GitHub Actions 12")
    assert c.api_url == "https://api.github.com" and c.url == "https://github.com/acme/infra/actions/runs/16123456789/attempts/2"
    assert c.expires_at == int((NOW + timedelta(days=7)).timestamp())
    with_job = claim_from_env({**GITHUB_ENV, "REAPER_CLAIM_JOB_ID": "987"}, "w@h", NOW)
    assert with_job.job_id == 987 and with_job.url.endswith("/actions/runs/16123456789/job/987")


def test_gitlab_claim_from_env() -> None:
    c = claim_from_env(GITLAB_ENV, "root@runner-abc-project-42-concurrent-0", NOW)
    assert (c.provider, c.project_id, c.project, c.run_id, c.job_id) == ("gitlab", 42, "group/infra", 1001, 5555)
    assert c.started_at == datetime(2026, 11, 22, 11, 58, tzinfo=timezone.utc)
    assert c.api_url == "https://gitlab.example.com/api/v4" and c.url == GITLAB_ENV["CI_JOB_URL"]


def test_claim_outside_ci_needs_explicit_ids() -> None:
    with pytest.raises(ClaimError, match="not running in GitHub Actions or GitLab CI"):
        claim_from_env({}, "a@b", NOW)
    with pytest.raises(ClaimError, match="GITHUB_RUN_ID"):
        claim_from_env({}, "a@b", NOW, overrides={"provider": "github", "repo": "acme/x"})
    c = claim_from_env({}, "a@b", NOW, overrides={"provider": "github", "repo": "acme/x", "run_id": 5})
    assert c.run_id == 5 and c.run_attempt == 1
    with pytest.raises(ClaimError, match="not a number"):
        claim_from_env({**GITHUB_ENV, "GITHUB_RUN_ID": "abc"}, "a@b", NOW)


def test_claim_time_sorts_as_time() -> None:
    a = claim_time(datetime(2026, 1, 1, 9, 59, 59, 999999, tzinfo=timezone.utc))
    b = claim_time(datetime(2026, 1, 1, 10, 0, 0, tzinfo=timezone.utc))
    c = claim_time(datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=2))))  # 10:00:00 UTC
    assert a == "2026-01-01T09:59:59.999999Z" and b == "2026-01-01T10:00:00.000000Z" and a < b and b == c


def test_item_round_trip() -> None:
    c = claim_from_env(GITLAB_ENV, "root@h", NOW)
    item = c.to_item()
    assert item["Who"] == {"S": "root@h"} and item["ClaimedAt"] == {"S": "2026-11-22T12:00:00.123456Z"}
    assert item[TTL_ATTRIBUTE]["N"].isdigit()
    assert Claim.from_item(item) == c


# ---------------------------------------------------------------------- the table
@pytest.fixture
def table(aws):
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_claims_table(ddb, "claims")
    return ddb


def test_latest_claim_before_created(table) -> None:
    store = ClaimStore(table, "claims")
    t = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
    for minutes, run in ((-120, 1), (-5, 2), (-1, 3), (3, 4)):
        store.put(Claim(who="runner@h", claimed_at=t + timedelta(minutes=minutes), provider="github", repo="a/b", run_id=run))
    store.put(Claim(who="runner@other", claimed_at=t - timedelta(seconds=1), provider="github", repo="a/b", run_id=9))
    assert store.latest("runner@h", t).run_id == 3
    assert store.latest("runner@h", t - timedelta(minutes=3)).run_id == 2
    assert store.latest("runner@h", t - timedelta(hours=3)) is None
    exact = t + timedelta(minutes=3)
    assert ClaimStore(table, "claims").latest("runner@h", exact).run_id == 4  # at or before
    assert store.latest("nobody@nowhere", t) is None


def test_claims_are_read_once_per_run(table) -> None:
    from reaper.http.client import ApiCounter

    counter = ApiCounter()
    store = ClaimStore(table, "claims", counter)
    t = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
    for i in range(3):
        store.latest(f"runner@h{i}", t)
    assert counter.to_dict()["by_kind"] == {"claims.scan": 1} and counter.to_dict()["memo_hits"] == {"claims.scan": 3}


def test_a_table_past_the_scan_limit_is_queried_per_candidate_and_memoised(table) -> None:
    from reaper.http.client import ApiCounter

    t = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
    for i in range(3):
        ClaimStore(table, "claims").put(Claim(who=f"runner@h{i}", claimed_at=t - timedelta(minutes=1), provider="github",
                                              repo="a/b", run_id=i))
    counter = ApiCounter()
    store = ClaimStore(table, "claims", counter, scan_limit=2)
    for _ in range(2):
        assert store.latest("runner@h1", t).run_id == 1
    calls = counter.to_dict()
    assert calls["by_kind"] == {"claims.scan": 1, "claims.query": 1} and calls["memo_hits"] == {"claims.query": 1}


def test_both_joins_give_the_same_claim_for_every_lock(table) -> None:
    # the same claims and locks, joined from one scan and by one query each: the same claim every time
    import random

    rng = random.Random(11)
    t0 = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
    hosts = [f"runner@ci-{i}" for i in range(12)]  # reused hostnames: several claims each
    writer = ClaimStore(table, "claims")
    for n in range(300):
        at = t0 + timedelta(seconds=rng.randint(0, 6 * 3600), microseconds=rng.randint(0, 999999))
        writer.put(Claim(who=rng.choice(hosts), claimed_at=at, provider="github", repo="a/b", run_id=n))
    scanned, queried = ClaimStore(table, "claims"), ClaimStore(table, "claims", scan_limit=0)
    locks = [(rng.choice(hosts + ["nobody@else"]), t0 + timedelta(seconds=rng.randint(-600, 7 * 3600))) for _ in range(400)]
    found = 0
    for who, created in locks:
        a, b = scanned.latest(who, created), queried.latest(who, created)
        assert (a.run_id if a else None) == (b.run_id if b else None), (who, created)
        found += a is not None
    assert scanned._index is not None and queried._index is None  # each took its own path
    assert 200 < found < 400  # most locks have a claim before them, some none


# ---------------------------------------------------------------------- the CLI
def _run_claim(argv: list[str], env: dict[str, str], table_client=None, now: datetime = NOW) -> tuple[int, str, str]:
    import argparse

    p = argparse.ArgumentParser()
    claim_cli.add_arguments(p)
    args = p.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    factory = (lambda service, region=None: table_client) if table_client is not None else None
    code = claim_cli.run(args, out, err, env=env, client_factory=factory, now=now)
    return code, out.getvalue(), err.getvalue()


def test_cli_claim_writes_the_item(table) -> None:
    code, out, err = _run_claim(["--table", "claims", "--who", "runner@fv-az1-2"], GITHUB_ENV, table)
    assert code == 0, err
    assert "claimed runner@fv-az1-2 for GitHub acme/infra run 16123456789 attempt 2" in out
    [item] = table.scan(TableName="claims")["Items"]
    assert item["Who"]["S"] == "runner@fv-az1-2" and item["ClaimedAt"]["S"] == "2026-11-22T12:00:00.123456Z"
    assert item["Provider"]["S"] == "github" and item["RunId"]["N"] == "16123456789" and item["RunAttempt"]["N"] == "2"
    assert int(item["ExpiresAt"]["N"]) == int((NOW + timedelta(days=7)).timestamp())


def test_cli_claim_table_from_env_and_computed_who(table) -> None:
    code, out, err = _run_claim(["--json", "--ttl", "2d"], {**GITLAB_ENV, "REAPER_CLAIMS_TABLE": "claims"}, table)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["who"] == terraform_who(GITLAB_ENV) and doc["table"] == "claims"
    [item] = table.scan(TableName="claims")["Items"]
    assert item["ProjectId"]["N"] == "42" and item["JobId"]["N"] == "5555"
    assert int(item["ExpiresAt"]["N"]) == int((NOW + timedelta(days=2)).timestamp())


def test_cli_claim_errors(table) -> None:
    code, _, err = _run_claim([], GITHUB_ENV, table)
    assert code == 2 and "REAPER_CLAIMS_TABLE" in err
    code, _, err = _run_claim(["--table", "claims"], {}, table)
    assert code == 2 and "not running in GitHub Actions or GitLab CI" in err
    code, _, err = _run_claim(["--table", "no-such-table"], GITHUB_ENV, table)
    assert code == 1 and "ResourceNotFoundException" in err and "unknown means keep" in err
    assert table.scan(TableName="claims")["Items"] == []


def test_cli_claim_dry_run_needs_no_aws(monkeypatch) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    for k, v in GITHUB_ENV.items():
        monkeypatch.setenv(k, v)
    out, err = io.StringIO(), io.StringIO()
    assert main(["claim", "--dry-run", "--json"], out=out, err=err) == 0, err.getvalue()
    doc = json.loads(out.getvalue())
    assert doc["dry_run"] is True and doc["item"]["Repo"] == {"S": "acme/infra"}
