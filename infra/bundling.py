"""Local (Docker-free) bundling of the Lambda asset.

The asset is:

- every runtime dependency, boto3/botocore included, installed from the lock
  file (``requirements.lock``: every transitive pin with its hashes, generated
  from requirements.txt by ``make lock``) with ``pip install --require-hashes
  --no-deps --only-binary=:all: --platform ... --target``. The function runs the
  SDK it is tested with, never the Lambda runtime's copy;
- the ``reaper/`` package;
- the operators' policy file, as ``policy.yaml`` at the asset root;
- ``.pyc`` files, precompiled with ``compileall --invalidation-mode
  unchecked-hash`` by an interpreter of the target's Python version when one is
  found (``find_python``): ``/var/task`` is read-only, so without them every cold
  start compiles the package again. A ``.pyc`` is used only by the version that
  wrote it: when no such interpreter is found the asset ships none, and says so
  once. Never a ``.pyc`` of another version.

The target is the Lambda's (``LAMBDA``: manylinux2014 aarch64, CPython 3.13) or,
for the as-deployed test and the benchmarks, the host's (``host_target``).

Reproducible: the same commit gives the same tree, hence the same
``AssetHashType.OUTPUT`` hash. pip installs hash-checked wheels (no build step);
the ``.pyc`` carry the source hash, not a timestamp, are written with
``PYTHONHASHSEED=0`` (set and frozenset constants are marshalled in hash order)
and name their source as ``/var/task/<path>`` whatever the build directory.

A few files no scheduled function uses are pruned (see ``PRUNE``); botocore's
service models are NOT pruned.

The installed dependencies are cached under ``.cache/lambda-deps/<key>/``, keyed
by the lock file, the target and the compiling interpreter's version, so repeated
synths copy them instead of reinstalling. The cache is filled atomically, so
concurrent synths are safe.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PYTHON_VERSION = "3.13"
PLATFORM = "manylinux2014_aarch64"
IMPLEMENTATION = "cp"
TASK_ROOT = "/var/task"  # where Lambda unpacks the asset: the path the .pyc files name
CACHE_LAYOUT = "5"  # bump when the layout of the cached tree (or PRUNE) changes
LOCK_FILE = "requirements.lock"
# The command that regenerates the lock file (``make lock`` runs it; README quotes it).
LOCK_COMMAND = (
    "uv pip compile requirements.txt --generate-hashes --python-platform aarch64-manylinux2014 "
    "--python-version 3.13 --custom-compile-command 'make lock' "
    "-o requirements.lock"
)
_SKIP_DIRS = {"__pycache__", "bin"}
# Files removed from the installed dependencies, each unused by a scheduled, non-HTTP function:
PRUNE = (
    # Swagger UI browser assets (1.7 MB), read only when an API Gateway resolver serves /swagger.
    "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui-bundle.min.js",
    "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui.min.css",
    # Type stubs: for type checkers, never imported.
    "**/*.pyi",
    "*-stubs",
)


class BundlingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    """What the asset is built for: pip's ``--platform``/``--python-version``/``--implementation``."""

    platform: str = PLATFORM
    python_version: str = PYTHON_VERSION
    implementation: str = IMPLEMENTATION

    def pip_args(self) -> list[str]:
        return [
            "--platform",
            self.platform,
            "--only-binary=:all:",
            "--python-version",
            self.python_version,
            "--implementation",
            self.implementation,
        ]


LAMBDA = Target()


def host_target(python_version: str | None = None) -> Target:
    """The host's platform (Linux only: manylinux2014 of this machine's architecture) for ``python_version``."""
    import platform as _platform

    if sys.platform != "linux":
        raise BundlingError("a host-platform asset is built on Linux only")
    version = python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    return Target(platform=f"manylinux2014_{_platform.machine()}", python_version=version)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ----- the lock file -------------------------------------------------------------------
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")


def direct_requirements(requirements_file: Path) -> dict[str, str]:
    """requirements.txt's requirements: canonical name -> version specifier (comments, options dropped)."""
    out: dict[str, str] = {}
    for raw in requirements_file.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = _NAME.match(line)
        if not m:
            raise BundlingError(f"{requirements_file.name}: cannot read requirement {raw!r}")
        out[canonical(m.group(1))] = m.group(3).split(";", 1)[0].strip()
    return out


def locked_pins(lock_file: Path) -> dict[str, tuple[str, int]]:
    """The lock file's pins: canonical name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for raw in lock_file.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash="):
            if not current:
                raise BundlingError(f"{lock_file.name}: a hash before any pin")
            version, n = pins[current]
            pins[current] = (version, n + 1)
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if not m:
            raise BundlingError(f"{lock_file.name}: not an exact pin: {raw!r}")
        current = canonical(m.group(1))
        pins[current] = (m.group(2), 0)
    return pins


def check_lock(requirements_file: Path, lock_file: Path) -> dict[str, tuple[str, int]]:
    """The lock's pins, after checking it matches requirements.txt: every direct requirement
    pinned (at its ``==`` version), every pin hashed. Raises BundlingError naming the fix."""
    if not lock_file.is_file():
        raise BundlingError(f"{lock_file.name} is missing: run `make lock` ({LOCK_COMMAND})")
    pins = locked_pins(lock_file)
    stale = []
    for name, spec in direct_requirements(requirements_file).items():
        if name not in pins:
            stale.append(f"{name} is not in {lock_file.name}")
        elif spec.startswith("==") and spec[2:].strip() != pins[name][0]:
            stale.append(f"{name}{spec} but {lock_file.name} pins {pins[name][0]}")
    unhashed = sorted(n for n, (_, count) in pins.items() if count == 0)
    if unhashed:
        stale.append(f"no hashes for {', '.join(unhashed)}")
    if stale:
        raise BundlingError(
            f"{lock_file.name} does not match {requirements_file.name} ({'; '.join(stale)}): run `make lock`"
        )
    return pins


# ----- an interpreter of the target's version, for the .pyc ---------------------------
_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        print(f"Lock Reaper asset: {message}", file=sys.stderr)


def _version_of(python: str) -> str | None:
    try:
        proc = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def find_python(version: str) -> str | None:
    """A working CPython ``version`` interpreter: ``$LOCK_REAPER_PYTHON``, ``python<version>`` on
    PATH, pyenv's versions, ``uv python find``, or this interpreter; None when there is none."""
    candidates: list[str] = []
    if os.environ.get("LOCK_REAPER_PYTHON"):
        candidates.append(os.environ["LOCK_REAPER_PYTHON"])
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        candidates.append(sys.executable)
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)  # may be a pyenv shim that refuses: checked below
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(p) for p in sorted((pyenv_root / "versions").glob(f"{version}.*/bin/python{version}"), reverse=True)]
    uv = shutil.which("uv")
    if uv:
        try:
            found = subprocess.run([uv, "python", "find", version], capture_output=True, text=True, timeout=60)
            if found.returncode == 0 and found.stdout.strip():
                candidates.append(found.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    for c in candidates:
        if _version_of(c) == version:
            return c
    return None


def compile_tree(tree: Path, python: str, only: str | None = None) -> None:
    """``.pyc`` for every ``.py`` under ``tree`` (or its subdirectory ``only``): unchecked-hash,
    naming ``/var/task/<path relative to tree>``, reproducible."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONHASHSEED"] = "0"
    proc = subprocess.run(
        [python, "-s", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
         "-s", str(tree), "-p", TASK_ROOT, str(tree / only if only else tree)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BundlingError(f"compileall failed in {tree}:\n{tail}")


def compiler_for(target: Target, precompile: bool = True) -> str | None:
    """The interpreter that writes the asset's ``.pyc``, or None (and why, said once)."""
    if not precompile:
        return None
    python = find_python(target.python_version)
    if python is None:
        _say_once(
            f"no Python {target.python_version} interpreter found (python{target.python_version} on PATH, pyenv, "
            f"`uv python find`, $LOCK_REAPER_PYTHON): the asset ships NO .pyc and each cold start compiles "
            "the package (see README, 'The Lambda asset')"
        )
        return None
    _say_once(f".pyc precompiled by {python} (Python {target.python_version}, unchecked-hash)")
    return python


# ----- pip -------------------------------------------------------------------------------
def _run_pip(args: list[str]) -> str:
    cmd = [sys.executable, "-m", "pip", *args]
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BundlingError(f"pip could not install the Lambda dependencies from the lock file:\n{tail}")
    return proc.stdout


def cache_key(lock_file: Path, target: Target, compiler_version: str | None) -> str:
    h = hashlib.sha256()
    for part in [CACHE_LAYOUT, target.platform, target.python_version, target.implementation, compiler_version or "no-pyc"]:
        h.update(part.encode("utf-8") + b"\0")
    h.update(lock_file.read_bytes())
    return h.hexdigest()[:20]


def build_dependencies(lock_file: Path, cache_root: Path, target: Target = LAMBDA, compiler: str | None = None) -> Path:
    """Install (or reuse) the locked dependency tree for ``target``; returns the cached directory."""
    target_dir = cache_root / cache_key(lock_file, target, target.python_version if compiler else None)
    if (target_dir / ".complete").is_file():
        return target_dir
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_root))
    try:
        _run_pip(["install", "--quiet", "--require-hashes", "--no-deps", "--no-compile", *target.pip_args(),
                  "--target", str(staging), "-r", str(lock_file)])
        for extra in _SKIP_DIRS:
            shutil.rmtree(staging / extra, ignore_errors=True)
        prune(staging)
        normalise(staging)
        if compiler:
            compile_tree(staging, compiler)
        (staging / ".complete").write_text("ok\n", encoding="utf-8")
        try:
            staging.rename(target_dir)
        except OSError:
            if not (target_dir / ".complete").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target_dir


def prune(tree: Path) -> None:
    for pattern in PRUNE:
        for p in sorted(tree.glob(pattern), reverse=True):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def normalise(tree: Path) -> None:
    """Drop what records the build rather than the package: ``direct_url.json`` (a local path, when
    installed from one) and ``__pycache__`` left by anything but ``compile_tree``."""
    for p in sorted(tree.glob("*.dist-info/direct_url.json")):
        p.unlink()
    for p in sorted(tree.rglob("__pycache__"), reverse=True):
        shutil.rmtree(p)


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo")) or n.startswith(".")}


def _ignore_dot(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n.startswith(".")}


def assemble(output_dir: Path, deps_dir: Path, package_dir: Path, policy_file: Path, compiler: str | None = None) -> None:
    """Fill ``output_dir`` with the dependencies (their ``.pyc`` included), the package (its own
    ``.pyc`` never copied, written by ``compiler`` if given) and the policy file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(deps_dir, output_dir, dirs_exist_ok=True, ignore=_ignore_dot)
    dest = output_dir / package_dir.name
    if dest.exists():
        raise BundlingError(f"a dependency installed a top-level {package_dir.name!r}: it would shadow the Lambda package")
    shutil.copytree(package_dir, dest, ignore=_ignore)
    shutil.copyfile(policy_file, output_dir / "policy.yaml")
    if compiler:
        compile_tree(output_dir, compiler, only=package_dir.name)


def bundle(
    output_dir: Path,
    project_root: Path,
    policy_file: Path,
    *,
    lock_file: Path | None = None,
    requirements_file: Path | None = None,
    cache_root: Path | None = None,
    target: Target = LAMBDA,
    precompile: bool = True,
) -> Path:
    """The whole asset into ``output_dir`` (what ``cdk synth`` bundles, for any ``target``)."""
    project_root = Path(project_root)
    lock = lock_file or project_root / LOCK_FILE
    check_lock(requirements_file or project_root / "requirements.txt", lock)
    compiler = compiler_for(target, precompile)
    deps = build_dependencies(lock, cache_root or project_root / ".cache" / "lambda-deps", target, compiler)
    assemble(Path(output_dir), deps, project_root / "reaper", Path(policy_file), compiler)
    return Path(output_dir)


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def tree_hash(path: Path) -> str:
    """sha256 over every file's relative path, mode bits and content, in path order."""
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(root.rglob("*"), key=lambda q: q.relative_to(root).as_posix()):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            h.update(f"L {rel} -> {os.readlink(p)}\0".encode())
        elif p.is_file():
            h.update(f"F {rel} {p.stat().st_mode & 0o111:o}\0".encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
        elif p.is_dir():
            h.update(f"D {rel}\0".encode())
    return h.hexdigest()
