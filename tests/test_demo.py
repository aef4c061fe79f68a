"""`make demo` runs end to end: its own moto_server and fake CI server, the real CLI as
subprocesses (claims written by `python -m reaper claim` in CI job environments), and
it prints what was reaped, kept, explained, audited and alerted, with the evidence."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from devtools import demo
from reaper.models import parse_created

pytestmark = pytest.mark.e2e

P = demo._path
EKS, APP, SANDBOX = P("prod/eks/terraform.tfstate"), P("staging/app/terraform.tfstate"), P("dev/sandbox/terraform.tfstate")
DNS, WORKSPACE = P("prod/dns/terraform.tfstate"), P("env:/staging/services/api/terraform.tfstate")
LAPTOP, FRESH = P("dev/experiments/terraform.tfstate"), P("prod/network/terraform.tfstate")
EXCLUDED, FUTURE = P("bootstrap/org/terraform.tfstate"), P("prod/data/terraform.tfstate")
MALFORMED, COPIED = P("legacy/terraform.tfstate"), P("prod/iam/terraform.tfstate")


def _ports_closed(text: str) -> bool:
    ports = [int(p) for p in re.findall(r"starting (?:moto_server|the fake CI server) on http://127\.0\.0\.1:(\d+)", text)]
    assert ports, "the demo must say where its servers run"
    for port in ports:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    workdir = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    result = demo.run_demo(demo.Out(buf), workdir)
    return result, buf.getvalue(), workdir


def test_liveness_decides_which_locks_are_reaped(ran) -> None:
    result, text, _ = ran
    assert result["reaped_ids"] == sorted([EKS, DNS, WORKSPACE, LAPTOP])
    assert result["kept_ids"] == sorted([APP, SANDBOX, FRESH, EXCLUDED, FUTURE, MALFORMED, COPIED])
    assert result["reaped"] == 4 and result["kept"] == 7
    outcomes = result["outcomes"]
    assert set(outcomes) == set(result["reaped_ids"]) | set(result["kept_ids"]), "every lock is in the report, no digest"

    # Dead by CI evidence, although younger than hard_max_age: the GitHub claim, the GitLab runner's project.
    for path in (EKS, DNS, WORKSPACE):
        assert outcomes[path]["outcome"] == "reaped" and outcomes[path]["liveness"] == "dead", path
    # Alive: kept past hard_max_age, flagged for the alarm.
    assert outcomes[APP] == {"outcome": "kept", "liveness": "alive", "flags": ["alive_past_hard_max", "stale"]}
    # The provider answers 500: unknown, kept and reported.
    assert outcomes[SANDBOX]["outcome"] == "kept" and outcomes[SANDBOX]["liveness"] == "unknown"
    assert "kept_unknown" in outcomes[SANDBOX]["flags"]
    # Nothing to ask (a laptop): unknown, reaped only because the policy allows it past hard_max_age.
    assert outcomes[LAPTOP]["outcome"] == "reaped" and outcomes[LAPTOP]["liveness"] == "unknown"
    # Never asked: not candidates.
    for path in (FRESH, EXCLUDED, FUTURE, MALFORMED, COPIED):
        assert outcomes[path]["outcome"] == "kept" and outcomes[path]["liveness"] == "not_checked", path
    assert result["summary"]["kept_unknown"] == 1 and result["summary"]["alive_past_hard_max"] == 1
    assert result["ci_requests"] > 0, "the reaper asked the fake CI"


def test_claims_are_written_by_the_cli_in_ci_job_environments(ran) -> None:
    result, text, _ = ran
    assert result["claim_exits"] == {EKS: 0, APP: 0, SANDBOX: 0, WORKSPACE: 0}
    claims = {who: (parse_created(at), provider) for who, at, provider in result["claims"]}
    assert sorted(p for _, p in claims.values()) == ["github", "github", "github", "gitlab"]
    # Each claim is stamped when its job ran (hours ago), before the lock the job then took.
    now = datetime.now(timezone.utc)
    eks_at = claims["runner@runnervmg1sw1"][0]
    assert timedelta(hours=7, minutes=59) < now - eks_at < timedelta(hours=8, minutes=5)
    assert "$ python -m reaper claim --who runner@runnervmg1sw1" in text
    assert "GITHUB_REPOSITORY=acme/infra GITHUB_RUN_ID=16123456789" in text
    assert "$ python -m reaper claim --who root@runner-t3zn2hkp-project-5120-concurrent-1" in text
    assert "GITLAB_CI=true" in text and "CI_JOB_ID=88001" in text
    assert "claimed runner@runnervmg1sw1 for GitHub acme/infra run 16123456789 attempt 1 runner 'GitHub Actions 12'" in text
    assert "claimed root@runner-t3zn2hkp-project-5120-concurrent-1 for GitLab" in text


def test_what_happened_shows_each_reason_and_its_evidence(ran) -> None:
    _, text, _ = ran
    happened = text.split("What happened, and why", 1)[1].split("Audit records", 1)[0]
    web = re.search(r"starting the fake CI server on (http://127\.0\.0\.1:\d+)", text).group(1)
    job_url = f"{web}/acme/infra/actions/runs/16123456789/job/45123456789"
    assert f"[completed/cancelled] {job_url}" in happened
    assert "finished 7h50m ago (completed/cancelled)" in happened or "finished 7h51m ago (completed/cancelled)" in happened
    assert f"[in_progress] {web}/acme/app/actions/runs/16123498765/job/45123498765" in happened
    assert "flag:     alive_past_hard_max" in happened
    assert "HTTP 500" in happened and f"[500] {web}/api/v3/repos/acme/sandbox/" in happened
    assert "no live job in project 4217" in happened
    assert f"[none] {web}/api/v4/projects/4217/jobs" in happened
    assert "('terraform:apply') finished" in happened and "(canceled)" in happened
    assert "age >= hard_max_age 6h: the policy allows reaping an unknown holder" in happened
    assert happened.count("holder DEAD, proved by the CI system") == 3
    assert happened.count("holder ALIVE") == 1 and happened.count("holder UNKNOWN") == 2
    for reason in ("below the min_age floor", "in the future", "differs from the lock's path",
                   "unparseable lock", "excluded by", "unknown means keep"):
        assert reason in happened, reason


def test_explain_shows_the_chain_for_a_reaped_lock(ran) -> None:
    result, text, _ = ran
    assert result["explain_exit"] == 0 and result["explain_path"] == EKS
    assert f"$ python -m reaper explain {EKS} --config" in text
    out = result["explain_text"]
    assert "rule       prod-applies: max_age 6h, hard_max_age 12h" in out
    assert "candidate  yes: past max_age, liveness asked" in out
    assert re.search(r"claims +dead +GitHub acme/infra run 16123456789", out)
    assert "/acme/infra/actions/runs/16123456789/job/45123456789" in out
    assert "liveness   dead" in out and "decision   REAP" in out
    # explain ran before reap: the lock it explained is the one reap then deleted
    assert text.index("Explain one decision") < text.index("Reap (enforce mode")
    assert EKS in result["reaped_ids"]


def test_the_run_is_audited_alerted_and_leaves_digests_alone(ran) -> None:
    result, text, workdir = ran
    assert result["scan_exit"] == 0 and result["reap_exit"] == 0
    assert result["scan_deleted"] == 0, "scan must never delete"
    assert result["digests_unchanged"] is True and result["digests"] == 16
    assert result["audit_records"] == 4 and result["audit_liveness"] == "dead"
    assert result["sns_received"] == 1 and result["sns_subject"] == "Lock Reaper: 4 reaped, 0 raced"
    assert result["events"] == 4
    assert result["seconds"] < 60

    assert "python -m reaper scan --config" in text and "python -m reaper reap --config" in text
    assert "4 would_reap" in text and "4 reaped" in text
    assert "Reaped (4)" in text and "Kept (7)" in text
    assert "State digests: 16 before, 16 after, all unchanged" in text
    assert "Subject: Lock Reaper: 4 reaped, 0 raced" in text
    assert text.count("lock-reaper / Terraform Lock Reaped:") == 4
    assert "Traceback" not in text
    policy = (workdir / "policy.yaml").read_text()
    assert "liveness:" in policy and "lock-reaper-claims" in policy
    assert _ports_closed(text), "the emulator and the fake CI must be stopped at the end"


def test_replay_clock_moves_only_the_claim_commands_clock() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_", "CI_", "GITLAB_", "DEMO_"))}
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/infra", "GITHUB_RUN_ID": "7",
                "PYTHONPATH": os.pathsep.join([str(demo.REPLAY_CLOCK), str(demo.ROOT)])})

    def claimed_at(extra: dict[str, str]) -> datetime:
        proc = subprocess.run([sys.executable, "-m", "reaper", "claim", "--who", "runner@x", "--dry-run", "--json"],
                              cwd=demo.ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return parse_created(json.loads(proc.stdout)["claimed_at"])

    now = datetime.now(timezone.utc)
    assert abs(claimed_at({}) - now) < timedelta(seconds=30), "without DEMO_CLOCK_OFFSET nothing moves"
    back = claimed_at({"DEMO_CLOCK_OFFSET": str(-3 * 3600)})
    assert timedelta(hours=2, minutes=59) < now - back < timedelta(hours=3, minutes=1)


def test_demo_failure_is_one_readable_line_and_stops_the_servers(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the demo wants its work directory")
    buf = io.StringIO()
    code = demo.main(["--workdir", str(blocker)], stream=buf)
    text = buf.getvalue()
    assert code == 1
    assert "demo failed:" in text and "Traceback" not in text
    assert _ports_closed(text)
