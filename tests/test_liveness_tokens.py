"""Credentials: Secrets Manager through Powertools, GitHub App JWT (RS256) and installation
tokens, and the rule that no token, key or JWT ever reaches a log line or a report."""

from __future__ import annotations

import base64
import json
import logging
import textwrap
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from devtools.fake_ci import FakeCI
from devtools.locks import create_claims_table, info_json
from reaper.policy import parse_policy
from reaper.engine import Reaper
from reaper.wiring import build_liveness
from reaper.liveness.claims import Claim, ClaimStore
from reaper.liveness.github import GITHUB_HEADERS
from reaper.http.client import AuthError, EtagCache, HttpLimits, JsonApi, new_pool
from reaper.http.tokens import GitHubAppToken, SecretsSource, StaticToken, app_jwt, github_header
from reaper.models import LockInfo
from reaper.stores.memory import InMemoryLockStore

GH_TOKEN = "ghp_SECRETpatValue1234567890abcdefghij"
GL_TOKEN = "glpat-SECRETgitlabValue987"


@pytest.fixture(scope="module")
def app_key():
    """A 2048-bit RSA key as GitHub issues it (PKCS#1 PEM), plus its PKCS#8 form."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa as crsa

    key = crsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode()
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    return key, pkcs1, pkcs8


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@pytest.mark.parametrize("form", ["pkcs1", "pkcs8"])
def test_app_jwt_verifies_with_an_independent_rs256_implementation(app_key, form: str) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key, pkcs1, pkcs8 = app_key
    now = 1_800_000_000
    token = app_jwt("12345", pkcs1 if form == "pkcs1" else pkcs8, now)
    head, payload, sig = token.split(".")
    assert json.loads(_unb64(head)) == {"alg": "RS256", "typ": "JWT"}
    assert json.loads(_unb64(payload)) == {"iat": now - 60, "exp": now + 540, "iss": "12345"}
    # cryptography (OpenSSL) checks the PKCS#1 v1.5 / SHA-256 signature; raises if wrong
    key.public_key().verify(_unb64(sig), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(Exception):
        key.public_key().verify(_unb64(sig), f"{head}.{payload}x".encode(), padding.PKCS1v15(), hashes.SHA256())


def test_app_jwt_rejects_non_rsa_keys() -> None:
    with pytest.raises(ValueError, match="not a PEM RSA private key"):
        app_jwt("1", "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----", 0)


class DictSecrets:
    def __init__(self, values):
        self.values = values
        self.reads = 0

    def get(self, name, max_age=None):
        self.reads += 1
        if name not in self.values:
            raise KeyError(name)
        return self.values[name]


def _public(key):
    import rsa

    nums = key.public_key().public_numbers()
    return rsa.PublicKey(nums.n, nums.e)


def test_installation_token_exchange_and_cache(app_key) -> None:
    key, pkcs1, _ = app_key
    with FakeCI(app_id="12345", app_public_key=_public(key)) as fake:
        fake.add_github_runner("org:acme", "r1")
        secrets = SecretsSource(DictSecrets({"app-key": json.dumps({"private_key": pkcs1})}))
        token_api = JsonApi("github", fake.github_api, new_pool(), None, limits=HttpLimits(), extra_headers=GITHUB_HEADERS,
                            etags=EtagCache())
        auth = GitHubAppToken(token_api, "12345", 678, "app-key", secrets)
        api = JsonApi("github", fake.github_api, new_pool(), auth, limits=HttpLimits(), extra_headers=GITHUB_HEADERS,
                      etags=EtagCache())
        assert api.get("orgs/acme/actions/runners", kind="runners").status == 200
        assert api.get("orgs/acme/actions/runners", kind="runners").status in (200, 304)
        assert fake.count("access_tokens", method="POST") == 1, "the installation token is cached"
        [issued] = fake.issued_tokens
        assert [r.headers.get("Authorization") for r in fake.requests if "runners" in r.path] == [f"Bearer {issued}"] * 2


def test_installation_token_with_the_wrong_key_is_refused(app_key) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa as crsa

    key, _, _ = app_key
    other = crsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()
    with FakeCI(app_id="12345", app_public_key=_public(key)) as fake:
        token_api = JsonApi("github", fake.github_api, new_pool(), None, limits=HttpLimits(), etags=EtagCache())
        auth = GitHubAppToken(token_api, "12345", 678, "k", SecretsSource(DictSecrets({"k": other})))
        with pytest.raises(Exception, match="401"):
            auth()


def test_secret_from_secrets_manager_through_powertools(aws) -> None:
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    sm.create_secret(Name="lock-reaper/github", SecretString=json.dumps({"token": GH_TOKEN}))
    sm.create_secret(Name="lock-reaper/gitlab", SecretString=GL_TOKEN)
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    src = SecretsSource(SecretsProvider(boto3_client=sm), max_age=300)
    assert StaticToken(github_header, secret="lock-reaper/github", secrets=src)() == {"Authorization": f"Bearer {GH_TOKEN}"}
    assert StaticToken(github_header, secret="lock-reaper/gitlab", secrets=src).token() == GL_TOKEN
    sm.put_secret_value(SecretId="lock-reaper/gitlab", SecretString="rotated")
    assert StaticToken(github_header, secret="lock-reaper/gitlab", secrets=src).token() == GL_TOKEN, "cached (max_age)"
    with pytest.raises(AuthError, match="cannot read secret 'missing'"):
        StaticToken(github_header, secret="missing", secrets=src).token()


# ---------------------------------------------------------------------------- never log a token
def test_no_token_key_or_jwt_is_ever_logged_or_reported(aws, app_key, caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A full cycle at DEBUG (urllib3, botocore, reaper), with successes, 401s, 500s, rate limits and a
    GitHub App exchange: no secret appears in the captured logs, in the Powertools JSON lines the
    Lambda writes (the reaper.* loggers routed through it, LOG_LEVEL=DEBUG), or in the run report."""
    from reaper.observability import lambda_logging

    key, pkcs1, _ = app_key
    now = datetime.now(timezone.utc)
    with FakeCI(github_token=GH_TOKEN, gitlab_token=GL_TOKEN, app_id="4242", app_public_key=_public(key)) as fake:
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        sm.create_secret(Name="gh-pat", SecretString=json.dumps({"token": GH_TOKEN}))
        sm.create_secret(Name="gl-pat", SecretString=GL_TOKEN)
        sm.create_secret(Name="gh-app-key", SecretString=pkcs1)
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_claims_table(ddb, "claims")
        policy = parse_policy(textwrap.dedent(f"""\
            mode: report
            rules: [{{match: "*", max_age: 1h}}]
            liveness:
              claims: {{table: claims}}
              providers:
                - {{type: github, name: pat, api_url: "{fake.github_api}", token_secret: gh-pat,
                    runners: [{{org: acme, hosts: ["gh-*"], users: [ci]}}]}}
                - type: github
                  name: app
                  api_url: "{fake.url}/app-gh/api/v3"
                  app: {{app_id: 4242, installation_id: 9, private_key_secret: gh-app-key}}
                  runners: [{{org: apps, hosts: ["app-*"], users: [ci]}}]
                - {{type: gitlab, api_url: "{fake.gitlab_api}", token_secret: gl-pat,
                    runner_hosts: ["runner-*-project-*-concurrent-*"]}}
              state_activity: {{enabled: false}}
            """))
        store = InMemoryLockStore("dynamodb:locks")
        locks = {
            "a": ("runner@fv-az1-1", "github"), "b": ("ci@gh-1", None), "c": ("root@runner-x-project-5-concurrent-0", None),
            "d": ("root@h-d", "gitlab"), "e": ("ci@app-1", None),
        }
        for name, (who, provider) in locks.items():
            raw = info_json(f"tf/{name}", timedelta(hours=3), now, who=who)
            store.put_lock(f"tf/{name}", raw)
            c = LockInfo.parse(raw).Created - timedelta(seconds=10)
            if provider == "github":
                ClaimStore(ddb, "claims").put(Claim(who=who, claimed_at=c, provider="github", api_url=fake.github_api,
                                                    repo="acme/infra", run_id=1, run_attempt=1))
            if provider == "gitlab":
                ClaimStore(ddb, "claims").put(Claim(who=who, claimed_at=c, provider="gitlab", api_url=fake.gitlab_api,
                                                    project_id=5, job_id=77))
        fake.add_github_job("acme/infra", 1, 11, status="completed", conclusion="cancelled", started_at=now - timedelta(hours=4),
                            completed_at=now - timedelta(hours=1))
        fake.fault("runners", 401, times=1)     # a 401 on the org runners
        fake.fault(r"/projects/5/jobs\?", 500)  # GitLab down for project 5
        fake.add_gitlab_job(5, 77, status="running", started_at=now - timedelta(hours=4))
        # the App provider's base path is served by the same fake under /app-gh: route it to /api/v3
        fake_route = fake._route

        def route(method, h):
            if h.path.startswith("/app-gh"):
                h.path = h.path[len("/app-gh"):]
            return fake_route(method, h)

        fake._route = route  # type: ignore[method-assign]
        fake.add_github_runner("org:apps", "app-1", busy=True)
        caplog.set_level(logging.DEBUG)  # from here on: the reaper's own work (the set-up above wrote the secrets)
        caplog.clear()
        liveness = build_liveness(policy, lambda s, r=None: boto3.client(s, region_name=r or "us-east-1"), etags=EtagCache())
        monkeypatch.setenv("LOG_LEVEL", "DEBUG")
        capsys.readouterr()
        with lambda_logging():  # as in the Lambda: reaper.* through the Powertools Logger, as JSON on stdout
            report = Reaper(policy, [store], clock=lambda: now, liveness=liveness).run()
        issued = list(fake.issued_tokens)
        json_lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]

    states = {e.key: e.liveness for e in report.locks}
    assert states["tf/a"] == "dead" and states["tf/d"] == "alive" and states["tf/b"] == "unknown"
    assert states["tf/e"] == "alive", "the GitHub App token was used"
    assert issued, "a GitHub App installation token was issued"
    assert caplog.records, "logging was captured"
    assert any("urllib3" in r.name for r in caplog.records), "urllib3 debug logging was on"
    assert {d["message"] for d in json_lines} >= {"lock", "run summary"}, "the JSON lines were captured"
    assert any(d["level"] == "DEBUG" for d in json_lines), "LOG_LEVEL=DEBUG reached the reaper.* loggers"
    logged = caplog.text + "\n".join(str(r.__dict__) for r in caplog.records) + json.dumps(json_lines)
    reported = report.to_json() + report.render_table()
    secrets = [GH_TOKEN, GL_TOKEN, *issued, pkcs1.splitlines()[1], "eyJhbGciOiJSUzI1NiIs"]  # the JWT header's base64
    for secret in secrets:
        assert secret not in logged, f"a secret was logged: {secret[:8]}..."
        assert secret not in reported, f"a secret was reported: {secret[:8]}..."
