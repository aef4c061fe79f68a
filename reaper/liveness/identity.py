"""Who took a lock: Terraform's ``Who`` (``user@hostname``) and what a hostname tells.

``terraform_who`` computes ``Who`` exactly as Terraform and OpenTofu do
(``statemgr.NewLockInfo``): ``fmt.Sprintf("%s@%s", userName, host)`` where
``userName`` is ``user.Current().Username`` ("" on error) and ``host`` is
``os.Hostname()`` ("" on error).

Terraform's Linux release binaries are built without cgo, so Go's
``os/user`` uses its pure-Go lookup: the uid is looked up in ``/etc/passwd``;
if that fails, the user is built from ``$USER`` and ``$HOME`` and is only
accepted when both are set. Elsewhere (macOS, cgo builds) it asks the system
user database (``getpwuid``), which Python's ``pwd`` module does too. On
Windows the name is ``DOMAIN\\user``.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

# GitHub-hosted runner VMs: fv-az123-456 (older images) or runnervmXXXXX (current).
_GITHUB_HOSTED = re.compile(r"^(fv-az\d+-\d+|runnervm[0-9a-z]+)$", re.IGNORECASE)
# GitLab Runner docker/kubernetes executors: runner-<short token>-project-<id>-concurrent-<n>[-suffix]
_GITLAB_RUNNER = re.compile(
    r"^runner-(?P<token>[0-9A-Za-z_-]+?)-project-(?P<project>\d+)-concurrent-(?P<n>\d+)(?:-[0-9A-Za-z-]+)?$")


_GO_INT = re.compile(r"^[+-]?\d+$")

def _passwd_name(uid: int, passwd_file: str = "/etc/passwd") -> str | None:
    """Go's pure lookup (os/user, lookup_unix.go): first /etc/passwd line whose uid field matches."""
    value = str(uid)
    try:
        with open(passwd_file, encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                if f":{value}:" not in line or line.count(":") < 6:
                    continue
                parts = line.split(":", 6)
                if parts[2] != value or parts[0] == "" or parts[0][0] in "+-":
                    continue  # NIS "+"/"-" lines: Go pretends they are absent
                if not _GO_INT.match(parts[3]):
                    continue  # Go skips rows whose gid does not parse
                return parts[0]
    except OSError:
        return None
    return None


def terraform_user(env: Mapping[str, str] | None = None, passwd_file: str = "/etc/passwd", platform: str | None = None) -> str:
    env = os.environ if env is None else env
    platform = platform or sys.platform
    if platform.startswith("win"):
        user, domain = env.get("USERNAME", ""), env.get("USERDOMAIN", "")
        return f"{domain}\\{user}" if domain and user else user
    uid = os.getuid()
    if platform.startswith("linux"):
        name = _passwd_name(uid, passwd_file)
        if name is not None:
            return name
        # Go: user from $USER and $HOME, accepted only when both (and the uid) are known.
        if env.get("USER") and env.get("HOME"):
            return env["USER"]
        return ""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return ""


def terraform_hostname() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return ""


def terraform_who(env: Mapping[str, str] | None = None) -> str:
    """``Who`` as the Terraform process on this machine would write it."""
    return f"{terraform_user(env)}@{terraform_hostname()}"


@dataclass(frozen=True)
class Who:
    user: str
    host: str

    @property
    def github_hosted(self) -> bool:
        return bool(_GITHUB_HOSTED.match(self.host))

    def gitlab_project(self) -> int | None:
        m = _GITLAB_RUNNER.match(self.host)
        return int(m.group("project")) if m else None

    def gitlab_runner_token(self) -> str | None:
        m = _GITLAB_RUNNER.match(self.host)
        return m.group("token") if m else None


def parse_who(who: str) -> Who:
    """Split on the last ``@`` (hostnames never contain one; usernames may)."""
    user, sep, host = who.rpartition("@")
    if not sep:
        return Who(user="", host=who)
    return Who(user=user, host=host)


def gitlab_project_from_host(host: str) -> int | None:
    return parse_who(f"x@{host}").gitlab_project()
