"""GitLab-managed Terraform state locks against a local fake GitLab (devtools/fake_gitlab.py).

The fake follows GitLab's own lock semantics (lib/api/terraform/state.rb,
Terraform::RemoteStateHandler). Covered: GraphQL pagination across projects,
reading the lock ID (409 from the lock endpoint), the probe that finds the state
unlocked and gives the lock back, unlock with the ID (200, 409 raced, 409 gone),
unknown IDs reported only, 403 without Maintainer, 429, 5xx and timeouts (keep
and report), audit records that say the lock cannot be re-created.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from devtools.fake_gitlab import DEVELOPER, FakeGitLab
from reaper.policy import Policy, parse_policy
from reaper.engine import Reaper
from reaper.models import LivenessFact, LockRecord, Outcome
from reaper.stores.gitlab_state import PROBE_PREFIX, GitLabStateStore
from reaper.wiring import Deps, build_stores
from testkit import ListAudit

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
TOKEN = "glpat-lock-reaper"
PROJECT = "infra/network"


@pytest.fixture
def gl() -> Any:
    with FakeGitLab(clock=lambda: NOW) as fake:
        fake.add_token(TOKEN, "lock-reaper-bot")
        fake.add_project(PROJECT)
        yield fake


class Unknown:
    """GitLab locks carry only a username: no CI run to ask, so unknown (hard_max_age governs)."""

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        return LivenessFact.unknown("no CI evidence for this holder")

    def stats(self) -> dict[str, Any]:
        return {}


def make_policy(fake: FakeGitLab, projects: str = f"[{PROJECT}]", extra: str = "") -> Policy:
    return parse_policy(f"""
mode: enforce
audit: {{local_dir: unused}}
rules:
  - match: "*"
    max_age: 2h
    hard_max_age: 6h
stores:
  - type: gitlab
    base_url: {fake.url}
    projects: {projects}
    token_env: GITLAB_TOKEN
    page_size: 2
    timeout: 1s
{extra}
""")


def build(fake: FakeGitLab, policy: Policy, token: str = TOKEN, sleeps: list[float] | None = None) -> tuple[GitLabStateStore, Reaper, ListAudit]:
    stores = build_stores(policy, Deps(env={"GITLAB_TOKEN": token}, sleep=(sleeps if sleeps is not None else []).append))
    store = stores[0]
    store.clock = lambda: NOW  # type: ignore[attr-defined]
    audit = ListAudit()
    return store, Reaper(policy, stores, clock=lambda: NOW, liveness=Unknown(), audit=audit), audit  # type: ignore[return-value]


def seed(fake: FakeGitLab) -> None:
    for name in ("dev", "prod", "staging", "qa", "perf"):
        fake.add_state(PROJECT, name)
    fake.lock(PROJECT, "prod", "8d2c1a6e-3f4b-9e01-7c55-1b2a3c4d5e6f", "alice", NOW - 9 * H)
    fake.lock(PROJECT, "staging", "11e34ba5-91a8-fe56-0c0d-1f7fc212d1b2", "bob", NOW - 3 * H)


# ------------------------------------------------------------------ scanning
def test_scan_lists_states_by_graphql_and_reads_lock_ids(gl: FakeGitLab) -> None:
    seed(gl)
    store, _, _ = build(gl, make_policy(gl))
    store.validate()
    recs = {r.lock_path: r for r in store.scan()}
    assert set(recs) == {f"{PROJECT}/prod", f"{PROJECT}/staging"}
    prod = recs[f"{PROJECT}/prod"]
    assert prod.store == store.name and store.name.startswith("gitlab:127.0.0.1")
    assert prod.token == "8d2c1a6e-3f4b-9e01-7c55-1b2a3c4d5e6f" and prod.info is not None
    assert prod.info.Who == "alice" and prod.info.Created == NOW - 9 * H and prod.info.Path == prod.lock_path
    assert prod.info.Operation == "" and prod.raw["project_id"] == str(gl.projects[PROJECT]["id"])
    graphql = gl.calls("POST", r"^/api/graphql$")
    assert len(graphql) == 3, "5 states, 2 per page"
    assert [c.body["variables"]["after"] is None for c in graphql] == [True, False, False]
    probes = gl.calls("POST", r"/lock$")
    assert len(probes) == 2 and all(c.body["ID"].startswith(PROBE_PREFIX) for c in probes)
    # the probes changed nothing
    assert gl.state(PROJECT, "prod")["lock_xid"] == "8d2c1a6e-3f4b-9e01-7c55-1b2a3c4d5e6f"
    assert gl.state(PROJECT, "dev")["lock_xid"] is None
    assert store.stats()["items"] == 5 and store.stats()["locked"] == 2


def test_state_unlocked_before_the_probe_is_released_at_once(gl: FakeGitLab) -> None:
    seed(gl)
    orig = gl.route

    def route(req: Any) -> Any:
        if req.method == "POST" and req.path.endswith("/state/prod/lock"):  # alice's run finished meanwhile
            gl.projects[PROJECT]["states"]["prod"].update(lock_xid=None, locked_by=None, locked_at=None)
        return orig(req)

    gl.route = route  # type: ignore[method-assign]
    store, _, _ = build(gl, make_policy(gl))
    assert [r.lock_path for r in store.scan()] == [f"{PROJECT}/staging"]
    assert store.stats()["released_during_probe"] == 1
    assert gl.state(PROJECT, "prod")["lock_xid"] is None, "the probe lock was given back"
    deletes = gl.calls("DELETE", r"/state/prod/lock$")
    assert len(deletes) == 1 and deletes[0].query["ID"].startswith(PROBE_PREFIX)


def test_probe_lock_that_cannot_be_released_is_loud(gl: FakeGitLab) -> None:
    gl.add_state(PROJECT, "prod")
    gl.lock(PROJECT, "prod", "x", "alice", NOW - 9 * H)
    orig = gl.route

    def route(req: Any) -> Any:
        if req.method == "POST" and req.path.endswith("/lock"):
            gl.projects[PROJECT]["states"]["prod"].update(lock_xid=None, locked_by=None, locked_at=None)
        return orig(req)

    gl.route = route  # type: ignore[method-assign]
    gl.fail("DELETE", r"/lock$", 500, times=5)
    _, reaper, _ = build(gl, make_policy(gl))
    report = reaper.run()
    assert report.stores[0].status == "error" and "COULD NOT BE RELEASED" in (report.stores[0].error or "")
    assert report.locks[0].outcome is Outcome.KEPT and "COULD NOT BE RELEASED" in report.locks[0].reasons[0]


def test_read_lock_id_off_reports_only(gl: FakeGitLab) -> None:
    seed(gl)
    _, reaper, _ = build(gl, make_policy(gl, extra="    read_lock_id: false"))
    report = reaper.run()
    assert {e.outcome for e in report.locks} == {Outcome.KEPT}
    assert all("lock ID is unknown" in e.reasons[0] and "never unlocked" in e.reasons[0] for e in report.locks)
    assert gl.calls("POST", r"/lock$") == [] and gl.calls("DELETE") == []


# ------------------------------------------------------------------ unlocking
def test_stale_lock_is_unlocked_with_its_id_and_audited_as_not_restorable(gl: FakeGitLab) -> None:
    seed(gl)
    store, reaper, audit = build(gl, make_policy(gl))
    report = reaper.run()
    by = {e.lock_path: e for e in report.locks}
    assert by[f"{PROJECT}/prod"].outcome is Outcome.REAPED, by[f"{PROJECT}/prod"].reasons  # 9h > hard_max_age 6h
    assert by[f"{PROJECT}/staging"].outcome is Outcome.KEPT  # 3h: unknown, below hard_max_age
    unlocks = [c for c in gl.calls("DELETE", r"/lock$")]
    assert [c.query.get("ID") for c in unlocks] == ["8d2c1a6e-3f4b-9e01-7c55-1b2a3c4d5e6f"], "always with the ID"
    assert gl.state(PROJECT, "prod")["lock_xid"] is None
    assert gl.state(PROJECT, "staging")["lock_xid"] is not None
    rec = audit.records[0]
    assert rec["restorable"] is False and "cannot be re-created" in rec["restore_note"]
    assert rec["store"] == store.name and rec["lock_id"] == "8d2c1a6e-3f4b-9e01-7c55-1b2a3c4d5e6f"
    assert json.loads(report.to_json())["locks"][0]["restorable"] is False
    with pytest.raises(ValueError, match="cannot be re-created"):
        store.restore(rec["item"])


def test_lock_replaced_before_unlock_is_raced_with_the_new_holder(gl: FakeGitLab) -> None:
    seed(gl)
    store, reaper, _ = build(gl, make_policy(gl))
    real = store.delete

    def relocked(lock: LockRecord) -> Any:
        gl.lock(PROJECT, "prod", "ffffffff-0000-1111-2222-333333333333", "carol", NOW - timedelta(minutes=1))
        return real(lock)

    store.delete = relocked  # type: ignore[method-assign]
    e = {e.lock_path: e for e in reaper.run().locks}[f"{PROJECT}/prod"]
    assert e.outcome is Outcome.RACED and e.current_holder == {"id": "", "who": "carol"}
    assert "carol" in e.reasons[-1]
    assert gl.state(PROJECT, "prod")["lock_xid"] == "ffffffff-0000-1111-2222-333333333333"


def test_unlocked_before_unlock_is_gone(gl: FakeGitLab) -> None:
    seed(gl)
    store, reaper, _ = build(gl, make_policy(gl))
    real = store.delete

    def released(lock: LockRecord) -> Any:
        gl.projects[PROJECT]["states"]["prod"].update(lock_xid=None, locked_by=None, locked_at=None)
        return real(lock)

    store.delete = released  # type: ignore[method-assign]
    e = {e.lock_path: e for e in reaper.run().locks}[f"{PROJECT}/prod"]
    assert e.outcome is Outcome.GONE


# ------------------------------------------- permissions, 429, 5xx, timeouts
def test_developer_token_cannot_read_ids_and_keeps_everything(gl: FakeGitLab) -> None:
    seed(gl)
    gl.add_token("glpat-dev", "dev-user", DEVELOPER)
    _, reaper, _ = build(gl, make_policy(gl), token="glpat-dev")
    report = reaper.run()
    assert {e.outcome for e in report.locks} == {Outcome.KEPT}
    assert all("Maintainer" in e.reasons[0] for e in report.locks)
    assert gl.state(PROJECT, "prod")["lock_xid"] is not None


@pytest.mark.parametrize("fault", [{"status": 429, "headers": {"Retry-After": "3600"}}, {"status": 500},
                                   {"status": None, "delay": 1.6}])
def test_graphql_failures_keep_and_report(gl: FakeGitLab, fault: dict[str, Any]) -> None:
    seed(gl)
    gl.fail("POST", r"^/api/graphql$", times=3, **fault)
    _, reaper, _ = build(gl, make_policy(gl))
    report = reaper.run()
    assert report.locks == [] and report.stores[0].status == "error" and report.exit_code == 1
    assert gl.calls("DELETE") == [] and gl.state(PROJECT, "prod")["lock_xid"] is not None


@pytest.mark.parametrize("fault", [{"status": 429, "headers": {"Retry-After": "5"}}, {"status": 503},
                                   {"status": None, "delay": 1.6}])
def test_lock_id_read_failures_leave_the_lock_unknown(gl: FakeGitLab, fault: dict[str, Any]) -> None:
    seed(gl)
    gl.fail("POST", r"/state/prod/lock$", **fault)
    _, reaper, _ = build(gl, make_policy(gl))
    e = {e.lock_path: e for e in reaper.run().locks}[f"{PROJECT}/prod"]
    assert e.outcome is Outcome.KEPT and "lock ID is unknown" in e.reasons[0]
    assert gl.state(PROJECT, "prod")["lock_xid"] == "8d2c1a6e-3f4b-9e01-7c55-1b2a3c4d5e6f"


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 429, "headers": {"Retry-After": "3600"}},
                                   {"status": None, "delay": 1.6}])
def test_unlock_failures_are_errors_and_the_lock_stays(gl: FakeGitLab, fault: dict[str, Any]) -> None:
    seed(gl)
    gl.fail("DELETE", r"/state/prod/lock$", times=3, **fault)
    _, reaper, audit = build(gl, make_policy(gl))
    e = {e.lock_path: e for e in reaper.run().locks}[f"{PROJECT}/prod"]
    assert e.outcome is Outcome.ERROR and len(audit.audits) == 1
    assert [o["deleted"] for o in audit.outcomes] == [False]  # the record beside it says the delete failed
    assert gl.state(PROJECT, "prod")["lock_xid"] is not None


def test_unknown_project_is_reported_and_others_go_on(gl: FakeGitLab) -> None:
    seed(gl)
    _, reaper, _ = build(gl, make_policy(gl, projects=f"[infra/missing, {PROJECT}]"))
    report = reaper.run()
    assert {e.lock_path for e in report.locks} == {f"{PROJECT}/prod", f"{PROJECT}/staging"}
    assert report.stores[0].status == "error" and "infra/missing" in (report.stores[0].error or "")


def test_numeric_project_ids_and_encoded_names(gl: FakeGitLab) -> None:
    gl.add_state(PROJECT, "eu west/prod")
    gl.lock(PROJECT, "eu west/prod", "abc-123", "alice", NOW - 9 * H)
    store, reaper, _ = build(gl, make_policy(gl))
    e = reaper.run().locks[0]
    assert e.lock_path == f"{PROJECT}/eu west/prod" and e.outcome is Outcome.REAPED, e.reasons
    (call,) = gl.calls("DELETE", r"/lock$")
    assert call.raw_path == f"/api/v4/projects/{gl.projects[PROJECT]['id']}/terraform/state/eu%20west%2Fprod/lock"


def test_relocked_between_listing_and_probe_uses_the_new_locks_time(gl: FakeGitLab) -> None:
    """The listing saw alice's 9h-old lock; by the probe, bob holds a fresh one: never judged 9h old."""
    seed(gl)
    orig = gl.route

    def route(req: Any) -> Any:
        if req.method == "POST" and req.path.endswith("/state/prod/lock"):
            gl.lock(PROJECT, "prod", "b0b-fresh-lock", "bob", NOW - timedelta(minutes=2))
        return orig(req)

    gl.route = route  # type: ignore[method-assign]
    _, reaper, _ = build(gl, make_policy(gl))
    e = {e.lock_path: e for e in reaper.run().locks}[f"{PROJECT}/prod"]
    assert e.lock_id == "b0b-fresh-lock" and e.who == "bob"
    assert e.outcome is Outcome.KEPT and e.age_seconds == 120.0
    assert gl.state(PROJECT, "prod")["lock_xid"] == "b0b-fresh-lock"


# ------------------------------------------ lock times: GraphQL seconds vs 409 milliseconds
def test_fake_renders_gitlabs_own_time_formats(gl: FakeGitLab) -> None:
    """GraphQL Time is ``iso8601`` (whole seconds); the 409 body is Rails JSON (milliseconds)."""
    gl.add_state(PROJECT, "prod")
    gl.lock(PROJECT, "prod", "lock-1", "alice", NOW - 9 * H + timedelta(milliseconds=250))
    query = {"query": "{ project { terraformStates { nodes { lockedAt } } } }", "variables": {"fullPath": PROJECT}}
    node = _post(gl, "/api/graphql", query)[1]["data"]["project"]["terraformStates"]["nodes"][0]
    assert node["lockedAt"] == "2026-11-22T03:00:00Z"
    lock = {k: "x" for k in ("ID", "Operation", "Info", "Who", "Version", "Created", "Path")}
    status, body = _post(gl, f"/api/v4/projects/{gl.projects[PROJECT]['id']}/terraform/state/prod/lock", lock)
    assert status == 409 and body["ID"] == "lock-1" and body["Created"] == "2026-11-22T03:00:00.250Z"


def _post(fake: FakeGitLab, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    import urllib3

    resp = urllib3.request("POST", fake.url + path, json=body, headers={"PRIVATE-TOKEN": TOKEN}, retries=False)
    return resp.status, json.loads(resp.data)


def test_unchanged_lock_with_milliseconds_is_not_taken_for_a_relock(gl: FakeGitLab) -> None:
    gl.add_state(PROJECT, "prod")
    gl.lock(PROJECT, "prod", "lock-1", "alice", NOW - 9 * H + timedelta(milliseconds=250))
    store, _, _ = build(gl, make_policy(gl))
    rec = next(iter(store.scan()))
    assert rec.info is not None and rec.info.Created == NOW - 9 * H + timedelta(milliseconds=250)
    assert "relocked_since_listing" not in rec.raw, rec.raw


def test_lock_taken_again_in_another_second_is_recorded_as_a_relock(gl: FakeGitLab) -> None:
    gl.add_state(PROJECT, "prod")
    gl.lock(PROJECT, "prod", "lock-1", "alice", NOW - 9 * H)
    orig = gl.route

    def route(req: Any) -> Any:
        if req.method == "POST" and req.path.endswith("/state/prod/lock"):
            gl.lock(PROJECT, "prod", "lock-2", "alice", NOW - 9 * H + timedelta(seconds=1, milliseconds=5))
        return orig(req)

    gl.route = route  # type: ignore[method-assign]
    store, _, _ = build(gl, make_policy(gl))
    rec = next(iter(store.scan()))
    assert rec.token == "lock-2"
    assert rec.raw["relocked_since_listing"] == {"locked_at": "2026-11-22T03:00:01.005Z", "locked_by": "alice"}


@pytest.mark.parametrize("a,b,same", [
    ("2026-11-22T12:00:00Z", "2026-11-22T12:00:00.999Z", True),
    ("2026-11-22T12:00:00Z", "2026-11-22T12:00:01.000Z", False),
    ("2026-11-22T12:00:00.123Z", "2026-11-22T12:00:00.124Z", False),
    ("2026-11-22T12:00:00.123Z", "2026-11-22T12:00:00.123456789Z", True),
    ("2026-11-22T13:00:00+01:00", "2026-11-22T12:00:00.500Z", True),
    ("not a time", "2026-11-22T12:00:00Z", False),
])
def test_same_instant_compares_at_the_coarser_precision(a: str, b: str, same: bool) -> None:
    from reaper.stores.gitlab_state import same_instant

    assert same_instant(a, b) is same and same_instant(b, a) is same
