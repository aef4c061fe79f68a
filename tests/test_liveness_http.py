"""The CI API client against the local fake: pagination, ETags, rate limits, faults, timeouts."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from devtools.fake_ci import FakeCI, rate_limited
from reaper.liveness.github import GITHUB_HEADERS
from reaper.http.client import (ApiCounter, ApiError, EtagCache, HttpLimits, JsonApi, RateLimited, UnexpectedShape, new_pool,
                                next_link)

GH_TOKEN = "ghp_fakeTokenForTests0000000000000000"
GL_TOKEN = "glpat-fakeTokenForTests00"
T0 = datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def fake():
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN) as f:
        yield f


def _limits(kw: dict) -> dict:
    """``kw`` with its HttpLimits fields (max_pages=2, ...) gathered into ``limits``."""
    fields = ("timeout", "max_retry_wait", "rate_limit_reserve", "max_calls", "max_pages")
    kw["limits"] = HttpLimits(**{k: kw.pop(k) for k in fields if k in kw})
    return kw


def gh_api(fake: FakeCI, **kw) -> JsonApi:
    _limits(kw)
    kw.setdefault("etags", EtagCache())
    kw.setdefault("counter", ApiCounter())
    kw.setdefault("sleep", lambda s: None)
    return JsonApi("github", fake.github_api, new_pool(), lambda: {"Authorization": f"Bearer {GH_TOKEN}"},
                   extra_headers=GITHUB_HEADERS, **kw)


def gl_api(fake: FakeCI, **kw) -> JsonApi:
    _limits(kw)
    kw.setdefault("etags", EtagCache())
    kw.setdefault("counter", ApiCounter())
    return JsonApi("gitlab", fake.gitlab_api, new_pool(), lambda: {"PRIVATE-TOKEN": GL_TOKEN}, **kw)


def test_github_pagination_follows_link_headers(fake: FakeCI) -> None:
    for i in range(230):
        fake.add_github_runner("org:acme", f"runner-{i:03d}")
    api = gh_api(fake)
    items, complete = api.get_all("orgs/acme/actions/runners", kind="runners", params={"per_page": 100}, items_key="runners")
    assert complete and len(items) == 230
    assert [r["name"] for r in items[:2]] == ["runner-000", "runner-001"] and items[-1]["name"] == "runner-229"
    assert fake.count(r"/orgs/acme/actions/runners") == 3
    assert api.counter.to_dict()["by_kind"] == {"runners": 3}


def test_page_cap_reports_incomplete(fake: FakeCI) -> None:
    for i in range(50):
        fake.add_github_runner("org:acme", f"r{i}")
    api = gh_api(fake, max_pages=2)
    items, complete = api.get_all("orgs/acme/actions/runners", kind="runners", params={"per_page": 10}, items_key="runners")
    assert not complete and len(items) == 20


def test_gitlab_pagination_by_x_next_page(fake: FakeCI) -> None:
    for i in range(45):
        fake.add_gitlab_job(42, 1000 + i, status="running", started_at=T0)
    fake.add_gitlab_job(42, 2000, status="success", started_at=T0, finished_at=T0 + timedelta(minutes=3))
    api = gl_api(fake)
    jobs, complete = api.get_all("projects/42/jobs", kind="jobs", params=[("scope[]", "running"), ("scope[]", "pending"), ("per_page", 20)])
    assert complete and len(jobs) == 45 and all(j["status"] == "running" for j in jobs)
    assert fake.count(r"/projects/42/jobs\?") == 3
    # X-Next-Page alone (no Link header) is enough
    assert next_link({"x-next-page": "3"}, "https://gl/api/v4/projects/1/jobs?per_page=20&page=2").endswith("per_page=20&page=3")
    assert next_link({"x-next-page": ""}, "https://gl/api/v4/x") is None


def test_etag_gives_304_and_the_cached_body(fake: FakeCI) -> None:
    fake.add_github_runner("org:acme", "r1", busy=True)
    etags = EtagCache()
    counter = ApiCounter()
    first = gh_api(fake, etags=etags, counter=counter).get("orgs/acme/actions/runners", kind="runners")
    second = gh_api(fake, etags=etags, counter=counter).get("orgs/acme/actions/runners", kind="runners")
    assert first.status == 200 and second.status == 304 and second.from_cache
    assert second.body == first.body and second.body["runners"][0]["busy"] is True
    sent = [r for r in fake.requests if "runners" in r.path]
    assert "If-None-Match" not in sent[0].headers and sent[1].headers["If-None-Match"].startswith('W/"')
    assert counter.to_dict()["not_modified"] == 1
    # a change on the server is seen (new ETag, 200)
    fake.runners["org:acme"][0]["busy"] = False
    third = gh_api(fake, etags=etags, counter=counter).get("orgs/acme/actions/runners", kind="runners")
    assert third.status == 200 and third.body["runners"][0]["busy"] is False


def test_etag_cache_is_per_token(fake: FakeCI) -> None:
    fake.add_github_runner("org:acme", "r1")
    fake.github_tokens.add("other-token")
    etags = EtagCache()
    gh_api(fake, etags=etags).get("orgs/acme/actions/runners", kind="runners")
    other = JsonApi("github", fake.github_api, new_pool(), lambda: {"Authorization": "Bearer other-token"},
                    limits=HttpLimits(), etags=etags)
    assert other.get("orgs/acme/actions/runners", kind="runners").status == 200  # not the first token's 304


def test_retry_after_short_wait_then_success(fake: FakeCI) -> None:
    fake.add_github_runner("org:acme", "r1")
    fake.faults.append(rate_limited("runners", retry_after=2, times=1))
    waits: list[float] = []
    api = gh_api(fake, sleep=waits.append, max_retry_wait=5)
    resp = api.get("orgs/acme/actions/runners", kind="runners")
    assert resp.status == 200 and waits == [2.0]
    assert api.counter.to_dict()["by_status"] == {"200": 1, "403": 1}


def test_retry_after_too_long_pauses_the_provider(fake: FakeCI) -> None:
    fake.add_github_runner("org:acme", "r1")
    fake.faults.append(rate_limited("runners", retry_after=120))
    waits: list[float] = []
    api = gh_api(fake, sleep=waits.append, max_retry_wait=10)
    with pytest.raises(RateLimited, match="rate limited"):
        api.get("orgs/acme/actions/runners", kind="runners")
    assert waits == []
    before = len(fake.requests)
    with pytest.raises(RateLimited, match="paused"):
        api.get("repos/acme/infra/actions/runs", kind="runs")
    assert len(fake.requests) == before, "a paused provider is not called again in this run"
    assert api.counter.to_dict()["skipped"] == {"runs": 1}


def test_primary_rate_limit_exhausted(fake: FakeCI) -> None:
    reset = int(time.time()) + 900
    fake.fault("runs", 403, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
               body=b'{"message": "API rate limit exceeded"}')
    api = gh_api(fake)
    with pytest.raises(RateLimited):
        api.get("repos/acme/infra/actions/runs", kind="runs")
    assert api.gate.paused_until is not None and api.gate.paused_until >= reset - 1


def test_low_remaining_pauses_before_the_limit(fake: FakeCI) -> None:
    fake.add_github_runner("org:acme", "r1")
    fake.rate_remaining = 51
    api = gh_api(fake, rate_limit_reserve=50)
    assert api.get("orgs/acme/actions/runners", kind="runners").status == 200  # remaining 50 now
    with pytest.raises(RateLimited, match="only 50 calls left"):
        api.get("orgs/acme/actions/runners", kind="runners")


@pytest.mark.parametrize("status", [500, 401, 403, 404, 422])
def test_http_errors_raise(fake: FakeCI, status: int) -> None:
    fake.fault("runners", status)
    with pytest.raises(ApiError) as exc_info:
        gh_api(fake).get("orgs/acme/actions/runners", kind="runners")
    assert exc_info.value.status == status and not isinstance(exc_info.value, RateLimited)


def test_503_is_retried_once(fake: FakeCI) -> None:
    fake.add_github_runner("org:acme", "r1")
    fake.fault("runners", 503, times=1)
    assert gh_api(fake).get("orgs/acme/actions/runners", kind="runners").status == 200


def test_bad_token_is_401(fake: FakeCI) -> None:
    api = JsonApi("github", fake.github_api, new_pool(), lambda: {"Authorization": "Bearer wrong"},
                  limits=HttpLimits(), etags=EtagCache())
    with pytest.raises(ApiError, match="401"):
        api.get("orgs/acme/actions/runners", kind="runners")


def test_slow_reply_times_out(fake: FakeCI) -> None:
    fake.fault("runners", 200, delay=3.0, passthrough=True)
    api = gh_api(fake, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ApiError, match="timed out"):
        api.get("orgs/acme/actions/runners", kind="runners")
    assert time.monotonic() - started < 2.5


def test_malformed_json(fake: FakeCI) -> None:
    fake.fault("runners", 200, body=b'{"total_count": 1, "runners": [')
    with pytest.raises(ApiError, match="malformed JSON"):
        gh_api(fake).get("orgs/acme/actions/runners", kind="runners")


def test_unexpected_shape(fake: FakeCI) -> None:
    fake.fault("runners", 200, body=b'{"total_count": 1, "runners": "nope"}')
    with pytest.raises(ApiError, match="unexpected response shape"):
        gh_api(fake).get_all("orgs/acme/actions/runners", kind="runners", items_key="runners")


@pytest.mark.parametrize("body,items_key,words", [
    (b'[{"id": 1, "name": "r1"}]', "runners", "the response is a list of 1, expected an object"),
    (b'{"total_count": 1, "runners": {"id": 1}}', "runners", "its 'runners' is an object, expected a list"),
    (b'{"total_count": 1, "runners": null}', "runners", "its 'runners' is null, expected a list"),
    (b'{"id": 1, "name": "r1"}', None, "the response is an object, expected a list"),
    (b'[{"id": 1}, 7]', None, "item 1 of the list is a number, expected an object"),
])
def test_unexpected_shape_names_the_url_and_the_shape(fake: FakeCI, body: bytes, items_key: str | None, words: str) -> None:
    fake.fault("runners", 200, body=body)
    with pytest.raises(UnexpectedShape) as info:
        gh_api(fake).get_all("orgs/acme/actions/runners", kind="runners", params={"per_page": 100}, items_key=items_key)
    url = f"{fake.github_api}/orgs/acme/actions/runners?per_page=100"
    assert isinstance(info.value, ApiError) and info.value.url == url  # an ApiError: the checkers answer unknown
    assert str(info.value) == f"github runners: unexpected response shape from {url}: {words}"


def test_get_object_refuses_a_list(fake: FakeCI) -> None:
    fake.add_github_job("acme/infra", 7, 70, status="in_progress", started_at=T0)
    api = gh_api(fake)
    assert api.get_object("repos/acme/infra/actions/jobs/70", kind="github.job")["status"] == "in_progress"
    fake.fault("jobs/70", 200, body=b'[{"id": 70, "status": "completed"}]')
    url = f"{fake.github_api}/repos/acme/infra/actions/jobs/70"
    with pytest.raises(UnexpectedShape, match=f"unexpected response shape from {url}: the response is a list of 1, expected an object"):
        api.get_object("repos/acme/infra/actions/jobs/70", kind="github.job")


def test_connection_refused(fake: FakeCI) -> None:
    api = JsonApi("github", "http://127.0.0.1:9/api/v3", new_pool(), None, limits=HttpLimits(timeout=1), etags=EtagCache())
    with pytest.raises(ApiError, match="failed|timed out"):
        api.get("orgs/acme/actions/runners", kind="runners")


def test_never_follows_links_to_another_host(fake: FakeCI) -> None:
    fake.fault("runners", 200, body=b'{"total_count": 2, "runners": []}',
               headers={"Link": '<http://127.0.0.2:1/api/v3/orgs/acme/actions/runners?page=2>; rel="next"'})
    with pytest.raises(ApiError, match="another host"):
        gh_api(fake).get_all("orgs/acme/actions/runners", kind="runners", items_key="runners")


def test_call_budget(fake: FakeCI) -> None:
    fake.add_github_runner("org:acme", "r1")
    api = gh_api(fake, max_calls=2)
    api.get("orgs/acme/actions/runners", kind="runners")
    api.get("orgs/acme/actions/runners", kind="runners")
    with pytest.raises(ApiError, match="budget"):
        api.get("orgs/acme/actions/runners", kind="runners")
    assert fake.count("runners") == 2


def test_auth_failure_does_not_echo_the_exception() -> None:
    def boom() -> dict[str, str]:
        raise RuntimeError("secret value s3cr3t-do-not-print")

    api = JsonApi("github", "http://127.0.0.1:9/api/v3", new_pool(), boom, limits=HttpLimits(), etags=EtagCache())
    with pytest.raises(ApiError) as exc_info:
        api.get("x", kind="x")
    assert "s3cr3t" not in str(exc_info.value) and "credentials" in str(exc_info.value)


def test_http_limits_from_the_policy_and_a_store() -> None:
    from dataclasses import FrozenInstanceError
    from types import SimpleNamespace

    from reaper.policy.liveness import HttpConfig

    assert HttpLimits.from_policy(HttpConfig()) == HttpLimits() == HttpLimits.from_policy(None)
    cfg = HttpConfig(timeout=timedelta(seconds=4), max_retry_wait=timedelta(seconds=2), rate_limit_reserve=7,
                     max_calls_per_run=50, max_pages=3)
    assert HttpLimits.from_policy(cfg) == HttpLimits(timeout=4, max_retry_wait=2, rate_limit_reserve=7, max_calls=50, max_pages=3)
    assert HttpLimits.from_policy(cfg, timedelta(seconds=30)).timeout == 30  # a provider's own timeout wins
    assert HttpLimits.from_policy(cfg, None).timeout == 4
    store = SimpleNamespace(timeout=timedelta(seconds=12), max_retry_wait=timedelta(seconds=30))
    assert HttpLimits.for_store(store, rate_limit_reserve=0, max_calls=100000) == HttpLimits(
        timeout=12, max_retry_wait=30, rate_limit_reserve=0, max_calls=100000, max_pages=10)
    with pytest.raises(FrozenInstanceError):
        HttpLimits().timeout = 1  # type: ignore[misc]


def test_rate_gate_budget_and_pause() -> None:
    from reaper.http.client import RateGate

    now = [1000.0]
    counter = ApiCounter()
    gate = RateGate("github", HttpLimits(max_calls=2, max_retry_wait=5, rate_limit_reserve=10), counter, clock=lambda: now[0])
    gate.admit("runs", "u")
    # plenty left: no pause, not limited
    assert gate.answered(200, {"x-ratelimit-remaining": "500"}, kind="runs", url="u", may_wait=True) is None
    # a short Retry-After is waited once, then the provider is paused for it
    assert gate.answered(429, {"retry-after": "3"}, kind="runs", url="u", may_wait=True) == 3.0
    with pytest.raises(RateLimited, match="rate limited \\(HTTP 429\\)"):
        gate.answered(429, {"retry-after": "3"}, kind="runs", url="u", may_wait=False)
    assert gate.paused_until == 1003.0
    with pytest.raises(RateLimited, match="paused for 3s more: rate limited"):
        gate.admit("runs", "u")
    now[0] = 1004.0
    gate.admit("runs", "u")
    with pytest.raises(ApiError, match="budget of 2 API calls"):
        gate.admit("runs", "u")
    assert counter.to_dict()["skipped"] == {"runs": 2} and gate.calls == 2
    # at or below the reserve on a success: paused until the reset
    assert gate.answered(200, {"x-ratelimit-remaining": "10", "x-ratelimit-reset": "2000"}, kind="runs", url="u",
                         may_wait=True) is None
    assert gate.paused_until == 2000.0 and "only 10 calls left (reserve 10)" in gate.pause_reason
