"""Evidence ``lease`` (issue 12): the lease ``lock-reaper run`` keeps in its claim, and what the reaper saw of it.

Unit tests run the checker as a run builds it (``reaper.wiring.build_liveness`` from a policy
document) against moto DynamoDB: the claims table and the run-state table that keeps the
reaper's observations. Every rule has a test that shows the live lock it protects: the
answer would be dead (the lock reaped) without it. The real Terraform scenarios of the
issue are at the end of this file: 1 (a wrapped apply at its prompt, kept alive), 2 (the
whole tree SIGKILLed: reaped after the reaper's own lease + grace; also with use_lockfile on
a terraform >= 1.11 on PATH), 3 and 4 (the reaping half: only the wrapper, or only
Terraform, killed), 7 (a stopped heartbeat without containment keeps a live apply) and 8 (a
year-ahead HeartbeatAt is dead only after lease + grace by the reaper's clock). The
wrapper's own half (containment, fencing, the signal shield) is tests/test_lease_wrapper.py.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import yaml

from devtools.locks import create_claims_table, info_json
from reaper.liveness.claims import Claim, ClaimStore
from reaper.liveness.composite import Answer, CompositeChecker, combine
from reaper.liveness.facts import dead as dead_fact
from reaper.liveness.lease_fields import LeaseState
from reaper.liveness.lease_observations import KEY_PREFIX, LeaseObservationStore, Observation, observation_key
from reaper.models import Liveness, LivenessFact, LockInfo, LockRecord
from reaper.policy import ConfigError, parse_policy

ALIVE, DEAD, UNKNOWN = Liveness.ALIVE, Liveness.DEAD, Liveness.UNKNOWN
CLAIMS, RUN_STATE = "lease-claims", "run-state"
WHO = "deploy@build-host-3"
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)  # the lock's Created
LEASE = 60  # seconds
GRACE = timedelta(minutes=2)
SKEW = timedelta(minutes=1)
# A run dates a new sighting after its claims scan (reaper.liveness.lease: the scan's duration on the real
# clock is added to the injected one): waits that start at a run's own sighting are asserted with this slack.
READ = timedelta(seconds=1)


def create_run_state_table(ddb: Any, name: str = RUN_STATE) -> None:
    ddb.create_table(TableName=name, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")


def policy_doc(**leases: Any) -> dict[str, Any]:
    return {"mode": "report", "clock_skew": "1m", "rules": [{"match": "*", "max_age": "1h"}],
            "liveness": {"grace": "2m", "claims": {"table": CLAIMS}, "state_activity": {"enabled": False},
                         **({"leases": leases} if leases else {})}}


class FailingDynamoDB:
    """moto's client; GetItem or PutItem fail on demand as botocore reports it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.fail: dict[str, int] = {}

    def _maybe_fail(self, op: str) -> None:
        if op in self.fail:
            from botocore.exceptions import ClientError

            status = self.fail[op]
            code = {400: "AccessDeniedException", 500: "InternalServerError"}.get(status, "ThrottlingException")
            raise ClientError({"Error": {"Code": code, "Message": "injected"},  # type: ignore[typeddict-item]
                               "ResponseMetadata": {"HTTPStatusCode": status}}, op)

    def get_item(self, **kw: Any) -> Any:
        self._maybe_fail("GetItem")
        return self.client.get_item(**kw)

    def put_item(self, **kw: Any) -> Any:
        self._maybe_fail("PutItem")
        return self.client.put_item(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class World:
    """A claims table with leased claims, a run-state table, and the reaper built from a policy."""

    def __init__(self, doc: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 run_state: bool = True) -> None:
        self.raw = boto3.client("dynamodb", region_name="us-east-1")
        self.ddb = FailingDynamoDB(self.raw)
        create_claims_table(self.raw, CLAIMS)
        if run_state:
            create_run_state_table(self.raw)
        self.claims = ClaimStore(self.raw, CLAIMS)
        self.doc = doc or policy_doc()
        self.env = {"REAPER_LEASE_TABLE": RUN_STATE} if env is None else env
        self.observe = True

    def factory(self, service: str, region: str | None = None) -> Any:
        assert service == "dynamodb", service
        return self.ddb

    def checker(self, observe: bool = True) -> CompositeChecker:
        """A new run's composite checker (nothing memoised)."""
        from reaper.wiring import build_liveness

        policy = parse_policy(yaml.safe_dump(self.doc, sort_keys=False))
        return build_liveness(policy, self.factory, env=self.env, observe=observe)

    def ask(self, lock: LockRecord, at: datetime, observe: bool = True) -> LivenessFact:
        """One reaper run at ``at`` (the reaper's clock) asking about ``lock``."""
        return self.checker(observe).check(lock, at)

    def claim(self, claimed_at: datetime = T0 - timedelta(seconds=5), provider: str = "none",
              **lease: Any) -> Claim:
        fields: dict[str, Any] = {"seconds": LEASE, "heartbeat": 3, "heartbeat_at": T0 + timedelta(seconds=40),
                                  "containment": ("pdeathsig", "subreaper"), "fenced": True, "exclusive": True}
        fields.update(lease)
        c = Claim(who=WHO, claimed_at=claimed_at, provider=provider, lease=LeaseState(**fields),
                  expires_at=int((T0 + timedelta(days=7)).timestamp()))
        self.claims.put(c)
        return c

    def observations(self) -> dict[str, dict[str, Any]]:
        items = self.raw.scan(TableName=RUN_STATE, ConsistentRead=True)["Items"]
        return {i["pk"]["S"]: i for i in items}


def lock(created: datetime = T0, who: str = WHO, path: str = "tfstate/app.tfstate", store: str = "dynamodb:locks") -> LockRecord:
    raw = info_json(path, timedelta(0), created, who=who)
    return LockRecord(store=store, key=path, lock_path=path, token=raw, raw={"LockID": {"S": path}}, info=LockInfo.parse(raw))


def lease_answer(fact: LivenessFact) -> str:
    return " | ".join(e.detail for e in fact.evidence if e.source == "lease")


@pytest.fixture
def world(aws: Any) -> World:
    return World()


# ================================================================ alive
def test_a_fresh_heartbeat_is_alive(world: World) -> None:
    world.claim(heartbeat_at=T0 + timedelta(hours=2))
    fact = world.ask(lock(), T0 + timedelta(hours=2, seconds=30))
    assert fact.state is ALIVE and fact.checkers == ("lease",), fact.reason
    assert "fresher than lease + clock_skew" in fact.reason


def test_a_moving_counter_is_alive_whatever_the_writer_clock_says(world: World) -> None:
    # the writer's clock lags by a day: its HeartbeatAt looks a day old, but the counter moves
    world.claim(heartbeat=3, heartbeat_at=T0 - timedelta(days=1))
    first = world.ask(lock(), T0 + timedelta(hours=2))
    assert first.state is UNKNOWN and first.contested, first.reason
    world.claim(heartbeat=4, heartbeat_at=T0 - timedelta(days=1))  # the same claim, renewed
    second = world.ask(lock(), T0 + timedelta(hours=2, minutes=15))
    assert second.state is ALIVE and "moved from 3 to 4" in second.reason, second.reason


class CompletedJob:
    """A CI checker whose API says the claimed job completed (dead)."""

    name = "claims"

    def __init__(self, fact: LivenessFact) -> None:
        self.fact = fact

    def applies(self, lock: LockRecord) -> bool:
        return True

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        return self.fact


def test_a_fresh_lease_beats_a_ci_api_that_says_completed_even_an_authoritative_one(world: World) -> None:
    """A self-hosted runner's job is over (the CI API says completed), but its Terraform still runs under the wrapper."""
    world.claim(heartbeat_at=T0 + timedelta(hours=2))
    checker = world.checker()
    for authoritative in (False, True):
        ci_dead = dead_fact("claims", "job completed 1h ago").model_copy(update={"authoritative": authoritative})

        composite = CompositeChecker([CompletedJob(ci_dead), *checker.checkers])
        fact = composite.check(lock(), T0 + timedelta(hours=2, seconds=20))
        assert fact.state is ALIVE, (authoritative, fact.reason)
        assert "lease" in fact.reason and set(fact.checkers) == {"claims", "lease"}
        # without the lease's answer, the same CI answer reaps the lock
        assert combine([Answer("claims", ci_dead)]).state is DEAD


def test_an_unwatched_stale_heartbeat_outvotes_a_completed_ci_job(world: World) -> None:
    """First sighting, HeartbeatAt stale by a lagging writer clock: the wrapper may be renewing.
    Without the contested mark, the CI API's "completed" (resting on Created) would reap it."""
    world.claim(heartbeat_at=T0 - timedelta(hours=3))
    lease = world.ask(lock(), T0 + timedelta(hours=2))
    assert lease.state is UNKNOWN and lease.contested and "first sighting" in lease.reason, lease.reason
    ci = dead_fact("claims", "job completed 40m ago")
    assert combine([Answer("claims", ci), Answer("lease", lease)]).state is UNKNOWN


# ================================================================ dead, case 1: the wrapper recorded the exit
def test_a_recorded_exit_is_dead_after_grace_from_the_reapers_own_first_sighting(world: World) -> None:
    # EndedAt is a day old by the writer's clock (it lags): the grace still counts from the reaper's own sighting
    world.claim(ended_at=T0 + timedelta(minutes=1), exit_code=1)
    at = T0 + timedelta(days=1)
    first = world.ask(lock(), at)
    assert first.state is ALIVE and "within the 2m grace period" in first.reason, first.reason
    assert world.ask(lock(), at + GRACE - timedelta(seconds=1)).state is ALIVE
    later = world.ask(lock(), at + GRACE + READ)
    assert later.state is DEAD and "exit 1" in later.reason, later.reason
    [obs] = world.observations().values()
    assert obs["ended_seen_at"]["S"].startswith("2026-11-23T12:00:00")


def test_without_observations_the_exit_grace_is_grace_plus_skew_by_the_writer_clock(aws: Any) -> None:
    w = World(env={}, run_state=False)
    w.claim(ended_at=T0 + timedelta(minutes=1), exit_code=0)
    ended = T0 + timedelta(minutes=1)
    assert w.ask(lock(), ended + GRACE + SKEW - timedelta(seconds=1)).state is ALIVE
    fact = w.ask(lock(), ended + GRACE + SKEW)
    assert fact.state is DEAD and "writer's clock" in fact.reason, fact.reason


def test_a_run_that_ended_before_the_lock_was_created_proves_nothing(world: World) -> None:
    # the wrapped run ended; a later plain terraform by the same Who took this lock
    world.claim(ended_at=T0 - timedelta(seconds=1), exit_code=0, claimed_at=T0 - timedelta(minutes=5))
    world.ask(lock(), T0 + timedelta(hours=1))
    fact = world.ask(lock(), T0 + timedelta(hours=2))
    assert fact.state is UNKNOWN and "before the lock's Created" in fact.reason, fact.reason


def test_an_exit_without_exclusive_proves_nothing(world: World) -> None:
    # another terraform of this user ran on the host outside the wrapped group: it may hold this lock
    world.claim(ended_at=T0 + timedelta(minutes=1), exit_code=0, exclusive=False)
    world.ask(lock(), T0 + timedelta(hours=1))
    fact = world.ask(lock(), T0 + timedelta(hours=2))
    assert fact.state is UNKNOWN and "not exclusive" in fact.reason, fact.reason


# ================================================================ dead, case 2: the reaper watched the counter stop
def stopped(world: World, first: datetime, then: datetime, **lease: Any) -> tuple[LivenessFact, LivenessFact]:
    world.claim(**lease)
    return world.ask(lock(), first), world.ask(lock(), then)


def test_a_counter_unchanged_for_lease_plus_grace_on_the_reapers_clock_is_dead(world: World) -> None:
    first = T0 + timedelta(hours=1)
    a, b = stopped(world, first, first + timedelta(seconds=LEASE) + GRACE - timedelta(seconds=1))
    assert a.state is UNKNOWN and a.contested and "first sighting" in a.reason
    assert b.state is UNKNOWN and b.contested and "unchanged for" in b.reason, b.reason
    c = world.ask(lock(), first + timedelta(seconds=LEASE) + GRACE + READ)
    assert c.state is DEAD and "contained and fenced" in c.reason, c.reason
    key = observation_key(WHO, T0 - timedelta(seconds=5))
    assert set(world.observations()) == {key} and key.startswith(KEY_PREFIX)


def test_a_sighting_is_dated_after_the_runs_claims_scan(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's clock was read before its claims scan, which took 2 minutes: the counter it saw may have
    been renewed during the scan, so the wait starts after it. Without that, the wait would be 2 minutes short."""
    import reaper.liveness.claims as claims_module

    ticks = iter([0.0, 120.0])

    class SlowScan:
        @staticmethod
        def monotonic() -> float:
            return next(ticks, 120.0)

    monkeypatch.setattr(claims_module, "time", SlowScan)
    world.claim()
    first = T0 + timedelta(hours=1)
    world.ask(lock(), first)
    monkeypatch.undo()
    [obs] = world.observations().values()
    assert obs["first_seen_at"]["S"] == "2026-11-22T13:02:00.000000Z"
    full = timedelta(seconds=LEASE) + GRACE
    assert world.ask(lock(), first + full + READ).state is UNKNOWN
    assert world.ask(lock(), first + timedelta(minutes=2) + full + READ).state is DEAD


@pytest.mark.parametrize("missing,lease", [
    ("contained", {"containment": ("subreaper",)}),  # a subreaper waits for orphans, it kills nothing
    ("contained", {"containment": ()}),
    ("fenced", {"fenced": False}),
    ("exclusive", {"exclusive": False}),
    ("a heartbeat time", {"heartbeat_at": None}),
])
def test_a_stopped_heartbeat_without_containment_fencing_or_exclusive_is_unknown(world: World, missing: str,
                                                                                   lease: dict[str, Any]) -> None:
    first = T0 + timedelta(hours=1)
    _, b = stopped(world, first, first + timedelta(days=2), **lease)
    assert b.state is UNKNOWN and not b.contested and missing in b.reason, b.reason


def test_a_lock_created_after_the_heartbeat_stopped_is_not_the_runs(world: World) -> None:
    # last heartbeat 40 s after the claim: the lock came 30 s + lease/3 (20 s) later
    world.claim(heartbeat_at=T0 - timedelta(seconds=51))
    world.ask(lock(), T0 + timedelta(hours=1))
    fact = world.ask(lock(), T0 + timedelta(days=1))
    assert fact.state is UNKNOWN and "not this run's lock" in fact.reason, fact.reason


def test_a_far_future_heartbeat_time_is_dead_only_after_the_reapers_own_lease_plus_grace(world: World) -> None:
    """Issue 12, scenario 8: the writer's clock runs a year ahead; its counter stops."""
    world.claim(heartbeat_at=T0 + timedelta(days=365))
    first = T0 + timedelta(hours=1)
    a = world.ask(lock(), first)
    assert a.state is ALIVE and "in the future" in a.reason, a.reason
    b = world.ask(lock(), first + timedelta(seconds=LEASE) + GRACE - timedelta(seconds=1))
    assert b.state is ALIVE, b.reason
    c = world.ask(lock(), first + timedelta(seconds=LEASE) + GRACE + READ)
    assert c.state is DEAD, c.reason


def test_a_sighting_by_another_reaper_needs_clock_skew_more(world: World) -> None:
    # a CLI run on a laptop saw the counter first; this run's own clock may differ from that one's by clock_skew
    world.claim()
    first = T0 + timedelta(hours=1)
    key = observation_key(WHO, T0 - timedelta(seconds=5))
    LeaseObservationStore(world.raw, RUN_STATE).put(
        key, Observation(counter=3, first_seen_at=first, observer="cli:alice@laptop"), 2000000000, None)
    at = first + timedelta(seconds=LEASE) + GRACE
    assert world.ask(lock(), at).state is UNKNOWN
    assert world.ask(lock(), at + SKEW).state is DEAD


def test_an_exit_first_seen_by_another_reaper_needs_clock_skew_more(world: World) -> None:
    world.claim(ended_at=T0 + timedelta(minutes=1), exit_code=1)
    first = T0 + timedelta(hours=1)
    LeaseObservationStore(world.raw, RUN_STATE).put(
        observation_key(WHO, T0 - timedelta(seconds=5)),
        Observation(counter=3, first_seen_at=first, ended_seen_at=first, observer="cli:alice@laptop"), 2000000000, None)
    assert world.ask(lock(), first + GRACE).state is ALIVE
    fact = world.ask(lock(), first + GRACE + SKEW)
    assert fact.state is DEAD and "cli:alice@laptop" in fact.reason, fact.reason


# ================================================================ unknown: no table, failures, malformed
def test_without_an_observations_table_a_stopped_heartbeat_is_never_dead(aws: Any) -> None:
    w = World(env={}, run_state=False)
    w.claim()
    for at in (T0 + timedelta(hours=1), T0 + timedelta(days=6)):
        fact = w.ask(lock(), at)
        assert fact.state is UNKNOWN and fact.contested, fact.reason
        assert "no observations table is configured" in fact.reason


def test_a_failing_observations_store_is_unknown_never_dead(world: World) -> None:
    world.claim()
    world.ask(lock(), T0 + timedelta(hours=1))
    world.ddb.fail["GetItem"] = 500
    fact = world.ask(lock(), T0 + timedelta(days=1))
    assert fact.state is UNKNOWN and "observations store failed" in fact.reason, fact.reason
    assert "500" in [e.status for e in fact.evidence]
    del world.ddb.fail["GetItem"]
    assert world.ask(lock(), T0 + timedelta(days=1)).state is DEAD  # control: the same world, answering


def test_a_failed_write_keeps_the_answer_and_says_so(world: World) -> None:
    world.claim(heartbeat_at=T0 + timedelta(hours=1))
    world.ddb.fail["PutItem"] = 400
    fact = world.ask(lock(), T0 + timedelta(hours=1))
    assert fact.state is ALIVE
    assert "record-failed" in [e.status for e in fact.evidence]
    assert world.observations() == {}


def test_a_malformed_lease_is_unknown(world: World) -> None:
    c = world.claim()
    item = c.to_item()
    item["Heartbeat"] = {"N": "-4"}
    world.raw.put_item(TableName=CLAIMS, Item=item)
    fact = world.ask(lock(), T0 + timedelta(days=1))
    assert fact.state is UNKNOWN and "lease" in fact.checkers and "malformed" in lease_answer(fact), fact.reason


def test_a_claim_without_a_lease_is_not_the_lease_checkers(world: World) -> None:
    world.claims.put(Claim(who=WHO, claimed_at=T0 - timedelta(seconds=5), provider="github", repo="acme/infra", run_id=5))
    fact = world.checker().check_detailed(lock(), T0 + timedelta(days=1))
    assert "lease" in fact.skipped and [a.checker for a in fact.answers] == ["claims"]


def test_leases_can_be_turned_off(aws: Any) -> None:
    w = World(doc=policy_doc(enabled=False))
    w.claim(heartbeat_at=T0 + timedelta(hours=1))
    assert w.checker().names == ["claims"]


# ================================================================ the observations
def test_every_lock_of_one_claim_is_judged_against_the_runs_first_reading(world: World) -> None:
    world.claim(heartbeat=3, heartbeat_at=T0 - timedelta(days=1))
    world.ask(lock(), T0 + timedelta(hours=1))
    world.claim(heartbeat=4, heartbeat_at=T0 - timedelta(days=1))
    checker = world.checker()
    at = T0 + timedelta(hours=1, minutes=15)
    # two locks of one wrapped run (terragrunt run-all): both see the counter move, though the first wrote 4
    assert checker.check(lock(path="a.tfstate"), at).state is ALIVE
    assert checker.check(lock(path="b.tfstate"), at).state is ALIVE


def test_observations_keep_to_lease_items_and_never_touch_the_run_lease(world: World) -> None:
    world.raw.put_item(TableName=RUN_STATE, Item={"pk": {"S": "run-lease"}, "holder": {"S": "run-1"},
                                                  "expires_at": {"N": "1"}})
    world.claim()
    world.ask(lock(), T0 + timedelta(hours=1))
    items = world.observations()
    assert items["run-lease"] == {"pk": {"S": "run-lease"}, "holder": {"S": "run-1"}, "expires_at": {"N": "1"}}
    [key] = [k for k in items if k != "run-lease"]
    obs = items[key]
    assert key == f"lease#{WHO}#2026-11-22T11:59:55.000000Z"
    assert obs["counter"] == {"N": "3"} and obs["first_seen_at"]["S"].startswith("2026-11-22T13:00:00.")
    assert int(obs["expires_at"]["N"]) > (T0 + timedelta(days=7)).timestamp(), "outlives the claim"
    with pytest.raises(ValueError):
        LeaseObservationStore(world.raw, RUN_STATE).get("run-lease")


def test_a_second_run_never_moves_a_first_sighting(world: World) -> None:
    store = LeaseObservationStore(world.raw, RUN_STATE)
    key = observation_key(WHO, T0)
    seen = Observation(counter=3, first_seen_at=T0)
    assert store.put(key, seen, 2000000000, None) is True
    assert store.put(key, Observation(counter=3, first_seen_at=T0 + timedelta(hours=1)), 2000000000, None) is False
    moved = Observation(counter=4, first_seen_at=T0 + timedelta(hours=1))
    assert store.put(key, moved, 2000000000, Observation(counter=3, first_seen_at=T0 - timedelta(hours=1))) is False
    assert store.get(key) == seen
    assert store.put(key, moved, 2000000000, seen) is True and store.get(key) == moved


def test_the_table_named_by_the_policy_beats_the_environment(aws: Any) -> None:
    w = World(doc=policy_doc(observations_table="my-observations"), env={"REAPER_LEASE_TABLE": RUN_STATE})
    create_run_state_table(w.raw, "my-observations")
    w.claim()
    w.ask(lock(), T0 + timedelta(hours=1))
    assert w.observations() == {}
    assert len(w.raw.scan(TableName="my-observations")["Items"]) == 1


def test_one_claims_scan_per_run_answers_the_claims_and_the_lease_checkers(world: World) -> None:
    from reaper.http.client import ApiCounter
    from reaper.wiring import build_liveness

    world.claim(heartbeat_at=T0 + timedelta(hours=1))
    counter = ApiCounter()
    policy = parse_policy(yaml.safe_dump(world.doc))
    checker = build_liveness(policy, world.factory, env=world.env, counter=counter)
    for path in ("a", "b", "c"):
        assert checker.check(lock(path=path), T0 + timedelta(hours=1)).state is ALIVE
    calls = counter.to_dict()["by_kind"]
    assert calls.get("claims.scan") == 1, calls


# ================================================================ policy
@pytest.mark.parametrize("leases,field", [
    ({"observations_table": "x"}, "observations_table"),
    ({"enabled": "maybe"}, "enabled"),
    ({"table": "run-state"}, "table"),
])
def test_a_bad_leases_section_names_its_field_and_line(leases: dict[str, Any], field: str) -> None:
    text = yaml.safe_dump(policy_doc(**leases), sort_keys=False)
    with pytest.raises(ConfigError) as err:
        parse_policy(text)
    said = "\n".join(str(p) for p in err.value.problems)
    assert f"liveness.leases.{field}" in said, said
    lines = text.splitlines()
    start = next(i for i, t in enumerate(lines) if t.strip() == "leases:")
    line = next(i for i, t in enumerate(lines, 1) if i > start and t.strip().startswith(f"{field}:"))
    assert f"line {line}" in said, said


# ================================================================ explain
def test_explain_shows_the_lease_and_the_observations_and_records_nothing(world: World, tmp_path: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from reaper.commands.explain import explain_lock, render

    world.claim(heartbeat=7, ended_at=T0 + timedelta(minutes=3), exit_code=2)
    world.ask(lock(), T0 + timedelta(hours=1))  # a run saw it
    before = world.observations()
    policy = parse_policy(yaml.safe_dump(world.doc))
    doc = explain_lock(lock(), policy, world.checker(observe=False), T0 + timedelta(hours=1, minutes=1))
    assert world.observations() == before, "explain reads the observations, never writes them"
    lease = doc["lease"]
    assert lease["lease"] == {"seconds": LEASE, "heartbeat": 7, "heartbeat_at": "2026-11-22T12:00:40+00:00",
                              "containment": ["pdeathsig", "subreaper"], "contained": True, "fenced": True,
                              "exclusive": True, "ended_at": "2026-11-22T12:03:00+00:00", "exit_code": 2}
    assert lease["observations"]["counter"] == 7
    assert lease["observations"]["ended_seen_at"].startswith("2026-11-22T13:00:00")
    text = render(doc)
    assert "lease      1m, heartbeat 7" in text and "exit 2" in text
    assert "seen       counter 7 first seen 2026-11-22T13:00:00" in text, text
    json.dumps(doc)  # --json prints this document


# ================================================================ real Terraform, wrapped (issue 12's scenarios)
# Terraform 1.0.3 from the kit, an S3 backend with a DynamoDB lock table on moto_server, the wrapper
# (``python -m reaper run``) with a 6 s lease, and the production wiring (``build_reaper``) in enforce
# mode with a 3 s grace. The reaper's clock is injected: every run is past max_age by its clock, while
# the wrapper's heartbeats and the lock's Created come from the real one (the same host clock).
TF_LOCKS, TF_BUCKET, TF_KEY = "tf-locks", "tf-lease-state", "app/terraform.tfstate"
TF_CLAIMS, TF_RUN_STATE = "tf-claims", "tf-run-state"
TF_LEASE, TF_GRACE = 6, timedelta(seconds=3)

TF_POLICY = """\
mode: enforce
max_deletes_per_run: 5
clock_skew: 1s
stores:
  - type: dynamodb
    table: {locks}
rules:
  - name: everything
    match: "*"
    max_age: 1h
audit:
  local_dir: {audit}
alerts:
  metrics: {{enabled: false}}
liveness:
  grace: 3s
  claims:
    table: {claims}
  state_activity:
    enabled: false
"""


class TerraformWorld:
    """A Terraform working directory on moto_server, its lock table, the claims and run-state tables."""

    def __init__(self, binary: Any, tmp_path: Any, endpoint: str, lockfile: bool = False) -> None:
        from devtools.locks import create_lock_table
        from devtools.terraform import TerraformWorkdir

        self.endpoint = endpoint
        self.lockfile = lockfile
        self.ddb = boto3.client("dynamodb", region_name="us-east-1")
        self.s3 = boto3.client("s3", region_name="us-east-1")
        if not lockfile:
            create_lock_table(self.ddb, TF_LOCKS)
        create_claims_table(self.ddb, TF_CLAIMS)
        create_run_state_table(self.ddb, TF_RUN_STATE)
        self.s3.create_bucket(Bucket=TF_BUCKET)
        self.backend = (LockfileBackend if lockfile else S3Backend)(endpoint=endpoint, bucket=TF_BUCKET, key=TF_KEY,
                                                                     table=TF_LOCKS)
        self.tf = TerraformWorkdir(binary, tmp_path / "tf", self.backend)
        self.lock_id = self.backend.lock_id()
        self.audit = tmp_path / "audit"
        self.policy = tmp_path / "policy.yaml"
        text = TF_POLICY.format(locks=TF_LOCKS, audit=self.audit, claims=TF_CLAIMS)
        if lockfile:
            text = text.replace(f"  - type: dynamodb\n    table: {TF_LOCKS}\n", f"  - type: s3\n    bucket: {TF_BUCKET}\n")
        self.policy.write_text(text, encoding="utf-8")
        self.tf.init()
        self.tf.apply("v1")
        self.wrappers: list[Any] = []

    def lock_item(self) -> Any:
        """The lock as its store holds it: the DynamoDB item, or the lock file's content (None: no lock)."""
        if self.lockfile:
            try:
                return self.s3.get_object(Bucket=TF_BUCKET, Key=TF_KEY + ".tflock")["Body"].read().decode()
            except self.s3.exceptions.NoSuchKey:
                return None
        return self.ddb.get_item(TableName=TF_LOCKS, Key={"LockID": {"S": self.lock_id}}, ConsistentRead=True).get("Item")

    def created(self) -> datetime:
        from reaper.models import parse_created

        item = self.lock_item()
        assert item is not None
        info = item if self.lockfile else item["Info"]["S"]
        return parse_created(json.loads(info)["Created"])

    def claim(self) -> Claim:
        items = self.ddb.scan(TableName=TF_CLAIMS, ConsistentRead=True)["Items"]
        assert len(items) == 1, items
        return Claim.from_item(items[0])

    def reap(self, at: datetime) -> Any:
        """One enforce-mode run of the production wiring at ``at`` by the reaper's clock (the Lambda's env)."""
        from reaper.policy import load_policy
        from reaper.wiring import Deps, build_reaper

        deps = Deps(clock=lambda: at, env={"REAPER_LEASE_TABLE": TF_RUN_STATE})
        report = build_reaper(load_policy(self.policy, env={}), deps).run(mode="enforce")
        assert report.summary.store_errors == 0, report.stores
        [entry] = [e for e in report.locks if e.lock_path == self.lock_id] or [None]
        return entry

    def wrapped_apply(self, lease: int = TF_LEASE) -> Any:
        """``lock-reaper run --lease Ns -- terraform apply`` with a change, waiting at its prompt with the lock."""
        import subprocess
        import sys

        from terraform_kit import ROOT

        from devtools.terraform import APPROVAL_PROMPT

        env = {**self.tf.env(), "AWS_ENDPOINT_URL": self.endpoint, "PYTHONPATH": str(ROOT)}
        w = Wrapper(subprocess.Popen(
            [sys.executable, "-m", "reaper", "run", "--json", "--lease", f"{lease}s", "--table", TF_CLAIMS, "--",
             self.tf.binary, "apply", "-no-color", "-var", f"{self.tf.variable}=v2"],
            cwd=self.tf.dir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True))
        self.wrappers.append(w)
        assert w.until(lambda: self.lock_item() is not None and APPROVAL_PROMPT in w.output, 60), w.output + w.stderr
        start = w.event("start")
        assert start and start["leased"] and start["provider"] == "none", w.stderr
        w.group = int(start["group"])
        return w

    def cleanup(self) -> None:
        for w in self.wrappers:
            w.kill_all()


class S3Backend:
    """devtools.terraform.S3Backend (imported when a Terraform test runs)."""

    def __new__(cls, **kw: Any) -> Any:
        from devtools.terraform import S3Backend as Backend

        return Backend(**kw)


class LockfileBackend:
    """The S3 backend with ``use_lockfile = true`` and no DynamoDB table (Terraform >= 1.11)."""

    def __new__(cls, **kw: Any) -> Any:
        from devtools.terraform import S3Backend as Backend

        class Lockfile(Backend):  # type: ignore[misc, valid-type]
            def hcl(self, version: Any) -> str:
                out = []
                for line in super().hcl(version).splitlines():
                    if line.strip().startswith(("dynamodb_table", "dynamodb =")):
                        continue
                    out.append(line)
                    if line.strip().startswith("bucket ="):
                        out.append("    use_lockfile = true")
                return "\n".join(out) + "\n"

        return Lockfile(**kw)


class Wrapper:
    """The wrapper's process; stdout (Terraform's) and stderr (the wrapper's JSON lines) read in threads."""

    def __init__(self, proc: Any) -> None:
        import threading

        self.proc = proc
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.group = 0
        for stream, sink in ((proc.stdout, self.out), (proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: [k.append(c) for c in iter(lambda: s.read1(4096), b"")],
                             daemon=True).start()

    @property
    def output(self) -> str:
        return b"".join(self.out).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return b"".join(self.err).decode("utf-8", "replace")

    def event(self, name: str) -> dict[str, Any] | None:
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                if doc.get("event") == name:
                    return doc
        return None

    def until(self, pred: Any, timeout: float) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            if self.proc.poll() is not None:
                return bool(pred())
            time.sleep(0.05)
        return bool(pred())

    def terraform_pids(self) -> list[int]:
        from reaper.wrapper import host

        return [p for p in host.group_members(self.group) if p != self.group]  # the guard leads the group

    def kill_all(self) -> None:
        import os
        import signal

        for pg in (self.proc.pid, self.group):
            try:
                if pg:
                    os.killpg(pg, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except Exception:
            pass


def terraform_world(moto_env: Any, tmp_path: Any, which: str) -> Any:
    from terraform_kit import require_terraform

    from reaper.wrapper import host

    if not host.LINUX:
        pytest.skip("the wrapper's containment and these scenarios drive Linux processes")
    world = TerraformWorld(require_terraform(which), tmp_path, moto_env.endpoint, lockfile=which == "path")
    yield world
    world.cleanup()


@pytest.fixture
def tfw(moto_env: Any, tmp_path: Any) -> Any:
    """Terraform 1.0.3 (the kit's) with a DynamoDB lock table."""
    yield from terraform_world(moto_env, tmp_path, "1.0.3")


@pytest.fixture
def tfw_lockfile(moto_env: Any, tmp_path: Any) -> Any:
    """A terraform >= 1.11 on PATH with ``use_lockfile`` (an S3 lock file; skipped without one)."""
    yield from terraform_world(moto_env, tmp_path, "path")


def outcome(entry: Any) -> tuple[str, str]:
    return entry.outcome.value, entry.liveness


@pytest.mark.terraform
@pytest.mark.e2e
def test_scenario_1_wrapped_terraform_at_its_prompt_is_kept_alive(tfw: TerraformWorld) -> None:
    w = tfw.wrapped_apply()
    lock = tfw.lock_item()
    at = tfw.created() + timedelta(hours=1, minutes=1)
    first = tfw.reap(at)
    assert outcome(first) == ("kept", "unknown") and any("first sighting" in r for r in first.reasons), first.reasons
    seen = tfw.claim().lease
    assert seen is not None and seen.contained and seen.fenced, seen
    assert seen.exclusive, "another terraform of this user ran on this host during the test"
    assert w.until(lambda: tfw.claim().lease.heartbeat > seen.heartbeat, TF_LEASE), "the wrapper renews every lease/3"
    # The reaper's next run, by its clock 10 minutes later (and far past the writer's HeartbeatAt): the counter moved.
    second = tfw.reap(at + timedelta(minutes=10))
    assert outcome(second) == ("kept", "alive"), second.reasons
    assert any("moved from" in r for r in second.reasons), second.reasons
    assert tfw.lock_item() == lock
    # The holder finishes its own work: the apply completes, releases its lock, and the exit is recorded.
    w.proc.stdin.write(b"yes\n")
    w.proc.stdin.close()
    assert w.proc.wait(timeout=60) == 0, w.output + w.stderr
    assert "Apply complete!" in w.output and tfw.lock_item() is None
    done = tfw.claim().lease
    assert done is not None and done.exit_code == 0 and done.ended_at is not None


@pytest.mark.terraform
@pytest.mark.e2e
@pytest.mark.parametrize("killed", ["everything", "wrapper", "terraform"])
def test_scenarios_2_3_4_a_killed_wrapped_apply_is_reaped_on_the_lease(tfw: TerraformWorld, killed: str) -> None:
    """2: the whole tree SIGKILLed, as a CI cancel does; 3: only the wrapper (its guard kills Terraform's group);
    4: only Terraform's processes (the wrapper records the exit). 2 and 3 are reaped once the reaper itself has
    watched the counter stand still for lease + grace; 4 after grace from the reaper's sighting of the exit,
    without waiting for the lease to run out."""
    killed_and_reaped(tfw, killed)


@pytest.mark.terraform
@pytest.mark.e2e
def test_scenario_2_with_use_lockfile(tfw_lockfile: TerraformWorld) -> None:
    """Scenario 2 with Terraform's S3 lock file (``use_lockfile``): the reaper deletes the .tflock."""
    killed_and_reaped(tfw_lockfile, "everything")


def killed_and_reaped(tfw: TerraformWorld, killed: str) -> None:
    import os
    import signal

    w = tfw.wrapped_apply()
    pids = w.terraform_pids()
    assert pids, "Terraform runs in the guard's group (1.0.3: two processes)"
    if killed == "everything":
        for pg in (w.proc.pid, w.group):
            os.killpg(pg, signal.SIGKILL)
    elif killed == "wrapper":
        os.kill(w.proc.pid, signal.SIGKILL)
    else:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    w.proc.wait(timeout=30)
    assert w.until(lambda: not w.terraform_pids(), 10), f"left running: {w.terraform_pids()}"
    assert tfw.lock_item() is not None, "a killed Terraform leaves its lock"
    plan = tfw.tf.plan("v2")
    assert plan.returncode != 0 and "Error acquiring the state lock" in plan.stdout, plan.stdout
    lease = tfw.claim().lease
    assert lease is not None and (lease.ended_at is not None) == (killed == "terraform"), lease
    assert lease.contained and lease.fenced, lease
    assert lease.exclusive, "another terraform of this user ran on this host during the test: the lease proves nothing"

    at = tfw.created() + timedelta(hours=1, minutes=1)
    first = tfw.reap(at)  # the first run sees the counter (or the exit)
    if killed == "terraform":
        assert outcome(first) == ("kept", "alive") and any("grace" in r for r in first.reasons), first.reasons
        assert TF_GRACE < timedelta(seconds=TF_LEASE)
        then = at + TF_GRACE
        before = then - timedelta(seconds=1)
    else:
        assert outcome(first) == ("kept", "unknown") and any("first sighting" in r for r in first.reasons), first.reasons
        then = at + timedelta(seconds=TF_LEASE) + TF_GRACE
        before = then - timedelta(seconds=1)
    assert outcome(tfw.reap(before))[0] == "kept"
    reaped = tfw.reap(then + READ)
    assert outcome(reaped) == ("reaped", "dead"), reaped.reasons
    assert reaped.store == (f"s3:{TF_BUCKET}" if tfw.lockfile else f"dynamodb:{TF_LOCKS}")
    assert any(("exit 137" if killed == "terraform" else "contained and fenced") in r for r in reaped.reasons), reaped.reasons
    assert tfw.lock_item() is None
    assert tfw.tf.plan("v2", lock_timeout="0s").returncode == 0, "Terraform works again"


@pytest.mark.terraform
@pytest.mark.e2e
def test_scenario_7_a_heartbeat_that_stops_without_containment_is_unknown_and_kept(tfw: TerraformWorld) -> None:
    """A wrapper without containment (written here as its claim item) died; its Terraform still runs, holding the lock."""
    from reaper.liveness.identity import terraform_who

    now = datetime.now(UTC)
    who = terraform_who(tfw.tf.env())
    ClaimStore(tfw.ddb, TF_CLAIMS).put(Claim(
        who=who, claimed_at=now, provider="none", expires_at=int((now + timedelta(days=7)).timestamp()),
        lease=LeaseState(seconds=60, heartbeat=2, heartbeat_at=now, containment=(), fenced=False, exclusive=True)))
    with tfw.tf.hold_lock("v2", tfw.ddb) as held:
        assert held.info["Who"] == who
        at = tfw.created() + timedelta(hours=1, minutes=1)
        for later in (timedelta(0), timedelta(hours=6)):  # the counter stands still, for hours by the reaper's clock
            e = tfw.reap(at + later)
            assert outcome(e) == ("kept", "unknown"), e.reasons
        assert any("not contained or fenced" in r for r in e.reasons), e.reasons
        assert held.alive() and tfw.lock_item() is not None
        assert held.answer("yes") == 0, held.output
    assert tfw.lock_item() is None


@pytest.mark.terraform
@pytest.mark.e2e
def test_scenario_8_a_far_future_heartbeat_is_dead_only_after_the_reapers_own_lease_plus_grace(
        tfw: TerraformWorld) -> None:
    """The writer's clock runs a year ahead; its counter stops (its apply was killed)."""
    from reaper.liveness.identity import terraform_who

    now = datetime.now(UTC)
    who = terraform_who(tfw.tf.env())
    ClaimStore(tfw.ddb, TF_CLAIMS).put(Claim(
        who=who, claimed_at=now, provider="none", expires_at=int((now + timedelta(days=7)).timestamp()),
        lease=LeaseState(seconds=TF_LEASE, heartbeat=4, heartbeat_at=now + timedelta(days=365),
                         containment=("pdeathsig", "subreaper"), fenced=True, exclusive=True)))
    held = tfw.tf.hold_lock("v2", tfw.ddb)
    assert held.kill() == -9 and held.survivors == []
    at = tfw.created() + timedelta(hours=1, minutes=1)
    e = tfw.reap(at)
    assert outcome(e) == ("kept", "alive") and any("in the future" in r for r in e.reasons), e.reasons
    lease_and_grace = timedelta(seconds=TF_LEASE) + TF_GRACE
    assert outcome(tfw.reap(at + lease_and_grace - timedelta(seconds=1))) == ("kept", "alive")
    e = tfw.reap(at + lease_and_grace + READ)
    assert outcome(e) == ("reaped", "dead"), e.reasons
    assert tfw.tf.plan("v2", lock_timeout="0s").returncode == 0


def test_the_explain_command_shows_the_lease_and_records_no_sighting_a_scan_does(
        aws: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from devtools.locks import create_lock_table, lock_item
    from reaper.cli import main

    w = World()
    create_lock_table(w.raw, "locks")
    now = datetime.now(UTC)
    created = now - timedelta(hours=2)
    raw = info_json("tfstate/app.tfstate", timedelta(0), created, who=WHO)
    w.raw.put_item(TableName="locks", Item=lock_item("tfstate/app.tfstate", raw))
    w.claims.put(Claim(who=WHO, claimed_at=created - timedelta(seconds=5), provider="none",
                       lease=LeaseState(seconds=LEASE, heartbeat=5, heartbeat_at=created + timedelta(seconds=20),
                                        containment=("pdeathsig",), fenced=True, exclusive=True)))
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({**w.doc, "stores": [{"type": "dynamodb", "table": "locks"}]}), encoding="utf-8")
    monkeypatch.setenv("REAPER_LEASE_TABLE", RUN_STATE)

    def explain() -> dict[str, Any]:
        out, err = io.StringIO(), io.StringIO()
        assert main(["explain", "tfstate/app.tfstate", "--config", str(policy), "--json"], out=out, err=err) == 0, \
            err.getvalue()
        return json.loads(out.getvalue())

    doc = explain()
    assert doc["answers"][0]["checker"] == "lease" and "first sighting" in doc["answers"][0]["reason"]
    assert doc["lease"]["lease"]["heartbeat"] == 5 and doc["lease"]["observations"]["counter"] is None
    assert w.observations() == {}, "explain records nothing"
    out, err = io.StringIO(), io.StringIO()
    assert main(["scan", "--config", str(policy), "--quiet"], out=out, err=err) in (0, 1), err.getvalue()
    assert len(w.observations()) == 1, "a scan is a run: it records its sighting"
    assert explain()["lease"]["observations"]["counter"] == 5
