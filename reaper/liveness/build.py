"""Build the composite liveness checker from the policy's ``liveness`` section.

Called by ``reaper.wiring.build_reaper`` once per run, so the memo of API
answers lives exactly one run; the ETag cache (``http.SHARED_ETAGS``) and the
secrets cache (Powertools) outlive it in a warm Lambda.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from .claims import ClaimStore
from .composite import ClaimsChecker, CompositeChecker
from .github import GITHUB_HEADERS, GitHubApi, GitHubClaimVerifier, GitHubReposChecker, GitHubRunnersChecker
from .gitlab import GitLabApi, GitLabClaimVerifier, GitLabJobsChecker
from ..http.client import ApiCounter, EtagCache, HttpLimits, JsonApi, new_pool
from ..policy.liveness import GitHubProvider, GitLabProvider
from .state_activity import StateActivityChecker
from ..http.tokens import GitHubAppToken, SecretsSource, StaticToken, github_header, gitlab_header


def build_liveness(
    policy: Any,
    client_factory: Callable[..., Any],
    *,
    pool: Any = None,
    env: Mapping[str, str] | None = None,
    counter: ApiCounter | None = None,
    secrets: SecretsSource | None = None,
    etags: EtagCache | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> CompositeChecker:
    cfg = policy.liveness
    env = os.environ if env is None else env
    counter = counter or ApiCounter()
    http = cfg.http
    pool = pool or new_pool(ca_bundle=http.ca_bundle)
    secrets = secrets or SecretsSource(max_age=int(cfg.secret_max_age.total_seconds()), client_factory=client_factory)
    grace = cfg.grace
    skew = policy.clock_skew

    def api(provider: Any, extra_headers: dict[str, str] | None, auth: Any) -> JsonApi:
        return JsonApi(
            provider.label, provider.api_url, pool, auth, limits=HttpLimits.from_policy(http, provider.timeout),
            counter=counter, etags=etags, extra_headers=extra_headers, sleep=sleep,
        )

    verifiers: dict[str, Any] = {}
    api_urls: dict[str, str] = {}
    github_repo_apis: dict[str, tuple[GitHubApi, list[str]]] = {}
    gitlab_apis: dict[str, tuple[GitLabApi, list[str], list[str]]] = {}
    runner_checkers: list[Any] = []

    for p in cfg.providers:
        api_urls[p.label] = p.api_url.rstrip("/")
        if isinstance(p, GitHubProvider):
            if p.app is not None:
                token_api = api(p, GITHUB_HEADERS, None)
                auth: Any = GitHubAppToken(token_api, p.app.app_id, p.app.installation_id, p.app.private_key_secret, secrets)
            else:
                auth = StaticToken(github_header, secret=p.token_secret, secrets=secrets, env_var=p.token_env, env=env)
            gh = GitHubApi(api(p, GITHUB_HEADERS, auth), p.label)
            verifiers[p.label] = GitHubClaimVerifier(gh, grace, skew)
            github_repo_apis[p.label] = (gh, list(p.active_run_statuses))
            if p.runners:
                runner_checkers.append(GitHubRunnersChecker(gh, list(p.runners)))
        elif isinstance(p, GitLabProvider):
            auth = StaticToken(gitlab_header, secret=p.token_secret, secrets=secrets, env_var=p.token_env, env=env)
            gl = GitLabApi(api(p, None, auth), p.label, list(p.live_job_scopes))
            verifiers[p.label] = GitLabClaimVerifier(gl, grace, skew)
            gitlab_apis[p.label] = (gl, list(p.runner_hosts), list(p.runner_users))

    checkers: list[Any] = []
    if cfg.claims is not None:
        store = ClaimStore(client_factory("dynamodb", cfg.claims.region), cfg.claims.table, counter)
        checkers.append(ClaimsChecker(store, verifiers, api_urls))
    checkers.extend(runner_checkers)
    if github_repo_apis and any(r.liveness and r.liveness.github_repos for r in policy.rules):
        checkers.append(GitHubReposChecker(github_repo_apis, policy))
    if gitlab_apis:
        checkers.append(GitLabJobsChecker(gitlab_apis, policy))
    if cfg.state_activity.enabled:
        checkers.append(StateActivityChecker(client_factory("s3"), cfg.state_activity.window, counter))
    return CompositeChecker(checkers, counter)
