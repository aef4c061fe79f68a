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
from datetime import datetime, timedelta, timezone
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

    from reaper.policy import parse_policy
    from reaper.engine import Reaper
    from reaper.wiring import Deps, build_components
    from reaper.liveness.claims import Claim, ClaimStore
    from reaper.http.client import EtagCache
    from reaper.stores.memory import InMemoryLockStore

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    etags = EtagCache()  # one per process, as in a warm Lambda
    with mock_aws(), FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN) as fake:
        factory = lambda service, region=None: boto3.client(service, region_name=region or "us-east-1")  # noqa: E731
        ddb = factory("dynamodb")
        create_claims_table(ddb, "claims")
        s3 = factory("s3")
        s3.create_bucket(Bucket="tfstate")
        claims = ClaimStore(ddb, "claims")
        store = InMemoryLockStore("dynamodb:terraform-locks")
        policy = parse_policy(textwrap.dedent(POLICY.format(audit=audit_dir, gh=fake.github_api, gl=fake.gitlab_api)))

        def lock(path: str, who: str, age: timedelta) -> datetime:
            raw = info_json(path, age, now, who=who)
            store.put_lock(path, raw)
            return now - age

        run = 10_000
        for i in range(16):  # GitHub-hosted, claimed
            repo = f"acme/svc-{i % 4}"
            run += 1
            who = f"runner@fv-az{100 + i}-{rng.randint(100, 999)}"
            created = lock(f"tfstate/{repo}/{i}.tfstate", who, timedelta(hours=rng.uniform(2.5, 8)))
            claims.put(Claim(who=who, claimed_at=created - timedelta(seconds=30), provider="github",
                             api_url=fake.github_api, repo=repo, run_id=run, run_attempt=1, runner_name=f"GitHub Actions {i}"))
            if i < 10:
                fake.add_github_job(repo, run, run * 10, status="completed", conclusion="cancelled", runner_name=f"GitHub Actions {i}",
                                    started_at=created - timedelta(minutes=1), completed_at=now - timedelta(minutes=rng.uniform(20, 90)))
            elif i < 12:
                fake.add_github_job(repo, run, run * 10, status="completed", conclusion="failure", runner_name=f"GitHub Actions {i}",
                                    started_at=created - timedelta(minutes=1), completed_at=now - timedelta(minutes=2))
            else:
                fake.add_github_job(repo, run, run * 10, status="in_progress", runner_name=f"GitHub Actions {i}",
                                    started_at=created - timedelta(minutes=1))
                s3.put_object(Bucket="tfstate", Key=f"{repo}/{i}.tfstate", Body=b"{}")  # an apply writing its state
        for r in range(20):  # self-hosted runners of org acme
            if r not in (6, 7):  # gh-runner-6 and -7 are gone (autoscaled away)
                fake.add_github_runner("org:acme", f"gh-runner-{r}", busy=r < 3)
        for i in range(8):
            lock(f"tfstate/selfhosted/{i}.tfstate", f"ci@gh-runner-{i}", timedelta(hours=rng.uniform(3, 30)))
        for p in (101, 102, 103):  # GitLab projects
            fake.gl_jobs[p] = []
        fake.add_gitlab_job(101, 501, status="running", started_at=now - timedelta(hours=9))
        for i in range(8):
            project = 101 + i % 3
            who = f"root@runner-a1b2c3d4-project-{project}-concurrent-{i}"
            created = lock(f"tfstate/gitlab/{i}.tfstate", who, timedelta(hours=rng.uniform(3, 8)))
            if i < 4:
                job = 600 + i
                fake.add_gitlab_job(project, job, status="canceled", started_at=created - timedelta(minutes=1),
                                    finished_at=now - timedelta(minutes=40))
                claims.put(Claim(who=who, claimed_at=created - timedelta(seconds=20), provider="gitlab",
                                 api_url=fake.gitlab_api, project_id=project, run_id=9, job_id=job))
        # the mapped repo's last run began after the locks and completed an hour ago (a run still in
        # progress would make the mapped locks unknown: its holder's clock may lag beyond clock_skew)
        fake.add_github_run("acme/platform", 777, status="completed", conclusion="success", started_at=now - timedelta(hours=2),
                            updated_at=now - timedelta(hours=1))
        for i in range(4):
            lock(f"tfstate/mapped/{i}.tfstate", f"runner@fv-az9{i}-1", timedelta(hours=3))
        for i in range(4):
            lock(f"tfstate/laptops/{i}.tfstate", f"dev{i}@laptop-{i}", timedelta(hours=5))
        for i in range(160):
            lock(f"tfstate/young/{i}.tfstate", f"runner@fv-az{i}-1", timedelta(minutes=rng.uniform(1, 100)))

        cycles = []
        env = {"BENCH_GH_TOKEN": GH_TOKEN, "BENCH_GL_TOKEN": GL_TOKEN}
        for n, at in enumerate((now, now + timedelta(minutes=15))):
            # the Lambda's wiring (one build per run), with this fleet's in-memory store and a null audit
            deps = Deps(client_factory=factory, env=env, etags=etags, sleep=lambda s: None, clock=lambda at=at: at)
            parts = build_components(policy, deps, sinks=False)
            report = Reaper(policy, [store], clock=deps.clock, liveness=parts.liveness,
                            audit=_NullAudit()).run(mode="enforce")
            candidates = sum(1 for e in report.locks if e.liveness != "not_checked")
            cycles.append({
                "cycle": n + 1,
                "locks": report.summary.locks_scanned,
                "candidates": candidates,
                "liveness": dict(sorted(_count(e.liveness for e in report.locks).items())),
                "outcomes": {k: v for k, v in report.summary.outcomes.items() if v},
                "api_calls": report.liveness_api_calls,
            })
        return {"fleet": "200 locks: 16 claimed GitHub-hosted, 8 self-hosted, 8 GitLab, 4 mapped, 4 laptops, 160 young",
                "cycles": cycles}


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
