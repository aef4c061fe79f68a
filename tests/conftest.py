"""Shared fixtures.

- ``aws``: in-process moto (mock_aws) with fake credentials and us-east-1.
- ``moto_server``: a real moto_server subprocess on a free 127.0.0.1 port (session
  scope), reset before each test that uses ``moto_env``.
- ``now`` / ``clock``: a fixed, injectable clock.
- ``terraform_binary``: each real Terraform binary to drive (tests/terraform_kit.py).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.motoserver import FAKE_CREDENTIALS, MotoServer  # noqa: E402

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never reach a real AWS account: fake credentials everywhere, no profile, no IMDS."""
    for k, v in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "LockReaperTest")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def clock():
    return lambda: NOW


@pytest.fixture
def aws():
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """A clean moto_server with AWS_ENDPOINT_URL pointing at it."""
    moto_server.reset()
    for k, v in moto_server.env().items():
        monkeypatch.setenv(k, v)
    return moto_server


@pytest.fixture(params=["1.0.3", "path"], ids=["terraform-1.0.3", "terraform-on-path"])
def terraform_binary(request: pytest.FixtureRequest) -> Path:
    """Each Terraform binary to drive: the cached 1.0.3, and a terraform >= 1.11 on PATH (skipped if absent)."""
    from terraform_kit import require_terraform

    return require_terraform(request.param)


def pytest_report_header(config):
    return f"lock-reaper tests (python {sys.version.split()[0]}, cwd {os.path.basename(os.getcwd())})"
