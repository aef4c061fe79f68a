"""The policy's ``liveness`` section and the per-rule ``liveness`` mapping.

Pure pydantic models (no I/O); ``reaper.policy`` embeds them in ``Policy`` and
``Rule`` so they are validated with the rest of the file (field + line errors).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, field_validator, model_validator

from .types import Globs, duration_type
from .types import Strict as _Strict

if TYPE_CHECKING:  # to the type checker a duration field is a timedelta; at run time it also parses "5m"
    Duration = timedelta
    LongDuration = timedelta
else:
    Duration = duration_type("30s, 5m or 1h", "sm")
    LongDuration = duration_type("12h, 7d or 2w", "hd")

_REPO = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
Repo = Annotated[str, Field(pattern=_REPO, description="owner/name")]
_SECRET = r"^[A-Za-z0-9/_+=.@:-]{1,2048}$"  # a Secrets Manager name or ARN
_ENV = r"^[A-Za-z_][A-Za-z0-9_]*$"
_NAME = r"^[a-z0-9][a-z0-9_-]{0,39}$"

RunStatus = Literal["in_progress", "queued", "waiting", "requested", "pending"]
GITHUB_RUN_STATUSES = get_args(RunStatus)
GitLabLiveScope = Literal["running", "pending", "preparing", "canceling", "waiting_for_resource", "created", "scheduled"]
GITLAB_LIVE_SCOPES = get_args(GitLabLiveScope)


def _check_api_url(v: str) -> str:
    if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", v):
        raise ValueError(f"api_url {v!r} must be an http(s) URL like https://api.github.com")
    return v.rstrip("/")


class ClaimsConfig(_Strict):
    """The claims table written by ``python -m reaper claim`` (REAPER_CLAIMS_TABLE)."""

    table: str = Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
    region: str | None = None


class GitHubAppAuth(_Strict):
    """A GitHub App: far higher rate limits than a PAT. The private key (PEM) is a secret."""

    app_id: Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v)] = Field(
        min_length=1, max_length=64, description="App ID (or client ID) used as the JWT issuer"
    )
    installation_id: int = Field(ge=1)
    private_key_secret: str = Field(pattern=_SECRET, description="Secrets Manager secret holding the App's PEM private key")


class RunnerScope(_Strict):
    """Self-hosted runners whose name is the lock's hostname (the runner default)."""

    org: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    repo: Repo | None = None
    hosts: Globs = Field(min_length=1, description="hostname globs that are self-hosted runners of this org/repo")
    users: Globs = Field(
        default_factory=lambda: ["runner"], min_length=1,
        description="the runner service's user name(s): a runner speaks only for locks whose Who has this user part "
                    "(alice@gh-runner-9 is a person's lock, not the runner's)",
    )
    absent_means_gone: bool = Field(
        default=False,
        description="every runner of these hosts is registered in this org/repo and nowhere else, so a name missing "
                    "from its list is gone (dead); otherwise a missing name is unknown",
    )

    @model_validator(mode="after")
    def _one_scope(self) -> RunnerScope:
        if (self.org is None) == (self.repo is None):
            raise ValueError("set exactly one of org or repo")
        return self

    @property
    def label(self) -> str:
        return f"org {self.org}" if self.org else f"repo {self.repo}"


class _ProviderBase(_Strict):
    name: str | None = Field(default=None, pattern=_NAME)
    token_secret: str | None = Field(default=None, pattern=_SECRET, description="Secrets Manager secret with the token")
    token_env: str | None = Field(default=None, pattern=_ENV, description="environment variable with the token (local runs)")
    timeout: Duration | None = None
    type: str  # narrowed to a Literal by each provider

    @property
    def label(self) -> str:
        return self.name or self.type


def _default_run_statuses() -> list[RunStatus]:
    return ["in_progress", "queued", "waiting"]


class GitHubProvider(_ProviderBase):
    type: Literal["github"]
    api_url: Annotated[str, BeforeValidator(lambda v: _check_api_url(v) if isinstance(v, str) else v)] = "https://api.github.com"
    app: GitHubAppAuth | None = None
    runners: list[RunnerScope] = Field(default_factory=list)
    active_run_statuses: list[RunStatus] = Field(default_factory=_default_run_statuses, min_length=1)

    @field_validator("active_run_statuses")
    @classmethod
    def _asks_about_running(cls, v: list[str]) -> list[str]:
        # without in_progress, a repo mapping would call a holder whose run is running dead
        if "in_progress" not in v:
            raise ValueError("must include in_progress: without it a running workflow run proves nothing and "
                             "a repo mapping would call its lock's holder dead")
        return v

    @model_validator(mode="after")
    def _one_auth(self) -> GitHubProvider:
        n = sum(x is not None for x in (self.token_secret, self.token_env, self.app))
        if n != 1:
            raise ValueError("set exactly one of token_secret, token_env or app")
        return self


def _default_live_scopes() -> list[GitLabLiveScope]:
    return ["running", "pending", "canceling"]


class GitLabProvider(_ProviderBase):
    type: Literal["gitlab"]
    api_url: Annotated[str, BeforeValidator(lambda v: _check_api_url(v) if isinstance(v, str) else v)] = "https://gitlab.com/api/v4"
    runner_hosts: Globs = Field(
        default_factory=list,
        description="opt in to hostname evidence: globs of THIS instance's runner hostnames whose "
                    "runner-<token>-project-<id>-concurrent-<n> name gives the project id (e.g. "
                    "[\"runner-*-project-*-concurrent-*\"]); default none: the id means nothing on another instance",
    )
    runner_users: Globs = Field(
        default_factory=lambda: ["root"], min_length=1,
        description="the user name(s) jobs run as on those hosts (the Docker executor: the image's user, often root)",
    )
    live_job_scopes: list[GitLabLiveScope] = Field(default_factory=_default_live_scopes, min_length=1)

    @field_validator("live_job_scopes")
    @classmethod
    def _asks_about_running(cls, v: list[str]) -> list[str]:
        # without running, a runner hostname or project mapping would call a running job's lock dead
        if "running" not in v:
            raise ValueError("must include running: without it a running job proves nothing and a runner "
                             "hostname or project mapping would call its lock's holder dead")
        return v

    @model_validator(mode="after")
    def _one_auth(self) -> GitLabProvider:
        if (self.token_secret is None) == (self.token_env is None):
            raise ValueError("set exactly one of token_secret or token_env")
        return self


Provider = Annotated[GitHubProvider | GitLabProvider, Field(discriminator="type")]


class StateActivityConfig(_Strict):
    enabled: bool = True
    window: Duration = timedelta(minutes=10)


class HttpConfig(_Strict):
    timeout: Duration = timedelta(seconds=10)
    max_retry_wait: Duration = Field(default=timedelta(seconds=10), description="longest Retry-After we wait for")
    rate_limit_reserve: int = Field(default=100, ge=0, le=100000, description="stop calling when this few remain")
    max_calls_per_run: int = Field(default=1000, ge=1, le=100000)
    max_pages: int = Field(default=10, ge=1, le=1000)
    concurrency: int = Field(
        default=8, ge=1, le=64,
        description="liveness checks made at the same time (1: one after the other); the decisions, the cap and "
                    "the audit-then-delete order are the same at any value",
    )
    ca_bundle: str | None = Field(default=None, description="PEM file of extra CAs (self-hosted GitHub/GitLab)")


class LeasesConfig(_Strict):
    """Evidence ``lease``: the leases ``lock-reaper run`` keeps in its claims (needs ``claims``)."""

    enabled: bool = True
    observations_table: str | None = Field(
        default=None, min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$",
        description="where the reaper keeps what it saw of each lease between runs (lease# items, partition key "
                    "pk, TTL expires_at); default: the run-state table (REAPER_LEASE_TABLE); with none, a stopped "
                    "heartbeat is never dead",
    )
    region: str | None = None


class LivenessConfig(_Strict):
    grace: Duration = Field(default=timedelta(minutes=5), description="after the CI system's completed_at")
    max_run_duration: LongDuration = Field(
        default=timedelta(days=7),
        description="the longest a CI run (GitHub) or job (GitLab) lasts from its creation to its end, waits for "
                    "approval included: repo/project mappings read every run or job created this far back to find "
                    "one that finished within the grace period",
    )
    claims: ClaimsConfig | None = None
    providers: list[Provider] = Field(default_factory=list)
    state_activity: StateActivityConfig = StateActivityConfig()
    leases: LeasesConfig = LeasesConfig()
    http: HttpConfig = HttpConfig()
    secret_max_age: Duration = Field(default=timedelta(minutes=5), description="how long a fetched secret is cached")

    @field_validator("providers")
    @classmethod
    def _providers(cls, v: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for p in v:
            if p.label in seen:
                raise ValueError(f"provider name {p.label!r} is used twice: give each provider a distinct name")
            seen.add(p.label)
        owner: dict[str, str] = {}
        for p in v:
            for glob in getattr(p, "runner_hosts", None) or []:
                if glob in owner:
                    raise ValueError(
                        f"runner_hosts {glob!r} is set on both gitlab providers {owner[glob]!r} and {p.label!r}: a runner "
                        "hostname names a project id, and ids are only unique within one GitLab instance"
                    )
                owner[glob] = p.label
        return v

    def provider(self, type_: str, name: str | None = None) -> Any:
        """The provider of that type (and name); None when there is none or it is ambiguous."""
        candidates = [p for p in self.providers if p.type == type_ and (name is None or p.label == name)]
        return candidates[0] if len(candidates) == 1 else None


def _project_ref(v: Any) -> Any:
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return v


GitLabProject = Annotated[
    Annotated[int, Field(ge=1)] | Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")],
    BeforeValidator(_project_ref),
]


class RuleLiveness(_Strict):
    """A rule's conservative mapping: locks on these paths are only taken by CI in these repos/projects."""

    github_repos: list[Repo] = Field(default_factory=list)
    github_provider: str | None = None
    gitlab_projects: list[GitLabProject] = Field(default_factory=list, description="project ids or full paths")
    gitlab_provider: str | None = None
    who: Globs = Field(default_factory=list, description="apply only to locks whose Who matches (default: any)")

    def applies_to(self, who: str) -> bool:
        import fnmatch

        return not self.who or any(fnmatch.fnmatchcase(who, g) for g in self.who)


def rule_mapping_problems(rules: list[Any], liveness: LivenessConfig) -> list[tuple[int, str]]:
    """Each rule mapping must name a provider that exists: (rule index, message naming the rule) for each that does not."""
    problems: list[tuple[int, str]] = []
    for i, rule in enumerate(rules):
        m = getattr(rule, "liveness", None)
        if m is None:
            continue
        label = f"rules[{i}]" + (f" ({rule.name})" if getattr(rule, "name", None) else "")
        mappings = (("github", m.github_repos, m.github_provider), ("gitlab", m.gitlab_projects, m.gitlab_provider))
        for kind, items, name in mappings:
            if not items and name is None:
                continue
            if liveness.provider(kind, name) is None:
                have = [p.label for p in liveness.providers if p.type == kind]
                if name is not None:
                    problems.append((i, f"{label}.liveness.{kind}_provider {name!r} is not a {kind} provider "
                                        f"(have: {', '.join(have) or 'none'})"))
                elif not have:
                    what = "repos" if kind == "github" else "projects"
                    problems.append((i, f"{label}.liveness maps {kind} {what} but liveness.providers has no {kind} provider"))
                else:
                    problems.append((i, f"{label}.liveness: several {kind} providers ({', '.join(have)}): set {kind}_provider"))
    return problems
