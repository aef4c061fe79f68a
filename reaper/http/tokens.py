"""Credentials for the CI APIs: a token from Secrets Manager (cached by Powertools
``parameters``), from an environment variable (local runs), or a GitHub App
installation token.

A GitHub App authenticates with a JWT signed RS256 by its private key, then
exchanges it for an installation token (valid one hour; cached here until five
minutes before it expires). The JWT is signed with the pure-Python ``rsa``
package (RSASSA-PKCS1-v1_5 + SHA-256, with blinding): the ``cryptography``
wheel PyJWT would need is about 14 MB unzipped for arm64, nearly the whole
15 MB Lambda asset budget.

No function here logs, formats or raises with a token or key in the message.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..models import parse_created
from .client import AuthError, JsonApi

log = logging.getLogger("reaper.http.tokens")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _load_private_key(pem: str) -> Any:
    """A PKCS#1 (``BEGIN RSA PRIVATE KEY``, what GitHub issues) or PKCS#8 PEM key."""
    import rsa

    text = pem.strip()
    if "BEGIN RSA PRIVATE KEY" in text:
        return rsa.PrivateKey.load_pkcs1(text.encode(), format="PEM")
    if "BEGIN PRIVATE KEY" in text:
        return rsa.PrivateKey.load_pkcs1(_pkcs8_rsa_key(rsa.pem.load_pem(text.encode(), "PRIVATE KEY")), format="DER")
    raise ValueError("the GitHub App private key is not a PEM RSA private key")


_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"


def _pkcs8_rsa_key(der: bytes) -> bytes:
    """The PKCS#1 RSAPrivateKey (DER) inside a PKCS#8 PrivateKeyInfo (RFC 5208)."""
    from pyasn1.codec.der import decoder
    from pyasn1.type import namedtype, univ

    class _AlgorithmIdentifier(univ.Sequence):
        componentType = namedtype.NamedTypes(
            namedtype.NamedType("algorithm", univ.ObjectIdentifier()),
            namedtype.OptionalNamedType("parameters", univ.Any()),
        )

    class _PrivateKeyInfo(univ.Sequence):
        componentType = namedtype.NamedTypes(
            namedtype.NamedType("version", univ.Integer()),
            namedtype.NamedType("privateKeyAlgorithm", _AlgorithmIdentifier()),
            namedtype.NamedType("privateKey", univ.OctetString()),
        )

    info, _ = decoder.decode(der, asn1Spec=_PrivateKeyInfo())
    if str(info["privateKeyAlgorithm"]["algorithm"]) != _RSA_ENCRYPTION:
        raise ValueError("the PKCS#8 key is not an RSA key")
    return bytes(info["privateKey"])


def app_jwt(app_id: str, private_key_pem: str, now: float) -> str:
    """The App's JWT: iat 60 s in the past (clock drift), exp 9 minutes ahead (GitHub allows 10)."""
    import rsa

    key = _load_private_key(private_key_pem)
    header = {"alg": "RS256", "typ": "JWT"}
    payload = {"iat": int(now) - 60, "exp": int(now) + 540, "iss": str(app_id)}
    signing_input = _b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + _b64url(
        json.dumps(payload, separators=(",", ":")).encode()
    )
    signature = rsa.sign(signing_input.encode("ascii"), key, "SHA-256")
    return signing_input + "." + _b64url(signature)


def _secret_text(value: Any, field: str) -> str:
    """A secret is either the plain value or JSON with ``field`` (e.g. {"token": "..."})."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, dict):
        value = value.get(field)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get(field), str):
                return obj[field]
        if s:
            return s
    raise AuthError(f"the secret has no usable {field!r} value")


class _RedactSecretBodies(logging.Filter):
    """botocore logs every response body at DEBUG, GetSecretValue's included: redact those."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        if "SecretString" in text or "SecretBinary" in text:
            record.msg = "Response body: [redacted by lock-reaper: it holds a Secrets Manager secret]"
            record.args = ()
        return True


def redact_botocore_secret_bodies() -> None:
    logger = logging.getLogger("botocore.parsers")
    if not any(isinstance(f, _RedactSecretBodies) for f in logger.filters):
        logger.addFilter(_RedactSecretBodies())


class SecretsSource:
    """Reads secrets through Powertools ``parameters`` (its own cache, ``max_age`` seconds).

    Shared by the engine's judge workers: one lock around the provider's creation and each read, so a
    secret is fetched once, not once per thread that needs it at the same moment (Powertools' cache
    is not locked: two threads would both miss it)."""

    def __init__(self, provider: Any = None, max_age: int = 300, client_factory: Callable[..., Any] | None = None):
        redact_botocore_secret_bodies()
        self._provider = provider
        self._client_factory = client_factory
        self.max_age = max_age
        self._lock = threading.RLock()

    @property
    def provider(self) -> Any:
        """Created on first use: a run that needs no secret creates no Secrets Manager client."""
        with self._lock:
            return self._create()

    def _create(self) -> Any:
        if self._provider is None:
            from aws_lambda_powertools.utilities.parameters import SecretsProvider

            client = self._client_factory("secretsmanager") if self._client_factory else None
            self._provider = SecretsProvider(boto3_client=client)
        return self._provider

    def get(self, name: str) -> Any:
        try:
            with self._lock:
                return self.provider.get(name, max_age=self.max_age)
        except Exception as exc:  # the text of AWS errors is safe, but keep it short and never echo values
            raise AuthError(f"cannot read secret {name!r} ({type(exc).__name__})") from None


class StaticToken:
    """A token from Secrets Manager or an environment variable. Call it for headers."""

    def __init__(self, header: Callable[[str], dict[str, str]], *, secret: str | None = None,
                 secrets: SecretsSource | None = None, env_var: str | None = None, env: Mapping[str, str] | None = None):
        self._header = header
        self.secret = secret
        self.secrets = secrets
        self.env_var = env_var
        self.env = env

    def token(self) -> str:
        if self.env_var:
            value = (self.env if self.env is not None else os.environ).get(self.env_var, "")
            if not value:
                raise AuthError(f"environment variable {self.env_var} is not set")
            return value.strip()
        if self.secret and self.secrets is not None:
            return _secret_text(self.secrets.get(self.secret), "token")
        raise AuthError("no token is configured")

    def __call__(self) -> dict[str, str]:
        return self._header(self.token())


def github_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def gitlab_header(token: str) -> dict[str, str]:
    return {"PRIVATE-TOKEN": token}


class GitHubAppToken:
    """Installation token for a GitHub App, fetched with ``api`` (a JsonApi without auth)."""

    def __init__(self, api: JsonApi, app_id: str, installation_id: int, private_key_secret: str,
                 secrets: SecretsSource, wallclock: Callable[[], float] = time.time):
        self.api = api
        self.app_id = app_id
        self.installation_id = installation_id
        self.private_key_secret = private_key_secret
        self.secrets = secrets
        self.wallclock = wallclock
        self._token: str | None = None
        self._expires: float = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        """The cached installation token, or a new one within five minutes of its expiry."""
        with self._lock:
            now = self.wallclock()
            if self._token and now < self._expires - 300:
                return self._token
            token, expires = self._exchange(self._jwt(now), now)
            self._token, self._expires = token, expires
            log.info("GitHub App installation %s: new token valid until %s", self.installation_id,
                     datetime.fromtimestamp(expires, UTC).isoformat())
            return token

    def _jwt(self, now: float) -> str:
        pem = _secret_text(self.secrets.get(self.private_key_secret), "private_key")
        try:
            return app_jwt(self.app_id, pem, now)
        except Exception as exc:  # never the text: it could quote the key
            raise AuthError(f"cannot sign the GitHub App JWT ({type(exc).__name__})") from None

    def _exchange(self, jwt: str, now: float) -> tuple[str, float]:
        """POST the JWT for an installation token: (token, expiry; an hour if the answer has none)."""
        resp = self.api.request(
            "POST", f"app/installations/{self.installation_id}/access_tokens",
            kind="app.installation_token", headers={"Authorization": f"Bearer {jwt}"}, use_auth=False, conditional=False,
        )
        body = resp.body if isinstance(resp.body, dict) else {}
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise AuthError("the GitHub App installation token response has no token")
        try:
            expires = parse_created(str(body.get("expires_at"))).timestamp()
        except ValueError:
            expires = now + 3600
        return token, expires

    def __call__(self) -> dict[str, str]:
        return github_header(self.token())
