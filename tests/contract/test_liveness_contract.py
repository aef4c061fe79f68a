"""One contract for every kind of liveness evidence (see worlds.py).

Each kind runs in a small world of fakes (GitHub/GitLab REST, HCP Terraform, moto
DynamoDB and S3). The composite checker is built from a policy document through
the public builder, exactly as a run builds it, and asked through the
``LivenessChecker`` port. Every case asserts the exact state, that the kind's own
checker answered (``fact.checkers``), and that every answer carries evidence
naming its source.

The contract, for every kind:

- a running holder is ALIVE; one that finished long ago (well after Created +
  clock_skew, past the grace period) is DEAD: the kind's proof of death;
- no evidence either way is UNKNOWN;
- a holder that finished within the grace period is never DEAD (alive for claims
  and HCP runs, a contested unknown for repo/project mappings);
- a claimed job that ended within clock_skew of Created is UNKNOWN; a mapping or
  an HCP run named by locked-by is still DEAD then (its holder is not joined by time);
- an API failure (HTTP 500, 403 with Retry-After, 429 with Retry-After) is
  UNKNOWN, never DEAD, where the same world without the failure proves otherwise;
- a list cut short (more items than max_pages x per_page) is UNKNOWN, never DEAD;
- a lock the evidence says nothing about is not asked (the composite answers
  UNKNOWN with no checker);
- state activity never answers DEAD;
- a lease (``lock-reaper run``): dead on a recorded exit after grace, or on a counter the
  reaper itself watched stand still for lease + grace (contained and fenced), and only then
  for a heartbeat time in the future; a fresh lease outvotes a CI API that says "completed".

Cases that do not apply to a kind skip with "N/A" and the reason.
"""

from __future__ import annotations

import re

import pytest

from reaper.models import Liveness, LivenessFact
from reaper.ports import LivenessChecker

from .worlds import NOW, UNKNOWN, WORLDS, ClaimsGitHub, GitHubRunners, GitLabRunnerHostname, Lease, StateActivity, World

KINDS = list(WORLDS)
CASES = ["alive", "dead", "unknown", "within_grace", "within_skew", "truncated", "out_of_scope"]
ERRORS = {
    "http-500": (500, {}),
    "rate-limit-403-retry-after": (403, {"Retry-After": "60", "X-RateLimit-Remaining": "4000"}),
    "rate-limit-429-retry-after": (429, {"Retry-After": "60"}),
}


def world(kind: str, request: pytest.FixtureRequest, **kw: object) -> World:
    return WORLDS[kind](request, **kw)  # type: ignore[arg-type]


def expected(w: World, case: str) -> Liveness:
    want = w.expect[case]
    if not isinstance(want, Liveness):  # (Liveness is a str enum: test it first)
        pytest.skip(f"N/A for {w.kind}: {want}")
    return want


def assert_answered(w: World, fact: LivenessFact) -> None:
    """The kind's checker answered, alone, and every piece of evidence names its source."""
    assert fact.checkers == (w.checker,), (fact.checkers, fact.reason)
    assert fact.reason
    assert fact.evidence, f"{w.kind}: an answer without evidence: {fact.reason}"
    for e in fact.evidence:
        assert e.source and e.detail, e
    assert {e.source for e in fact.evidence} <= w.sources, [e.source for e in fact.evidence]


def test_every_kind_has_a_world() -> None:
    assert set(KINDS) == {"claims-github", "claims-gitlab", "github-runners", "github-repos", "gitlab-project-mapping",
                          "gitlab-runner-hostname", "state-activity", "hcp-runs", "lease"}
    for w in WORLDS.values():
        assert set(w.expect) == set(CASES), w.kind


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_arranged_holder(kind: str, case: str, request: pytest.FixtureRequest) -> None:
    w = world(kind, request, short_pages=case == "truncated")
    want = expected(w, case)
    lock = getattr(w, case)()
    checker = w.built().liveness
    assert isinstance(checker, LivenessChecker)
    fact = w.ask(lock)
    assert fact.state is want, f"{kind}/{case}: {fact.state.value}: {fact.reason}"
    if case == "out_of_scope":
        assert fact.checkers == (), f"{kind}: asked about a lock it says nothing about: {fact.reason}"
        assert fact.evidence == ()
    else:
        assert_answered(w, fact)
    if case == "truncated":
        said = [f"{e.status} {e.detail}" for e in fact.evidence]
        assert any(re.search(r"incomplete|page limit", x) for x in said), said


@pytest.mark.parametrize("error", list(ERRORS))
@pytest.mark.parametrize("kind", KINDS)
def test_an_api_failure_is_unknown_never_dead(kind: str, error: str, request: pytest.FixtureRequest) -> None:
    status, headers = ERRORS[error]
    w = world(kind, request)
    lock = getattr(w, w.error_base)()
    control = w.ask(lock)  # the same world, answering
    assert control.state is w.expect[w.error_base], control.reason
    assert control.state is not UNKNOWN

    w.rebuild()  # a new run: nothing memoised
    w.fail(status, headers)
    fact = w.ask(lock)
    assert fact.state is UNKNOWN, f"{kind}/{error}: {fact.state.value}: {fact.reason}"
    assert_answered(w, fact)
    assert any(e.status == str(status) for e in fact.evidence), [(e.source, e.status, e.detail) for e in fact.evidence]
    assert w.sleeps == [], "a Retry-After longer than max_retry_wait is not waited for"


# ---------------------------------------------------------------- state activity's own contract
@pytest.mark.parametrize("case", ["alive", "dead", "unknown", "out_of_scope"])
def test_state_activity_never_answers_dead(case: str, request: pytest.FixtureRequest) -> None:
    w = StateActivity(request)
    fact = w.ask(getattr(w, case)())
    assert fact.state is not Liveness.DEAD
    assert fact.state is w.expect[case], fact.reason


def test_state_activity_written_before_the_lock_proves_nothing(request: pytest.FixtureRequest) -> None:
    from datetime import timedelta

    w = StateActivity(request)
    w.write_state()
    lock = w.lock(age=-timedelta(seconds=2))  # the last write came before the lock was taken
    fact = w.ask(lock)
    assert fact.state is UNKNOWN and "before the lock was created" in fact.reason, fact.reason
    assert_answered(w, fact)


# ---------------------------------------------------------------- runner scopes (issue 9 semantics)
@pytest.mark.parametrize("who,state,status", [
    ("runner@ci-99", Liveness.DEAD, "gone"),        # missing from org acme, which registers every ci-* runner
    ("runner@solo-1", Liveness.UNKNOWN, "not-found"),  # missing from repo acme/solo, which may not hold them all
])
def test_a_runner_missing_from_a_scope_is_gone_only_where_absent_means_gone(
        who: str, state: Liveness, status: str, request: pytest.FixtureRequest) -> None:
    from .worlds import terraform_lock

    w = GitHubRunners(request)
    w.runner("ci-other")
    w.runner("solo-other", scope="repo:acme/solo")
    fact = w.ask(terraform_lock(who))
    assert fact.state is state, fact.reason
    assert_answered(w, fact)
    assert [e.status for e in fact.evidence] == [status]


@pytest.mark.parametrize("user", ["alice", "deploy"])
def test_runner_scopes_speak_only_for_their_users(user: str, request: pytest.FixtureRequest) -> None:
    from .worlds import terraform_lock

    w = GitHubRunners(request)
    w.runner("ci-07")  # idle: the runner's own lock would be dead
    assert w.ask(terraform_lock("runner@ci-07")).state is Liveness.DEAD  # control
    w.rebuild()
    fact = w.ask(terraform_lock(f"{user}@ci-07"))
    assert fact.state is UNKNOWN and fact.checkers == (), fact.reason


# ---------------------------------------------------------------- GitLab runner hostnames need runner_hosts
@pytest.mark.parametrize("case", ["alive", "dead"])
def test_gitlab_runner_hostnames_are_read_only_with_runner_hosts(case: str, request: pytest.FixtureRequest) -> None:
    w = GitLabRunnerHostname(request, runner_hosts=False)
    fact = w.ask(getattr(w, case)())
    assert fact.state is UNKNOWN and fact.checkers == (), fact.reason


# ---------------------------------------------------------------- leases (lock-reaper run)
def test_lease_dead_once_the_reaper_watched_the_counter_stand_still_for_lease_plus_grace(
        request: pytest.FixtureRequest) -> None:
    from datetime import timedelta

    w = Lease(request)
    lock = w.stopped()  # first seen an hour ago by the reaper's clock; contained and fenced
    fact = w.ask(lock)
    assert fact.state is Liveness.DEAD and "unchanged for 59m" in fact.reason, fact.reason  # 1h less the scan
    assert_answered(w, fact)
    w.rebuild()
    w.now = NOW - timedelta(hours=1) + timedelta(seconds=w.seconds) + timedelta(minutes=5) - timedelta(seconds=1)
    early = w.ask(lock)  # one second short of lease + grace
    assert early.state is UNKNOWN and early.contested, early.reason


def test_lease_skewed_future_heartbeat_is_dead_only_after_the_reapers_own_lease_plus_grace(
        request: pytest.FixtureRequest) -> None:
    from datetime import timedelta

    w = Lease(request)
    lock = w.leased(heartbeat_at=NOW + timedelta(days=30))  # the writer's clock runs a month ahead
    first = w.ask(lock)
    assert first.state is Liveness.ALIVE and "in the future" in first.reason, first.reason
    lease_and_grace = timedelta(seconds=w.seconds, minutes=5)
    read = timedelta(seconds=1)  # a run dates its sighting after its claims scan (real time added to the world's)
    for later, state in ((lease_and_grace - timedelta(seconds=1), Liveness.ALIVE), (lease_and_grace + read, Liveness.DEAD)):
        w.rebuild()
        w.now = NOW + later
        fact = w.ask(lock)
        assert fact.state is state, (later, fact.reason)
        assert_answered(w, fact)


def test_a_fresh_lease_outvotes_a_ci_api_that_says_completed(request: pytest.FixtureRequest) -> None:
    """A self-hosted runner's job is over, its Terraform still runs under the wrapper (issue 12)."""
    from datetime import timedelta

    from reaper.liveness.lease_fields import LeaseState

    from .worlds import created, terraform_lock

    w = ClaimsGitHub(request)
    lock = terraform_lock(f"runner@{w.runner}")
    lease = LeaseState(seconds=120, heartbeat=40, heartbeat_at=NOW - timedelta(seconds=20),
                       containment=("pdeathsig",), fenced=True, exclusive=True)
    w.put_claim(lock, claimed_at=created(lock) - timedelta(seconds=40), provider="github", api_url=w.fake.github_api,
                repo=w.repo, run_id=w.run_id, run_attempt=1, runner_name=w.runner, lease=lease)
    w.job(lock, 5001, "completed", created(lock) + timedelta(minutes=15))
    fact = w.ask(lock)
    assert fact.state is Liveness.ALIVE, fact.reason
    assert set(fact.checkers) == {"claims", "lease"}
    assert any(e.source == "github-claim" and "completed" in e.detail for e in fact.evidence), fact.evidence
