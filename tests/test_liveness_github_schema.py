"""The fake GitHub's payloads match GitHub's official OpenAPI description (@octokit/openapi).

The description is OpenAPI 3.0 (``nullable: true``); it is turned into JSON Schema
(draft 4) by making nullable types accept null, and ``$ref``s are resolved with
``referencing``. Each endpoint's answer is validated against that endpoint's own
response schema, as served over HTTP by devtools/fake_ci.py.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from devtools.fake_ci import FakeCI, gh_job, gh_run, gh_runner

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "node_modules" / "@octokit" / "openapi" / "generated" / "api.github.com.json"
T0 = datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc)

pytestmark = pytest.mark.skipif(not SPEC.is_file(), reason="node_modules/@octokit/openapi is not installed (make deps)")


def _nullable_to_jsonschema(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable_to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_jsonschema(v) for k, v in node.items() if k not in ("example", "examples")}
    if out.pop("nullable", False):
        if "type" in out and "$ref" not in out:
            t = out["type"]
            out["type"] = (t if isinstance(t, list) else [t]) + ["null"]
            if "enum" in out:
                out["enum"] = list(out["enum"]) + [None]
        else:
            return {"anyOf": [out, {"type": "null"}]}
    return out


@lru_cache(maxsize=1)
def _spec() -> dict[str, Any]:
    raw = json.loads(SPEC.read_text(encoding="utf-8"))
    return {"openapi": raw["openapi"], "paths": raw["paths"], "components": {"schemas": _nullable_to_jsonschema(raw["components"]["schemas"])}}


def validator_for(path: str, method: str = "get", status: str = "200"):
    from jsonschema import Draft4Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    spec = _spec()
    schema = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    schema = _nullable_to_jsonschema(copy.deepcopy(schema))
    registry = Registry().with_resource("urn:github", Resource.from_contents(spec, default_specification=DRAFT4))

    def fix_refs(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("urn:github" + v if k == "$ref" and v.startswith("#/") else fix_refs(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fix_refs(x) for x in node]
        return node

    return Draft4Validator(fix_refs(schema), registry=registry)


def errors(validator, payload: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(payload)]


@pytest.fixture(scope="module")
def fake():
    with FakeCI() as f:
        f.add_github_run("acme/infra", 101, status="in_progress", started_at=T0)
        f.add_github_run("acme/infra", 102, status="completed", conclusion="cancelled", started_at=T0,
                         updated_at=T0 + timedelta(minutes=9))
        f.add_github_job("acme/infra", 101, 9001, status="in_progress", started_at=T0)
        f.add_github_job("acme/infra", 102, 9002, status="completed", conclusion="cancelled", started_at=T0,
                         completed_at=T0 + timedelta(minutes=9))
        f.add_github_job("acme/infra", 102, 9003, status="queued", started_at=T0, runner_name=None)
        f.add_github_runner("org:acme", "gh-runner-1", busy=True)
        f.add_github_runner("repo:acme/infra", "gh-runner-2", status="offline")
        yield f


def fetch(fake: FakeCI, path: str) -> Any:
    from reaper.http.client import EtagCache, HttpLimits, JsonApi, new_pool

    api = JsonApi("github", fake.github_api, new_pool(), lambda: {"Authorization": f"Bearer {next(iter(fake.github_tokens))}"},
                  limits=HttpLimits(), etags=EtagCache())
    return api.get(path, kind="schema").body


@pytest.mark.parametrize(
    "served,spec_path",
    [
        ("repos/acme/infra/actions/runs?status=in_progress", "/repos/{owner}/{repo}/actions/runs"),
        ("repos/acme/infra/actions/runs", "/repos/{owner}/{repo}/actions/runs"),
        # a repo mapping's recently completed runs (created=>=…, GitHub's date syntax)
        ("repos/acme/infra/actions/runs?status=completed&created=%3E%3D2026-11-15T00%3A00%3A00Z&per_page=100"
         "&exclude_pull_requests=true", "/repos/{owner}/{repo}/actions/runs"),
        ("repos/acme/infra/actions/runs/102/attempts/1/jobs", "/repos/{owner}/{repo}/actions/runs/{run_id}/attempts/{attempt_number}/jobs"),
        ("repos/acme/infra/actions/jobs/9002", "/repos/{owner}/{repo}/actions/jobs/{job_id}"),
        ("orgs/acme/actions/runners", "/orgs/{org}/actions/runners"),
        ("repos/acme/infra/actions/runners", "/repos/{owner}/{repo}/actions/runners"),
    ],
)
def test_served_payloads_match_the_openapi_schema(fake: FakeCI, served: str, spec_path: str) -> None:
    body = fetch(fake, served)
    assert body, "the fake answered something"
    assert errors(validator_for(spec_path), body) == []


def test_completed_runs_filter_as_github_does(fake: FakeCI) -> None:
    """``status=completed`` matches the status, ``created`` takes GitHub's date qualifiers; newest first."""
    ids = lambda q: [r["id"] for r in fetch(fake, f"repos/acme/infra/actions/runs?{q}")["workflow_runs"]]  # noqa: E731
    assert ids("status=completed&created=%3E%3D2026-11-15T00%3A00%3A00Z") == [102]
    assert ids("status=completed&created=%3E%3D2026-11-23") == []  # created after T0's day: none
    assert ids("created=2026-11-22") == [102, 101]  # that whole day, newest first (same time: higher id first)
    assert ids("created=*..2026-11-22T08%3A59%3A59Z") == []
    assert ids("created=2026-11-22T09%3A00%3A00Z..*") == [102, 101]
    assert ids("status=in_progress") == [101]


def test_installation_token_matches_the_schema() -> None:
    from devtools.fake_ci import iso

    body = {"token": "ghs_x", "expires_at": iso(T0), "permissions": {"actions": "read"}, "repository_selection": "all"}
    assert errors(validator_for("/app/installations/{installation_id}/access_tokens", "post", "201"), body) == []


def test_the_schema_check_can_fail() -> None:
    """Negative controls: a broken payload is caught, so the checks above mean something."""
    job = gh_job("https://github.com", "https://api.github.com", "acme/infra", 1, 2, status="completed",
                 conclusion="success", started_at=T0, completed_at=T0)
    v = validator_for("/repos/{owner}/{repo}/actions/jobs/{job_id}")
    assert errors(v, job) == []
    broken = dict(job)
    del broken["status"]
    assert any("'status' is a required property" in e for e in errors(v, broken))
    assert any("is not one of" in e for e in errors(v, {**job, "status": "running"}))  # a GitLab word, not GitHub's
    assert errors(v, {**job, "completed_at": None}) == []  # nullable in the description

    runners = validator_for("/orgs/{org}/actions/runners")
    assert any("is not of type 'boolean'" in e for e in errors(runners, {"total_count": 1, "runners": [{**gh_runner(1, "x"), "busy": "yes"}]}))
    runs = validator_for("/repos/{owner}/{repo}/actions/runs")
    run = gh_run("https://github.com", "https://api.github.com", "acme/infra", 5, status="queued", started_at=T0)
    assert errors(runs, {"total_count": 1, "workflow_runs": [run]}) == []
    assert errors(runs, {"total_count": 1, "workflow_runs": [{k: v for k, v in run.items() if k != "repository"}]})
