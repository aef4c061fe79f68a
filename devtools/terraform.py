"""Drive a REAL Terraform binary against moto_server's S3 backend (tests and demos only).

The working directory holds a configuration with only a variable and an
``output`` block, so Terraform needs no provider (nothing is downloaded). Changing
the variable gives ``apply`` something to change, so an ``apply`` without
``-auto-approve`` stops at its approval prompt while it holds the state lock.

Terraform 1.0.3 runs as two processes (the child holds the lock), so
``TerraformWorkdir.hold_lock`` starts ``apply`` in its own process group and
``HeldApply.kill`` sends SIGKILL to the whole group: the lock stays behind in the
DynamoDB table exactly as it does when a CI runner is killed mid-run.

The environment Terraform sees is built from scratch: fake AWS credentials, HOME
and an empty CLI configuration file inside the working directory, TF_IN_AUTOMATION,
no checkpoint calls. Nothing reaches the internet.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .motoserver import FAKE_CREDENTIALS

ROOT = Path(__file__).resolve().parent.parent
CACHED_1_0_3 = ROOT / ".cache" / "terraform-1.0.3" / "terraform"
APPROVAL_PROMPT = "Enter a value:"
LOCK_ERROR = "Error acquiring the state lock"


class TerraformError(RuntimeError):
    """A Terraform command failed; carries its combined output."""

    def __init__(self, args: list[str], code: int, output: str):
        self.args_ = args
        self.code = code
        self.output = output
        super().__init__(f"terraform {' '.join(args)} exited {code}:\n{output[-2000:]}")


def cached_terraform_1_0_3() -> Path | None:
    """The cached Terraform 1.0.3 (env TERRAFORM_1_0_3, else .cache/), or None."""
    env = os.environ.get("TERRAFORM_1_0_3")
    path = Path(env) if env else CACHED_1_0_3
    return path if path.is_file() and os.access(path, os.X_OK) else None


def binary_version(binary: str | Path) -> tuple[int, int, int] | None:
    """Version of a Terraform binary as a tuple, or None if it cannot be run."""
    try:
        out = subprocess.run(
            [str(binary), "version", "-json"],
            capture_output=True, text=True, timeout=30,
            env={"PATH": os.environ.get("PATH", ""), "CHECKPOINT_DISABLE": "1", "HOME": os.environ.get("HOME", "/")},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout
    try:
        text = json.loads(out.stdout)["terraform_version"]
    except (ValueError, KeyError, TypeError):
        pass  # very old versions have no -json: fall back to the text
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def terraform_on_path(min_version: tuple[int, int, int] = (1, 11, 0)) -> Path | None:
    """A ``terraform`` on PATH at least ``min_version``, or None (never required)."""
    found = shutil.which("terraform")
    if not found:
        return None
    version = binary_version(found)
    return Path(found) if version is not None and version >= min_version else None


@dataclass
class S3Backend:
    """Where the state and its lock live (a moto_server endpoint)."""

    endpoint: str
    bucket: str = "tf-state"
    key: str = "prod/terraform.tfstate"
    table: str = "terraform-locks"
    region: str = "us-east-1"
    workspace_key_prefix: str | None = None  # None: Terraform's default "env:"

    def lock_id(self, workspace: str = "default") -> str:
        """The LockID Terraform writes for a workspace (``<bucket>/<key>`` or ``<bucket>/env:/<ws>/<key>``)."""
        if workspace == "default":
            return f"{self.bucket}/{self.key}"
        prefix = self.workspace_key_prefix if self.workspace_key_prefix is not None else "env:"
        return f"{self.bucket}/{prefix}/{workspace}/{self.key}"

    def digest_id(self, workspace: str = "default") -> str:
        return self.lock_id(workspace) + "-md5"

    def hcl(self, version: tuple[int, int, int] | None) -> str:
        """The backend block. Terraform >= 1.6 gets the current option names, older ones the originals."""
        lines = [
            f'bucket = "{self.bucket}"',
            f'key = "{self.key}"',
            f'region = "{self.region}"',
            f'dynamodb_table = "{self.table}"',
            "skip_credentials_validation = true",
            "skip_metadata_api_check = true",
            "skip_region_validation = true",
        ]
        if version is not None and version >= (1, 6, 0):
            lines += [
                "endpoints = {",
                f'  s3 = "{self.endpoint}"',
                f'  dynamodb = "{self.endpoint}"',
                f'  sts = "{self.endpoint}"',
                "}",
                "use_path_style = true",
                "skip_requesting_account_id = true",
            ]
        else:
            lines += [
                f'endpoint = "{self.endpoint}"',
                f'dynamodb_endpoint = "{self.endpoint}"',
                f'sts_endpoint = "{self.endpoint}"',
                "force_path_style = true",
            ]
        if self.workspace_key_prefix is not None:
            lines.append(f'workspace_key_prefix = "{self.workspace_key_prefix}"')
        body = "\n".join("    " + ln for ln in lines)
        return 'terraform {\n  backend "s3" {\n' + body + "\n  }\n}\n"


@dataclass
class HeldApply:
    """A ``terraform apply`` waiting at its approval prompt while holding the lock."""

    proc: subprocess.Popen[bytes]
    lock_id: str
    info: dict[str, Any]  # the lock's parsed Info, as read from the table
    raw_info: str
    _chunks: list[bytes] = field(default_factory=list)
    _reader: threading.Thread | None = None
    survivors: list[int] = field(default_factory=list)  # group members still running after kill()

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def __enter__(self) -> "HeldApply":
        return self

    def __exit__(self, *exc: Any) -> None:
        """Never leave the apply behind: kill it if it is still running (e.g. a failed check)."""
        if self.alive():
            self.kill()

    def group_pids(self) -> list[int]:
        """Live (non-zombie) processes in the apply's process group (Linux /proc; [] elsewhere)."""
        return group_pids(self.proc.pid)

    def kill(self, timeout: float = 10.0) -> int:
        """SIGKILL the whole process group (Terraform 1.0.3's child holds the lock)
        and wait until no process of the group is left running."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + min(timeout, 3.0)
        while self.group_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        # Checked before the pipes close: a surviving child would otherwise die of EOF/SIGPIPE.
        self.survivors = self.group_pids()
        for pid in self.survivors:  # never leave a process behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._close()
        return code

    def answer(self, text: str, timeout: float = 60.0) -> int:
        """Answer the approval prompt (e.g. "yes") and wait for Terraform to finish."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._close()
        return code

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None and not stream.closed:
                    stream.close()
            except OSError:
                pass


class TerraformWorkdir:
    """One Terraform working directory wired to a moto_server S3 backend."""

    def __init__(self, binary: str | Path, workdir: str | Path, backend: S3Backend, variable: str = "release"):
        self.binary = str(binary)
        self.dir = Path(workdir)
        self.backend = backend
        self.variable = variable
        self.version = binary_version(self.binary)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.home = self.dir / ".home"
        self.home.mkdir(exist_ok=True)
        self.cli_config = self.home / "terraformrc"
        self.cli_config.write_text("", encoding="utf-8")
        self.write_config()

    # -- files and environment ---------------------------------------------
    def write_config(self) -> None:
        main = self.backend.hcl(self.version) + (
            f'\nvariable "{self.variable}" {{\n  type    = string\n  default = "initial"\n}}\n'
            f'\noutput "{self.variable}" {{\n  value = var.{self.variable}\n}}\n'
        )
        (self.dir / "main.tf").write_text(main, encoding="utf-8")

    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "TF_CLI_CONFIG_FILE": str(self.cli_config),
            "TF_IN_AUTOMATION": "1",
            "CHECKPOINT_DISABLE": "1",
            "AWS_EC2_METADATA_DISABLED": "true",
            **FAKE_CREDENTIALS,
        }
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = self.backend.region
        return env

    # -- commands --------------------------------------------------------------
    def run(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run one non-interactive command; stdout and stderr are combined in ``.stdout``."""
        cmd = [self.binary, *args]
        proc = subprocess.run(
            cmd, cwd=self.dir, env=self.env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise TerraformError(list(args), proc.returncode, proc.stdout)
        return proc

    def init(self) -> subprocess.CompletedProcess[str]:
        return self.run("init", "-input=false", "-no-color")

    def apply(self, value: str) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "-auto-approve", "-input=false", "-no-color", "-var", f"{self.variable}={value}")

    def plan(self, value: str, lock_timeout: str = "0s", check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.run(
            "plan", f"-lock-timeout={lock_timeout}", "-input=false", "-no-color", "-var", f"{self.variable}={value}",
            check=check,
        )

    def output_value(self) -> str:
        return json.loads(self.run("output", "-json", "-no-color").stdout)[self.variable]["value"]

    def workspace_new(self, name: str) -> subprocess.CompletedProcess[str]:
        return self.run("workspace", "new", "-no-color", name)

    def workspace_select(self, name: str) -> subprocess.CompletedProcess[str]:
        return self.run("workspace", "select", "-no-color", name)

    def current_workspace(self) -> str:
        return self.run("workspace", "show", "-no-color").stdout.strip()

    def hold_lock(self, value: str, dynamodb: Any, workspace: str = "default", timeout: float = 60.0) -> HeldApply:
        """Start ``apply`` (no -auto-approve) with a changed value in its own process
        group; return once its lock item is in the table and it waits at the prompt.

        ``dynamodb`` is a boto3 DynamoDB client for the same moto_server.
        """
        lock_id = self.backend.lock_id(workspace)
        proc = subprocess.Popen(
            [self.binary, "apply", "-no-color", "-var", f"{self.variable}={value}"],
            cwd=self.dir, env=self.env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        chunks: list[bytes] = []

        def read() -> None:
            assert proc.stdout is not None
            for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
                chunks.append(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        held = HeldApply(proc=proc, lock_id=lock_id, info={}, raw_info="", _chunks=chunks, _reader=reader)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if proc.poll() is not None:
                    held._close()
                    raise TerraformError(["apply"], proc.returncode, held.output)
                if not held.raw_info:
                    item = dynamodb.get_item(TableName=self.backend.table, Key={"LockID": {"S": lock_id}},
                                             ConsistentRead=True).get("Item")
                    if item and "Info" in item:
                        held.raw_info = item["Info"]["S"]
                        held.info = json.loads(held.raw_info)
                if held.raw_info and APPROVAL_PROMPT in held.output:
                    return held
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"terraform apply did not take lock {lock_id} and reach its prompt within {timeout}s:\n"
                        + held.output[-2000:]
                    )
                time.sleep(0.05)
        except BaseException:
            if proc.poll() is None:
                held.kill()
            raise


def group_pids(pgid: int) -> list[int]:
    """PIDs of running (non-zombie) processes whose process group is ``pgid``."""
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the ")" that ends the command name: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(entry.name))
    return sorted(pids)


def get_item(dynamodb: Any, table: str, lock_id: str) -> dict[str, Any] | None:
    """The raw item at ``lock_id`` (consistent read), or None."""
    return dynamodb.get_item(TableName=table, Key={"LockID": {"S": lock_id}}, ConsistentRead=True).get("Item")
