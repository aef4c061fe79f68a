"""The policy's liveness section: defaults, validation with field + line, env override."""

from __future__ import annotations

import textwrap
from datetime import timedelta

import pytest

from reaper.policy import ConfigError, parse_policy


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        parse_policy(textwrap.dedent(text), source="policy.yaml", env=env)
    return exc_info.value.problems


FULL = """\
mode: report
rules:
  - name: prod
    match: "*/prod/*"
    max_age: 3h
    liveness:
      github_repos: [acme/infra-prod]
      gitlab_projects: [42, group/infra]
      who: ["runner@*", "root@runner-*"]
  - name: default
    match: "*"
    max_age: 6h
liveness:
  grace: 10m
  claims:
    table: lock-reaper-claims
  providers:
    - type: github
      api_url: https://ghe.example.com/api/v3/
      app:
        app_id: 12345
        installation_id: 678
        private_key_secret: lock-reaper/github-app-key
      runners:
        - org: acme
          hosts: ["gh-runner-*"]
    - type: gitlab
      api_url: https://gitlab.example.com/api/v4
      token_secret: lock-reaper/gitlab-token
  state_activity:
    window: 15m
  http:
    timeout: 5s
"""


def test_defaults_without_a_section() -> None:
    p = parse_policy("")
    lv = p.liveness
    assert lv.grace == timedelta(minutes=5)
    assert lv.claims is None and lv.providers == []
    assert lv.state_activity.enabled and lv.state_activity.window == timedelta(minutes=10)
    assert lv.http.timeout == timedelta(seconds=10) and lv.http.rate_limit_reserve == 100
    assert lv.max_run_duration == timedelta(days=7)  # how far back mappings look for recently finished runs/jobs


def test_full_section_parses() -> None:
    p = parse_policy(FULL)
    lv = p.liveness
    assert lv.grace == timedelta(minutes=10)
    assert lv.claims is not None and lv.claims.table == "lock-reaper-claims"
    gh, gl = lv.providers
    assert gh.type == "github" and gh.api_url == "https://ghe.example.com/api/v3"  # trailing slash dropped
    assert gh.app is not None and gh.app.app_id == "12345" and gh.app.installation_id == 678
    assert gh.runners[0].org == "acme" and gh.runners[0].hosts == ["gh-runner-*"]
    assert gh.active_run_statuses == ["in_progress", "queued", "waiting"]
    assert gl.type == "gitlab" and gl.live_job_scopes == ["running", "pending", "canceling"]
    m = p.rules[0].liveness
    assert m is not None and m.github_repos == ["acme/infra-prod"] and m.gitlab_projects == [42, "group/infra"]
    assert m.applies_to("runner@fv-az1-2") and not m.applies_to("alice@laptop")
    assert p.rules[1].liveness is None
    assert lv.provider("github").label == "github" and lv.provider("gitlab", "nope") is None


def test_claims_table_from_the_environment() -> None:
    p = parse_policy("", env={"REAPER_CLAIMS_TABLE": "claims-from-stack"})
    assert p.liveness.claims is not None and p.liveness.claims.table == "claims-from-stack"
    p = parse_policy("liveness:\n  grace: 1m\n", env={"REAPER_CLAIMS_TABLE": "t-2"})
    assert p.liveness.claims.table == "t-2" and p.liveness.grace == timedelta(minutes=1)


def test_max_run_duration_is_a_duration() -> None:
    assert parse_policy("liveness:\n  max_run_duration: 35d\n").liveness.max_run_duration == timedelta(days=35)
    assert parse_policy("liveness:\n  max_run_duration: 2w\n").liveness.max_run_duration == timedelta(weeks=2)


def test_bad_claims_table_from_env_names_the_variable() -> None:
    [msg] = problems("", env={"REAPER_CLAIMS_TABLE": "no spaces allowed"})
    assert "liveness.claims.table" in msg and "REAPER_CLAIMS_TABLE" in msg


@pytest.mark.parametrize(
    "snippet,field,line,words",
    [
        ("liveness:\n  grace: 5\n", "liveness.grace", 2, "no unit"),
        ("liveness:\n  max_run_duration: 7\n", "liveness.max_run_duration", 2, "no unit"),
        ("liveness:\n  max_run_duration: 0d\n", "liveness.max_run_duration", 2, "greater than zero"),
        ("liveness:\n  providers:\n    - type: jenkins\n      token_env: T\n", "liveness.providers[0]", 3, "jenkins"),
        ("liveness:\n  providers:\n    - type: github\n      api_url: ftp://x\n      token_env: T\n",
         "liveness.providers[0].api_url", 4, "http(s) URL"),
        ("liveness:\n  providers:\n    - type: github\n      token_env: T\n      token_secret: s\n",
         "liveness.providers[0]", 3, "exactly one of"),
        ("liveness:\n  providers:\n    - type: github\n", "liveness.providers[0]", 3, "exactly one of"),
        ("liveness:\n  providers:\n    - type: github\n      token_env: T\n      runners:\n        - hosts: [x]\n",
         "liveness.providers[0].runners[0]", 6, "exactly one of org or repo"),
        ("liveness:\n  providers:\n    - type: gitlab\n      token_env: T\n      live_job_scopes: [success]\n",
         "liveness.providers[0].live_job_scopes[0]", 5, "success"),
        ("liveness:\n  providers:\n    - type: github\n      token_env: T\n    - type: github\n      token_env: U\n",
         "liveness.providers", 2, "used twice"),
        ("liveness:\n  providers:\n    - {type: gitlab, name: a, token_env: T, runner_hosts: ['runner-*']}\n"
         "    - {type: gitlab, name: b, token_env: T, runner_hosts: ['runner-*']}\n",
         "liveness.providers", 2, "runner_hosts"),
        ("liveness:\n  http:\n    timeouts: 5s\n", "liveness.http.timeouts", 3, "unknown field"),
        ("rules:\n  - match: '*'\n    max_age: 1h\n    liveness:\n      github_repos: [not-a-repo]\n",
         "rules[0].liveness.github_repos[0]", 5, "pattern"),
        ("rules:\n  - name: prod\n    match: '*'\n    max_age: 1h\n    liveness:\n      github_repos: [acme/infra]\nliveness: {}\n",
         "liveness", 7, "no github provider"),
        ("rules:\n  - match: '*'\n    max_age: 1h\n    liveness:\n      gitlab_projects: [g/p]\n      gitlab_provider: x\n"
         "liveness:\n  providers:\n    - {type: gitlab, token_env: T}\n", "liveness", 7, "'x' is not a gitlab provider"),
    ],
)
def test_errors_name_field_and_line(snippet: str, field: str, line: int, words: str) -> None:
    found = problems(snippet)
    assert any(p.startswith(f"line {line}: {field}") and words in p for p in found), found


def test_rule_mapping_without_provider_is_reported_even_without_liveness_key() -> None:
    found = problems("rules:\n  - name: prod\n    match: '*'\n    max_age: 1h\n    liveness:\n      gitlab_projects: [7]\n")
    assert any("rules[0] (prod).liveness maps gitlab projects" in p for p in found), found


def test_validate_prints_the_section(tmp_path) -> None:
    import io
    import json

    from reaper.cli import main

    f = tmp_path / "policy.yaml"
    f.write_text(FULL)
    out = io.StringIO()
    assert main(["validate", "--config", str(f), "--json"], out=out, err=io.StringIO()) == 0
    doc = json.loads(out.getvalue())
    assert doc["liveness"]["grace"] == "10m"
    assert doc["liveness"]["providers"][0]["app"]["private_key_secret"] == "lock-reaper/github-app-key"
    assert doc["rules"][0]["liveness"]["gitlab_projects"] == [42, "group/infra"]
