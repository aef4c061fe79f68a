"""Demo only: replay a CI job that ran earlier, by setting back the clock of ``python -m reaper claim``.

``make demo`` seeds locks that CI jobs took hours ago. Each of those jobs wrote its
claim just before Terraform took its lock (the reaper joins a lock to the latest
claim by the same ``Who`` made at or before the lock's ``Created``). So that the
claims are written by the real command, in the job's own environment, the demo runs
``python -m reaper claim`` with this directory on ``PYTHONPATH`` and
``DEMO_CLOCK_OFFSET`` set (seconds, negative: in the past). Python imports this
``sitecustomize`` at start-up; it moves only the clock the claim command reads
(``datetime.now`` in ``reaper.commands.claim``), so the claim is stamped with
the time the job ran. Nothing else changes: the claim goes through the same code,
the same DynamoDB ``PutItem``. The reaper itself (scan, reap, explain) always runs
with the real clock, and without this directory on its path.
"""

import os

_offset = os.environ.get("DEMO_CLOCK_OFFSET")
if _offset:
    from datetime import datetime as _datetime, timedelta as _timedelta

    _delta = _timedelta(seconds=float(_offset))

    class _ReplayedDatetime(_datetime):
        """``datetime`` whose ``now()`` reads the replayed time."""

        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return _datetime.now(tz) + _delta

    from reaper.commands import claim as _claim_cli

    if getattr(_claim_cli, "datetime", None) is not _datetime:
        raise RuntimeError("devtools/replay_clock: reaper.commands.claim no longer reads datetime.now; update the demo")
    _claim_cli.datetime = _ReplayedDatetime
