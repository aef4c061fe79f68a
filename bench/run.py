#!/usr/bin/env python
"""``make bench``: Lock Reaper's performance figures, each a ratio taken within one run.

Machines that run this are noisy (CI runners, laptops, shared 2-core VMs), so no
figure is an absolute time: every figure divides two measurements taken in the
same run, interleaved, as medians of several repetitions.

P1  cycle cost: one report-mode cycle over a moto_server table (10,000 state
    digests + 500 locks of mixed ages) / a bare boto3 paginated scan of the
    same table. Also against a naive reaper (GetItem + one CI call per lock).
P2  CI API calls per cycle, by kind, and on a second cycle (ETag -> 304).
P3  peak RSS of a scan over 100k items / over 1k items (fresh subprocesses).
P4  cold start: ``import reaper.handler`` / ``import boto3`` (fresh processes).
P5  unzipped size of the Lambda asset.

Writes bench/out/results.json (untracked; ``--out`` elsewhere: ``make bench-record``
writes the tracked bench/results.json that README quotes) with raw timings, ratios,
targets and pass/fail, and prints a table. ``--quick`` runs smaller sizes and fewer
repetitions (a smoke test; its figures are not the published ones).

Exit status 1 when a declared target FAILs: each figure's ``pass`` (P1, P2 with the
bound that counts the grace-period lists, P3, P4, P5). P2's issue bound, which leaves
those lists out and is knowingly exceeded, is reported as info, not a target. A
figure that could not be measured (n/a) does not change the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools import locks as lockgen  # noqa: E402
from devtools.motoserver import FAKE_CREDENTIALS, MotoServer  # noqa: E402

TARGETS = {"P1": 1.3, "P1_projected": 1.5, "P4_deployed": 1.5, "P3": 1.5, "P4": 2.5, "P5_mb": 60.0, "P6_usd": 1.0}
FIGURES = ("P1", "P2", "P3", "P4", "P4_deployed", "P5", "P6")
TABLE = "bench-locks"
BUCKET = "tfstate-bench"
ORGS = ["acme", "globex", "initech", "umbrella"]
REPOS = ["network", "platform", "payments", "identity", "data", "edge", "search", "billing"]
ENVS = ["prod", "staging", "dev"]



# ---------------------------------------------------------------------------
# helpers
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("inf")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(cases: dict[str, Callable[[], Any]], reps: int, seed: int = 7) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run every case ``reps`` times in a shuffled order per round (after one warm-up each)."""
    rng = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in cases}
    last: dict[str, Any] = {}
    for name, fn in cases.items():  # warm-up: connections, caches, .pyc
        last[name] = fn()
    for r in range(reps):
        order = list(cases)
        rng.shuffle(order)
        for name in order:
            dt, last[name] = timed(cases[name])
            times[name].append(dt)
        log(f"  round {r + 1}/{reps}: " + ", ".join(f"{k} {times[k][-1]:.3f}s" for k in cases))
    return times, last


def dynamodb_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"mode": "adaptive", "max_attempts": 8}, connect_timeout=5, read_timeout=60,
                 max_pool_connections=20)
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1", config=cfg)


def batch_put(client: Any, table: str, items: list[dict[str, Any]]) -> None:
    for i in range(0, len(items), 25):
        req = {table: [{"PutRequest": {"Item": it}} for it in items[i : i + 25]]}
        while req:
            resp = client.batch_write_item(RequestItems=req)
            req = resp.get("UnprocessedItems") or {}


# ---------------------------------------------------------------------------
# the data set
def lock_paths(n: int, rng: random.Random) -> list[str]:
    paths = []
    for i in range(n):
        org, repo, env = rng.choice(ORGS), rng.choice(REPOS), rng.choice(ENVS)
        paths.append(f"{BUCKET}/{org}/{repo}/{env}/stack-{i:05d}/terraform.tfstate")
    return paths


def lock_ages(n: int, rng: random.Random) -> list[timedelta]:
    """Mixed ages: most locks are fresh (a run in progress), some stale, a few ancient."""
    ages = []
    for _ in range(n):
        x = rng.random()
        if x < 0.55:
            ages.append(timedelta(minutes=rng.uniform(0.5, 50)))  # in progress
        elif x < 0.75:
            ages.append(timedelta(hours=rng.uniform(1, 5)))  # stale for some rules
        elif x < 0.95:
            ages.append(timedelta(hours=rng.uniform(7, 40)))  # stale everywhere
        else:
            ages.append(timedelta(days=rng.uniform(3.5, 30)))  # past hard_max_age
    return ages


GL_PROJECTS = {f"{org}/{repo}": 100 + i for i, (org, repo) in enumerate((o, r) for o in ORGS for r in REPOS)}
GH_TOKEN = "ghp_benchToken0000000000000000000000000"
GL_TOKEN = "glpat-benchToken00000000"
CLAIMS_TABLE = "bench-claims"


class Dataset:
    """Lock items in the shapes Terraform writes, held by the kinds of CI job the checkers know.

    Holders: self-hosted GitHub runners (``<org>-runner-N``, one runners list per org),
    GitHub-hosted VMs with a claim (one jobs list per claimed run attempt), GitLab
    runners (``runner-...-project-<id>-concurrent-0``, one live-jobs list per project, and one
    recently-finished-jobs list for a project whose live jobs prove nothing)
    and laptops (no evidence: no call). ``ci_scenario`` says what the fake CI answers.
    """

    def __init__(self, n_digests: int, n_locks: int, seed: int = 42, now: datetime | None = None):
        rng = random.Random(seed)
        now = now or datetime.now(timezone.utc)
        self.now = now
        self.digests = [lockgen.digest_item(p, rng) for p in lock_paths(n_digests, rng)]
        self.locks: list[dict[str, Any]] = []
        self.meta: list[dict[str, Any]] = []
        for i, (path, age) in enumerate(zip(lock_paths(n_locks, rng), lock_ages(n_locks, rng))):
            org, repo = path.split("/")[1:3]
            kind = rng.choices(["self_hosted", "claimed", "gitlab", "laptop"], weights=[35, 25, 25, 15])[0]
            if kind == "self_hosted":
                host = f"{org}-runner-{rng.randint(1, 12)}"
            elif kind == "claimed":
                host = f"fv-az{rng.randint(100, 999)}-{i}"
            elif kind == "gitlab":
                host = f"runner-xz{rng.randint(1, 9)}ab-project-{GL_PROJECTS[org + '/' + repo]}-concurrent-0"
            else:
                host = f"{rng.choice(['alice', 'bob', 'carol'])}-laptop"
            who = ("root@" if kind == "gitlab" else "runner@") + host
            lid = lockgen.lock_id(rng)
            info = lockgen.info_json(path, age, now, who=who, id_=lid, digits=rng.choice([6, 9]))
            self.locks.append(lockgen.lock_item(path, info))
            self.meta.append({"path": path, "age_s": age.total_seconds(), "org": org, "repo": repo, "kind": kind,
                              "who": who, "host": host, "run_id": 9_000_000_000 + i, "alive": rng.random() < 0.3})

    @property
    def items(self) -> list[dict[str, Any]]:
        return self.digests + self.locks

    def load(self, client: Any, table: str) -> None:
        lockgen.create_lock_table(client, table)
        items = self.items
        random.Random(1).shuffle(items)
        batch_put(client, table, items)

    # -- what the CI systems know --------------------------------------------
    def ci_scenario(self) -> dict[str, Any]:
        """JSON-able description of runs, jobs and runners for the fake CI server."""
        now = self.now
        runners: dict[str, list[dict[str, Any]]] = {org: [] for org in ORGS}
        for org in ORGS:
            for n in range(1, 13):
                if n % 6 == 0:
                    continue  # deregistered: gone
                runners[org].append({"name": f"{org}-runner-{n}", "status": "online" if n % 5 else "offline",
                                     "busy": n % 3 == 0})
        jobs, gl_jobs = [], []
        for m in self.meta:
            created = now - timedelta(seconds=m["age_s"])
            if m["kind"] == "claimed":
                started = created - timedelta(seconds=40)
                done = None if m["alive"] else created + timedelta(minutes=3)
                jobs.append({"repo": f"{m['org']}/{m['repo']}", "run_id": m["run_id"], "job_id": m["run_id"] + 1,
                             "status": "in_progress" if m["alive"] else "completed",
                             "conclusion": None if m["alive"] else "cancelled", "started_at": started.isoformat(),
                             "completed_at": done.isoformat() if done else None, "runner_name": f"GitHub Actions {m['run_id']}"})
        for key, pid in GL_PROJECTS.items():
            # every project ran a job long ago; one in four is running one now (started 30 days ago)
            start = now - timedelta(days=30)
            gl_jobs.append({"project": pid, "job_id": pid * 10, "status": "success", "started_at": start.isoformat(),
                            "finished_at": (start + timedelta(minutes=5)).isoformat()})
            if pid % 4 == 0:
                gl_jobs.append({"project": pid, "job_id": pid * 10 + 1, "status": "running", "started_at": start.isoformat()})
        return {"runners": runners, "jobs": jobs, "gl_jobs": gl_jobs}

    def claims(self) -> list[Any]:
        from reaper.liveness.claims import Claim

        out = []
        for m in self.meta:
            if m["kind"] != "claimed":
                continue
            created = self.now - timedelta(seconds=m["age_s"])
            out.append(Claim(who=m["who"], claimed_at=created - timedelta(seconds=30), provider="github",
                             api_url=None, repo=f"{m['org']}/{m['repo']}", run_id=m["run_id"], run_attempt=1,
                             runner_name=f"GitHub Actions {m['run_id']}", started_at=created - timedelta(seconds=40)))
        return out


def bench_policy(table: str, ci_url: str | None, max_age: str = "2h") -> str:
    """The benchmark's policy: one table, two rules, and (when a CI server runs) the CI providers and claims."""
    doc: dict[str, Any] = {
        "mode": "report",
        "max_deletes_per_run": 25,
        "min_age": "15m",
        "stores": [{"type": "dynamodb", "table": table}],
        "rules": [
            {"name": "prod", "match": "*/prod/*", "max_age": "6h" if max_age == "2h" else max_age,
             "hard_max_age": "3d" if max_age == "2h" else max_age},
            {"name": "default", "match": "*", "max_age": max_age, "hard_max_age": "2d" if max_age == "2h" else max_age},
        ],
    }
    if ci_url:
        doc["liveness"] = {
            "claims": {"table": CLAIMS_TABLE},
            "state_activity": {"enabled": False},
            "providers": [
                {"type": "github", "api_url": ci_url + "/api/v3", "token_env": "BENCH_GH_TOKEN",
                 "runners": [{"org": org, "hosts": [f"{org}-runner-*"], "absent_means_gone": True} for org in ORGS]},
                {"type": "gitlab", "api_url": ci_url + "/api/v4", "token_env": "BENCH_GL_TOKEN",
                 "runner_hosts": ["runner-*-project-*-concurrent-*"]},
            ],
        }
    return json.dumps(doc)


# ---------------------------------------------------------------------------
# CI server: devtools/fake_ci.py in its own process (so its CPU is not the reaper's)
class CIServer:
    def __init__(self) -> None:
        self.kind = "none"
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    @property
    def available(self) -> bool:
        return bool(self.url)

    def start(self, scenario: dict[str, Any]) -> "CIServer":
        if not (ROOT / "devtools" / "fake_ci.py").exists():
            self.kind = "none (devtools/fake_ci.py absent)"
            return self
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(scenario, fh)
            path = fh.name
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-ci", path], cwd=ROOT,
                                     stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        os.unlink(path)
        if not line.startswith("http://"):
            self.stop()
            self.kind = f"none (fake CI did not start: {line!r})"
            return self
        self.url = line
        self.kind = "devtools.fake_ci (separate process)"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None
        self.url = ""


def serve_ci(scenario_path: str) -> int:
    """``--serve-ci``: run devtools.fake_ci with a scenario until stdin closes or we are terminated."""
    import http.server

    from devtools.fake_ci import FakeCI

    # Answer in one TCP segment, as a real API front end does: http.server writes the headers
    # and the body separately, and Nagle + delayed ACK would add ~40 ms to every call.
    http.server.BaseHTTPRequestHandler.disable_nagle_algorithm = True
    sc = json.loads(Path(scenario_path).read_text())
    fake = FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN, per_page_max=100)
    # a rate limit no run reaches: the naive reaper's 500 calls a round would spend 5,000 in ten rounds, and
    # the reaper's later cycles would then be paused (fewer calls, faster) instead of measured
    fake.rate_remaining = 10**9
    for org, runners in sc["runners"].items():
        for r in runners:
            fake.add_github_runner(f"org:{org}", r["name"], status=r["status"], busy=r["busy"])
    for j in sc["jobs"]:
        fake.add_github_job(j["repo"], j["run_id"], j["job_id"], status=j["status"], conclusion=j["conclusion"],
                            started_at=datetime.fromisoformat(j["started_at"]),
                            completed_at=datetime.fromisoformat(j["completed_at"]) if j["completed_at"] else None,
                            runner_name=j["runner_name"])
        fake.add_github_run(j["repo"], j["run_id"], status=j["status"], conclusion=j["conclusion"],
                            started_at=datetime.fromisoformat(j["started_at"]))
    for j in sc["gl_jobs"]:
        fake.add_gitlab_job(j["project"], j["job_id"], status=j["status"], started_at=datetime.fromisoformat(j["started_at"]),
                            finished_at=datetime.fromisoformat(j["finished_at"]) if j.get("finished_at") else None)
    fake.start()
    print(fake.url, flush=True)
    try:
        sys.stdin.read()  # until the parent closes stdin or terminates us
    finally:
        fake.stop()
    return 0


# ---------------------------------------------------------------------------
# P1
def bare_scan(client: Any, table: str) -> int:
    n = 0
    for page in client.get_paginator("scan").paginate(TableName=table):
        n += len(page["Items"])
    return n


def projected_scan(client: Any, table: str) -> int:
    """The same projected, filtered scan the DynamoDB store issues, doing nothing with the items."""
    from reaper.stores import dynamodb as d

    n = 0
    for page in client.get_paginator("scan").paginate(
        TableName=table, ProjectionExpression=d._PROJECTION, FilterExpression=d._FILTER, ExpressionAttributeNames=d._NAMES
    ):
        n += page["ScannedCount"]
    return n


def bench_deps(client: Any, etags: Any = None) -> Any:
    """The Lambda's wiring with the benchmark's client and tokens; a cold ETag cache unless ``etags`` is given."""
    from reaper.http.client import EtagCache
    from reaper.wiring import Deps

    return Deps(client_factory=lambda service, region=None: client,
                env={"BENCH_GH_TOKEN": GH_TOKEN, "BENCH_GL_TOKEN": GL_TOKEN},
                etags=etags if etags is not None else EtagCache())


def reaper_cycle(policy_text: str, client: Any, etags: Any = None) -> dict[str, Any]:
    """What the Lambda does per invocation: parse the policy, build, run in report mode, serialise the report.

    Without a CI server (the policy names no provider) every holder is unknown. With one, a
    cold ETag cache per cycle unless ``etags`` is given (a warm Lambda keeps it between runs)."""
    from reaper.policy import parse_policy
    from reaper.wiring import build_reaper

    policy = parse_policy(policy_text)
    reaper = build_reaper(policy, bench_deps(client, etags))
    report = reaper.run(mode="report")
    doc = report.model_dump(mode="json")
    return {"locks": doc["summary"]["locks_scanned"], "outcomes": doc["summary"]["outcomes"],
            "digests": doc["summary"]["digests_skipped"], "errors": report.errors,
            "liveness_api_calls": doc.get("liveness_api_calls") or {}}


def naive_reaper(client: Any, table: str, ci_get: Callable[[dict[str, Any]], Any], now: datetime) -> dict[str, int]:
    """The obvious reaper: scan everything, GetItem each lock, one CI call per lock, decide on age."""
    locks = stale = 0
    for page in client.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            key = item["LockID"]["S"]
            if key.endswith("-md5") or "Info" not in item:
                continue
            got = client.get_item(TableName=table, Key={"LockID": {"S": key}}, ConsistentRead=True).get("Item")
            if not got:
                continue
            info = json.loads(got["Info"]["S"])
            created = datetime.fromisoformat(info["Created"][:26].rstrip("Z") + "+00:00")
            active = ci_get(info)
            locks += 1
            if now - created > timedelta(hours=2) and not active:
                stale += 1
    return {"locks": locks, "stale": stale}


def naive_ci_get(ci_url: str) -> Callable[[dict[str, Any]], Any]:
    """One CI call per lock: the lock's repo's in-progress runs (GitHub), no memo, no ETag."""
    import urllib3

    pool = urllib3.PoolManager(maxsize=4)
    headers = {"Authorization": f"Bearer {GH_TOKEN}", "Accept": "application/vnd.github+json"}

    def get(info: dict[str, Any]) -> Any:
        org, repo = info["Path"].split("/")[1:3]
        resp = pool.request("GET", f"{ci_url}/api/v3/repos/{org}/{repo}/actions/runs?status=in_progress", headers=headers)
        return json.loads(resp.data)["workflow_runs"]

    return get


def bench_p1(args: argparse.Namespace, server: MotoServer, ci: CIServer, ds: Dataset) -> dict[str, Any]:
    log("P1: loading the table")
    client = dynamodb_client(server.endpoint)
    ds.load(client, TABLE)
    load_claims(client, ds)
    policy_text = bench_policy(TABLE, ci.url or None)
    with_ci = ci.available
    cases: dict[str, Callable[[], Any]] = {
        "bare_scan": lambda: bare_scan(client, TABLE),
        "projected_scan": lambda: projected_scan(client, TABLE),
        "reaper_cycle": lambda: reaper_cycle(policy_text, client),
    }
    if with_ci:
        get = naive_ci_get(ci.url)
        now = datetime.now(timezone.utc)
        cases["naive_reaper"] = lambda: naive_reaper(client, TABLE, get, now)
    times, last = interleaved(cases, args.reps)
    med = {k: median(v) for k, v in times.items()}
    r_bare = ratio(med["reaper_cycle"], med["bare_scan"])
    r_projected = ratio(med["reaper_cycle"], med["projected_scan"])
    cycle_calls = (last.get("reaper_cycle") or {}).get("liveness_api_calls", {}).get("by_kind", {})
    from reaper.policy.liveness import HttpConfig

    return {
        "dataset": {"digests": len(ds.digests), "locks": len(ds.locks), "items": len(ds.items),
                    "holders": {k: sum(1 for m in ds.meta if m["kind"] == k)
                                for k in ("self_hosted", "claimed", "gitlab", "laptop")}},
        "ci_server": ci.kind,
        "liveness": ("issue 4 checkers: claims table, GitHub runners per org, GitHub claimed run jobs, GitLab live jobs "
                     "and recently finished jobs per project; state_activity off; cold ETag cache per cycle") if with_ci
                    else "none configured (every holder unknown)",
        "liveness_concurrency": HttpConfig().concurrency,  # the default: the benchmark's policy does not set it
        "reps": args.reps,
        "seconds": times,
        "median_seconds": med,
        "last_results": {k: (v if not isinstance(v, int) else {"items": v}) for k, v in last.items()},
        "ratio_vs_bare_scan": r_bare,
        "ratio_vs_projected_scan": r_projected,
        "target_vs_projected_scan": TARGETS["P1_projected"],
        "claims_reads_per_cycle": {k: v for k, v in cycle_calls.items() if k.startswith("claims.")},
        "ratio_vs_naive_reaper": ratio(med["reaper_cycle"], med["naive_reaper"]) if "naive_reaper" in med else None,
        "naive_over_bare": ratio(med["naive_reaper"], med["bare_scan"]) if "naive_reaper" in med else None,
        "target": TARGETS["P1"],
        "pass": r_bare <= TARGETS["P1"] and r_projected <= TARGETS["P1_projected"],
    }


def load_claims(client: Any, ds: Dataset) -> None:
    try:
        from reaper.liveness.claims import ATTRIBUTE_DEFINITIONS, KEY_SCHEMA
    except ImportError:
        return
    client.create_table(TableName=CLAIMS_TABLE, KeySchema=KEY_SCHEMA, AttributeDefinitions=ATTRIBUTE_DEFINITIONS,
                        BillingMode="PAY_PER_REQUEST")
    batch_put(client, CLAIMS_TABLE, [c.to_item() for c in ds.claims()])


# ---------------------------------------------------------------------------
# P2: CI API calls per cycle
def ci_calls(stats: dict[str, Any]) -> dict[str, Any]:
    """The CI share of issue 4's ApiCounter (claims-table queries are DynamoDB, counted apart)."""
    by_kind = {k: v for k, v in (stats.get("by_kind") or {}).items() if k.startswith(("github.", "gitlab."))}
    return {"total": sum(by_kind.values()), "by_kind": by_kind, "by_status": stats.get("by_status") or {},
            "not_modified": stats.get("not_modified", 0),
            "aws_by_kind": {k: v for k, v in (stats.get("by_kind") or {}).items() if k not in by_kind}}


def bench_p2(args: argparse.Namespace, server: MotoServer, ci: CIServer, ds: Dataset) -> dict[str, Any]:
    if not ci.available:
        return {"measured": False, "reason": f"no fake CI server: {ci.kind}", "pass": None}
    from reaper.http.client import EtagCache

    client = dynamodb_client(server.endpoint)
    if TABLE not in client.list_tables()["TableNames"]:
        ds.load(client, TABLE)
        load_claims(client, ds)
    # which locks are candidates (old enough for their rule), computed here from the policy's numbers
    now = datetime.now(timezone.utc)
    cands = []
    for m in ds.meta:
        age = timedelta(seconds=m["age_s"]) + (now - ds.now)
        max_age = timedelta(hours=6) if "/prod/" in m["path"] else timedelta(hours=2)
        if age >= max_age:
            cands.append(m)
    orgs = {m["org"] for m in cands if m["kind"] == "self_hosted"}
    projects = {GL_PROJECTS[m["org"] + "/" + m["repo"]] for m in cands if m["kind"] == "gitlab"}
    claimed = [m for m in cands if m["kind"] == "claimed"]
    # A GitLab project whose live jobs prove nothing is asked once more, before any of its locks is
    # called dead: its recently finished jobs (the grace period). Here that list is one page: a
    # project's finished jobs within max_run_duration fit in 100. So each project costs up to 2 lists.
    bound = len(orgs) + 2 * len(projects) + len(claimed)
    # The issue's own bound, without the grace-period lists: reported beside it, not hidden.
    issue_bound = len(orgs) + len(projects) + len(claimed)

    etags = EtagCache()  # one warm Lambda: the cache outlives the run
    policy_text = bench_policy(TABLE, ci.url)
    first = reaper_cycle(policy_text, client, etags)
    second = reaper_cycle(policy_text, client, etags)
    c1, c2 = ci_calls(first["liveness_api_calls"]), ci_calls(second["liveness_api_calls"])

    # locks under their rule's age: a policy whose max_age no lock reaches must make no call at all
    young = reaper_cycle(bench_policy(TABLE, ci.url, max_age="1000d"), client, EtagCache())
    c_young = ci_calls(young["liveness_api_calls"])
    ok = c_young["total"] == 0 and c1["total"] <= bound
    return {
        "measured": True,
        "candidates": len(cands),
        "locks": len(ds.meta),
        "bound_terms": {"distinct_github_orgs_self_hosted": len(orgs), "distinct_gitlab_projects": len(projects),
                        "gitlab_finished_job_lists_at_most_one_per_project": len(projects),
                        "candidates_with_claims": len(claimed)},
        "bound_formula": "orgs + 2 x projects (live jobs, then recently finished jobs) + candidates with claims",
        "bound": bound,
        "issue_bound_formula": "distinct orgs/projects among candidates + candidates with claims",
        "issue_bound": issue_bound,
        "within_issue_bound": c1["total"] <= issue_bound,
        "cycle1": c1,
        "cycle2": c2,
        "young_only_cycle": c_young,
        "cycle2_all_304": c2["total"] > 0 and c2["by_status"].get("304", 0) == c2["total"],
        "outcomes_cycle1": first["outcomes"],
        "pass": ok,
    }


# ---------------------------------------------------------------------------
# P3: peak RSS in fresh subprocesses
def peak_rss_kb() -> tuple[int, str]:
    """This process's peak RSS in KiB.

    Linux carries ru_maxrss over fork+exec (the kernel keeps the parent's high-water
    mark in the child's signal struct), so a probe started by a big parent would
    report the parent's peak. VmHWM in /proc/self/status belongs to the probe's own
    address space and is used where available; ru_maxrss elsewhere.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]), "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def rss_probe(endpoint: str, table: str, what: str) -> dict[str, Any]:
    """Runs in a fresh subprocess: import everything first, then scan, then report the peak RSS."""
    from reaper.policy import parse_policy
    from reaper.stores.dynamodb import DynamoDBLockStore
    from reaper.wiring import Deps, build_reaper

    client = dynamodb_client(endpoint)
    client.describe_table(TableName=table)
    base, _ = peak_rss_kb()
    if what == "store":
        store = DynamoDBLockStore(client, table)
        locks = sum(1 for _ in store.scan())
        items = store.stats()["items"]
    else:
        reaper = build_reaper(parse_policy(bench_policy(table, None)), Deps(client_factory=lambda s, r=None: client))
        report = reaper.run(mode="report")
        report.model_dump(mode="json")
        locks, items = report.summary.locks_scanned, report.summary.items_scanned
    peak, source = peak_rss_kb()
    return {"maxrss_kb": peak, "maxrss_before_scan_kb": base, "source": source, "items": items, "locks": locks,
            "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def run_probe(endpoint: str, table: str, what: str) -> dict[str, Any]:
    env = {**os.environ, **FAKE_CREDENTIALS}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--rss-probe", what, "--endpoint", endpoint, "--table", table],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_p3(args: argparse.Namespace, server: MotoServer) -> dict[str, Any]:
    client = dynamodb_client(server.endpoint)
    sizes = {"small": args.rss_small, "large": args.rss_large}
    lock_share = args.locks / (args.locks + args.digests)
    for label, n in sizes.items():
        log(f"P3: loading {n} items")
        n_locks = max(1, round(n * lock_share))
        Dataset(n - n_locks, n_locks, seed=n).load(client, f"rss-{label}")
    out: dict[str, Any] = {"items": sizes, "lock_share": round(lock_share, 4), "reps": args.rss_reps}
    for what in ("store", "cycle"):
        runs: dict[str, list[dict[str, Any]]] = {"small": [], "large": []}
        for _ in range(args.rss_reps):
            for label in ("small", "large"):
                runs[label].append(run_probe(server.endpoint, f"rss-{label}", what))
        med = {k: median([r["maxrss_kb"] for r in v]) for k, v in runs.items()}
        out[what] = {"runs": runs, "median_maxrss_kb": med, "ratio": ratio(med["large"], med["small"])}
        log(f"P3 {what}: {med}")
    out["ratio"] = out["cycle"]["ratio"]
    out["target"] = TARGETS["P3"]
    out["pass"] = out["cycle"]["ratio"] <= TARGETS["P3"] and out["store"]["ratio"] <= TARGETS["P3"]
    return out


# ---------------------------------------------------------------------------
# P4: cold start
def bench_p4(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AWS_ENDPOINT"))}
    env.update(FAKE_CREDENTIALS)
    # As in Lambda with tracing on: Powertools builds the X-Ray recorder and patches boto3/botocore.
    lambda_env = {**env, "LAMBDA_TASK_ROOT": str(ROOT), "AWS_LAMBDA_FUNCTION_NAME": "lock-reaper-bench"}

    def spawn(code: str, e: dict[str, str]) -> Callable[[], None]:
        def go() -> None:
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, check=True)
        return go

    cases = {
        "boto3": spawn("import boto3", env),
        "reaper.handler": spawn("import reaper.handler", env),
        "reaper.handler_lambda_env_tracing_on": spawn("import reaper.handler", lambda_env),
    }
    times, _ = interleaved(cases, args.cold_reps)
    med = {k: median(v) for k, v in times.items()}
    r = ratio(med["reaper.handler"], med["boto3"])
    # the heaviest imports, for whoever needs to improve the figure
    it = subprocess.run([sys.executable, "-X", "importtime", "-c", "import reaper.handler"], cwd=ROOT, env=env,
                        capture_output=True, text=True)
    rows = []
    for line in it.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].strip()))
    top = [{"module": m, "cumulative_us": us} for us, m in sorted(rows, reverse=True)[:12]]
    return {"reps": args.cold_reps, "seconds": times, "median_seconds": med, "ratio": r,
            "ratio_lambda_env_tracing_on": ratio(med["reaper.handler_lambda_env_tracing_on"], med["boto3"]),
            "heaviest_imports": top, "target": TARGETS["P4"], "pass": r <= TARGETS["P4"]}


# ---------------------------------------------------------------------------
# P5: asset size
def dir_size(path: Path) -> tuple[int, int]:
    total = files = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
            files += 1
    return total, files


def bench_p5(args: argparse.Namespace) -> dict[str, Any]:
    """Build the Lambda asset with infra/bundling.py (what ``cdk synth`` bundles: the SDK included) and measure it."""
    import tempfile

    try:
        from infra import bundling as b

        with tempfile.TemporaryDirectory() as tmp:
            policy = Path(tmp) / "policy.yaml"
            policy.write_text("mode: report\n", encoding="utf-8")
            out = b.bundle(Path(tmp) / "asset", ROOT, policy)
            size, files = dir_size(out)
            pyc = sum(1 for _ in out.rglob("*.pyc"))
            biggest = sorted(((dir_size(d)[0], d.name) for d in out.iterdir() if d.is_dir()), reverse=True)[:6]
    except Exception as exc:  # no network for pip, no lock file ...
        return {"measured": False, "reason": f"bundling failed: {type(exc).__name__}: {exc}", "target_mb": TARGETS["P5_mb"],
                "pass": None}
    mb = size / 1e6
    return {"measured": True, "how": "infra.bundling.bundle for the Lambda target (boto3/botocore bundled)",
            "bytes": size, "files": files, "pyc_files": pyc, "mb": round(mb, 2),
            "largest_dirs_mb": {n: round(sz / 1e6, 2) for sz, n in biggest},
            "target_mb": TARGETS["P5_mb"], "pass": mb <= TARGETS["P5_mb"]}


# AWS Lambda list prices for arm64 (us-east-1, first tier), USD: per GB-second and per request.
ARM64_GB_SECOND = 0.0000133334
PER_REQUEST = 0.20 / 1_000_000
RUNS_PER_MONTH = 4 * 24 * 365 / 12  # a 15-minute schedule: 2,920 runs


def bench_p6(results: dict[str, Any]) -> dict[str, Any]:
    """The Lambda cost per month, from P1's measured cycle at the deployed memory size (cdk.json) and a 15-minute
    schedule. The measured cycle ran against moto_server on this machine: an estimate, not a bill."""
    p1 = results.get("P1") or {}
    seconds = (p1.get("median_seconds") or {}).get("reaper_cycle")
    if seconds is None:
        return {"measured": False, "reason": "P1 was not measured", "pass": None}
    context = json.loads((ROOT / "cdk.json").read_text(encoding="utf-8")).get("context", {}).get("reaper", {})
    memory_mb = int(context.get("memory_mb") or 512)
    gb_seconds = RUNS_PER_MONTH * seconds * memory_mb / 1024
    usd = gb_seconds * ARM64_GB_SECOND + RUNS_PER_MONTH * PER_REQUEST
    return {"cycle_seconds": seconds, "memory_mb": memory_mb, "runs_per_month": RUNS_PER_MONTH,
            "gb_seconds": round(gb_seconds, 1), "usd_per_month": round(usd, 4),
            "prices": {"arm64_gb_second": ARM64_GB_SECOND, "per_request": PER_REQUEST},
            "target_usd": TARGETS["P6_usd"], "pass": usd <= TARGETS["P6_usd"]}


def bench_p4_deployed(args: argparse.Namespace) -> dict[str, Any]:
    """P4 as deployed: a cold ``import reaper.handler`` from the host-platform asset, read-only, in a fresh
    interpreter of the runtime's version with only the asset on the path, over ``import boto3`` from the same
    directory; with and without the asset's ``.pyc``."""
    import stat
    import tempfile

    from infra import bundling as b

    python = b.find_python(b.PYTHON_VERSION)
    if python is None:
        return {"measured": False, "reason": f"no Python {b.PYTHON_VERSION} on this machine", "pass": None}
    out: dict[str, Any] = {"python": b.PYTHON_VERSION, "reps": args.cold_reps}
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text("mode: report\n", encoding="utf-8")
        for label, precompile in (("with_pyc", True), ("without_pyc", False)):
            asset = b.bundle(Path(tmp) / label, ROOT, policy, target=b.host_target(b.PYTHON_VERSION), precompile=precompile)
            for f in asset.rglob("*"):  # read-only, as /var/task is: nothing can write a .pyc at import time
                f.chmod(f.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
            env = {"PATH": os.environ.get("PATH", ""), **FAKE_CREDENTIALS, "AWS_REGION": "us-east-1",
                   "POWERTOOLS_TRACE_DISABLED": "true"}

            def spawn(module: str, asset: Path = asset, env: dict[str, str] = env) -> Callable[[], None]:
                code = f"import sys; sys.path[:0] = [{str(asset)!r}]; import {module}"
                return lambda: subprocess.run([python, "-I", "-B", "-c", code], env=env, check=True)

            times, _ = interleaved({"boto3": spawn("boto3"), "reaper.handler": spawn("reaper.handler")}, args.cold_reps)
            med = {k: median(v) for k, v in times.items()}
            out[label] = {"median_seconds": med, "ratio": ratio(med["reaper.handler"], med["boto3"])}
    out["ratio"] = out["with_pyc"]["ratio"]
    out["target"] = TARGETS["P4_deployed"]
    out["pass"] = out["ratio"] <= TARGETS["P4_deployed"]
    return out


# ---------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in load]}


def fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def table(results: dict[str, Any]) -> str:
    rows = [("figure", "measured", "target", "result")]

    def verdict(p: Any) -> str:
        return "n/a" if p is None else ("PASS" if p else "FAIL")

    if "P1" in results:
        p = results["P1"]
        rows.append(("P1 cycle / bare scan", f"{p['ratio_vs_bare_scan']:.2f}x", f"<= {p['target']}x",
                     verdict(p["ratio_vs_bare_scan"] <= p["target"])))
        rows.append(("P1 cycle / same projected scan", f"{p['ratio_vs_projected_scan']:.2f}x",
                     f"<= {p['target_vs_projected_scan']}x", verdict(p["ratio_vs_projected_scan"] <= p["target_vs_projected_scan"])))
        rows.append(("P1 claims-table reads per cycle", ", ".join(f"{k} {v}" for k, v in p["claims_reads_per_cycle"].items())
                     or "none", "-", "info"))
        if p.get("ratio_vs_naive_reaper") is not None:
            rows.append(("P1 cycle / naive reaper", f"{p['ratio_vs_naive_reaper']:.2f}x", "-", "info"))
    if "P2" in results:
        p = results["P2"]
        if p.get("measured"):
            rows.append(("P2 CI calls, cycle 1", f"{p['cycle1']['total']} for {p['candidates']} candidates",
                         f"<= {p['bound']}", verdict(p["pass"])))
            rows.append(("P2 same, vs the issue's bound", f"{p['cycle1']['total']}", f"<= {p['issue_bound']}",
                         "info" if p["within_issue_bound"] else "info (over)"))
            rows.append(("P2 CI calls, locks under age", str(p["young_only_cycle"]["total"]), "0", verdict(p["pass"])))
            rows.append(("P2 CI calls, cycle 2", f"{p['cycle2']['total']} ({p['cycle2']['by_status'].get('304', 0)} x 304)",
                         "-", "info"))
        else:
            rows.append(("P2 CI calls", "not measured", "-", "n/a"))
    if "P3" in results:
        p = results["P3"]
        rows.append(("P3 RSS 100k/1k (full cycle)", f"{p['cycle']['ratio']:.2f}x", f"<= {p['target']}x", verdict(p["pass"])))
        rows.append(("P3 RSS 100k/1k (store scan)", f"{p['store']['ratio']:.2f}x", f"<= {p['target']}x",
                     verdict(p["store"]["ratio"] <= p["target"])))
    if "P4" in results:
        p = results["P4"]
        rows.append(("P4 import handler / boto3", f"{p['ratio']:.2f}x", f"<= {p['target']}x", verdict(p["pass"])))
        rows.append(("P4 same, Lambda env, X-Ray on", f"{p['ratio_lambda_env_tracing_on']:.2f}x", "-", "info"))
    if "P4_deployed" in results:
        p = results["P4_deployed"]
        if p.get("ratio") is None:
            rows.append(("P4 as deployed", "not measured", f"<= {TARGETS['P4_deployed']}x", "n/a"))
        else:
            rows.append(("P4 as deployed, with .pyc", f"{p['with_pyc']['ratio']:.2f}x", f"<= {p['target']}x",
                         verdict(p["pass"])))
            rows.append(("P4 as deployed, without .pyc", f"{p['without_pyc']['ratio']:.2f}x", "-", "info"))
    if "P5" in results:
        p = results["P5"]
        rows.append(("P5 asset size (unzipped)", f"{p['mb']} MB" if p.get("measured") else "not measured",
                     f"<= {p['target_mb']} MB", verdict(p["pass"])))
    if "P6" in results:
        p = results["P6"]
        rows.append(("P6 Lambda cost per month (15m schedule)",
                     f"${p['usd_per_month']}" if p.get("usd_per_month") is not None else "not measured",
                     f"<= ${TARGETS['P6_usd']}", verdict(p["pass"])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="P1,P2,P3,P4,P5", help="comma-separated figures to run")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke test)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--cold-reps", type=int, default=9)
    ap.add_argument("--rss-reps", type=int, default=3)
    ap.add_argument("--digests", type=int, default=10_000)
    ap.add_argument("--locks", type=int, default=500)
    ap.add_argument("--rss-small", type=int, default=1_000)
    ap.add_argument("--rss-large", type=int, default=100_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "results.json"))
    ap.add_argument("--rss-probe", choices=["store", "cycle"], help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--table", help=argparse.SUPPRESS)
    ap.add_argument("--serve-ci", metavar="SCENARIO", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.serve_ci:
        return serve_ci(args.serve_ci)
    if args.rss_probe:
        print(json.dumps(rss_probe(args.endpoint, args.table, args.rss_probe)))
        return 0
    if args.quick:
        args.reps, args.cold_reps, args.rss_reps = 2, 5, 1
        args.digests, args.locks, args.rss_large = 2_000, 100, 10_000

    for k, v in FAKE_CREDENTIALS.items():
        os.environ.setdefault(k, v)
    os.environ.pop("AWS_PROFILE", None)
    only = {x.strip().upper() for x in args.only.split(",")}
    results: dict[str, Any] = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "make bench" if not argv and not args.quick else "bench/run.py " + " ".join(argv or sys.argv[1:]),
        "quick": args.quick,
        "machine": machine(),
        "note": "every figure is a ratio of two measurements from this run; times are medians of interleaved repetitions",
    }
    measure(args, only, results)
    failed = failed_targets(results)
    results["all_measured_pass"] = not failed
    results["failed_targets"] = failed
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\nwritten {os.path.relpath(args.out, ROOT)}")
    if failed:
        print(f"declared target(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def measure(args: argparse.Namespace, only: set[str], results: dict[str, Any]) -> None:
    """Run the figures in ``only`` (P1-P3 against one moto server and CI server), adding them to ``results``."""
    server = MotoServer().start()
    ds = Dataset(args.digests, args.locks)
    ci = CIServer().start(ds.ci_scenario()) if only & {"P1", "P2"} else CIServer()
    try:
        server.reset()
        if "P1" in only:
            results["P1"] = bench_p1(args, server, ci, ds)
        if "P2" in only:
            results["P2"] = bench_p2(args, server, ci, ds)
        if "P3" in only:
            server.reset()
            results["P3"] = bench_p3(args, server)
    finally:
        ci.stop()
        server.stop()
    if "P4" in only:
        results["P4"] = bench_p4(args)
    if "P4" in only:
        results["P4_deployed"] = bench_p4_deployed(args)
    if "P5" in only:
        results["P5"] = bench_p5(args)
    if "P1" in only:
        results["P6"] = bench_p6(results)


def failed_targets(results: dict[str, Any]) -> list[str]:
    """The figures whose declared target FAILed (``pass`` is False; None means not measured)."""
    return [k for k in FIGURES if isinstance(results.get(k), dict) and results[k].get("pass") is False]


if __name__ == "__main__":
    sys.exit(main())
