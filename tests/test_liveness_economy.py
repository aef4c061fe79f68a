"""Economy: a realistic fleet costs one call per claimed run, one list per org/project/repo (plus one
list of recently finished runs/jobs per mapped repo or project before it proves a holder dead),
nothing for young locks, and 304s on the next cycle (devtools/liveness_cycle.py)."""

from __future__ import annotations

from devtools.liveness_cycle import realistic_cycle

CI_KINDS = ("github.attempt_jobs", "github.runners.org", "github.runs", "github.finished_runs", "gitlab.job",
            "gitlab.live_jobs", "gitlab.finished_jobs")


def test_realistic_cycle_api_calls(tmp_path) -> None:
    first, second = realistic_cycle(str(tmp_path))["cycles"]
    assert first["locks"] == 200 and first["candidates"] == 40 and first["liveness"]["not_checked"] == 160
    calls = first["api_calls"]["by_kind"]
    # only candidates are asked about: one HeadObject each; the claims table is read once (one scan page)
    assert calls["claims.scan"] == 1 and "claims.query" not in calls and calls["s3.head_object"] == 40
    # each candidate is joined twice from that one scan, in memory: by the claims checker and the lease checker
    assert first["api_calls"]["memo_hits"]["claims.scan"] == 80
    # one jobs list per claimed GitHub run, one runners list for the org (8 locks), one live-jobs
    # list per GitLab project (8 locks, 3 projects), 3 statuses x 1 mapped repo (4 locks)
    assert calls["github.attempt_jobs"] == 16 and calls["github.runners.org"] == 1
    assert calls["gitlab.live_jobs"] == 3 and calls["github.runs"] == 3 and calls["gitlab.job"] == 4
    # before a mapping calls a holder dead, one list of recently finished runs/jobs per repo/project
    # whose live lists proved nothing: the mapped repo (its only run started after the locks), and
    # GitLab projects 102 and 103 (101 has a job running since before its locks: alive, not asked)
    assert calls["github.finished_runs"] == 1 and calls["gitlab.finished_jobs"] == 2
    assert {k: v for k, v in first["api_calls"]["memo_hits"].items() if k != "claims.scan"} == {
        "github.runners.org": 7, "github.runs": 9, "gitlab.live_jobs": 5, "github.finished_runs": 3, "gitlab.finished_jobs": 3}
    ci_first = sum(calls.get(k, 0) for k in CI_KINDS)
    assert ci_first == 30
    assert first["liveness"] == {"alive": 12, "dead": 24, "not_checked": 160, "unknown": 4}
    assert first["outcomes"]["reaped"] == 24

    # 15 minutes later: fewer candidates (the dead are gone), and every unchanged CI answer is a 304
    ci_second = sum(second["api_calls"]["by_kind"].get(k, 0) for k in CI_KINDS)
    assert second["candidates"] == 16 and ci_second == 10
    assert second["api_calls"]["not_modified"] == ci_second
    assert second["outcomes"]["reaped"] == 2  # the two runs that were within the grace period
