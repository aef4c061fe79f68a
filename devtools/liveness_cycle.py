"""A realistic reaper cycle with every liveness checker, and the API calls it costs.

``python -m devtools.liveness_cycle`` prints JSON: per cycle, the outcomes and the
CI/AWS calls by kind. The fleet (200 locks, 40 of them candidates past max_age):

- 16 GitHub-hosted runner locks with claims, in 4 repos (10 runs over, 2 within
  the grace period, 4 in progress and writing their state);
- 8 self-hosted runner locks in one org of 20 runners (3 busy, 3 idle, 2 gone);
- 8 GitLab runner locks across 3 projects, 4 of them claimed;
- 4 locks under a rule mapped to one GitHub repo;
- 4 locks taken from laptops (no evidence at all);
- 160 young locks, never asked about.

Two cycles 15 minutes apart: the second one is answered largely by 304s
(ETags) and by fewer candidates (what was reaped is gone).
AWS is moto in-process (claims table, S3 state objects); CI is devtools.fake_ci.
"""

from __future__ import annotations

import json
import random
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from .fake_ci import FakeCI
from .locks import create_claims_table, info_json

GH_TOKEN = "ghp_benchToken00000000000000000000000"
GL_TOKEN = "glpat-benchToken000000"

POLICY = """\
mode: enforce
max_deletes_per_run: 50
min_age: 15m
rules:
  - name: mapped
    match: "tfstate/mapped/*"
    max_age: 2h
    hard_max_age: 3d
    liveness: {{github_repos: [acme/platform]}}
  - name: default
    match: "*"
    max_age: 2h
    hard_max_age: 3d
audit: {{local_dir: {audit}}}
liveness:
  claims: {{table: claims}}
  providers:
    - type: github
      api_url: {gh}
      token_env: BENCH_GH_TOKEN
      runners: [{{org: acme, hosts: ["gh-runner-*"], users: [ci], absent_means_gone: true}}]
    - type: gitlab
      api_url: {gl}
      token_env: BENCH_GL_TOKEN
      runner_hosts: ["runner-*-project-*-concurrent-*"]
"""


def realistic_cycle(audit_dir: str, seed: int = 7) -> dict[str, Any]:
    import boto3
    from moto import mock_aws

    from reaper.http.client import EtagCache
    from reaper.policy import parse_policy

    etags = EtagCache()  # one per process, as in a warm Lambda
    with mock_aws(), FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN) as fake:
        factory = lambda service, region=None: boto3.client(service, region_name=region or "us-east-1")  # noqa: E731
        fleet = _Fleet(fake, factory, random.Random(seed), datetime.now(UTC))
        fleet.github_hosted()
        fleet.self_hosted()
        fleet.gitlab()
        fleet.others()
        policy = parse_policy(textwrap.dedent(POLICY.format(audit=audit_dir, gh=fake.github_api, gl=fake.gitlab_api)))
        cycles = [_cycle(n + 1, policy, fleet, factory, etags, at)
                  for n, at in enumerate((fleet.now, fleet.now + timedelta(minutes=15)))]
        return {"fleet": "200 locks: 16 claimed GitHub-hosted, 8 self-hosted, 8 GitLab, 4 mapped, 4 laptops, 160 young",
                "cycles": cycles}


def _cycle(n: int, policy: Any, fleet: _Fleet, factory: Any, etags: Any, at: datetime) -> dict[str, Any]:
    """One run through the Lambda's wiring (one build per run), with the fleet's in-memory store and a null audit."""
    from reaper.engine import Reaper
    from reaper.wiring import Deps, build_components

    env = {"BENCH_GH_TOKEN": GH_TOKEN, "BENCH_GL_TOKEN": GL_TOKEN}
    deps = Deps(client_factory=factory, env=env, etags=etags, sleep=lambda s: None, clock=lambda: at)
    parts = build_components(policy, deps, sinks=False)
    report = Reaper(policy, [fleet.store], clock=deps.clock, liveness=parts.liveness, audit=_NullAudit()).run(mode="enforce")
    return {
        "cycle": n,
        "locks": report.summary.locks_scanned,
        "candidates": sum(1 for e in report.locks if e.liveness != "not_checked"),
        "liveness": dict(sorted(_count(e.liveness for e in report.locks).items())),
        "outcomes": {k: v for k, v in report.summary.outcomes.items() if v},
        "api_calls": report.liveness_api_calls,
    }


class _Fleet:
    """The locks, claims, CI jobs and runners of the realistic fleet (added in a fixed order: one seed, one fleet)."""

    def __init__(self, fake: FakeCI, factory: Any, rng: random.Random, now: datetime):
        from reaper.liveness.claims import ClaimStore
        from reaper.stores.memory import InMemoryLockStore

        self.fake, self.rng, self.now = fake, rng, now
        ddb = factory("dynamodb")
        create_claims_table(ddb, "claims")
        self.s3 = factory("s3")
        self.s3.create_bucket(Bucket="tfstate")
        self.claims = ClaimStore(ddb, "claims")
        self.store = InMemoryLockStore("dynamodb:terraform-locks")

    def lock(self, path: str, who: str, age: timedelta) -> datetime:
        self.store.put_lock(path, info_json(path, age, self.now, who=who))
        return self.now - age

    def github_hosted(self) -> None:
        """16 claimed locks: 10 cancelled long ago, 2 failed 2 minutes ago, 4 in progress (writing their state)."""
        from reaper.liveness.claims import Claim

        fake, rng, now = self.fake, self.rng, self.now
        run = 10_000
        for i in range(16):
            repo = f"acme/svc-{i % 4}"
            run += 1
            who = f"runner@fv-az{100 + i}-{rng.randint(100, 999)}"
            created = self.lock(f"tfstate/{repo}/{i}.tfstate", who, timedelta(hours=rng.uniform(2.5, 8)))
            runner = f"GitHub Actions {i}"
            self.claims.put(Claim(who=who, claimed_at=created - timedelta(seconds=30), provider="github",
                                  api_url=fake.github_api, repo=repo, run_id=run, run_attempt=1, runner_name=runner))
            started = created - timedelta(minutes=1)
            if i < 10:
                fake.add_github_job(repo, run, run * 10, status="completed", conclusion="cancelled", runner_name=runner,
                                    started_at=started, completed_at=now - timedelta(minutes=rng.uniform(20, 90)))
            elif i < 12:
                fake.add_github_job(repo, run, run * 10, status="completed", conclusion="failure", runner_name=runner,
                                    started_at=started, completed_at=now - timedelta(minutes=2))
            else:
                fake.add_github_job(repo, run, run * 10, status="in_progress", runner_name=runner, started_at=started)
                self.s3.put_object(Bucket="tfstate", Key=f"{repo}/{i}.tfstate", Body=b"{}")  # an apply writing its state

    def self_hosted(self) -> None:
        for r in range(20):  # self-hosted runners of org acme
            if r not in (6, 7):  # gh-runner-6 and -7 are gone (autoscaled away)
                self.fake.add_github_runner("org:acme", f"gh-runner-{r}", busy=r < 3)
        for i in range(8):
            self.lock(f"tfstate/selfhosted/{i}.tfstate", f"ci@gh-runner-{i}", timedelta(hours=self.rng.uniform(3, 30)))

    def gitlab(self) -> None:
        from reaper.liveness.claims import Claim

        fake, now = self.fake, self.now
        for p in (101, 102, 103):  # GitLab projects
            fake.gl_jobs[p] = []
        fake.add_gitlab_job(101, 501, status="running", started_at=now - timedelta(hours=9))
        for i in range(8):
            project = 101 + i % 3
            who = f"root@runner-a1b2c3d4-project-{project}-concurrent-{i}"
            created = self.lock(f"tfstate/gitlab/{i}.tfstate", who, timedelta(hours=self.rng.uniform(3, 8)))
            if i < 4:
                job = 600 + i
                fake.add_gitlab_job(project, job, status="canceled", started_at=created - timedelta(minutes=1),
                                    finished_at=now - timedelta(minutes=40))
                self.claims.put(Claim(who=who, claimed_at=created - timedelta(seconds=20), provider="gitlab",
                                      api_url=fake.gitlab_api, project_id=project, run_id=9, job_id=job))

    def others(self) -> None:
        """Mapped, laptop and young locks."""
        now = self.now
        # the mapped repo's last run began after the locks and completed an hour ago (a run still in
        # progress would make the mapped locks unknown: its holder's clock may lag beyond clock_skew)
        self.fake.add_github_run("acme/platform", 777, status="completed", conclusion="success",
                                 started_at=now - timedelta(hours=2), updated_at=now - timedelta(hours=1))
        for i in range(4):
            self.lock(f"tfstate/mapped/{i}.tfstate", f"runner@fv-az9{i}-1", timedelta(hours=3))
        for i in range(4):
            self.lock(f"tfstate/laptops/{i}.tfstate", f"dev{i}@laptop-{i}", timedelta(hours=5))
        for i in range(160):
            self.lock(f"tfstate/young/{i}.tfstate", f"runner@fv-az{i}-1", timedelta(minutes=self.rng.uniform(1, 100)))


class _NullAudit:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> str:
        self.records.append(record)
        return f"memory://{len(self.records)}"

    def read(self, ref: str) -> dict[str, Any]:
        return self.records[int(ref.rsplit("/", 1)[1]) - 1]


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(realistic_cycle(d), indent=2))
