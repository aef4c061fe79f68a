"""The guard: a small process between the wrapper and the command.

The wrapper forks it from its main thread (``PR_SET_PDEATHSIG`` fires when the *thread*
that forked dies). The guard leads the command's process group, waits for every
descendant and reports the command's exit status; when the wrapper dies, even by SIGKILL,
it kills the whole group:

- ``PR_SET_PDEATHSIG`` (Linux): the kernel signals the guard the moment the wrapper dies;
- the control pipe: the wrapper holds its write end, so end-of-file means the wrapper is
  gone (no race with the prctl, works in a PID namespace where ``getppid`` says 0, and is
  the polled fallback off Linux, with ``getppid``);
- a PID namespace where the machine allows one: the guard is its init, and when the init
  dies the kernel kills every process of the namespace, even those that left the group;
- ``PR_SET_CHILD_SUBREAPER`` otherwise: orphaned grandchildren (Terraform 1.0.3's child,
  which holds the lock, once panicwrap's parent is gone) are reparented to the guard, so
  "no child left" means the whole tree exited.

The guard also enforces the fence's last step itself: the wrapper tells it, with ``go`` and
after each successful renewal, the boot-time second by which the command must be dead; past
it the guard kills the group, so a wrapper that is stopped (SIGSTOP) or hung, alive but
renewing nothing, cannot leave the command running past its lease.

Protocol: guard -> wrapper lines on the report pipe: ``leader <pid>`` (the group's id as
the wrapper sees it), ``setup <kinds>``, ``started``, ``fenced``, ``exit <code>`` (a shell's
code: 128+N for signal N). Wrapper -> guard on the control pipe: ``go [<deadline>]``, then
``deadline <t>`` after each successful renewal; end-of-file when it dies. The guard uses only
``os``/``signal``/``select`` after the fork.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import host

PDEATH_SIGNAL = signal.SIGUSR1
IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTTOU, signal.SIGTTIN)
WAITED = {signal.SIGCHLD, PDEATH_SIGNAL}
# what the command gets back before exec: the defaults a shell gives its jobs
RESET = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTTOU, signal.SIGTTIN, signal.SIGPIPE,
         signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2, signal.SIGXFSZ)
POLL_SECONDS = 0.2


@dataclass
class GuardHandle:
    """The wrapper's side: the guard's pid, the control pipe's write end, the report pipe's read end."""

    pid: int
    control: int
    report: int


def start_guard(argv: Sequence[str], env: Mapping[str, str], try_pidns: bool = True) -> GuardHandle:
    """Fork the guard (call from the main thread). It waits for ``go`` before it runs ``argv``."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the guard is forked from the main thread: PR_SET_PDEATHSIG fires when the thread "
                           "that forked dies, and only the main thread lives as long as the wrapper")
    ctl_r, ctl_w = os.pipe()
    rep_r, rep_w = os.pipe()
    wrapper = os.getpid()
    pid = os.fork()
    if pid == 0:  # the guard
        code = 70
        try:
            os.close(ctl_w)
            os.close(rep_r)
            code = _guard(list(argv), dict(env), ctl_r, rep_w, wrapper, try_pidns)
        except BaseException:  # noqa: BLE001 - never return into the wrapper's code
            code = 70
        os._exit(code)
    os.close(ctl_r)
    os.close(rep_w)
    return GuardHandle(pid=pid, control=ctl_w, report=rep_r)


def _say(fd: int, line: str) -> None:
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass


class _Wake:
    """The guard's signals: SIGCHLD and the parent-death signal wake its ``select`` (through
    Python's wakeup fd, portable: no ``sigtimedwait`` off Linux); the rest are ignored."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, False)
        self.parent_died = False
        for sig in IGNORED:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(PDEATH_SIGNAL, self._died)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED)
        signal.set_wakeup_fd(self.w)

    def _died(self, *_: object) -> None:
        self.parent_died = True

    def wait(self, fds: list[int], timeout: float) -> list[int]:
        try:
            ready, _, _ = select.select([self.r, *fds], [], [], timeout)
        except InterruptedError:
            return []
        if self.r in ready:
            try:
                os.read(self.r, 4096)
            except BlockingIOError:
                pass
        return [fd for fd in ready if fd != self.r]


def _quiet_signals() -> None:
    try:
        signal.set_wakeup_fd(-1)  # the wrapper's: never write into it
    except (ValueError, OSError):
        pass
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)


def _guard(argv: list[str], env: dict[str, str], ctl: int, rep: int, wrapper: int, try_pidns: bool) -> int:
    _quiet_signals()
    if host.LINUX:
        host.set_pdeathsig(signal.SIGKILL)  # this process only relays, should there be a namespace
    if try_pidns and host.LINUX and host.unshare_pid_namespace():
        try:
            init = os.fork()  # PID 1 of the new namespace
        except OSError:
            init = -1
        if init == 0:
            os._exit(_leader(argv, env, ctl, rep, wrapper, pidns=True))
        if init > 0:
            _say(rep, f"leader {init}")
            os.close(ctl)
            os.close(rep)
            while True:
                try:
                    _, status = os.waitpid(init, 0)
                    return 0 if os.WIFEXITED(status) else 70
                except InterruptedError:
                    continue
                except ChildProcessError:
                    return 0
    _say(rep, f"leader {os.getpid()}")
    return _leader(argv, env, ctl, rep, wrapper, pidns=False)


class _Control:
    """The control pipe, read line by line: ``go [deadline]``, then ``deadline <t>`` whenever a
    renewal succeeds; end-of-file when the wrapper is gone."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""
        self.eof = False

    def _take(self) -> list[str]:
        *lines, self.buf = self.buf.split(b"\n")
        return [ln.decode("ascii", "replace").strip() for ln in lines]

    def first(self) -> str:
        """Block until the first line (or end-of-file: "")."""
        while b"\n" not in self.buf:
            try:
                chunk = os.read(self.fd, 256)
            except InterruptedError:
                continue
            if not chunk:
                self.eof = True
                return ""
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("ascii", "replace").strip()

    def poll(self) -> list[str]:
        """The lines that arrived, without blocking; sets ``eof``."""
        while not self.eof:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0)
            except (OSError, ValueError):
                self.eof = True
                break
            if not ready:
                break
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
        return self._take()


def _deadline(line: str) -> float | None:
    """``go 123.4`` / ``deadline 123.4``: the boot-time second by which the command must be dead."""
    parts = line.split()
    try:
        return float(parts[1]) if len(parts) > 1 else None
    except ValueError:
        return None


def _kill_all(pidns: bool) -> None:
    """SIGKILL every descendant, then the group (this process included). In a namespace the
    init's death kills everything in it (and /proc, mounted outside, numbers pids otherwise)."""
    if not pidns:
        for pid in host.descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    try:
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(137)


def _leader(argv: list[str], env: dict[str, str], ctl: int, rep: int, wrapper: int, pidns: bool) -> int:
    kinds: list[str] = []
    wake = _Wake()  # before the prctl: the parent-death signal has its handler already
    if host.LINUX and host.set_pdeathsig(PDEATH_SIGNAL):
        kinds.append("pdeathsig")
    if pidns:
        kinds.append("pidns")
    if pidns or (host.LINUX and host.set_child_subreaper()):
        kinds.append("subreaper")  # the init of a namespace reaps its orphans too
    if "pdeathsig" not in kinds:
        kinds.append("poll")  # the control pipe and getppid, every POLL_SECONDS
    os.setpgid(0, 0)
    if not pidns and os.getppid() != wrapper:
        return 0  # the wrapper died before the prctl: nothing was started
    _say(rep, "setup " + (",".join(kinds) or "none"))
    # wait for "go"; end-of-file means the wrapper is gone or gave up
    control = _Control(ctl)
    first = control.first()
    if first.split()[:1] != ["go"]:
        return 0
    deadline = _deadline(first)  # the fence's SIGKILL time, enforced here too: a frozen wrapper fences nothing
    child = os.fork()
    if child == 0:
        _exec(argv, env)
    _say(rep, "started")
    code: int | None = None
    while True:
        wake.wait([ctl], POLL_SECONDS)  # wakes on SIGCHLD, on the parent-death signal, on the pipe's EOF
        for line in control.poll():
            if line.startswith("deadline"):
                deadline = _deadline(line)
        if wake.parent_died or control.eof or (not pidns and os.getppid() != wrapper):
            _kill_all(pidns)
        if deadline is not None and host.boottime() >= deadline:
            _say(rep, "fenced")  # no renewal reached the guard in time (a stopped or hung wrapper)
            _kill_all(pidns)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                _say(rep, f"exit {code if code is not None else 1}")
                return 0
            except InterruptedError:
                continue
            if pid == 0:
                break
            if pid == child:
                raw = os.waitstatus_to_exitcode(status)
                code = raw if raw >= 0 else 128 - raw


def _exec(argv: list[str], env: dict[str, str]) -> None:
    """In the command's process: the signals a shell's job gets, then exec; 127/126 as a shell says."""
    try:
        for sig in RESET:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        try:
            os.write(2, f"lock-reaper run: cannot run {os.path.basename(argv[0])!r}: {exc.strerror}\n".encode())
        except OSError:
            pass
        os._exit(127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126)
    except BaseException:  # noqa: BLE001
        os._exit(126)
    os._exit(126)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("reaper.wrapper.guard is started by lock-reaper run")
