"""Temporaries of killed prepares: who builds a cache folder, and removing those left behind.

A cache is built in a dot-named temporary folder (`io_utils.atomic_path`) holding ``PREPARING``,
its builder's `runlock.owner_record` (PID, host, start). When `prepare` starts it deletes the
temporaries whose builder is gone (killed) and says so in one line; one whose builder still runs
is kept, and one built on another host is left alone with a note (its builder cannot be checked).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from rich.console import Console

from ddpmkit.data import cache as C
from ddpmkit.runlock import describe_owner, owner_record, owner_state, read_record

OWNER = "PREPARING"  # in a temporary being built: who builds it (runlock.owner_record)
GRACE_S = 60.0  # a temporary with no readable owner this young may be one just starting


def mark_owner(tmp: Path) -> None:
    """Name this process as the builder of the temporary cache folder `tmp`."""
    (tmp / OWNER).write_text(json.dumps(owner_record()) + "\n")


def remove_leftovers(cache_dir: Path, console: Console) -> list[Path]:
    """Delete the temporaries that killed prepares left in `cache_dir`; print one line saying so.

    A temporary whose builder still runs on this host is kept, and so is one built on another
    host (its builder cannot be checked from here: the line says to delete it by hand).
    Returns the removed paths.
    """
    removed, foreign, freed = [], [], 0
    for tmp in C.stale_temporaries(cache_dir):
        record = read_record(tmp / OWNER) if tmp.is_dir() else {}
        state = owner_state(record)
        if state == "unknown":  # written before owners were recorded, or killed at its first step
            with contextlib.suppress(OSError):
                state = "gone" if time.time() - tmp.stat().st_mtime > GRACE_S else "running"
        if state == "elsewhere":
            foreign.append((tmp, record))
        elif state == "gone":
            freed += _tree_size(tmp)
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        what = "temporary" if len(removed) == 1 else "temporaries"
        console.print(f"note: removed {len(removed)} leftover {what} of killed prepares from {cache_dir} "
                      f"({freed / 2**20:.1f} MiB)", markup=False)
    if foreign:
        console.print(f"note: left {len(foreign)} temporaries in {cache_dir} alone, e.g. {foreign[0][0].name} "
                      f"of {describe_owner(foreign[0][1])}; delete them if no prepare runs there", markup=False)
    return removed


def _tree_size(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size if path.exists() else 0
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total
