"""Numbers for people: durations (4s, 3m 05s, 2h 10m, 3d 4h) and sizes on disk (512 B, 3.4 MiB)."""

from __future__ import annotations


def fmt_duration(seconds: float) -> str:
    """4s, 3m 05s, 2h 10m, 3d 4h (negative counts as 0)."""
    s = max(0, int(round(seconds)))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s % 60:02d}s" if m else f"{s}s"


def fmt_bytes(n: float) -> str:
    """A byte count in binary units: 512 B, 3.4 KiB, 12.0 MiB, 1.5 GiB (GiB at most)."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
