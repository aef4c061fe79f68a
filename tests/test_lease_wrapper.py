"""``lock-reaper run -- COMMAND``: the wrapper half of issue 12 (the lease evidence is tests/test_lease_evidence.py).

Unit level, a small Python child where Terraform adds nothing: the claim's lease attributes,
heartbeat renewals counted, the exit code passed through (128+N for a signal), the exit
recorded only after an orphaned grandchild (one that even left the group) exited, Exclusive
false when another process named terraform runs, the claim that cannot be written, the lease
too short to fence, the guard killing the command when the wrapper is SIGKILLed, the signal
shield.

Real Terraform (1.0.3 from the kit with a DynamoDB lock table; a terraform >= 1.11 on PATH with
``use_lockfile``), held at its apply prompt, the issue's scenarios:

3. only the wrapper SIGKILLed: the guard kills Terraform's whole group, no Terraform process is left;
4. Terraform's processes killed while the wrapper lives: the exit is recorded;
5. DynamoDB unreachable for the wrapper (a TCP proxy the test breaks): Terraform is stopped
   before the lease deadline (the measured times are printed);
6. SIGINT, then SIGTERM 7.5 s later, sent to the wrapper: Terraform gets one interrupt, cancels
   at the prompt and releases its lock itself.

Leases are 4-6 s here, so the suite stays fast. moto_server from tests/conftest.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from terraform_kit import require_terraform

from devtools.locks import create_claims_table, create_lock_table
from devtools.terraform import APPROVAL_PROMPT, S3Backend, TerraformWorkdir
from reaper.liveness.claims import Claim, ClaimError, claim_from_env
from reaper.liveness.lease_fields import LeaseState
from reaper.models import parse_created
from reaper.wrapper import host
from reaper.wrapper.lease import LeaseTable
from reaper.wrapper.schedule import MIN_LEASE_SECONDS, Shield, fence_schedule

ROOT = Path(__file__).resolve().parent.parent
TABLE = "lock-reaper-claims"
LOCKS, BUCKET, KEY = "terraform-locks", "tf-state", "prod/network/terraform.tfstate"
pytestmark = [pytest.mark.skipif(not host.LINUX, reason="the wrapper's tests drive Linux processes (/proc)"),
              pytest.mark.e2e]


# ---------------------------------------------------------------------- helpers
class Wrapped:
    """``python -m reaper run --json ARGS`` in its own session; its stderr's JSON lines parsed."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | str = ROOT, stdin: Any = subprocess.DEVNULL):
        self.proc = subprocess.Popen([sys.executable, "-m", "reaper", "run", "--json", *args], cwd=cwd, env=env,
                                     stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.out: list[bytes] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()
        self.group = 0
        self.t0 = time.monotonic()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            self.out.append(chunk)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self.err.append(line.decode("utf-8", "replace"))

    @property
    def output(self) -> str:
        return b"".join(self.out).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def doc(self, event: str) -> dict[str, Any] | None:
        for line in list(self.err):
            if line.startswith("{"):
                d = json.loads(line)
                if d.get("event") == event:
                    return d
        return None

    def started(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.doc("start")
            if d is not None:
                self.group = int(d["group"])
                return d
            assert self.proc.poll() is None or self.doc("start"), self.stderr
            time.sleep(0.02)
        raise TimeoutError("no start line:\n" + self.stderr)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5)
        return code

    def end(self) -> dict[str, Any]:
        d = self.doc("end")
        assert d is not None, self.stderr
        return d

    def cleanup(self) -> None:
        for pg in (self.proc.pid, self.group):
            if pg:
                try:
                    os.killpg(pg, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class TcpProxy:
    """127.0.0.1 -> the moto_server port. ``cut()`` closes its connections and leaves new ones hanging
    (accepted, never answered): DynamoDB unreachable, the worst way."""

    def __init__(self, port: int):
        self.target = port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.broken = False
        self.conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.conns.append(conn)
                if self.broken:
                    continue  # hang: never read, never answer
            try:
                up = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self.conns.append(up)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.broken:
                data = src.recv(65536)
                if not data or self.broken:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            self.broken = True
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns = []

    def heal(self) -> None:
        with self._lock:
            self.broken = False

    def close(self) -> None:
        self.sock.close()
        with self._lock:
            for c in self.conns:
                c.close()


def wrapper_env(endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GITHUB_", "RUNNER_", "CI_", "GITLAB_", "REAPER_")) and k != "CI"}
    env.update(AWS_ENDPOINT_URL=endpoint, PYTHONPATH=str(ROOT), **extra)
    return env


def claims(ddb: Any) -> list[dict[str, Any]]:
    return ddb.scan(TableName=TABLE, ConsistentRead=True)["Items"]


def the_claim(ddb: Any) -> dict[str, Any]:
    items = claims(ddb)
    assert len(items) == 1, items
    return items[0]


def marked(marker: str, wrapper: bool = True) -> list[int]:
    """Live processes whose command line holds ``marker`` (with ``wrapper=False``: not the
    wrapper's own processes, the guard included, whose command line is the wrapper's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if marker.encode() in cmdline and (wrapper or b"-m\0reaper\0run" not in cmdline):
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until(pred: Any, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


@pytest.fixture
def ddb(moto_env: Any) -> Any:
    client = boto3.client("dynamodb", region_name="us-east-1")
    create_claims_table(client, TABLE)
    return client


@pytest.fixture
def wrapped(moto_env: Any):
    runs: list[Wrapped] = []

    def start(args: list[str], env: dict[str, str] | None = None, **kw: Any) -> Wrapped:
        w = Wrapped(args, env or wrapper_env(moto_env.endpoint), **kw)
        runs.append(w)
        return w

    yield start
    for w in runs:
        w.cleanup()


# ---------------------------------------------------------------------- pure
def test_fence_schedule_ends_before_the_deadline_and_refuses_short_leases() -> None:
    for lease in (MIN_LEASE_SECONDS, 6, 30, 120, 3600):
        s = fence_schedule(lease)
        assert s.renew_every == pytest.approx(lease / 3)
        # a renewal due at a third of the lease, however slow, fails before the fence starts
        assert s.renew_every + 2 * s.call_timeout < s.interrupt_at < s.terminate_at < s.kill_at < s.deadline == lease
        assert s.call_timeout <= 5
    with pytest.raises(ValueError, match="too short to fence safely"):
        fence_schedule(MIN_LEASE_SECONDS - 1)
    assert Shield(20).kill_after == 5 and Shield(1).kill_after == 2


class FakeBeat:
    def __init__(self) -> None:
        self.ok = 0.0

    def last_ok(self) -> float:
        return self.ok


def fenced_runner(lease: float = 6, shield: float = 20) -> tuple[Any, list[tuple[str, float]], FakeBeat]:
    from reaper.wrapper.runner import Runner, RunOptions

    runner = Runner(RunOptions(argv=["terraform"], schedule=fence_schedule(lease), shield=Shield(shield)), None,
                    lambda *_: None, io.StringIO(), env={}, clock=lambda: 0.0)
    sent: list[tuple[str, float]] = []
    now = {"t": 0.0}
    runner._signal_group = lambda sig: sent.append((signal.Signals(sig).name, now["t"]))  # type: ignore[method-assign]
    beat = FakeBeat()
    runner.heartbeat = beat  # type: ignore[assignment]

    def at(t: float) -> None:
        now["t"] = t
        runner._act(t, running=True)

    runner.at = at
    return runner, sent, beat


def test_fence_steps_on_the_schedule_and_a_renewal_moves_the_deadline() -> None:
    runner, sent, beat = fenced_runner(lease=6)
    for i in range(0, 61):
        runner.at(i / 10)
    s = fence_schedule(6)
    assert [name for name, _ in sent] == ["SIGINT", "SIGTERM", "SIGKILL"]
    assert [t for _, t in sent] == pytest.approx([s.interrupt_at, s.terminate_at, s.kill_at], abs=0.1)
    assert sent[-1][1] < 6, "all before the deadline"

    runner, sent, beat = fenced_runner(lease=6)
    for i in range(0, 45):  # the interrupt at 3.9 s, then a renewal succeeds at 4.4 s
        runner.at(i / 10)
    beat.ok = 4.4
    for i in range(45, 80):
        runner.at(i / 10)
    assert [name for name, _ in sent] == ["SIGINT"], "a renewed lease needs no further escalation"


def test_waking_past_the_deadline_fences_at_once() -> None:
    """A suspend: the boot-time clock jumps from 1 s to 30 s; the wrapper kills at once, nothing gentler first."""
    runner, sent, _ = fenced_runner(lease=6)
    runner.at(1.0)
    runner.at(30.0)
    assert sent == [("SIGKILL", 30.0)]


def test_shield_one_interrupt_absorbs_the_rest_then_escalates() -> None:
    runner, sent, beat = fenced_runner(lease=6, shield=20)
    beat.ok = 10**9  # renewals fine: only the shield acts
    runner.pending += [signal.SIGINT]
    runner.at(0.0)
    runner.pending += [signal.SIGTERM, signal.SIGINT]
    runner.at(7.5)
    runner.at(19.9)
    assert sent == [("SIGINT", 0.0)] and runner.absorbed == 2
    runner.at(20.0)
    runner.at(24.9)
    runner.at(25.0)
    assert sent == [("SIGINT", 0.0), ("SIGTERM", 20.0), ("SIGKILL", 25.0)]


def test_the_guard_is_forked_from_the_main_thread_only() -> None:
    """PR_SET_PDEATHSIG fires when the *thread* that forked dies: a worker thread's fork is refused."""
    from reaper.wrapper.guard import start_guard

    errors: list[str] = []

    def fork_from_a_thread() -> None:
        try:
            start_guard(["true"], {})
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=fork_from_a_thread)
    t.start()
    t.join()
    assert errors and "main thread" in errors[0]


def test_claim_from_env_gives_provider_none_for_run_only(now: datetime) -> None:
    with pytest.raises(ClaimError):
        claim_from_env({}, "me@box", now)  # `claim` keeps its behaviour
    none = claim_from_env({}, "me@box", now, allow_none=True)
    assert none.provider == "none" and none.who == "me@box" and none.expires_at
    github = claim_from_env({"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "7", "GITHUB_REPOSITORY": "a/b"}, "me@box", now,
                            allow_none=True)
    assert github.provider == "github" and github.run_id == 7


def test_lease_table_writes_the_contract_attributes(aws: None, now: datetime) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1")
    create_claims_table(client, TABLE)
    table = LeaseTable(client, TABLE)
    lease = LeaseState(seconds=6, heartbeat=0, heartbeat_at=now, containment=("pdeathsig", "subreaper"), fenced=True,
                       exclusive=True)
    claim = claim_from_env({}, "me@box", now, allow_none=True).model_copy(update={"lease": lease})
    table.claim(claim)
    table.claim(claim)  # a retried put of our own item is ours
    other = claim.model_copy(update={"provider": "github"})
    with pytest.raises(Exception, match="ConditionalCheckFailed"):
        table.claim(other)  # never overwrites a claim
    table.renew(claim, now + timedelta(seconds=2))
    table.renew(claim, now + timedelta(seconds=4), exclusive_lost=True)
    table.end(claim, now + timedelta(seconds=5), 143)
    got = Claim.from_item(the_claim(client))
    assert got.provider == "none" and got.lease is not None
    assert got.lease == LeaseState(seconds=6, heartbeat=2, heartbeat_at=now + timedelta(seconds=4),
                                   containment=("pdeathsig", "subreaper"), fenced=True, exclusive=False,
                                   ended_at=now + timedelta(seconds=5), exit_code=143)
    assert got.lease.contained
    gone = claim.model_copy(update={"who": "nobody@box"})
    with pytest.raises(Exception, match="ConditionalCheckFailed"):
        table.renew(gone, now)  # a renewal never creates a claim


# ---------------------------------------------------------------------- a Python child
def test_renewals_counted_exit_code_passed_through_and_recorded(ddb: Any, wrapped: Any) -> None:
    w = wrapped(["--lease", "4s", "--table", TABLE, "--", *py("import time, sys; time.sleep(3.2); sys.exit(3)")])
    start = w.started()
    assert start["leased"] and start["fenced"] and start["provider"] == "none"
    assert "pdeathsig" in start["containment"] and "subreaper" in start["containment"]
    assert w.wait() == 3
    end = w.end()
    item = the_claim(ddb)
    lease = LeaseState.from_item(item)
    assert lease is not None and lease.seconds == 4 and lease.fenced and lease.contained
    assert end["renewals"] >= 2 and lease.heartbeat == end["renewals"], (end, item)
    assert lease.exit_code == 3 and end["exit_code"] == 3 and end["recorded"]
    claimed = parse_created(item["ClaimedAt"]["S"])
    assert lease.ended_at is not None and lease.ended_at - claimed >= timedelta(seconds=3)
    assert lease.heartbeat_at is not None and claimed < lease.heartbeat_at <= lease.ended_at
    assert "python" in w.stderr and "time.sleep" not in w.stderr, "the start/end lines never show the arguments"


def test_a_signal_exit_is_128_plus_n(ddb: Any, wrapped: Any) -> None:
    w = wrapped(["--lease", "4s", "--table", TABLE, "--", *py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")])
    assert w.wait() == 128 + signal.SIGTERM
    assert LeaseState.from_item(the_claim(ddb)).exit_code == 143  # type: ignore[union-attr]


def test_command_not_found_is_127(ddb: Any, wrapped: Any) -> None:
    w = wrapped(["--lease", "4s", "--table", TABLE, "--", "no-such-command-" + uuid.uuid4().hex[:8]])
    assert w.wait() == 127
    assert "cannot run" in w.stderr
    assert LeaseState.from_item(the_claim(ddb)).exit_code == 127  # type: ignore[union-attr]


@pytest.mark.parametrize("pidns", [True, False], ids=["pidns", "subreaper"])
def test_exit_recorded_only_after_an_orphaned_grandchild_exits(ddb: Any, wrapped: Any, tmp_path: Path,
                                                               pidns: bool) -> None:
    """The child exits at once; its grandchild (which even left the group, as panicwrap's child
    does not, but a daemon would) runs 2 s more: EndedAt comes after it, the exit code is the child's."""
    done = tmp_path / "grandchild-done"
    child = ("import subprocess, sys\n"
             "subprocess.Popen([sys.executable, '-c', 'import time, sys; time.sleep(2); "
             "open(sys.argv[1], \"w\").write(repr(time.time()))', sys.argv[1]], start_new_session=True)\n"
             "sys.exit(5)")
    w = wrapped(["--lease", "4s", "--table", TABLE, *([] if pidns else ["--no-pidns"]), "--", *py(child, str(done))])
    start = w.started()
    assert ("pidns" in start["containment"]) == pidns or not pidns
    assert w.wait() == 5
    finished = float(done.read_text())
    lease = LeaseState.from_item(the_claim(ddb))
    assert lease is not None and lease.exit_code == 5 and lease.ended_at is not None
    assert lease.ended_at.timestamp() >= finished, "EndedAt before the grandchild exited"


def test_exclusive_false_when_another_terraform_of_this_user_runs(ddb: Any, wrapped: Any, tmp_path: Path) -> None:
    foreign_bin = tmp_path / "terraform"
    foreign_bin.symlink_to("/bin/sleep")  # its comm is "terraform"
    w = wrapped(["--lease", "4s", "--table", TABLE, "--", *py("import time; time.sleep(2)")])
    w.started()
    foreign = subprocess.Popen([str(foreign_bin), "30"], start_new_session=True)  # after the claim: seen at a renewal
    try:
        assert w.wait() == 0
    finally:
        foreign.kill()
        foreign.wait()
    assert w.end()["exclusive"] is False
    assert LeaseState.from_item(the_claim(ddb)).exclusive is False  # type: ignore[union-attr]
    # ... and one running before the claim: the claim itself says so
    again = subprocess.Popen([str(foreign_bin), "30"], start_new_session=True)
    try:
        ddb.delete_item(TableName=TABLE, Key={k: the_claim(ddb)[k] for k in ("Who", "ClaimedAt")})
        w2 = wrapped(["--lease", "4s", "--table", TABLE, "--", *py("pass")])
        assert w2.started()["exclusive"] is False
        assert w2.wait() == 0
    finally:
        again.kill()
        again.wait()
    assert LeaseState.from_item(the_claim(ddb)).exclusive is False  # type: ignore[union-attr]


def test_exclusive_false_in_the_exit_record_when_another_terraform_started_after_the_last_renewal(
        ddb: Any, wrapped: Any, tmp_path: Path) -> None:
    """A plain terraform started after the last renewal and still running at the exit: the exit record says
    not exclusive (without it, the lease evidence would call that terraform's live lock the wrapped run's,
    ended, hence dead)."""
    foreign_bin = tmp_path / "terraform"
    foreign_bin.symlink_to("/bin/sleep")
    w = wrapped(["--lease", "30s", "--table", TABLE, "--", *py("import time; time.sleep(1.5)")])  # no renewal before the exit
    assert w.started()["exclusive"] is True
    foreign = subprocess.Popen([str(foreign_bin), "30"], start_new_session=True)
    try:
        assert w.wait() == 0
    finally:
        foreign.kill()
        foreign.wait()
    lease = LeaseState.from_item(the_claim(ddb))
    assert lease is not None and lease.heartbeat == 0 and lease.ended_at is not None
    assert lease.exclusive is False


def test_foreign_terraform_ignores_the_wrapped_group_and_other_users(tmp_path: Path) -> None:
    foreign_bin = tmp_path / "terraform"
    foreign_bin.symlink_to("/bin/sleep")
    own = subprocess.Popen([str(foreign_bin), "30"], start_new_session=True)
    try:
        assert wait_until(lambda: own.pid in host.foreign_terraform([]), 5)
        assert own.pid not in host.foreign_terraform([own.pid]), "the wrapped group is not foreign"
        assert own.pid not in host.foreign_terraform([], uid=os.getuid() + 12345), "another user's is not ours"
    finally:
        own.kill()
        own.wait()


def test_claim_not_written_runs_anyway_or_not_with_require_lease(moto_env: Any, wrapped: Any, tmp_path: Path) -> None:
    boto3.client("dynamodb", region_name="us-east-1")  # no claims table at all
    ran = tmp_path / "ran"
    touch = py("import sys; open(sys.argv[1], 'w').write('x')", str(ran))
    w = wrapped(["--lease", "4s", "--table", "no-such-table", "--", *touch])
    assert w.wait() == 0 and ran.exists()
    warnings = [ln for ln in w.err if "could not write the claim" in ln]
    assert len(warnings) == 1 and "unknown means keep" in warnings[0], w.stderr
    assert w.doc("start")["leased"] is False  # type: ignore[index]
    ran.unlink()
    w = wrapped(["--lease", "4s", "--table", "no-such-table", "--require-lease", "--", *touch])
    assert w.wait() == 1 and not ran.exists()
    assert "--require-lease" in w.stderr


def test_usage_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from reaper.cli import main

    monkeypatch.delenv("REAPER_CLAIMS_TABLE", raising=False)
    for args, needle in ((["--lease", "3s", "--table", TABLE, "--", "true"], "too short to fence safely"),
                         (["--table", TABLE], "no command"),
                         (["--", "true"], "no claims table"),
                         (["--lease", "soon", "--table", TABLE, "--", "true"], "invalid duration")):
        err = io.StringIO()
        assert main(["run", *args], err=err) == 2, args  # refused before anything is forked
        assert needle in err.getvalue(), (args, err.getvalue())
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    helped = capsys.readouterr().out
    for flag in ("--lease", "--table", "--region", "--who", "--shield", "--require-lease", "--json", "-- COMMAND"):
        assert flag in helped


@pytest.mark.parametrize("pidns", [True, False], ids=["pidns", "subreaper"])
def test_wrapper_sigkilled_the_guard_kills_the_whole_tree(ddb: Any, wrapped: Any, pidns: bool) -> None:
    marker = "lease-test-" + uuid.uuid4().hex
    child = ("import subprocess, sys, time\n"
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', sys.argv[1]], start_new_session=True)\n"
             "time.sleep(60)")
    w = wrapped(["--lease", "4s", "--table", TABLE, *([] if pidns else ["--no-pidns"]), "--", *py(child, marker)])
    w.started()
    assert wait_until(lambda: len(marked(marker, wrapper=False)) == 2, 10), marked(marker)
    assert len(marked(marker)) == (5 if pidns else 4), "the wrapper, the guard (and its namespace's relay), 2 children"
    os.kill(w.proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    assert wait_until(lambda: not marked(marker) and not host.group_members(w.group), 5), \
        f"left running: {marked(marker)}, group {host.group_members(w.group)}"
    print(f"\nwrapper SIGKILLed ({'pidns' if pidns else 'no pidns'}): the command's tree was gone "
          f"{time.monotonic() - t0:.2f}s later")
    assert LeaseState.from_item(the_claim(ddb)).ended_at is None  # type: ignore[union-attr]


def test_signal_shield_one_interrupt_then_absorbed(ddb: Any, wrapped: Any, tmp_path: Path) -> None:
    """The child gets exactly one SIGINT for the wrapper's SIGINT + SIGTERM, and stops in its own time."""
    log = tmp_path / "signals"
    child = ("import signal, sys, time\n"
             "got = []\n"
             "signal.signal(signal.SIGINT, lambda s, f: got.append('INT'))\n"
             "signal.signal(signal.SIGTERM, lambda s, f: got.append('TERM'))\n"
             "open(sys.argv[1], 'w').write('ready')\n"
             "while not got: time.sleep(0.01)\n"
             "time.sleep(2.5)\n"
             "open(sys.argv[1], 'w').write(','.join(got))\n"
             "sys.exit(0)")
    w = wrapped(["--lease", "6s", "--table", TABLE, "--shield", "10s", "--", *py(child, str(log))])
    w.started()
    assert wait_until(lambda: log.exists() and log.read_text() == "ready", 10)
    os.kill(w.proc.pid, signal.SIGINT)
    time.sleep(1.0)
    os.kill(w.proc.pid, signal.SIGTERM)
    os.kill(w.proc.pid, signal.SIGINT)
    assert w.wait() == 0
    assert log.read_text() == "INT", "the command must get one interrupt, nothing more"
    end = w.end()
    assert [e["signal"] for e in end["signals"]] == ["SIGINT"] and end["absorbed_signals"] == 2


def test_signal_shield_escalates_after_its_time(ddb: Any, wrapped: Any) -> None:
    child = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nsignal.signal(signal.SIGTERM, "
             "signal.SIG_IGN)\ntime.sleep(60)")
    w = wrapped(["--lease", "6s", "--table", TABLE, "--shield", "1s", "--", *py(child)])
    w.started()
    time.sleep(0.5)
    t0 = time.monotonic()
    os.kill(w.proc.pid, signal.SIGTERM)
    assert w.wait(timeout=30) == 128 + signal.SIGKILL
    took = time.monotonic() - t0
    assert [e["signal"] for e in w.end()["signals"]] == ["SIGINT", "SIGTERM", "SIGKILL"]
    assert 1 + Shield(1).kill_after - 0.5 < took < 1 + Shield(1).kill_after + 3, took


def test_fence_stops_a_python_child_before_the_deadline(moto_env: Any, ddb: Any, wrapped: Any) -> None:
    proxy = TcpProxy(moto_env.port)
    try:
        w = wrapped(["--lease", "4s", "--table", TABLE, "--", *py("import time; time.sleep(60)")],
                    env=wrapper_env(proxy.endpoint))
        w.started()
        proxy.cut()
        assert w.wait(timeout=30) == 128 + signal.SIGINT  # Python dies of its KeyboardInterrupt
        end = w.end()
        assert end["ended_since_last_renewal"] < 4.0, end
        assert end["signals"][0]["signal"] == "SIGINT" and end["signals"][0]["why"] == "fence"
        assert not end["recorded"]
    finally:
        proxy.close()


def test_a_stopped_wrapper_is_fenced_by_its_guard(ddb: Any, wrapped: Any) -> None:
    """SIGSTOP the wrapper alone: alive, so no parent-death signal, but renewing nothing. The
    guard kills the command by the fence's SIGKILL time all the same."""
    marker = "lease-test-" + uuid.uuid4().hex
    w = wrapped(["--lease", "4s", "--table", TABLE, "--", *py("import time; time.sleep(60)", marker)])
    w.started()
    seen = time.monotonic()  # after the claim was sent: the deadline is at most seen + 4 s
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: len(marked(marker, wrapper=False)) == 1, 5)
        assert wait_until(lambda: not marked(marker, wrapper=False), 10)
        gone = time.monotonic() - seen
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    print(f"\nwrapper stopped: its guard killed the command {gone:.2f}s after the claim was seen (lease 4s)")
    assert gone < 4.0, "the command outlived its lease"
    assert w.wait(timeout=30) == 128 + signal.SIGKILL
    assert any(e["why"] == "fence (guard)" for e in w.end()["signals"]), w.stderr
    lease = LeaseState.from_item(the_claim(ddb))
    assert lease is not None and lease.exit_code == 137 and lease.ended_at is not None
    assert lease.heartbeat_at is not None and lease.heartbeat_at <= lease.ended_at, "no renewal after the end"


def test_a_short_outage_is_ridden_out_without_a_fence(moto_env: Any, ddb: Any, wrapped: Any) -> None:
    """Renewals fail for less than the fence's wait: a renewal that succeeds again moves the deadline."""
    proxy = TcpProxy(moto_env.port)
    try:
        w = wrapped(["--lease", "8s", "--table", TABLE, "--", *py("import time; time.sleep(7)")],
                    env=wrapper_env(proxy.endpoint))
        w.started()
        time.sleep(1.0)
        proxy.cut()
        time.sleep(2.0)  # the renewal due at 2.7 s hangs until its 0.8 s timeout; the retry 0.7 s later succeeds
        proxy.heal()  # ... well before the fence's interrupt at 5.2 s
        assert w.wait(timeout=30) == 0, w.stderr
    finally:
        proxy.close()
    end = w.end()
    assert end["signals"] == [] and end["failed_renewals"] >= 1 and end["recorded"], end
    assert "renewed again" in w.stderr
    lease = LeaseState.from_item(the_claim(ddb))
    assert lease is not None and lease.heartbeat == end["renewals"] >= 2 and lease.exit_code == 0


def test_a_closed_stderr_does_not_stop_the_command(ddb: Any, moto_env: Any) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "reaper", "run", "--lease", "4s", "--table", TABLE, "--",
                             *py("import time; time.sleep(2)")], cwd=ROOT, env=wrapper_env(moto_env.endpoint),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    proc.stderr.close()  # nobody reads the wrapper's lines any more
    assert proc.wait(timeout=60) == 0
    lease = LeaseState.from_item(the_claim(ddb))
    assert lease is not None and lease.exit_code == 0 and lease.ended_at is not None


def test_on_a_terminal_the_command_reads_its_prompt_and_gets_ctrl_c(ddb: Any, moto_env: Any) -> None:
    """A laptop: the wrapper hands its terminal to the command's group, as a shell does, so the
    command can read its prompt (no SIGTTIN stop) and the terminal's Ctrl-C reaches it."""
    import fcntl
    import termios

    master, slave = os.openpty()

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    child = ("import sys, time\n"
             "answer = input('Enter a value: ')\n"
             "print('got', answer, flush=True)\n"
             "try:\n    time.sleep(30)\nexcept KeyboardInterrupt:\n    print('interrupted', flush=True)\n"
             "    sys.exit(7)")
    proc = subprocess.Popen([sys.executable, "-m", "reaper", "run", "--lease", "4s", "--table", TABLE, "--",
                             *py(child)], cwd=ROOT, env=wrapper_env(moto_env.endpoint), stdin=slave, stdout=slave,
                            stderr=slave, preexec_fn=controlling_tty)
    os.close(slave)
    seen = b""

    def read_until(needle: bytes, timeout: float = 30) -> bool:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while needle not in seen and time.monotonic() < deadline:
            import select as select_
            if select_.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        return needle in seen

    try:
        assert read_until(b"Enter a value:"), seen
        os.write(master, b"yes\n")
        assert read_until(b"got yes"), seen
        os.write(master, b"\x03")  # Ctrl-C: the terminal signals its foreground group
        assert proc.wait(timeout=30) == 7, seen
        assert read_until(b"exited 7"), seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    lease = LeaseState.from_item(the_claim(ddb))
    assert lease is not None and lease.exit_code == 7


# ---------------------------------------------------------------------- real Terraform
@dataclass
class LockfileBackend(S3Backend):
    """``use_lockfile = true`` (Terraform >= 1.10), no DynamoDB table."""

    def hcl(self, version: tuple[int, int, int] | None) -> str:
        lines = []
        for line in super().hcl(version).splitlines():
            stripped = line.strip()
            if stripped.startswith(("dynamodb_table", "dynamodb =")):
                continue
            lines.append(line)
            if stripped.startswith("bucket ="):
                lines.append("    use_lockfile = true")
        return "\n".join(lines) + "\n"


@dataclass
class Case:
    tf: TerraformWorkdir
    s3: Any
    ddb: Any
    lockfile: bool

    def lock(self) -> Any:
        if self.lockfile:
            try:
                return self.s3.get_object(Bucket=BUCKET, Key=KEY + ".tflock")["Body"].read().decode()
            except self.s3.exceptions.NoSuchKey:
                return None
        item = self.ddb.get_item(TableName=LOCKS, Key={"LockID": {"S": f"{BUCKET}/{KEY}"}}, ConsistentRead=True)
        return item.get("Item")

    def terraform_pids(self) -> list[int]:
        """Live terraform processes whose working directory is this test's."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() == "terraform" and os.readlink(entry / "cwd") == str(self.tf.dir) \
                        and (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0] not in ("Z", "X"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


@pytest.fixture(params=["1.0.3", "path-lockfile"], ids=["terraform-1.0.3", "terraform-on-path-use_lockfile"])
def case(request: pytest.FixtureRequest, moto_env: Any, ddb: Any, tmp_path: Path) -> Case:
    binary = require_terraform("1.0.3" if request.param == "1.0.3" else "path")
    lockfile = request.param != "1.0.3"
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    if not lockfile:
        create_lock_table(ddb, LOCKS)
    backend_cls = LockfileBackend if lockfile else S3Backend
    backend = backend_cls(endpoint=moto_env.endpoint, bucket=BUCKET, key=KEY, table=LOCKS)
    tf = TerraformWorkdir(binary, tmp_path / "tf", backend)
    tf.init()
    tf.apply("v1")
    return Case(tf=tf, s3=s3, ddb=ddb, lockfile=lockfile)


def hold(case: Case, wrapped: Any, endpoint: str, lease: str = "6s", extra: tuple[str, ...] = ()) -> Wrapped:
    """A wrapped ``terraform apply`` with a change, waiting at its prompt while it holds the lock."""
    tf = case.tf
    env = {**tf.env(), "AWS_ENDPOINT_URL": endpoint, "PYTHONPATH": str(ROOT)}
    w = wrapped(["--lease", lease, "--table", TABLE, *extra, "--", tf.binary, "apply", "-no-color", "-var",
                 f"{tf.variable}=v2"], env=env, cwd=tf.dir, stdin=subprocess.PIPE)
    start = w.started(timeout=60)
    assert start["leased"], w.stderr
    ok = wait_until(lambda: case.lock() is not None and APPROVAL_PROMPT in w.output or w.proc.poll() is not None, 60,
                    0.05)
    assert ok and w.proc.poll() is None, w.output + w.stderr
    if tf.version == (1, 0, 3):
        assert len(host.group_members(w.group)) == 3, "guard + panicwrap's parent + its child (which holds the lock)"
    return w


@pytest.mark.terraform
def test_scenario_3_only_the_wrapper_sigkilled(case: Case, wrapped: Any, moto_env: Any) -> None:
    w = hold(case, wrapped, moto_env.endpoint)
    assert case.terraform_pids()
    os.kill(w.proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    assert wait_until(lambda: not case.terraform_pids() and not host.group_members(w.group), 5), \
        f"left running: {case.terraform_pids()} group {host.group_members(w.group)}"
    print(f"\nscenario 3: wrapper SIGKILLed; Terraform's group gone {time.monotonic() - t0:.2f}s later")
    assert case.lock() is not None, "a killed Terraform leaves its lock: the lease evidence reaps it"
    lease = LeaseState.from_item(the_claim(case.ddb))
    assert lease is not None and lease.contained and lease.fenced and lease.ended_at is None


@pytest.mark.terraform
def test_scenario_4_terraform_killed_while_the_wrapper_lives(case: Case, wrapped: Any, moto_env: Any) -> None:
    w = hold(case, wrapped, moto_env.endpoint)
    pids = case.terraform_pids()
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert w.wait(timeout=30) == 128 + signal.SIGKILL
    assert not case.terraform_pids()
    end = w.end()
    assert end["recorded"] and end["exit_code"] == 137
    item = the_claim(case.ddb)
    lease = LeaseState.from_item(item)
    assert lease is not None and lease.exit_code == 137 and lease.ended_at is not None
    assert case.lock() is not None, "Terraform was killed: its lock stays, with the exit recorded after it"
    if not case.lockfile:
        created = parse_created(json.loads(case.lock()["Info"]["S"])["Created"])
        assert lease.ended_at >= created


@pytest.mark.terraform
@pytest.mark.parametrize("case", ["1.0.3"], indirect=True, ids=["terraform-1.0.3"])  # two processes: panicwrap
def test_terraform_1_0_3_child_orphaned_is_waited_for(case: Case, wrapped: Any, moto_env: Any) -> None:
    """panicwrap's parent killed: its child, which holds the lock, is orphaned and reparented to
    the guard; the wrapper waits for it, and records the exit only once it has gone too."""
    w = hold(case, wrapped, moto_env.endpoint)

    def ppid(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])

    pids = case.terraform_pids()
    parents = [p for p in pids if ppid(p) == w.group]
    children = [p for p in pids if p not in parents]
    assert len(parents) == 1 and len(children) == 1 and ppid(children[0]) == parents[0], pids
    os.kill(parents[0], signal.SIGKILL)
    assert wait_until(lambda: ppid(children[0]) != parents[0], 5)
    time.sleep(1.0)
    assert w.proc.poll() is None, "the wrapper must wait for the orphaned child\n" + w.stderr
    assert case.terraform_pids() == children and case.lock() is not None
    assert LeaseState.from_item(the_claim(case.ddb)).ended_at is None  # type: ignore[union-attr]
    killed_at = datetime.now().astimezone()
    os.kill(children[0], signal.SIGKILL)
    assert w.wait(timeout=30) == 128 + signal.SIGKILL  # the command's own exit: panicwrap's parent, killed
    lease = LeaseState.from_item(the_claim(case.ddb))
    assert lease is not None and lease.ended_at is not None and lease.ended_at >= killed_at


@pytest.mark.terraform
def test_scenario_5_dynamodb_unreachable_fence_before_the_deadline(case: Case, wrapped: Any, moto_env: Any) -> None:
    proxy = TcpProxy(moto_env.port)
    try:
        w = hold(case, wrapped, proxy.endpoint, lease="6s")
        proxy.cut()
        cut_at = time.monotonic()
        code = w.wait(timeout=30)
        stopped = time.monotonic() - cut_at
        end = w.end()
    finally:
        proxy.close()
    s = fence_schedule(6)
    fence = [e for e in end["signals"] if e["why"] == "fence"]
    print(f"\nscenario 5 ({case.tf.version}): lease 6s; fence "
          + ", ".join(f"{e['signal']} at {e['since_last_renewal']:.2f}s" for e in fence)
          + f" after the last renewal; Terraform's group gone at {end['ended_since_last_renewal']:.2f}s, "
          f"{6 - end['ended_since_last_renewal']:.2f}s before the deadline; wrapper exited {code} "
          f"{stopped:.2f}s after the cut")
    assert fence and fence[0]["signal"] == "SIGINT"
    assert fence[0]["since_last_renewal"] >= s.interrupt_at - 0.01
    assert end["ended_since_last_renewal"] < s.deadline, "Terraform outlived the lease"
    assert not case.terraform_pids()
    assert end["failed_renewals"] >= 1 and not end["recorded"]


@pytest.mark.terraform
@pytest.mark.parametrize("gap", [7.5, 0.02], ids=["github-7.5s", "quick-0.02s"])
def test_scenario_6_ci_cancel_one_interrupt_terraform_releases_its_lock(case: Case, wrapped: Any, moto_env: Any,
                                                                        gap: float) -> None:
    """GitHub's cancel: SIGINT, SIGTERM 7.5 s later. And the same 20 ms apart, faster than Terraform
    cancels: sent to Terraform itself that says "Two interrupts received. Exiting immediately"."""
    w = hold(case, wrapped, moto_env.endpoint, lease="6s")
    t0 = time.monotonic()
    os.kill(w.proc.pid, signal.SIGINT)
    released = exited = None
    termed = False
    while time.monotonic() - t0 < 30 and (exited is None or released is None or not termed):
        now = time.monotonic() - t0
        if released is None and case.lock() is None:
            released = now
        if exited is None and w.proc.poll() is not None:
            exited = now
        if not termed and now >= gap:
            termed = True
            if w.proc.poll() is None:
                os.kill(w.proc.pid, signal.SIGTERM)
        time.sleep(0.01)
    code = w.wait(timeout=30)
    end = w.end()
    print(f"\nscenario 6 ({case.tf.version}, SIGTERM {gap}s after SIGINT): Terraform's lock released "
          f"{f'by {released:.2f}s' if released is not None else 'never'}, the wrapper exited {code} "
          f"{f'at {exited:.2f}s' if exited is not None else 'late'} ({end['absorbed_signals']} signal(s) absorbed)")
    assert released is not None and case.lock() is None, "Terraform must release its lock itself:\n" + w.output
    assert "Two interrupts" not in w.output and "Exiting immediately" not in w.output, w.output
    assert "Interrupt received" in w.output
    assert [e["signal"] for e in end["signals"]] == ["SIGINT"]
    assert not case.terraform_pids()
    lease = LeaseState.from_item(the_claim(case.ddb))
    assert lease is not None and lease.ended_at is not None and lease.exit_code == code
    assert exited is not None and (exited < gap or end["absorbed_signals"] == 1)


def test_guard_killed_alone_the_wrapper_kills_the_command(ddb: Any, wrapped: Any) -> None:
    """Without its guard nothing would stop the command should the wrapper die: the wrapper stops it."""
    marker = "lease-test-" + uuid.uuid4().hex
    w = wrapped(["--lease", "4s", "--table", TABLE, "--no-pidns", "--", *py("import time; time.sleep(60)", marker)])
    w.started()
    assert wait_until(lambda: len(marked(marker, wrapper=False)) == 1, 10)
    os.kill(w.group, signal.SIGKILL)  # the guard leads the group: its pid is the group's id
    assert w.wait(timeout=20) == 128 + signal.SIGKILL
    assert not marked(marker)
    assert any(e["why"] == "guard gone" for e in w.end()["signals"])
    assert LeaseState.from_item(the_claim(ddb)).exit_code == 137  # type: ignore[union-attr]


def test_in_github_actions_the_claim_carries_the_run(ddb: Any, moto_env: Any, wrapped: Any) -> None:
    env = wrapper_env(moto_env.endpoint, GITHUB_ACTIONS="true", GITHUB_REPOSITORY="acme/infra",
                      GITHUB_RUN_ID="16123456789", GITHUB_RUN_ATTEMPT="2", RUNNER_NAME="self-hosted-3")
    w = wrapped(["--lease", "4s", "--table", TABLE, "--", *py("pass")], env=env)
    assert w.started()["provider"] == "github"
    assert w.wait() == 0
    claim = Claim.from_item(the_claim(ddb))
    assert (claim.provider, claim.repo, claim.run_id, claim.run_attempt, claim.runner_name) == \
        ("github", "acme/infra", 16123456789, 2, "self-hosted-3")
    assert claim.lease is not None and claim.lease.exit_code == 0
