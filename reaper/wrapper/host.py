"""What the machine offers the wrapper: prctl and unshare (Linux, via ctypes), a clock that
counts through suspend, and a look at /proc for other terraform processes of this user."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

LINUX = sys.platform.startswith("linux")
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWPID = 0x20000000
TERRAFORM_NAMES = frozenset({"terraform", "tofu", "terragrunt"})

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and LINUX:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        except OSError:
            return None
    return _libc


def prctl(option: int, arg: int) -> bool:
    """``prctl(option, arg)``; False where it is not available or refused."""
    libc = _c()
    if libc is None:
        return False
    try:
        return int(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                              ctypes.c_ulong(0))) == 0
    except (AttributeError, OSError):
        return False


def set_pdeathsig(sig: int) -> bool:
    return prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper() -> bool:
    return prctl(PR_SET_CHILD_SUBREAPER, 1)


def unshare_pid_namespace() -> bool:
    """``unshare(CLONE_NEWPID)``: the next child of the caller is PID 1 of a new namespace.
    False when the machine refuses (no CAP_SYS_ADMIN, seccomp, not Linux)."""
    libc = _c()
    if libc is None:
        return False
    try:
        return int(libc.unshare(ctypes.c_int(CLONE_NEWPID))) == 0
    except (AttributeError, OSError):
        return False


def _suspend_clock() -> int | None:
    """A clock id that keeps counting while the machine is suspended: CLOCK_BOOTTIME on Linux;
    CLOCK_MONOTONIC_RAW on macOS (Apple's counts sleep; CLOCK_UPTIME_RAW and Python's
    ``time.monotonic`` do not); None elsewhere."""
    name = "CLOCK_BOOTTIME" if LINUX else "CLOCK_MONOTONIC_RAW" if sys.platform == "darwin" else None
    clock = getattr(time, name, None) if name else None
    if clock is None:
        return None
    try:
        time.clock_gettime(clock)
    except OSError:
        return None
    return int(clock)


_SUSPEND_CLOCK = _suspend_clock()


def boottime() -> float:
    """Seconds on a clock that keeps counting through suspend; ``time.monotonic`` where there is none."""
    if _SUSPEND_CLOCK is not None:
        return time.clock_gettime(_SUSPEND_CLOCK)
    return time.monotonic()


def counts_suspend() -> bool:
    """The fence's clock counts a suspend: a machine that wakes past the deadline fences at once."""
    return _SUSPEND_CLOCK is not None


def clock_name() -> str:
    if _SUSPEND_CLOCK is None:
        return "monotonic"
    return "boottime" if LINUX else "monotonic_raw"


def _stat(pid: str, proc: Path) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a /proc entry."""
    try:
        text = (proc / pid / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    if len(fields) < 3:
        return None
    try:
        return fields[0], int(fields[1]), int(fields[2])
    except ValueError:
        return None


def _uid(pid: str, proc: Path) -> int | None:
    try:
        for line in (proc / pid / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _names(pid: str, proc: Path) -> set[str]:
    names: set[str] = set()
    try:
        names.add((proc / pid / "comm").read_text().strip())
    except OSError:
        pass
    try:
        argv0 = (proc / pid / "cmdline").read_bytes().split(b"\0", 1)[0].decode("utf-8", "replace")
        if argv0:
            names.add(os.path.basename(argv0))
    except OSError:
        pass
    return names


def foreign_terraform(own_groups: Iterable[int], uid: int | None = None, exclude: Iterable[int] = (),
                      proc: Path = Path("/proc")) -> list[int]:
    """PIDs of running terraform/tofu/terragrunt processes of ``uid`` (default: ours) whose
    process group is none of ``own_groups``. Linux /proc only: [] where there is none."""
    if not proc.is_dir():
        return []
    uid = os.getuid() if uid is None else uid
    groups, skip = set(own_groups), set(exclude)
    found = []
    for entry in proc.iterdir():
        pid = entry.name
        if not pid.isdigit() or int(pid) in skip:
            continue
        st = _stat(pid, proc)
        if st is None or st[0] in ("Z", "X") or st[2] in groups:
            continue
        if not (_names(pid, proc) & TERRAFORM_NAMES):
            continue
        if _uid(pid, proc) == uid:
            found.append(int(pid))
    return sorted(found)


def group_members(pgid: int, proc: Path = Path("/proc")) -> list[int]:
    """Running (non-zombie) processes of process group ``pgid``."""
    if not proc.is_dir():
        return []
    out = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            st = _stat(entry.name, proc)
            if st is not None and st[2] == pgid and st[0] not in ("Z", "X"):
                out.append(int(entry.name))
    return sorted(out)


def descendants(root: int, proc: Path = Path("/proc")) -> list[int]:
    """Live descendants of ``root`` (from one /proc snapshot)."""
    if not proc.is_dir():
        return []
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            st = _stat(entry.name, proc)
            if st is not None and st[0] not in ("Z", "X"):
                children.setdefault(st[1], []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
