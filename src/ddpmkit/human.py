"""Numbers for people: durations (4s, 3m 05s, 2h 10m, 3d 4h; read back from 90s, 10m, 1h30m)
and sizes on disk (512 B, 3.4 MiB)."""

from __future__ import annotations

import re

_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")


def fmt_duration(seconds: float) -> str:
    """4s, 3m 05s, 2h 10m, 3d 4h (negative counts as 0)."""
    s = max(0, int(round(seconds)))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s % 60:02d}s" if m else f"{s}s"


def parse_duration(text: str) -> float:
    """Seconds of a duration written as numbers with units d, h, m, s: `90s`, `10m`, `1h30m`,
    `1h 30m`, `1.5h`. Raises ValueError naming the text (a bare number has no unit: refused)."""
    compact = str(text).strip().lower()
    parts = _PART.findall(compact)
    if not parts or _PART.sub("", compact).strip():
        raise ValueError(f"{text!r} is not a duration: write it as 90s, 10m, 1h30m or 2d")
    units = [u for _, u in parts]
    if len(set(units)) != len(units) or units != sorted(units, key=lambda u: -_UNIT_S[u]):
        raise ValueError(f"{text!r} is not a duration: units go from the largest (d h m s), once each")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def fmt_bytes(n: float) -> str:
    """A byte count in binary units: 512 B, 3.4 KiB, 12.0 MiB, 1.5 GiB (GiB at most)."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
