"""The wrapper's main loop: claim, go, renew, fence, shield, record the exit.

The main thread forks the guard, writes the claim, tells the guard to go, then waits on the
guard's report pipe and its own signals, and sends every signal the command gets. A
heartbeat thread renews the lease; the main thread only reads when the last renewal
succeeded, so a hanging AWS call can never delay the fence.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..aws import error_code, error_message
from ..durations import format_duration
from ..liveness.claims import Claim
from ..liveness.lease_fields import LeaseState
from ..models import claim_time
from . import host
from .guard import GuardHandle, start_guard
from .lease import LeaseTable
from .schedule import FenceSchedule, Shield

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_NO_LEASE = 1


@dataclass
class RunOptions:
    argv: Sequence[str]
    schedule: FenceSchedule
    shield: Shield = field(default_factory=Shield)
    require_lease: bool = False
    json: bool = False
    quiet: bool = False
    table_name: str = ""


class Heartbeat(threading.Thread):
    """Renews the lease every third of it; after a failure, every ``retry_every``."""

    def __init__(self, table: LeaseTable, claim: Claim, schedule: FenceSchedule, last_ok: float,
                 clock: Callable[[], float], wall: Callable[[], datetime], probe: Callable[[], bool],
                 exclusive: bool, say: Callable[[str], None]):
        super().__init__(name="lease-heartbeat", daemon=True)
        self.table, self.claim, self.schedule = table, claim, schedule
        self.clock, self.wall, self.probe, self.say = clock, wall, probe, say
        self._last_ok = last_ok
        self.exclusive = exclusive
        self.exclusive_written = not exclusive  # Exclusive false is in the item (the claim said so already)
        self.renewals = 0
        self.failures = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.renewed: Callable[[float], None] = lambda _last_ok: None

    def last_ok(self) -> float:
        with self._lock:
            return self._last_ok

    def _foreign(self) -> bool:
        try:
            return self.probe()
        except Exception:  # noqa: BLE001 - a /proc we cannot read proves nothing exclusive
            return True

    def run(self) -> None:
        due = self._last_ok + self.schedule.renew_every
        streak = 0
        while not self.stop.is_set():
            wait = due - self.clock()
            if wait > 0:
                self.stop.wait(min(wait, 0.5))  # re-read the boot-time clock: suspend does not stop it
                continue
            if self.exclusive and self._foreign():
                self.exclusive = False
            lost = not self.exclusive and not self.exclusive_written
            sent = self.clock()
            try:
                self.table.renew(self.claim, self.wall(), exclusive_lost=lost)
            except Exception as exc:  # noqa: BLE001 - a failed renewal is counted, the fence decides
                self.failures += 1
                streak += 1
                if streak == 1:
                    self.say(f"lease renewal failed ({error_code(exc)}): retrying every "
                             f"{self.schedule.retry_every:g}s; the command is stopped "
                             f"{self.schedule.interrupt_at:g}s after the last renewal if none succeeds")
                due = self.clock() + self.schedule.retry_every
                continue
            with self._lock:
                self._last_ok = max(self._last_ok, sent)
            self.renewed(self._last_ok)
            if lost:
                self.exclusive_written = True
            if streak:
                self.say(f"lease renewed again after {streak} failed attempt(s)")
            streak = 0
            self.renewals += 1
            due = sent + self.schedule.renew_every


class Runner:
    def __init__(self, opts: RunOptions, table: LeaseTable | None, make_claim: Callable[[datetime, LeaseState], Claim],
                 err: Any, env: Mapping[str, str] | None = None, clock: Callable[[], float] = host.boottime,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC), try_pidns: bool = True):
        self.opts, self.table, self.make_claim, self.err = opts, table, make_claim, err
        self.env = dict(os.environ if env is None else env)
        self.clock, self.wall, self.try_pidns = clock, wall, try_pidns
        self.name = os.path.basename(str(opts.argv[0]))  # never the arguments: they may hold secrets
        self.pending: list[int] = []
        self.interrupted_at: float | None = None
        self.shield_from: float | None = None
        self.termed = self.killed = False
        self.absorbed = 0
        self.events: list[dict[str, Any]] = []
        self.leader = 0
        self.guard: GuardHandle | None = None
        self.heartbeat: Heartbeat | None = None
        self.started = 0.0
        self._told: float | None = None  # the last renewal whose deadline the guard knows

    # ------------------------------------------------------------------ output
    def _print(self, line: str) -> None:
        try:
            print(line, file=self.err, flush=True)
        except (OSError, ValueError):
            pass  # a closed stderr must not kill the wrapper (its guard would kill the command)

    def say(self, text: str) -> None:
        if not self.opts.quiet or text.startswith(("error", "warning")):
            self._print(f"lock-reaper run: {text}")

    def _line(self, doc: dict[str, Any], text: str) -> None:
        if self.opts.json:
            self._print(json.dumps(doc, sort_keys=True))
        elif not self.opts.quiet:
            self._print(f"lock-reaper run: {text}")

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.pending.append(signum)

    def _send(self, sig: int, why: str) -> None:
        self._signal_group(sig)
        self.events.append({"signal": signal.Signals(sig).name, "why": why,
                            "at": round(self.clock() - self.started, 3)})

    def _signal_group(self, sig: int) -> None:
        if self.leader <= 1:
            return  # never the caller's own group (0) nor init's
        try:
            os.killpg(self.leader, sig)
        except (ProcessLookupError, PermissionError):
            pass
        if sig == signal.SIGKILL:  # anything that left the group but is still ours (we are a subreaper)
            for pid in host.descendants(os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def _act(self, now: float, running: bool) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            name = signal.Signals(signum).name
            if not running:  # the command has ended: nothing to send it
                self.absorbed += 1
                continue
            if self.interrupted_at is None:
                self.interrupted_at = self.shield_from = now
                self._send(signal.SIGINT, f"received {name}")
                self.say(f"received {name}: sent one interrupt to {self.name}'s process group; further signals are "
                         f"absorbed for {format_duration(self.opts.shield.seconds)}, then SIGTERM, then SIGKILL")
            else:
                self.absorbed += 1
                if self.shield_from is None:
                    self.shield_from = now
        if not running:
            return
        shield = self.opts.shield
        if self.shield_from is not None:
            if not self.termed and now >= self.shield_from + shield.seconds:
                self.termed = True
                self._send(signal.SIGTERM, "shield over")
            if not self.killed and now >= self.shield_from + shield.seconds + shield.kill_after:
                self.killed = True
                self._send(signal.SIGKILL, "shield over")
        if self.heartbeat is None:
            return
        s = self.opts.schedule
        since = now - self.heartbeat.last_ok()
        if since >= s.kill_at and not self.killed:
            self.killed = True
            self._fence(signal.SIGKILL, since)
        elif since >= s.terminate_at and not self.termed and not self.killed:
            self.termed = True
            self._fence(signal.SIGTERM, since)
        elif since >= s.interrupt_at and self.interrupted_at is None:
            self.interrupted_at = now
            self._fence(signal.SIGINT, since)

    def _fence(self, sig: int, since: float) -> None:
        self._send(sig, "fence")
        self.events[-1].update(since_last_renewal=round(since, 3),
                               before_deadline=round(self.opts.schedule.lease - since, 3))
        self.say(f"fence: no lease renewal for {since:.1f}s of {self.opts.schedule.lease:g}s: sent "
                 f"{signal.Signals(sig).name} to {self.name}'s process group")

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        old = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
        old_wake = signal.set_wakeup_fd(wake_w)
        host.set_child_subreaper()  # should the guard die, its orphans come to us
        tty = None
        try:
            self.guard = guard = start_guard(self.opts.argv, self.env, try_pidns=self.try_pidns)
            self.started = self.clock()
            kinds = self._await_setup(guard)
            if kinds is None:
                self.say("error: the guard process did not start")
                return 70
            tty = self._foreground()
            return self._run_guarded(guard, kinds, wake_r)
        finally:
            if tty is not None:
                self._background(tty)
            signal.set_wakeup_fd(old_wake)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)

    def _await_setup(self, guard: GuardHandle) -> tuple[str, ...] | None:
        buf, leader, kinds = b"", 0, None
        deadline = self.clock() + 10
        while (not leader or kinds is None) and self.clock() < deadline:
            ready, _, _ = select.select([guard.report], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(guard.report, 4096)
            if not chunk:
                break
            buf += chunk
            *lines, rest = buf.split(b"\n")
            buf = rest
            for line in lines:
                word, _, arg = line.decode().partition(" ")
                if word == "leader":
                    leader = int(arg)
                elif word == "setup":
                    kinds = tuple(k for k in arg.split(",") if k and k != "none")
        self._buf = buf
        if not leader or kinds is None:
            return None
        self.leader = leader
        return kinds

    def _probe(self) -> bool:
        """Another terraform of this user runs on this host, outside the wrapped group (or /proc
        cannot tell: then nothing says this run is the only one)."""
        try:
            return bool(host.foreign_terraform([self.leader], exclude=[os.getpid()]))
        except OSError:
            return True

    def _run_guarded(self, guard: GuardHandle, kinds: tuple[str, ...], wake_r: int) -> int:
        s = self.opts.schedule
        exclusive = host.LINUX and not self._probe()
        now = self.wall()
        # Fenced: the wrapper stops the command before the lease can expire, on a clock that counts a
        # suspend (without one, a laptop that sleeps past the lease would wake with its command running)
        lease = LeaseState(seconds=max(1, int(round(s.lease))), heartbeat=0, heartbeat_at=now, containment=kinds,
                           fenced=host.counts_suspend(), exclusive=exclusive)
        claim = self.make_claim(now, lease)
        claimed = False
        sent = self.clock()
        if self.table is not None:
            try:
                self.table.claim(claim)
                claimed = True
            except Exception as exc:  # noqa: BLE001 - one line, then run without a lease (or not at all)
                tail = ("not running the command (--require-lease)" if self.opts.require_lease else
                        f"running {self.name} without a lease: its lock is judged without one (unknown means keep)")
                self.say(f"warning: could not write the claim to {self.opts.table_name}: {error_code(exc)}: "
                         f"{error_message(exc)[:200]}; {tail}")
                if self.opts.require_lease:
                    os.close(guard.control)
                    self._reap_everything(block=True)
                    return EXIT_NO_LEASE
        doc = {"event": "start", "command": self.name, "who": claim.who, "claimed_at": claim_time(claim.claimed_at),
               "provider": claim.provider, "table": self.opts.table_name, "leased": claimed,
               "lease_seconds": s.lease, "renew_every": round(s.renew_every, 3), "containment": list(kinds),
               "exclusive": exclusive, "fenced": claimed and lease.fenced, "clock": host.clock_name(), "group": self.leader,
               "pid": os.getpid()}
        self._line(doc, (f"claimed {claim.who} at {doc['claimed_at']} in {self.opts.table_name} for "
                         f"{claim.describe()}: lease {format_duration(s.lease)} renewed every "
                         f"{s.renew_every:.3g}s, containment {','.join(kinds) or 'none'}, exclusive "
                         f"{'yes' if exclusive else 'no'}; running {self.name} (group {self.leader})")
                   if claimed else f"running {self.name} without a lease (group {self.leader})")
        if claimed and self.table is not None:
            self.heartbeat = Heartbeat(self.table, claim, s, sent, self.clock, self.wall, self._probe, exclusive,
                                       self.say)
        # the guard enforces the fence's SIGKILL too, should this process stop or hang
        self._told = sent if self.heartbeat is not None else None
        os.write(guard.control, (f"go {sent + s.kill_at:.6f}\n" if self._told is not None else "go\n").encode())
        os.set_blocking(guard.control, False)
        if self.heartbeat is not None:
            self.heartbeat.renewed = self._tell_guard
            self.heartbeat.start()
        code = self._loop(guard, wake_r)
        gone = self.clock()
        hb = self.heartbeat
        if hb is not None:
            hb.stop.set()
            hb.join(timeout=2 * s.call_timeout + 1)  # a renewal in flight took its time before this
        ended = self.wall()
        recorded = False
        if hb is not None and hb.exclusive and self._probe():
            # a terraform started after the last renewal and still running: the exit record must say so,
            # or the lease evidence would take that terraform's live lock for this ended run's
            hb.exclusive = False
        if claimed and self.table is not None:
            try:
                self.table.end(claim, ended, code, exclusive_lost=hb is not None and not hb.exclusive
                               and not hb.exclusive_written)
                recorded = True
            except Exception as exc:  # noqa: BLE001
                self.say(f"warning: could not record the exit in {self.opts.table_name}: {error_code(exc)}: "
                         f"{error_message(exc)[:200]}")
        os.close(guard.control)
        self._act(self.clock(), running=False)  # signals that came while the exit was being recorded
        elapsed = gone - self.started
        end = {"event": "end", "command": self.name, "exit_code": code, "seconds": round(elapsed, 3),
               "recorded": recorded, "leased": claimed, "renewals": hb.renewals if hb else 0,
               "failed_renewals": hb.failures if hb else 0, "exclusive": hb.exclusive if hb else exclusive,
               "signals": self.events, "absorbed_signals": self.absorbed}
        if hb is not None:
            end["ended_since_last_renewal"] = round(gone - hb.last_ok(), 3)
            end["lease_seconds"] = s.lease
        self._line(end, f"{self.name} exited {code} after {format_duration(elapsed) if elapsed >= 60 else f'{elapsed:.1f}s'}"
                        + (f"; {end['renewals']} renewal(s), {end['failed_renewals']} failed" if hb else "")
                        + ("; exit recorded" if recorded else "")
                        + (f"; signals sent: {', '.join(e['signal'] + ' (' + e['why'] + ')' for e in self.events)}"
                           if self.events else ""))
        return code

    def _loop(self, guard: GuardHandle, wake_r: int) -> int:
        code: int | None = None
        buf = getattr(self, "_buf", b"")
        report_open = True
        guard_status: int | None = None
        while True:
            self._act(self.clock(), running=True)
            if not report_open:
                done, status = self._reap_everything(block=False)
                if status is not None:
                    guard_status = status
                if done and self._group_empty():  # off Linux the group can outlive its reaped leader
                    break
            fds = [wake_r] + ([guard.report] if report_open else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.05 if self.shield_from or self.heartbeat else 0.25)
            except InterruptedError:
                continue
            if wake_r in ready:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
            if guard.report in ready:
                chunk = os.read(guard.report, 4096)
                if not chunk:
                    report_open = False
                    if self.heartbeat is not None:
                        self.heartbeat.stop.set()  # the guard is gone: no renewal after the command's end
                    if code is None and not self.killed:  # the guard died on its own: nothing contains the command
                        self.killed = True
                        self._send(signal.SIGKILL, "guard gone")
                        self.say(f"warning: the guard process died: killed {self.name}'s process group, which "
                                 f"nothing would stop should this wrapper die")
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    word, _, arg = line.decode().partition(" ")
                    if word == "exit":
                        code = int(arg)
                    elif word == "fenced":  # the guard's own fence: this process renewed nothing in time
                        self.killed = True
                        self.events.append({"signal": "SIGKILL", "why": "fence (guard)",
                                            "at": round(self.clock() - self.started, 3)})
                        self.say(f"fence: the guard killed {self.name}'s process group: no renewal reached it "
                                 f"within {self.opts.schedule.kill_at:g}s")
        self._act(self.clock(), running=False)
        if code is not None:
            return code
        if self.killed:
            return 128 + signal.SIGKILL
        if guard_status is not None and os.WIFSIGNALED(guard_status):
            return 128 + os.WTERMSIG(guard_status)
        return 1

    def _tell_guard(self, last_ok: float) -> None:
        """From the heartbeat thread, after each successful renewal: the guard's new deadline (the
        fence's SIGKILL time). One short write to a pipe: atomic, never blocks."""
        if self.guard is None or self._told is None:
            return
        try:
            os.write(self.guard.control, f"deadline {last_ok + self.opts.schedule.kill_at:.6f}\n".encode())
            self._told = last_ok
        except OSError:
            pass  # a full pipe (a guard that reads nothing) or a guard that is gone: the report pipe says

    def _group_empty(self) -> bool:
        """No process is left in the command's group (a subreaper or a namespace already waited
        for every descendant; without them, off Linux, this is what says the command ended)."""
        try:
            os.killpg(self.leader, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _reap_everything(self, block: bool) -> tuple[bool, int | None]:
        """Reap our children (the guard, and orphans adopted as a subreaper): (none left, guard's status)."""
        status_of_guard = None
        while True:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return True, status_of_guard
            except InterruptedError:
                continue
            if pid == 0:
                return False, status_of_guard
            if self.guard is not None and pid == self.guard.pid:
                status_of_guard = status

    # ------------------------------------------------------------------ the terminal
    def _foreground(self) -> int | None:
        """On a terminal whose foreground job we are, hand it to the command's group (as a shell
        does), so that it can read the approval prompt and gets Ctrl-C from the terminal itself."""
        try:
            if not os.isatty(0) or os.tcgetpgrp(0) != os.getpgrp():
                return None
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            os.tcsetpgrp(0, self.leader)
            return os.getpgrp()
        except OSError:
            return None

    def _background(self, pgrp: int) -> None:
        try:
            os.tcsetpgrp(0, pgrp)
        except OSError:
            pass
