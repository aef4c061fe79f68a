"""`make demo` runs end to end: its own moto_server, the real CLI as subprocesses,
and it prints what was reaped, kept, audited and alerted."""

from __future__ import annotations

import io
import re
import socket
from pathlib import Path

import pytest

from devtools import demo

pytestmark = pytest.mark.e2e


def _port_closed(text: str) -> bool:
    m = re.search(r"starting moto_server on http://127\.0\.0\.1:(\d+)", text)
    assert m, "the demo must say where the emulator runs"
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", int(m.group(1)))) != 0


def test_demo_reaps_the_stale_locks_and_shows_the_alerts(tmp_path: Path) -> None:
    buf = io.StringIO()
    result = demo.run_demo(demo.Out(buf), tmp_path / "demo")
    text = buf.getvalue()

    # Which seeded locks are stale past their rule's hard_max_age (liveness is unknown in the demo).
    expected = sorted(
        demo._path(k)
        for k in ("prod/dns/terraform.tfstate", "staging/app/terraform.tfstate", "env:/staging/services/api/terraform.tfstate")
    )
    assert result["reaped_ids"] == expected
    assert result["reaped"] == 3 and result["kept"] == 7
    assert result["scan_exit"] == 0 and result["reap_exit"] == 0
    assert result["scan_deleted"] == 0, "scan must never delete"
    assert result["digests_unchanged"] is True and result["digests"] == 15
    assert result["audit_records"] == 3
    assert result["sns_received"] == 1 and result["sns_subject"].startswith("Lock Reaper: 3 reaped")
    assert result["events"] == 3
    assert result["seconds"] < 60

    # What a first-time user reads.
    assert "python -m reaper scan --config" in text and "python -m reaper reap --config" in text
    assert "3 would_reap" in text and "3 reaped" in text
    assert "Reaped (3)" in text and "Kept (7)" in text
    assert "State digests: 15 before, 15 after, all unchanged" in text
    assert "Subject: Lock Reaper: 3 reaped, 0 raced" in text
    assert text.count("lock-reaper / Terraform Lock Reaped:") == 3
    for reason in ("below the min_age floor", "in the future", "differs from the lock's path",
                   "unparseable lock", "excluded by", "unknown means keep"):
        assert reason in text, reason
    assert "Traceback" not in text
    assert (tmp_path / "demo" / "policy.yaml").is_file()
    assert _port_closed(text), "the emulator must be stopped at the end"


def test_demo_failure_is_one_readable_line_and_stops_the_emulator(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the demo wants its work directory")
    buf = io.StringIO()
    code = demo.main(["--workdir", str(blocker)], stream=buf)
    text = buf.getvalue()
    assert code == 1
    assert "demo failed:" in text and "Traceback" not in text
    assert _port_closed(text)
