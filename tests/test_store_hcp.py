"""HCP Terraform / TFE workspace locks against a local fake API (devtools/fake_hcp.py).

Payloads are shaped like the API docs' samples. Covered: pagination, run locks
(final -> dead after grace -> reaped; not final -> alive, alerted past
hard_max_age, never unlocked), user/team locks (unknown: hard_max_age governs,
age from updated-at), the re-read before force-unlock (raced / gone), 409, 429
with Retry-After, 5xx and timeouts (each: keep and report), several
organizations, audit records that say the lock cannot be re-created.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from devtools.fake_hcp import FakeHCP
from reaper.policy import Policy, parse_policy
from reaper.engine import Reaper
from reaper.models import Liveness, Outcome
from reaper.liveness.hcp_runs import HCPRunChecker
from reaper.stores.hcp import HCPWorkspaceStore
from reaper.wiring import Deps, build_components, build_stores
from testkit import ListAudit

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)


@pytest.fixture
def hcp() -> Any:
    with FakeHCP(organizations=("acme", "globex")) as fake:
        yield fake


def make_policy(fake: FakeHCP, mode: str = "enforce", orgs: str = "[acme]", token: str = "token_env: HCP_TOKEN") -> Policy:
    return parse_policy(f"""
mode: {mode}
audit: {{local_dir: unused}}
rules:
  - name: default
    match: "*"
    max_age: 2h
    hard_max_age: 1d
stores:
  - type: hcp
    base_url: {fake.url}
    organizations: {orgs}
    {token}
    page_size: 2
    timeout: 1s
    grace: 10m
""")


def build(fake: FakeHCP, policy: Policy, sleeps: list[float] | None = None) -> tuple[HCPWorkspaceStore, Reaper, ListAudit]:
    rec = sleeps if sleeps is not None else []
    c = build_components(policy, Deps(env={"HCP_TOKEN": fake.token}, sleep=rec.append))
    audit = ListAudit()
    reaper = Reaper(policy, c.stores, clock=lambda: NOW, liveness=c.liveness, audit=audit)
    return c.stores[0], reaper, audit  # type: ignore[return-value]


def run_lock(fake: FakeHCP, name: str, status: str, started_ago: timedelta, finished_ago: timedelta | None = None,
             org: str = "acme", plan_only: bool = False) -> tuple[str, str]:
    ws = fake.add_workspace(org, name)
    stamps = {"plan-queued-at": NOW - started_ago - timedelta(seconds=5), "planning-at": NOW - started_ago}
    if finished_ago is not None:
        stamps[status.replace("_", "-") + "-at"] = NOW - finished_ago
    run = fake.add_run(ws, status, stamps, created_at=NOW - started_ago - timedelta(minutes=1), plan_only=plan_only)
    fake.lock(ws, "runs", run)
    return ws, run


def by_path(report: Any) -> dict[str, Any]:
    return {e.lock_path: e for e in report.locks}


# ---------------------------------------------------------------- scanning
def test_scan_pages_through_workspaces_and_describes_each_lock(hcp: FakeHCP) -> None:
    for i in range(3):
        hcp.add_workspace("acme", f"idle-{i}")
    _, run = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    ws_user = hcp.add_workspace("acme", "net-prod")
    alice = hcp.add_user("alice")
    hcp.lock(ws_user, "users", alice, reason="maintenance window", at=NOW - 30 * H)
    ws_team = hcp.add_workspace("acme", "dns")
    hcp.lock(ws_team, "teams", hcp.add_team("platform"), at=NOW - 2 * H)

    store, _, _ = build(hcp, make_policy(hcp))
    store.validate()
    recs = {r.lock_path: r for r in store.scan()}
    assert set(recs) == {"acme/app-prod", "acme/net-prod", "acme/dns"}
    r = recs["acme/app-prod"]
    assert r.store == store.name and store.name.startswith("hcp:127.0.0.1")
    assert r.token == f"runs:{run}" and r.info is not None and r.info.ID == run
    assert r.info.Created == NOW - 5 * H and r.raw["age_source"] == "run status-timestamps.planning-at"
    assert r.info.Operation == "OperationTypeApply" and r.info.Path == "acme/app-prod"
    u = recs["acme/net-prod"]
    assert u.info is not None and u.info.Who == "user alice" and u.info.Info == "maintenance window"
    assert u.info.Created == NOW - 30 * H and "updated-at" in u.raw["age_source"]
    assert recs["acme/dns"].info.Who == "team platform"  # type: ignore[union-attr]
    lists = hcp.calls("GET", r"/workspaces$")
    assert [q.query["page[number]"] for q in lists] == ["1", "2", "3"]  # 6 workspaces, 2 per page
    assert all(q.query["include"] == "locked_by" for q in lists)
    assert store.stats()["items"] == 6 and store.stats()["locked"] == 3


def test_final_run_past_grace_is_dead_and_force_unlocked(hcp: FakeHCP) -> None:
    ws, run = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    store, reaper, audit = build(hcp, make_policy(hcp))
    report = reaper.run()
    e = by_path(report)["acme/app-prod"]
    assert e.outcome is Outcome.REAPED, e.reasons
    assert e.liveness == "dead" and any(ev.source == "hcp-runs" and ev.status == "errored" for ev in e.evidence)
    assert hcp.unlocked == [ws] and not hcp.workspaces[ws]["locked"]
    # re-read right before the unlock, then force-unlock
    tail = [(q.method, q.path) for q in hcp.requests[-2:]]
    assert tail == [("GET", f"/api/v2/workspaces/{ws}"), ("POST", f"/api/v2/workspaces/{ws}/actions/force-unlock")]
    rec = audit.records[0]
    assert rec["restorable"] is False and "cannot be re-created" in rec["restore_note"]
    assert rec["item"]["locked_by"] == {"type": "runs", "id": run}
    assert e.restorable is False and json.loads(report.to_json())["locks"][0]["restorable"] is False
    with pytest.raises(ValueError, match="cannot be re-created"):
        store.restore(rec["item"])


@pytest.mark.parametrize("status", ["applied", "planned_and_finished", "discarded", "canceled", "force_canceled",
                                    "policy_soft_failed"])
def test_every_final_status_counts_as_finished(hcp: FakeHCP, status: str) -> None:
    run_lock(hcp, "ws", status, 5 * H, 3 * H)
    store, _, _ = build(hcp, make_policy(hcp))
    rec = next(iter(store.scan()))
    fact = HCPRunChecker(store.api, store.name, timedelta(minutes=10)).check(rec, NOW)
    assert fact is not None and fact.state is Liveness.DEAD, fact


def test_final_run_within_grace_is_kept(hcp: FakeHCP) -> None:
    ws, _ = run_lock(hcp, "app-prod", "canceled", 5 * H, timedelta(minutes=3))
    _, reaper, _ = build(hcp, make_policy(hcp))
    e = reaper.run().locks[0]
    assert e.outcome is Outcome.KEPT and e.liveness == "alive" and "grace" in " ".join(e.reasons)
    assert hcp.unlocked == []


def test_stuck_planning_run_is_alerted_past_hard_max_but_never_unlocked(hcp: FakeHCP) -> None:
    ws, _ = run_lock(hcp, "stuck", "planning", 3 * 24 * H)
    _, reaper, _ = build(hcp, make_policy(hcp))
    report = reaper.run()
    e = report.locks[0]
    assert e.outcome is Outcome.KEPT and e.liveness == "alive"
    assert "alive_past_hard_max" in e.flags and report.summary.alive_past_hard_max == 1
    assert hcp.calls("POST") == [] and hcp.workspaces[ws]["locked"]


def test_user_lock_is_unknown_until_hard_max_age(hcp: FakeHCP) -> None:
    young = hcp.add_workspace("acme", "young")
    old = hcp.add_workspace("acme", "old")
    bob = hcp.add_user("bob")
    hcp.lock(young, "users", bob, at=NOW - 5 * H)
    hcp.lock(old, "users", bob, at=NOW - 30 * H)
    _, reaper, audit = build(hcp, make_policy(hcp))
    report = by_path(reaper.run())
    assert report["acme/young"].outcome is Outcome.KEPT and report["acme/young"].liveness == "unknown"
    assert "kept_unknown" in report["acme/young"].flags
    assert report["acme/old"].outcome is Outcome.REAPED and report["acme/old"].liveness == "unknown"
    assert "lock age from the workspace updated-at" in report["acme/old"].evidence[0].detail
    assert hcp.unlocked == [old] and len(audit.records) == 1


def test_lock_without_any_timestamp_is_kept_as_unknown_age(hcp: FakeHCP) -> None:
    ws = hcp.add_workspace("acme", "no-time")
    hcp.lock(ws, "users", hcp.add_user("carol"))
    hcp.workspaces[ws]["updated_at"] = None
    store, reaper, _ = build(hcp, make_policy(hcp))
    e = reaper.run().locks[0]
    assert e.outcome is Outcome.KEPT and "age unknown" in e.reasons[0]


# ------------------------------------------------------------- races and 409
def test_holder_changed_before_unlock_is_raced_and_not_unlocked(hcp: FakeHCP) -> None:
    ws, _ = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    store, reaper, _ = build(hcp, make_policy(hcp))
    real = store.delete
    dave = hcp.add_user("dave")

    def relocked(lock: Any) -> Any:
        hcp.lock(ws, "users", dave)  # someone locked it again between the scan and the unlock
        return real(lock)

    store.delete = relocked  # type: ignore[method-assign]
    e = reaper.run().locks[0]
    assert e.outcome is Outcome.RACED and e.current_holder == {"id": dave, "who": "user dave"}
    assert hcp.calls("POST") == [] and hcp.workspaces[ws]["locked_by"] == ("users", dave)


def test_unlocked_before_the_reread_is_gone(hcp: FakeHCP) -> None:
    ws, _ = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    store, reaper, _ = build(hcp, make_policy(hcp))
    real = store.delete

    def released(lock: Any) -> Any:
        hcp.workspaces[ws].update(locked=False, locked_by=None)
        return real(lock)

    store.delete = released  # type: ignore[method-assign]
    e = reaper.run().locks[0]
    assert e.outcome is Outcome.GONE and hcp.calls("POST") == []


def test_force_unlock_409_is_gone(hcp: FakeHCP) -> None:
    run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    hcp.fail("POST", r"/actions/force-unlock$", 409,
             body={"errors": [{"status": "409", "title": "conflict", "detail": "Workspace already unlocked"}]})
    _, reaper, _ = build(hcp, make_policy(hcp))
    e = reaper.run().locks[0]
    assert e.outcome is Outcome.GONE and "409" in e.reasons[-1]


# ------------------------------------------------- 429, 5xx, timeouts: keep and report
def test_429_with_short_retry_after_is_waited_for(hcp: FakeHCP) -> None:
    run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    hcp.fail("GET", r"/organizations/acme/workspaces$", 429, headers={"Retry-After": "2"})
    sleeps: list[float] = []
    _, reaper, _ = build(hcp, make_policy(hcp), sleeps)
    report = reaper.run()
    assert 2.0 in sleeps
    assert report.locks[0].outcome is Outcome.REAPED and report.summary.store_errors == 0


def test_429_with_long_retry_after_keeps_everything_and_reports(hcp: FakeHCP) -> None:
    ws, _ = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    hcp.fail("GET", r"/organizations/acme/workspaces$", 429, headers={"Retry-After": "3600"})
    sleeps: list[float] = []
    _, reaper, _ = build(hcp, make_policy(hcp), sleeps)
    report = reaper.run()
    assert report.locks == [] and report.stores[0].status == "error"
    assert "rate limited" in (report.stores[0].error or "") and 3600.0 not in sleeps
    assert hcp.workspaces[ws]["locked"] and report.exit_code == 1


@pytest.mark.parametrize("status", [500, 502])
def test_5xx_on_listing_keeps_and_reports(hcp: FakeHCP, status: int) -> None:
    ws, _ = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    hcp.fail("GET", r"/organizations/acme/workspaces$", status, times=2)
    _, reaper, _ = build(hcp, make_policy(hcp))
    report = reaper.run()
    assert report.locks == [] and report.stores[0].status == "error" and f"HTTP {status}" in (report.stores[0].error or "")
    assert hcp.workspaces[ws]["locked"]


def test_timeout_on_listing_keeps_and_reports(hcp: FakeHCP) -> None:
    ws, _ = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    hcp.fail("GET", r"/organizations/acme/workspaces$", None, delay=1.6)
    _, reaper, _ = build(hcp, make_policy(hcp))
    report = reaper.run()
    assert report.stores[0].status == "error" and "timed out" in (report.stores[0].error or "")
    assert hcp.workspaces[ws]["locked"] and hcp.calls("POST") == []


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 429, "headers": {"Retry-After": "600"}},
                                   {"status": None, "delay": 1.6}])
def test_run_status_unavailable_means_unknown_and_kept(hcp: FakeHCP, fault: dict[str, Any]) -> None:
    ws, run = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)  # dead if asked, but the answer never comes
    hcp.fail("GET", rf"/api/v2/runs/{run}$", times=3, **fault)
    _, reaper, _ = build(hcp, make_policy(hcp))
    e = reaper.run().locks[0]
    assert e.outcome is Outcome.KEPT and e.liveness == "unknown", e.reasons
    assert hcp.workspaces[ws]["locked"] and hcp.calls("POST") == []


@pytest.mark.parametrize("body,shape", [
    ([{"data": {"attributes": {"status": "errored"}}}], "the response is a list of 1, expected an object"),
    ({"data": [{"attributes": {"status": "errored"}}]}, "its data is a list of 1, expected an object"),
    ({"data": {"attributes": ["errored"]}}, "its data.attributes is a list of 1, expected an object"),
])
def test_run_answer_of_another_shape_is_unknown_and_kept(hcp: FakeHCP, body: Any, shape: str) -> None:
    ws, run = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)  # dead if the answer were readable
    hcp.fail("GET", rf"/api/v2/runs/{run}$", 200, body=body)
    _, reaper, _ = build(hcp, make_policy(hcp))
    e = reaper.run().locks[0]
    assert e.outcome is Outcome.KEPT and e.liveness == "unknown", e.reasons
    reasons = " ".join(e.reasons)
    assert f"unexpected response shape from {hcp.url}/api/v2/runs/{run}: {shape}" in reasons, reasons
    assert "AttributeError" not in reasons
    assert hcp.workspaces[ws]["locked"] and hcp.calls("POST") == []


def test_reread_failure_before_unlock_is_an_error_and_nothing_is_unlocked(hcp: FakeHCP) -> None:
    ws, _ = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    hcp.fail("GET", rf"/api/v2/workspaces/{ws}$", 503, times=2)
    _, reaper, audit = build(hcp, make_policy(hcp))
    e = reaper.run().locks[0]
    assert e.outcome is Outcome.ERROR and "503" in e.reasons[-1]
    assert hcp.workspaces[ws]["locked"] and hcp.calls("POST") == [] and len(audit.audits) == 1
    assert [o["deleted"] for o in audit.outcomes] == [False]  # the record beside it says the delete failed


def test_one_failing_organization_does_not_hide_the_others(hcp: FakeHCP) -> None:
    run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H, org="globex")
    _, reaper, _ = build(hcp, make_policy(hcp, orgs="[initech, globex]"))
    report = reaper.run()
    assert [e.lock_path for e in report.locks] == ["globex/app-prod"]
    assert report.locks[0].outcome is Outcome.REAPED
    assert report.stores[0].status == "error" and "initech" in (report.stores[0].error or "")


def test_bad_token_is_a_store_error(hcp: FakeHCP) -> None:
    run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    pol = make_policy(hcp)
    c = build_components(pol, Deps(env={"HCP_TOKEN": "wrong"}))
    report = Reaper(pol, c.stores, clock=lambda: NOW, liveness=c.liveness, audit=ListAudit()).run()
    assert report.stores[0].status == "error" and "401" in (report.stores[0].error or "")
    missing = build_stores(pol, Deps(env={}))
    report = Reaper(pol, missing, clock=lambda: NOW, audit=ListAudit()).run()
    assert "HCP_TOKEN is not set" in (report.stores[0].error or "")


def test_token_from_secrets_manager(hcp: FakeHCP, aws: None) -> None:
    import boto3

    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="lock-reaper/hcp", SecretString=json.dumps({"token": hcp.token}))
    run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    pol = make_policy(hcp, token="token_secret: lock-reaper/hcp")
    assert pol.stores[0].token_secret == "lock-reaper/hcp"
    store = build_stores(pol, Deps(env={}))[0]
    assert [r.lock_path for r in store.scan()] == ["acme/app-prod"]


def test_user_lock_taken_again_by_the_same_user_is_raced(hcp: FakeHCP) -> None:
    ws = hcp.add_workspace("acme", "net-prod")
    bob = hcp.add_user("bob")
    hcp.lock(ws, "users", bob, at=NOW - 30 * H)
    store, reaper, _ = build(hcp, make_policy(hcp))
    real = store.delete

    def relocked_by_bob(lock: Any) -> Any:  # bob unlocked and locked again: same holder, a new lock
        hcp.lock(ws, "users", bob, reason="second maintenance", at=NOW - timedelta(minutes=1))
        return real(lock)

    store.delete = relocked_by_bob  # type: ignore[method-assign]
    e = reaper.run().locks[0]
    assert e.outcome is Outcome.RACED and "changed since it was read" in e.reasons[-1]
    assert hcp.calls("POST") == [] and hcp.workspaces[ws]["locked"]


# ------------------------------------- a run that ended in the second it took the lock
def test_run_errored_in_the_same_second_as_its_lock_is_the_holder(hcp: FakeHCP) -> None:
    """planning-at and errored-at are both whole seconds: equal stamps, and locked-by names the run."""
    ws, run = run_lock(hcp, "app-prod", "errored", 5 * H, 5 * H)
    store, reaper, _ = build(hcp, make_policy(hcp))
    rec = next(iter(store.scan()))
    assert rec.info is not None and rec.info.Created == NOW - 5 * H
    fact = HCPRunChecker(store.api, store.name, timedelta(minutes=10)).check(rec, NOW)
    assert fact is not None and fact.state is Liveness.DEAD, fact
    e = reaper.run().locks[0]
    assert e.outcome is Outcome.REAPED and e.liveness == "dead", e.reasons
    assert hcp.unlocked == [ws]


def test_run_errored_in_the_second_of_its_millisecond_created_at_is_the_holder(hcp: FakeHCP) -> None:
    """No status timestamp before the error: Created is the run's created-at (milliseconds),
    errored-at has whole seconds and reads as earlier than Created within the same second."""
    ws = hcp.add_workspace("acme", "app-prod")
    at = NOW - 5 * H
    run = hcp.add_run(ws, "errored", {"errored-at": at}, created_at=at + timedelta(milliseconds=400))
    hcp.lock(ws, "runs", run)
    store, _, _ = build(hcp, make_policy(hcp))
    rec = next(iter(store.scan()))
    assert rec.info is not None and rec.info.Created == at + timedelta(milliseconds=400)
    assert rec.raw["age_source"] == "run created-at"
    fact = HCPRunChecker(store.api, store.name, timedelta(minutes=10)).check(rec, NOW)
    assert fact is not None and fact.state is Liveness.DEAD, fact


def test_run_errored_in_the_same_second_within_grace_is_alive(hcp: FakeHCP) -> None:
    run_lock(hcp, "app-prod", "errored", timedelta(minutes=3), timedelta(minutes=3))
    store, _, _ = build(hcp, make_policy(hcp))
    fact = HCPRunChecker(store.api, store.name, timedelta(minutes=10)).check(next(iter(store.scan())), NOW)
    assert fact is not None and fact.state is Liveness.ALIVE and "grace" in fact.reason, fact


def test_run_finished_a_second_before_its_lock_is_not_judged_dead(hcp: FakeHCP) -> None:
    """Inconsistent stamps (finished in an earlier second than the lock's start): unknown, never dead."""
    ws, run = run_lock(hcp, "app-prod", "errored", 5 * H, 5 * H + timedelta(seconds=1))
    store, _, _ = build(hcp, make_policy(hcp))
    fact = HCPRunChecker(store.api, store.name, timedelta(minutes=10)).check(next(iter(store.scan())), NOW)
    assert fact is not None and fact.state is Liveness.UNKNOWN, fact


@pytest.mark.parametrize("stamp", ["yesterday", "", None])
def test_final_run_with_an_unreadable_finish_time_is_unknown(hcp: FakeHCP, stamp: Any) -> None:
    ws, run = run_lock(hcp, "app-prod", "errored", 5 * H, 4 * H)
    hcp.runs[run]["status_timestamps"]["errored-at"] = stamp
    store, _, _ = build(hcp, make_policy(hcp))
    fact = HCPRunChecker(store.api, store.name, timedelta(minutes=10)).check(next(iter(store.scan())), NOW)
    assert fact is not None and fact.state is Liveness.UNKNOWN, fact
