"""The run log as a file: appends that fail in one line, and the records a resumed run repeats.

`LogFile` is what `rundir.JsonlLogger` writes through: unbuffered appends, so a failed write
(full disk, read-only file system, `ulimit -f`) raises at once as one `DdpmkitError` line
("could not append to RUN/<log file>: No space left on device (free some space); the
checkpoints written so far are intact") and leaves nothing buffered for close() to fail on again.

`drop_records_after(path, step)`: a run killed after its last checkpoint has logged steps the
resumed run trains (and logs) again; on resume they are dropped, so the log holds every
step once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import ignore_sigxfsz, write_atomic, write_failure


class LogFile:
    """A text file opened for appending (created if absent); `write(text)` writes all of it or raises."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = None
        ignore_sigxfsz()  # past `ulimit -f`: EFBIG, reported, not a silent death
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise DdpmkitError(self._failure(e)) from None

    def write(self, text: str) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        view = memoryview(text.encode("utf-8"))
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            raise DdpmkitError(self._failure(e)) from None
        return len(text)

    def flush(self) -> None:
        """Nothing to do: every write goes straight to the file."""

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _failure(self, e: OSError) -> str:
        return f"could not append to {self.path}: {write_failure(e)}; the checkpoints written so far are intact"


def drop_records_after(path: Path | str, step: int) -> int:
    """Rewrite the JSONL log at `path` (atomically) without its records of steps after `step`,
    and without lines that are not JSON objects (one cut short by a kill). Returns how many went."""
    path = Path(path)
    if not path.is_file():
        return 0
    keep: list[bytes] = []
    dropped = 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            record_step = json.loads(line).get("step")
        except (ValueError, AttributeError):  # not JSON (cut short), or not an object
            dropped += 1
            continue
        if isinstance(record_step, int) and record_step > step:
            dropped += 1
            continue
        keep.append(line)
    if dropped:
        write_atomic(path, lambda tmp: tmp.write_bytes(b"".join(line + b"\n" for line in keep)))
    return dropped
