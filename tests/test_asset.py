"""The Lambda asset (infra/bundling.py): the lock file, the bundled SDK, reproducibility, the .pyc.

The asset is built as ``cdk synth`` builds it (``bundling.bundle``, the code
``LocalPipBundling`` runs) for the Lambda's platform; the dependency tree is cached
under .cache/lambda-deps, so only the reproducibility test installs from scratch.
"""

from __future__ import annotations

import gzip
import json
import struct
from datetime import UTC
from pathlib import Path

import pytest

from infra import bundling

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "config" / "policy.yaml"
MAX_ASSET_BYTES = 60 * 1000 * 1000  # issue 14: <= 60 MB unzipped, SDK included
MAGIC_313 = b"\xf3\r\r\n"  # importlib.util.MAGIC_NUMBER of every CPython 3.13.x


@pytest.fixture(scope="session")
def lambda_asset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundling.bundle(tmp_path_factory.mktemp("asset") / "a", ROOT, POLICY)


# ----- the lock file ------------------------------------------------------------------------
def test_the_lock_file_pins_every_requirement_with_hashes():
    pins = bundling.check_lock(ROOT / "requirements.txt", ROOT / "requirements.lock")
    for sdk in ("boto3", "botocore", "s3transfer", "jmespath", "urllib3", "python-dateutil", "six"):
        assert sdk in pins, sdk
    assert all(count >= 1 for _, count in pins.values())
    text = (ROOT / "requirements.lock").read_text()
    assert "make lock" in text.splitlines()[1]


def test_a_stale_lock_file_fails_the_bundle_naming_make_lock(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("pydantic==2.14.3\nrsa==4.9.1  # x\n-r other.txt\n")
    lock = tmp_path / "requirements.lock"
    lock.write_text("pydantic==2.14.2 \\\n    --hash=sha256:00\nrsa==4.9.1\n")
    with pytest.raises(bundling.BundlingError, match=r"pydantic==2.14.3 but .*make lock") as err:
        bundling.check_lock(req, lock)
    assert "no hashes for rsa" in str(err.value)
    with pytest.raises(bundling.BundlingError, match="is missing: run `make lock`"):
        bundling.check_lock(req, tmp_path / "nope.lock")


def test_pip_installs_from_the_lock_with_hashes_for_the_target(tmp_path, monkeypatch):
    calls: list[list[str]] = []

    def fake(args: list[str]) -> str:
        calls.append(args)
        target = Path(args[args.index("--target") + 1])
        (target / "pydantic").mkdir(parents=True)
        (target / "pydantic" / "__init__.py").write_text("X = {'a', 'b'}\n")
        (target / "pydantic" / "types.pyi").write_text("")
        (target / "bin").mkdir()
        return ""

    monkeypatch.setattr(bundling, "_run_pip", fake)
    lock = tmp_path / "requirements.lock"
    lock.write_text("pydantic==2.14.3 \\\n    --hash=sha256:00\n")
    first = bundling.build_dependencies(lock, tmp_path / "cache")
    (args,) = calls
    assert "--require-hashes" in args and "--no-deps" in args and args[args.index("-r") + 1] == str(lock)
    assert args[args.index("--platform") + 1] == "manylinux2014_aarch64" and args[args.index("--python-version") + 1] == "3.13"
    assert not (first / "bin").exists() and not (first / "pydantic" / "types.pyi").exists()
    assert bundling.build_dependencies(lock, tmp_path / "cache") == first and len(calls) == 1  # cached
    host = bundling.build_dependencies(lock, tmp_path / "cache", bundling.host_target("3.11"))
    assert host != first and len(calls) == 2 and "manylinux2014_" in calls[1][calls[1].index("--platform") + 1]


# ----- the SDK it is tested with ---------------------------------------------------------------
def _version_in(asset: Path, dist: str) -> str:
    (info,) = asset.glob(f"{dist}-*.dist-info")
    return info.name.removeprefix(f"{dist}-").removesuffix(".dist-info")


def test_the_asset_carries_the_pinned_sdk_the_tests_use(lambda_asset):
    import boto3
    import botocore

    pins = bundling.locked_pins(ROOT / "requirements.lock")
    assert _version_in(lambda_asset, "boto3") == pins["boto3"][0] == boto3.__version__
    assert _version_in(lambda_asset, "botocore") == pins["botocore"][0] == botocore.__version__
    models = sorted((lambda_asset / "botocore" / "data" / "s3").glob("*/service-2.json*"))
    raw = models[-1].read_bytes()
    model = json.loads(gzip.decompress(raw) if models[-1].suffix == ".gz" else raw)
    assert "IfMatch" in model["shapes"]["DeleteObjectRequest"]["members"]
    # every service model is kept (no pruning): the function's calls need no inventory
    assert len(list((lambda_asset / "botocore" / "data").iterdir())) > 300


def test_the_asset_is_arm64_cp313_and_within_budget(lambda_asset):
    sos = sorted(p.name for p in lambda_asset.rglob("*.so"))
    assert any(n.startswith("_pydantic_core.") and "cpython-313-aarch64" in n for n in sos), sos
    assert not [n for n in sos if "x86_64" in n], sos
    assert (lambda_asset / "policy.yaml").read_bytes() == POLICY.read_bytes()
    size = bundling.tree_size(lambda_asset)
    print(f"\nasset unzipped: {size / 1e6:.2f} MB (SDK included)")
    assert size <= MAX_ASSET_BYTES, f"{size / 1e6:.2f} MB"


# ----- .pyc: only 3.13's, or none ----------------------------------------------------------------
def test_no_pyc_of_another_python_version(lambda_asset):
    pycs = list(lambda_asset.rglob("*.pyc"))
    compiler = bundling.find_python("3.13")
    if compiler is None:
        assert pycs == [], "no 3.13 interpreter here: the asset must ship no .pyc"
        return
    assert pycs, f"{compiler} was found: the asset is precompiled"
    wrong = [p for p in pycs if p.read_bytes()[:4] != MAGIC_313 or ".cpython-313." not in p.name]
    assert wrong == []
    flags = {struct.unpack("<I", p.read_bytes()[4:8])[0] for p in pycs}
    assert flags == {0b01}, "hash-based, unchecked: /var/task is read-only, never re-validated"
    assert (lambda_asset / "reaper" / "__pycache__" / "handler.cpython-313.pyc").is_file()
    assert b"/var/task/reaper/handler.py" in (lambda_asset / "reaper" / "__pycache__" / "handler.cpython-313.pyc").read_bytes()
    py = {p.with_suffix("") for p in lambda_asset.rglob("*.py")}
    assert len(pycs) >= len(py) * 0.95  # (a few data-only .py files may fail to compile: none today)


# ----- reproducible: the same commit, the same asset ------------------------------------------
def test_two_builds_from_the_same_commit_are_identical(lambda_asset, tmp_path):
    """A second build from an empty cache (pip downloads and installs again, compileall
    again) gives the same tree, hence the same AssetHashType.OUTPUT hash."""
    again = bundling.bundle(tmp_path / "b", ROOT, POLICY, cache_root=tmp_path / "fresh-cache")
    assert bundling.tree_hash(again) == bundling.tree_hash(lambda_asset)


# ----- the startup check: no IfMatch on DeleteObject, no delete attempt ----------------------------
def test_an_sdk_without_conditional_delete_refuses_deletes_before_any_audit_record(aws, monkeypatch, caplog):
    import boto3

    from reaper.stores import s3 as s3store

    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="tf-state")
    store = s3store.S3LockFileStore(client, "tf-state")
    store.validate()
    assert store.traits.delete_refused == "" and store.traits.pair_first
    members = client.meta.service_model.operation_model("DeleteObject").input_shape.members
    monkeypatch.delitem(members, "IfMatch")
    store.validate()
    store.validate()
    assert "has no IfMatch on S3 DeleteObject" in store.traits.delete_refused and store.traits.pair_first
    said = [r for r in caplog.records if "has no IfMatch" in r.getMessage()]
    assert len(said) <= 1  # once per process (the first test to see it says it)
    with pytest.raises(ValueError, match="no IfMatch"):
        store.delete(_parsed_lock(store))


def _parsed_lock(store):
    from datetime import datetime

    from reaper.models import LockInfo, LockRecord

    body = json.dumps({"ID": "1", "Operation": "OperationTypeApply", "Info": "", "Who": "ci@x", "Version": "1.10.0",
                       "Created": datetime(2026, 1, 1, tzinfo=UTC).isoformat(), "Path": "tf-state/a"})
    return LockRecord(store=store.name, key="a.tflock", lock_path="tf-state/a", token='"e"', raw={"body": body},
                      info=LockInfo.parse(body))
