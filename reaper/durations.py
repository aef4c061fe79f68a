"""Durations written like ``90s``, ``15m``, ``6h``, ``2d`` or ``1w``.

Pure and dependency-free: the policy model, the decision and the CLI share it.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"^(?:\d+[smhdw])+$")


def parse_duration(text: str) -> timedelta:
    """Parse ``"1h30m"``-style text; raise ValueError with a helpful message."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string like 90m, 6h or 2d, got {type(text).__name__}")
    compact = text.strip().lower().replace(" ", "")
    if not compact or not _WHOLE.match(compact):
        raise ValueError(f"invalid duration {text!r}: use a number and a unit (s, m, h, d, w), e.g. 90m, 6h, 2d")
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(compact))
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta | float | int) -> str:
    """Render a duration compactly for humans: ``2d3h``, ``45m``, ``12s``."""
    total = int(value.total_seconds() if isinstance(value, timedelta) else value)
    sign = "-" if total < 0 else ""
    total = abs(total)
    if total < 60:
        return f"{sign}{total}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
        if len(parts) == 2:
            break
    return sign + "".join(parts)
