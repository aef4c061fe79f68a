"""Backends of the LockStore contract suite. Add a backend: add a factory to HARNESSES."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .harness import DynamoDBHarness, GitLabStateHarness, HCPHarness, MemoryHarness, S3Harness, StoreHarness


def _memory(request: pytest.FixtureRequest) -> StoreHarness:
    return MemoryHarness()


def _dynamodb_moto(request: pytest.FixtureRequest) -> StoreHarness:
    import boto3

    request.getfixturevalue("aws")  # in-process moto
    return DynamoDBHarness(boto3.client("dynamodb", region_name="us-east-1"), name="dynamodb-moto")


def _dynamodb_server(request: pytest.FixtureRequest) -> StoreHarness:
    import boto3

    server = request.getfixturevalue("moto_env")  # moto_server over HTTP
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=server.endpoint)
    return DynamoDBHarness(client, name="dynamodb-server")


def _s3_moto(request: pytest.FixtureRequest) -> StoreHarness:
    import boto3

    request.getfixturevalue("aws")
    return S3Harness(boto3.client("s3", region_name="us-east-1"), name="s3-moto", page_size=2)


def _s3_moto_versioned(request: pytest.FixtureRequest) -> StoreHarness:
    import boto3

    request.getfixturevalue("aws")
    return S3Harness(boto3.client("s3", region_name="us-east-1"), name="s3-moto-versioned", versioned=True)


def _s3_server(request: pytest.FixtureRequest) -> StoreHarness:
    import boto3

    server = request.getfixturevalue("moto_env")
    client = boto3.client("s3", region_name="us-east-1", endpoint_url=server.endpoint)
    return S3Harness(client, name="s3-server")


def _hcp(request: pytest.FixtureRequest) -> StoreHarness:
    from devtools.fake_hcp import FakeHCP

    fake = FakeHCP(organizations=("acme",)).start()  # loopback HTTP
    request.addfinalizer(fake.stop)
    return HCPHarness(fake)


def _gitlab_state(request: pytest.FixtureRequest) -> StoreHarness:
    from devtools.fake_gitlab import FakeGitLab

    fake = FakeGitLab().start()  # loopback HTTP
    request.addfinalizer(fake.stop)
    return GitLabStateHarness(fake)


HARNESSES: dict[str, Callable[[pytest.FixtureRequest], StoreHarness]] = {
    "memory": _memory,
    "dynamodb-moto": _dynamodb_moto,
    "dynamodb-server": _dynamodb_server,
    "s3-moto": _s3_moto,
    "s3-moto-versioned": _s3_moto_versioned,
    "s3-server": _s3_server,
    "hcp": _hcp,
    "gitlab-state": _gitlab_state,
}


# backends reached over HTTP against moto_server carry the e2e marker (the HCP and GitLab fakes are
# in-process loopback servers, like tests/test_store_hcp.py and tests/test_store_gitlab.py use)
OVER_HTTP = {"dynamodb-server", "s3-server"}


@pytest.fixture(params=[pytest.param(n, marks=[pytest.mark.e2e] if n in OVER_HTTP else []) for n in HARNESSES])
def harness(request: pytest.FixtureRequest) -> StoreHarness:
    h = HARNESSES[request.param](request)
    assert isinstance(h, StoreHarness)
    return h
