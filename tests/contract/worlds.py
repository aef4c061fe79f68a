"""Worlds behind the liveness contract suite (tests/contract/test_liveness_contract.py).

One ``World`` per kind of liveness evidence. A world owns the fakes that kind asks
(devtools/fake_ci.py for GitHub and GitLab CI, devtools/fake_hcp.py, moto for the
claims table and S3), writes the policy document that turns the evidence on,
builds the composite checker from it through the public builder
(tests/contract/builders.py) and asks it through the ``LivenessChecker`` port.

Each arrangement method returns the lock to ask about, with the world arranged
behind it through the fakes' own state:

- ``alive``: the holder is running;
- ``dead``: the holder finished long ago (well after the lock's Created +
  clock_skew, past the grace period), or the kind's own proof of death;
- ``unknown``: the kind's "no proof either way" (no claim, an offline runner, a
  live run that started after Created, a user lock, no state object);
- ``within_grace``: the holder finished a moment ago (inside the grace period);
- ``within_skew``: the holder finished within clock_skew after Created, long ago;
- ``truncated``: more items than ``max_pages`` x per_page, the unread page holding
  the live holder (the world is made with ``short_pages``: ``per_page_max=1``,
  ``max_pages: 1``);
- ``out_of_scope``: a lock this evidence says nothing about, arranged so that
  asking anyway would prove it dead;
- ``fail(status, headers)``: every call of the kind's API answers that status.

``expect`` maps each case to the state the contract requires, or to the reason it
does not apply to this kind (N/A).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest

from devtools.locks import info_json
from reaper.models import Liveness, LivenessFact, LockInfo, LockRecord

from .builders import Built, build, no_aws, policy_from

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
AGE = timedelta(hours=4)  # every lock: Created = NOW - 4h
SKEW = timedelta(minutes=5)  # the policy's clock_skew (the default, written out)
GRACE = timedelta(minutes=5)  # liveness.grace
GH_TOKEN = "ghp_contractSuiteToken000000000000000000"
GL_TOKEN = "glpat-contractSuiteToken"

ALIVE, DEAD, UNKNOWN = Liveness.ALIVE, Liveness.DEAD, Liveness.UNKNOWN

LIST_NA = "reads no list (one object per question)"
TIME_NA = "its evidence carries no finish time"
SCOPE_NA = "applies to every parsed lock (a lock without a claim is the unknown case)"


def terraform_lock(who: str, path: str = "tfstate/prod/app.tfstate", *, store: str = "dynamodb:terraform-locks",
                   now: datetime = NOW, age: timedelta = AGE) -> LockRecord:
    """A lock as a DynamoDB lock table holds it (Terraform's own Info JSON)."""
    raw = info_json(path, age, now, who=who)
    return LockRecord(store=store, key=path, lock_path=path, token=raw, raw={"LockID": {"S": path}},
                      info=LockInfo.parse(raw))


def created(lock: LockRecord) -> datetime:
    assert lock.info is not None
    return lock.info.Created


def http_doc(max_pages: int) -> dict[str, Any]:
    return {"timeout": "2s", "max_retry_wait": "1s", "max_pages": max_pages}


class World:
    kind: ClassVar[str]
    checker: ClassVar[str]  # the checker that must answer
    sources: ClassVar[frozenset[str]]  # the evidence sources it may cite
    expect: ClassVar[dict[str, Liveness | str]]
    error_base: ClassVar[str] = "dead"  # what an API failure is injected into (the answer it must not give)
    now: datetime = NOW

    def __init__(self, request: pytest.FixtureRequest, *, short_pages: bool = False) -> None:
        self.request = request
        self.short_pages = short_pages
        self.max_pages = 1 if short_pages else 10
        self._built: Built | None = None
        self.sleeps: list[float] = []

    # -- building -----------------------------------------------------------------
    def policy_doc(self) -> dict[str, Any]:  # pragma: no cover - subclasses
        raise NotImplementedError

    env: ClassVar[dict[str, str]] = {"TEST_GH_TOKEN": GH_TOKEN, "TEST_GL_TOKEN": GL_TOKEN}

    def client_factory(self, service: str, region: str | None = None) -> Any:
        return no_aws(service, region)

    def built(self) -> Built:
        if self._built is None:
            self._built = build(policy_from(self.policy_doc()), env=self.env, client_factory=self.client_factory,
                                sleep=self.sleeps.append)
        return self._built

    def rebuild(self) -> None:
        """A new run: new checkers, nothing memoised."""
        self._built = None

    def ask(self, lock: LockRecord) -> LivenessFact:
        return self.built().liveness.check(lock, self.now)

    def start(self, server: Any) -> Any:
        server.start()
        self.request.addfinalizer(server.stop)
        return server

    # -- arrangements (subclasses) ---------------------------------------------------
    def alive(self) -> LockRecord: raise NotImplementedError  # noqa: E704
    def dead(self) -> LockRecord: raise NotImplementedError  # noqa: E704
    def unknown(self) -> LockRecord: raise NotImplementedError  # noqa: E704
    def within_grace(self) -> LockRecord: raise NotImplementedError  # noqa: E704
    def within_skew(self) -> LockRecord: raise NotImplementedError  # noqa: E704
    def truncated(self) -> LockRecord: raise NotImplementedError  # noqa: E704
    def out_of_scope(self) -> LockRecord: raise NotImplementedError  # noqa: E704
    def fail(self, status: int, headers: dict[str, str]) -> None: raise NotImplementedError  # noqa: E704


# ================================================================ GitHub Actions and GitLab CI
class FinishTimes:
    """dead / within_grace / within_skew for worlds whose holder is one job or run that ``finished(at)``:
    15 minutes after the lock's Created (past clock_skew and the grace), 2 minutes ago (within the grace),
    2 minutes after Created (within clock_skew)."""

    def finished(self, at: Callable[[LockRecord], datetime]) -> LockRecord:  # pragma: no cover - the worlds
        raise NotImplementedError

    def dead(self) -> LockRecord:
        return self.finished(lambda lock: created(lock) + timedelta(minutes=15))

    def within_grace(self) -> LockRecord:
        return self.finished(lambda lock: NOW - timedelta(minutes=2))

    def within_skew(self) -> LockRecord:
        return self.finished(lambda lock: created(lock) + timedelta(minutes=2))


class CIWorld(World):
    """Worlds on the fake GitHub + GitLab REST API (devtools/fake_ci.py)."""

    fault_pattern: ClassVar[str]

    def __init__(self, request: pytest.FixtureRequest, *, short_pages: bool = False) -> None:
        super().__init__(request, short_pages=short_pages)
        from devtools.fake_ci import FakeCI

        self.fake = self.start(FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN, per_page_max=1 if short_pages else 100))

    def rules(self) -> list[dict[str, Any]]:
        return [{"name": "all", "match": "*", "max_age": "2h", "hard_max_age": "2d"}]

    def providers(self) -> list[dict[str, Any]]:  # pragma: no cover - subclasses
        raise NotImplementedError

    def liveness_doc(self) -> dict[str, Any]:
        return {"grace": "5m", "providers": self.providers(), "state_activity": {"enabled": False},
                "http": http_doc(self.max_pages)}

    def policy_doc(self) -> dict[str, Any]:
        return {"mode": "report", "clock_skew": "5m", "rules": self.rules(), "liveness": self.liveness_doc()}

    def github(self, **extra: Any) -> dict[str, Any]:
        return {"type": "github", "api_url": self.fake.github_api, "token_env": "TEST_GH_TOKEN", **extra}

    def gitlab(self, **extra: Any) -> dict[str, Any]:
        return {"type": "gitlab", "api_url": self.fake.gitlab_api, "token_env": "TEST_GL_TOKEN", **extra}

    def fail(self, status: int, headers: dict[str, str]) -> None:
        body = json.dumps({"message": f"injected HTTP {status}",
                           "documentation_url": "https://docs.github.com/rest"}).encode()
        self.fake.fault(self.fault_pattern, status, body=body, headers=headers)


class ClaimsWorld(CIWorld):
    """Claims (moto DynamoDB claims table) joined to the claimed job, asked of the CI provider."""

    checker = "claims"

    def __init__(self, request: pytest.FixtureRequest, *, short_pages: bool = False) -> None:
        super().__init__(request, short_pages=short_pages)
        import boto3

        from devtools.locks import create_claims_table
        from reaper.liveness.claims import ClaimStore

        request.getfixturevalue("aws")  # in-process moto
        self.ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_claims_table(self.ddb, "claims")
        self.claims = ClaimStore(self.ddb, "claims")

    def client_factory(self, service: str, region: str | None = None) -> Any:
        import boto3

        assert service == "dynamodb", service
        return boto3.client(service, region_name=region or "us-east-1")  # type: ignore[call-overload]

    def liveness_doc(self) -> dict[str, Any]:
        return {**super().liveness_doc(), "claims": {"table": "claims"}}

    def put_claim(self, lock: LockRecord, **kw: Any) -> None:
        from reaper.liveness.claims import Claim

        self.claims.put(Claim(who=lock.info.Who, **kw))  # type: ignore[union-attr]


class ClaimsGitHub(FinishTimes, ClaimsWorld):
    kind = "claims-github"
    sources = frozenset({"claims", "github-claim"})
    expect = {"alive": ALIVE, "dead": DEAD, "unknown": UNKNOWN, "within_grace": ALIVE, "within_skew": UNKNOWN,
              "truncated": UNKNOWN, "out_of_scope": SCOPE_NA}
    repo, run_id, runner = "acme/infra", 500, "ci-01"
    fault_pattern = r"/repos/acme/infra/actions/runs/500/"

    def providers(self) -> list[dict[str, Any]]:
        return [self.github()]

    def claimed(self) -> LockRecord:
        lock = terraform_lock(f"runner@{self.runner}")  # a self-hosted runner: the claim is joined by time
        self.put_claim(lock, claimed_at=created(lock) - timedelta(seconds=40), provider="github",
                       api_url=self.fake.github_api, repo=self.repo, run_id=self.run_id, run_attempt=1,
                       runner_name=self.runner)
        return lock

    def job(self, lock: LockRecord, job_id: int, status: str, completed_at: datetime | None = None) -> None:
        self.fake.add_github_job(self.repo, self.run_id, job_id, status=status, runner_name=self.runner,
                                 conclusion="success" if status == "completed" else None,
                                 started_at=created(lock) - timedelta(minutes=1), completed_at=completed_at)

    def alive(self) -> LockRecord:
        lock = self.claimed()
        self.job(lock, 5001, "in_progress")
        return lock

    def finished(self, at: Callable[[LockRecord], datetime]) -> LockRecord:
        lock = self.claimed()
        self.job(lock, 5001, "completed", at(lock))
        return lock

    def unknown(self) -> LockRecord:
        return terraform_lock(f"runner@{self.runner}")  # no claim at all

    def truncated(self) -> LockRecord:
        # page 1: an earlier matrix leg on the same runner, over long ago; page 2 (never read): the claimer, running
        lock = self.claimed()
        self.job(lock, 5001, "completed", created(lock) + timedelta(minutes=15))
        self.job(lock, 5002, "in_progress")
        return lock


class ClaimsGitLab(FinishTimes, ClaimsWorld):
    kind = "claims-gitlab"
    sources = frozenset({"claims", "gitlab-claim"})
    expect = {"alive": ALIVE, "dead": DEAD, "unknown": UNKNOWN, "within_grace": ALIVE, "within_skew": UNKNOWN,
              "truncated": LIST_NA, "out_of_scope": SCOPE_NA}
    project_id, job_id = 42, 4201
    fault_pattern = r"/projects/42/jobs/4201"

    def providers(self) -> list[dict[str, Any]]:
        return [self.gitlab()]

    def claimed(self) -> LockRecord:
        lock = terraform_lock("gitlab-runner@ci-gl-01")
        self.put_claim(lock, claimed_at=created(lock) - timedelta(seconds=30), provider="gitlab",
                       api_url=self.fake.gitlab_api, project_id=self.project_id, run_id=6, job_id=self.job_id)
        return lock

    def job(self, lock: LockRecord, status: str, finished_at: datetime | None = None) -> None:
        self.fake.add_gitlab_job(self.project_id, self.job_id, status=status,
                                 started_at=created(lock) - timedelta(minutes=1), finished_at=finished_at)

    def alive(self) -> LockRecord:
        lock = self.claimed()
        self.job(lock, "running")
        return lock

    def finished(self, at: Callable[[LockRecord], datetime]) -> LockRecord:
        lock = self.claimed()
        self.job(lock, "success", at(lock))
        return lock

    def unknown(self) -> LockRecord:
        return terraform_lock("gitlab-runner@ci-gl-01")


class GitHubRunners(CIWorld):
    """Self-hosted runners named after the lock's host. Org acme registers every runner of ``ci-*``
    (``absent_means_gone``); repo acme/solo may not hold every ``solo-*`` runner."""

    kind = "github-runners"
    checker = "github-runners"
    sources = frozenset({"github-runners"})
    expect = {"alive": ALIVE, "dead": DEAD, "unknown": UNKNOWN, "within_grace": TIME_NA, "within_skew": TIME_NA,
              "truncated": UNKNOWN, "out_of_scope": UNKNOWN}
    fault_pattern = r"/orgs/acme/actions/runners"

    def providers(self) -> list[dict[str, Any]]:
        return [self.github(runners=[
            {"org": "acme", "hosts": ["ci-*"], "absent_means_gone": True},
            {"repo": "acme/solo", "hosts": ["solo-*"]},
        ])]

    def runner(self, name: str, status: str = "online", busy: bool = False, scope: str = "org:acme") -> None:
        self.fake.add_github_runner(scope, name, status=status, busy=busy)

    def alive(self) -> LockRecord:
        self.runner("ci-07", busy=True)
        return terraform_lock("runner@ci-07")

    def dead(self) -> LockRecord:
        self.runner("ci-07")  # online and idle
        return terraform_lock("runner@ci-07")

    def unknown(self) -> LockRecord:
        self.runner("ci-07", status="offline")
        return terraform_lock("runner@ci-07")

    def truncated(self) -> LockRecord:
        # page 1: another runner; page 2 (never read): the lock's runner, busy. Read as complete, the
        # name would be missing from a scope that registers every runner: "gone", dead.
        self.runner("ci-other")
        self.runner("ci-07", busy=True)
        return terraform_lock("runner@ci-07")

    def out_of_scope(self) -> LockRecord:
        self.runner("ci-07")  # idle: the runner's own lock would be dead
        return terraform_lock("alice@ci-07")  # a person's lock on the runner host (users: [runner])


class GitHubRepos(FinishTimes, CIWorld):
    """A rule maps ``tfstate/mapped/*`` to the workflow runs of acme/infra."""

    kind = "github-repos"
    checker = "github-repos"
    sources = frozenset({"github-repos"})
    expect = {"alive": ALIVE, "dead": DEAD, "unknown": UNKNOWN, "within_grace": UNKNOWN, "within_skew": DEAD,
              "truncated": UNKNOWN, "out_of_scope": UNKNOWN}
    repo = "acme/infra"
    path = "tfstate/mapped/app.tfstate"
    fault_pattern = r"/repos/acme/infra/actions/runs"

    def rules(self) -> list[dict[str, Any]]:
        return [{"name": "mapped", "match": "tfstate/mapped/*", "max_age": "2h", "hard_max_age": "2d",
                 "liveness": {"github_repos": [self.repo]}}, *super().rules()]

    def providers(self) -> list[dict[str, Any]]:
        return [self.github()]

    def lock(self, path: str | None = None) -> LockRecord:
        return terraform_lock("runner@fv-az100-7", path or self.path)

    def run(self, run_id: int, status: str, started: datetime, updated: datetime | None = None) -> None:
        self.fake.add_github_run(self.repo, run_id, status=status, started_at=started, updated_at=updated,
                                 conclusion="success" if status == "completed" else None)

    def alive(self) -> LockRecord:
        lock = self.lock()
        self.run(901, "in_progress", created(lock) - timedelta(minutes=1))
        return lock

    def finished(self, at: Callable[[LockRecord], datetime], path: str | None = None) -> LockRecord:
        lock = self.lock(path)
        self.run(901, "completed", created(lock) - timedelta(minutes=1), at(lock))
        return lock

    def unknown(self) -> LockRecord:
        # contested: a live run that started after Created + clock_skew may hold it if the holder's clock lags
        lock = self.lock()
        self.run(902, "in_progress", created(lock) + timedelta(minutes=30))
        return lock

    def truncated(self) -> LockRecord:
        # newest first: page 1 a run long over; page 2 (never read) the holder, cancelled a minute ago
        lock = self.lock()
        c = created(lock)
        self.fake.add_github_run(self.repo, 961, status="completed", conclusion="success",
                                 started_at=c - timedelta(minutes=5), updated_at=c + timedelta(minutes=15))
        self.fake.add_github_run(self.repo, 960, status="completed", conclusion="cancelled",
                                 started_at=c - timedelta(minutes=10), updated_at=NOW - timedelta(minutes=1))
        return lock

    def out_of_scope(self) -> LockRecord:
        return self.finished(lambda lock: created(lock) + timedelta(minutes=15), path="tfstate/other/app.tfstate")


class GitLabProjectWorld(FinishTimes, CIWorld):
    """Project 44's jobs, named by a rule mapping or by the opted-in runner hostname."""

    checker = "gitlab-jobs"
    sources = frozenset({"gitlab-jobs"})
    expect = {"alive": ALIVE, "dead": DEAD, "unknown": UNKNOWN, "within_grace": UNKNOWN, "within_skew": DEAD,
              "truncated": UNKNOWN, "out_of_scope": UNKNOWN}
    project = 44
    fault_pattern = r"/projects/44/jobs\?"

    def lock(self) -> LockRecord:  # pragma: no cover - subclasses
        raise NotImplementedError

    def job(self, job_id: int, status: str, started: datetime, finished: datetime | None = None) -> None:
        self.fake.add_gitlab_job(self.project, job_id, status=status, started_at=started, finished_at=finished)

    def alive(self) -> LockRecord:
        lock = self.lock()
        self.job(4401, "running", created(lock) - timedelta(minutes=1))
        return lock

    def finished(self, at: Callable[[LockRecord], datetime], lock: LockRecord | None = None) -> LockRecord:
        lock = lock or self.lock()
        self.job(4401, "success", created(lock) - timedelta(minutes=1), at(lock))
        return lock

    def unknown(self) -> LockRecord:
        lock = self.lock()  # contested: a live job that started after Created + clock_skew
        self.job(4402, "running", created(lock) + timedelta(minutes=30))
        return lock

    def truncated(self) -> LockRecord:
        # by id, newest first: page 1 a later job long over; page 2 (never read) the holder, cancelled a minute ago
        lock = self.lock()
        c = created(lock)
        self.job(4440, "canceled", c - timedelta(minutes=30), NOW - timedelta(minutes=1))
        self.job(4441, "success", c - timedelta(minutes=1), c + timedelta(minutes=15))
        return lock


class GitLabProjectMapping(GitLabProjectWorld):
    kind = "gitlab-project-mapping"
    path = "tfstate/mapped/app.tfstate"

    def rules(self) -> list[dict[str, Any]]:
        return [{"name": "mapped", "match": "tfstate/mapped/*", "max_age": "2h", "hard_max_age": "2d",
                 "liveness": {"gitlab_projects": [self.project]}}, *super().rules()]

    def providers(self) -> list[dict[str, Any]]:
        return [self.gitlab()]  # no runner_hosts: hostnames prove nothing here

    def lock(self, path: str | None = None) -> LockRecord:
        return terraform_lock("deploy@build-7", path or self.path)

    def out_of_scope(self) -> LockRecord:
        return self.finished(lambda lock: created(lock) + timedelta(minutes=15),
                             lock=self.lock("tfstate/other/app.tfstate"))


class GitLabRunnerHostname(GitLabProjectWorld):
    """The Docker executor's hostname names project 44, on a provider that opted in with ``runner_hosts``."""

    kind = "gitlab-runner-hostname"
    host = "runner-abcd1234-project-44-concurrent-0"

    def __init__(self, request: pytest.FixtureRequest, *, short_pages: bool = False, runner_hosts: bool = True) -> None:
        super().__init__(request, short_pages=short_pages)
        self.runner_hosts = runner_hosts

    def providers(self) -> list[dict[str, Any]]:
        return [self.gitlab(runner_hosts=["runner-*-project-*-concurrent-*"] if self.runner_hosts else [])]

    def lock(self, user: str = "root") -> LockRecord:
        return terraform_lock(f"{user}@{self.host}")

    def out_of_scope(self) -> LockRecord:
        # not the runner's user (runner_users: [root]): a person's lock on that host
        return self.finished(lambda lock: created(lock) + timedelta(minutes=15), lock=self.lock("alice"))


# ================================================================ state activity (S3 HeadObject)
class FailingS3:
    """The S3 client the wiring gets: moto's, with HeadObject failing on demand as botocore reports it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.failure: tuple[int, dict[str, str]] | None = None

    def head_object(self, **kw: Any) -> Any:
        if self.failure is not None:
            from botocore.exceptions import ClientError

            status, headers = self.failure
            code = {403: "AccessDenied", 429: "TooManyRequests", 500: "InternalError", 503: "SlowDown"}.get(status, str(status))
            meta = {"HTTPStatusCode": status, "HTTPHeaders": {k.lower(): v for k, v in headers.items()}}
            raise ClientError({"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": meta},  # type: ignore[typeddict-item]
                              "HeadObject")
        return self.client.head_object(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class StateActivity(World):
    """HeadObject on the lock's state object (moto S3). Its contract: it never answers dead.

    moto stamps LastModified with the real clock, so this world's ``now`` is real time too.
    """

    kind = "state-activity"
    checker = "state-activity"
    sources = frozenset({"state-activity"})
    expect = {"alive": ALIVE, "dead": UNKNOWN, "unknown": UNKNOWN, "within_grace": TIME_NA, "within_skew": TIME_NA,
              "truncated": LIST_NA, "out_of_scope": UNKNOWN}
    error_base = "alive"  # it never says dead: a failure must not keep its alive answer either
    bucket, key = "tfstate", "prod/app.tfstate"

    def __init__(self, request: pytest.FixtureRequest, *, short_pages: bool = False) -> None:
        super().__init__(request, short_pages=short_pages)
        import boto3

        request.getfixturevalue("aws")
        self.s3 = FailingS3(boto3.client("s3", region_name="us-east-1"))
        self.s3.create_bucket(Bucket=self.bucket)
        self.now = datetime.now(timezone.utc).replace(microsecond=0)

    def client_factory(self, service: str, region: str | None = None) -> Any:
        assert service == "s3", service
        return self.s3

    def policy_doc(self) -> dict[str, Any]:
        return {"mode": "report", "rules": [{"match": "*", "max_age": "2h"}],
                "liveness": {"state_activity": {"enabled": True, "window": "10m"}}}

    def lock(self, age: timedelta = AGE, store: str = "dynamodb:terraform-locks") -> LockRecord:
        return terraform_lock("runner@ci-01", f"{self.bucket}/{self.key}", store=store, now=self.now, age=age)

    def write_state(self) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=b'{"version": 4, "serial": 7}')

    def alive(self) -> LockRecord:
        lock = self.lock()  # taken an hour ago, the apply wrote its state just now
        self.write_state()
        self.now = datetime.now(timezone.utc) + timedelta(seconds=1)
        return lock

    def dead(self) -> LockRecord:
        # the holder wrote its state after taking the lock, then went quiet: asked 4 hours later
        lock = self.lock()
        self.write_state()
        self.now = datetime.now(timezone.utc) + AGE
        return lock

    def unknown(self) -> LockRecord:
        return self.lock()  # no state object yet

    def out_of_scope(self) -> LockRecord:
        self.write_state()
        self.now = datetime.now(timezone.utc) + timedelta(seconds=1)
        return self.lock(store="gitlab:gitlab.example.com")  # not an S3-backed lock: the checker is not asked

    def fail(self, status: int, headers: dict[str, str]) -> None:
        self.s3.failure = (status, headers)


# ================================================================ HCP Terraform run status
class HCPRuns(World):
    """The run named by a workspace's locked-by (devtools/fake_hcp.py); locks come from the HCP store's scan."""

    kind = "hcp-runs"
    checker = "hcp-runs"
    sources = frozenset({"hcp-runs"})
    expect = {"alive": ALIVE, "dead": DEAD, "unknown": UNKNOWN, "within_grace": ALIVE, "within_skew": DEAD,
              "truncated": LIST_NA, "out_of_scope": UNKNOWN}
    env = {"HCP_TOKEN": "hcp-contract-token"}

    def __init__(self, request: pytest.FixtureRequest, *, short_pages: bool = False) -> None:
        super().__init__(request, short_pages=short_pages)
        from devtools.fake_hcp import FakeHCP

        self.fake = self.start(FakeHCP(token=self.env["HCP_TOKEN"], organizations=("acme",)))

    def policy_doc(self) -> dict[str, Any]:
        return {"mode": "report", "clock_skew": "5m", "rules": [{"match": "*", "max_age": "2h", "hard_max_age": "2d"}],
                "stores": [{"type": "hcp", "base_url": self.fake.url, "organizations": ["acme"], "token_env": "HCP_TOKEN",
                            "grace": "5m", "timeout": "2s", "max_retry_wait": "1s"}],
                "liveness": {"state_activity": {"enabled": False}}}

    def scanned(self, ws_name: str) -> LockRecord:
        store = self.built().stores[0]
        [lock] = [r for r in store.scan() if r.lock_path == f"acme/{ws_name}"]
        return lock

    def run_lock(self, status: str, finished: Callable[[datetime], datetime] | None = None, name: str = "app") -> LockRecord:
        ws = self.fake.add_workspace("acme", name)
        started = NOW - AGE  # planning-at: the lock's Created
        stamps = {"plan-queued-at": started - timedelta(seconds=5), "planning-at": started}
        if finished is not None:
            stamps[status.replace("_", "-") + "-at"] = finished(started)
        run = self.fake.add_run(ws, status, stamps, created_at=started - timedelta(minutes=1))
        self.fake.lock(ws, "runs", run)
        lock = self.scanned(name)
        assert lock.info is not None and lock.info.Created == started, lock
        return lock

    def alive(self) -> LockRecord:
        return self.run_lock("applying")

    def dead(self) -> LockRecord:
        return self.run_lock("errored", lambda c: c + timedelta(minutes=15))

    def within_grace(self) -> LockRecord:
        return self.run_lock("canceled", lambda c: NOW - timedelta(minutes=2))

    def within_skew(self) -> LockRecord:
        return self.run_lock("errored", lambda c: c + timedelta(minutes=2))

    def unknown(self) -> LockRecord:
        ws = self.fake.add_workspace("acme", "net")
        self.fake.lock(ws, "users", self.fake.add_user("alice"), at=NOW - AGE)
        return self.scanned("net")

    def out_of_scope(self) -> LockRecord:
        # a lock of another store whose token looks like a dead run's: only the HCP store's locks are its own
        dead = self.dead()
        return dead.model_copy(update={"store": "dynamodb:terraform-locks"})

    def fail(self, status: int, headers: dict[str, str]) -> None:
        self.fake.fail("GET", r"^/api/v2/runs/", status, headers=headers, times=1000)


# ================================================================ leases (lock-reaper run)
class FailingDynamoDB:
    """The DynamoDB client the wiring gets: moto's, with the observations' GetItem failing on demand."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.failure: tuple[int, dict[str, str]] | None = None

    def get_item(self, **kw: Any) -> Any:
        if self.failure is not None:
            from botocore.exceptions import ClientError

            status, headers = self.failure
            code = {403: "AccessDeniedException", 429: "ThrottlingException", 500: "InternalServerError"}.get(
                status, str(status))
            meta = {"HTTPStatusCode": status, "HTTPHeaders": {k.lower(): v for k, v in headers.items()}}
            raise ClientError({"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": meta},  # type: ignore[typeddict-item]
                              "GetItem")
        return self.client.get_item(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class Lease(World):
    """Leases ``lock-reaper run`` keeps in its claim (provider none: a run outside any CI system), on moto
    DynamoDB: the claims table, and the run-state table (REAPER_LEASE_TABLE) where the reaper keeps its own
    sightings between runs. An arrangement that needs an earlier sighting makes it with an earlier run
    (``seen``: a new build asked at that time by the reaper's clock).

    Its proofs of death are the recorded exit (``dead``; ``within_skew``: EndedAt 2 minutes after Created is
    still dead, both come from the same host clock) and a counter the reaper watched stand still for lease +
    grace (tests in test_liveness_contract.py); ``unknown``: a heartbeat that stopped without containment.
    """

    kind = "lease"
    checker = "lease"
    sources = frozenset({"lease"})
    expect = {"alive": ALIVE, "dead": DEAD, "unknown": UNKNOWN, "within_grace": ALIVE, "within_skew": DEAD,
              "truncated": LIST_NA, "out_of_scope": UNKNOWN}
    env = {"REAPER_LEASE_TABLE": "run-state"}
    who = "deploy@jenkins-agent-4"
    seconds = 120

    def __init__(self, request: pytest.FixtureRequest, *, short_pages: bool = False) -> None:
        super().__init__(request, short_pages=short_pages)
        import boto3

        from devtools.locks import create_claims_table
        from reaper.liveness.claims import ClaimStore

        request.getfixturevalue("aws")  # in-process moto
        raw = boto3.client("dynamodb", region_name="us-east-1")
        create_claims_table(raw, "claims")
        raw.create_table(TableName="run-state", AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
        self.ddb = FailingDynamoDB(raw)
        self.claims = ClaimStore(raw, "claims")

    def client_factory(self, service: str, region: str | None = None) -> Any:
        assert service == "dynamodb", service
        return self.ddb

    def policy_doc(self) -> dict[str, Any]:
        return {"mode": "report", "clock_skew": "5m", "rules": [{"match": "*", "max_age": "2h", "hard_max_age": "2d"}],
                "liveness": {"grace": "5m", "claims": {"table": "claims"}, "state_activity": {"enabled": False}}}

    def leased(self, with_lease: bool = True, **lease: Any) -> LockRecord:
        from reaper.liveness.claims import Claim
        from reaper.liveness.lease_fields import LeaseState

        lock = terraform_lock(self.who)
        c = created(lock)
        fields: dict[str, Any] = {"seconds": self.seconds, "heartbeat": 9, "heartbeat_at": c + timedelta(minutes=1),
                                  "containment": ("pdeathsig", "subreaper"), "fenced": True, "exclusive": True}
        fields.update(lease)
        self.claims.put(Claim(who=self.who, claimed_at=c - timedelta(seconds=20), provider="none",
                              lease=LeaseState(**fields) if with_lease else None))
        return lock

    def seen(self, lock: LockRecord, at: datetime) -> None:
        """An earlier reaper run, at ``at`` by its clock, saw the lease as it is now."""
        self.rebuild()
        self.built().liveness.check(lock, at)
        self.rebuild()

    def alive(self) -> LockRecord:
        return self.leased(heartbeat_at=NOW - timedelta(seconds=30))

    def ended(self, at: Callable[[LockRecord], datetime], seen_at: datetime) -> LockRecord:
        lock = terraform_lock(self.who)
        lock = self.leased(ended_at=at(lock), exit_code=1, heartbeat_at=at(lock) - timedelta(seconds=10))
        self.seen(lock, seen_at)
        return lock

    def dead(self) -> LockRecord:
        return self.ended(lambda lock: created(lock) + timedelta(minutes=15), NOW - timedelta(minutes=10))

    def within_grace(self) -> LockRecord:
        return self.ended(lambda lock: NOW - timedelta(minutes=2), NOW - timedelta(minutes=2))

    def within_skew(self) -> LockRecord:
        return self.ended(lambda lock: created(lock) + timedelta(minutes=2), NOW - timedelta(minutes=10))

    def unknown(self) -> LockRecord:
        lock = self.leased(containment=(), fenced=False)  # the heartbeat stopped; nothing stops the command
        self.seen(lock, NOW - timedelta(hours=1))
        return lock

    def stopped(self, **lease: Any) -> LockRecord:
        """Contained and fenced; the reaper first saw this counter an hour ago."""
        lock = self.leased(**lease)
        self.seen(lock, NOW - timedelta(hours=1))
        return lock

    def out_of_scope(self) -> LockRecord:
        # a claim without a lease (no LeaseSeconds) whose item says the run ended long ago
        lock = self.leased(with_lease=False)
        item = self.claims.client.get_item(TableName="claims", Key={
            "Who": {"S": self.who}, "ClaimedAt": {"S": _claim_time(created(lock) - timedelta(seconds=20))}})["Item"]
        item.update({"EndedAt": {"S": _claim_time(created(lock) + timedelta(minutes=15))}, "ExitCode": {"N": "1"}})
        self.claims.client.put_item(TableName="claims", Item=item)
        return lock

    def fail(self, status: int, headers: dict[str, str]) -> None:
        self.ddb.failure = (status, headers)


def _claim_time(at: datetime) -> str:
    from reaper.models import claim_time

    return claim_time(at)


WORLDS: dict[str, type[World]] = {w.kind: w for w in (
    ClaimsGitHub, ClaimsGitLab, GitHubRunners, GitHubRepos, GitLabProjectMapping, GitLabRunnerHostname,
    StateActivity, HCPRuns, Lease,
)}
