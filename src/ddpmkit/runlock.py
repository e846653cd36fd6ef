"""One writer per run directory: a lock file holding the holder's PID, host and start time.

Usage (the trainer, before it writes anything into the run directory)::

    with RunLock(run_dir) as lock:      # or: lock = RunLock(run_dir); note = lock.acquire()
        if lock.note:
            log(lock.note)              # "note: took over the lock of PID 123 ..., which is gone"
        ...                             # train; lock.release() happens on exit

- `acquire()` creates the run directory if needed and ``run.lock`` in it, and returns None or a
  one-line note when it took over a lock left by a process that died (kill -9, power cut).
- A second acquirer gets `DdpmkitError` naming the holder, one line: "run directory X is in use
  by PID 123 on host h since <time>, started as `<command>`; wait for it to finish or use
  another --run-dir".
- `release()` deletes ``run.lock``, and the run directory too when `acquire` created it and it is
  still empty (a start that failed leaves nothing behind).
- Readers (sample, inspect, fid) never take the lock: they only read finished files, which are
  written atomically.

How: `fcntl.flock` on ``run.lock``. The kernel drops the lock when its holder dies, so on one
host "stale" is exact: a lock file whose flock is free was left by a process that is gone, even if
its PID has been reused. The JSON in the file (pid, host, since, command) serves the messages.
A lock file written on another host is refused even when its flock is free: flock over a network
file system does not always reach other hosts, and a process there cannot be checked from here;
the message says to delete the file if that training is no longer running. Processes forked
while the lock is held (data-loader and prepare workers) close their copy of it at once, so a
leftover worker never keeps the lock of a dead trainer. Where the file system has no flock at all,
the PID in the file is checked instead (best effort).

Also here, for any "who is working on this folder" record: `owner_record()`, `owner_state()`,
`describe_owner()` (`data.prepare` marks its temporaries with them).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Literal, Optional

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import write_failure

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the PID check below is all there is
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "run.lock"
OwnerState = Literal["running", "gone", "elsewhere", "unknown"]

_HELD: set[int] = set()  # lock file descriptors this process holds


def _close_in_child() -> None:
    # a forked child shares the parent's open lock file: closing its copy leaves the parent as the
    # only holder, so the lock goes away when the parent dies even if the child lingers
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


# ------------------------------------------------------------------ owner records


def _command() -> str:
    argv = list(sys.argv) or ["python"]
    argv[0] = "python -m ddpmkit" if argv[0].endswith("__main__.py") else os.path.basename(argv[0])
    text = " ".join([argv[0], *(shlex.quote(a) for a in argv[1:])]).replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def owner_record() -> dict[str, Any]:
    """This process as {"pid", "host", "since", "time", "command"} (JSON-ready)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "time": time.time(),
        "command": _command(),
    }


def _process_start(pid: int) -> Optional[float]:
    """When process `pid` started (Unix time, ~10 ms), from /proc; None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, starttime; the name may hold spaces
        boot = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                    if ln.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def owner_state(record: dict[str, Any]) -> OwnerState:
    """running / gone (this host, no such process) / elsewhere (another host) / unknown (no record)."""
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or not isinstance(host, str):
        return "unknown"
    if host != socket.gethostname():
        return "elsewhere"
    if not pid_alive(pid):
        return "gone"
    started, recorded = _process_start(pid), record.get("time")
    if started is not None and isinstance(recorded, (int, float)) and started > recorded + 2.0:
        return "gone"  # that PID now belongs to a process started after the record was written
    return "running"


def describe_owner(record: dict[str, Any]) -> str:
    """'PID 123 on host h since <time>, started as `<command>`' (the parts the record has)."""
    text = f"PID {record.get('pid', '?')} on host {record.get('host', '?')}"
    if record.get("since"):
        text += f" since {record['since']}"
    if record.get("command"):
        text += f", started as `{record['command']}`"
    return text


def read_record(path: Path | str) -> dict[str, Any]:
    """The JSON record in `path`; {} when absent, empty or damaged (a writer killed mid-write)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8", errors="replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------ the lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _read_fd(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 65536, 0)
        data = json.loads(raw.decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunLock:
    """The lock on one run directory. See the module docstring."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.note: Optional[str] = None
        self._fd: Optional[int] = None
        self._pid = 0
        self._created = False

    @property
    def held(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> Optional[str]:
        """Take the lock or raise DdpmkitError naming its holder. Returns the stale-lock note or None."""
        if self.held:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        self._make_dir()
        try:
            fd = self._open_and_lock()
        except BaseException:
            self._remove_created_dir()
            raise
        try:
            previous = _read_fd(fd)
            self.note = self._check_previous(previous)
            data = (json.dumps(owner_record()) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except BaseException as e:
            os.close(fd)
            self._remove_created_dir()
            if isinstance(e, OSError):
                raise DdpmkitError(self._os_failure(e)) from None
            raise
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(fd)
        return self.note

    def release(self) -> None:
        """Delete the lock file and let go. A no-op when not held (or in a forked child)."""
        if not self.held:
            return
        fd, self._fd = self._fd, None
        assert fd is not None
        _HELD.discard(fd)
        try:
            if _same_file(fd, self.path):
                os.unlink(self.path)  # before unlocking: a waiter then finds the inode changed
        except OSError:
            pass
        finally:
            os.close(fd)
        self._remove_created_dir()

    # -------------------------------------------------------------- internals

    def _make_dir(self) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise DdpmkitError(f"run directory {self.run_dir} exists and is a file")
        self._created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            reason = write_failure(e) or e.strerror or str(e)
            raise DdpmkitError(f"cannot create run directory {self.run_dir}: {reason}; nothing was written") from None

    def _os_failure(self, e: OSError) -> str:
        reason = write_failure(e) or e.strerror or str(e)
        return f"cannot lock run directory {self.run_dir} ({LOCK_NAME}): {reason}; nothing in it was changed"

    def _remove_created_dir(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only when empty: a run that wrote anything keeps its files
            self._created = False

    def _open_and_lock(self) -> int:
        """An fd of run.lock holding the flock (or, without flock, after the PID check)."""
        for _ in range(50):  # the holder may release, deleting the file, between our open and lock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise DdpmkitError(self._os_failure(e)) from None
            try:
                if fcntl is None:
                    raise OSError(errno.ENOLCK, "no flock")
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_fd(fd)
                os.close(fd)
                raise DdpmkitError(self._in_use(holder)) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    os.close(fd)
                    raise DdpmkitError(self._os_failure(e)) from None
                return self._without_flock(fd)
            if _same_file(fd, self.path):
                return fd
            os.close(fd)
        raise DdpmkitError(f"cannot lock run directory {self.run_dir}: its {LOCK_NAME} keeps changing")

    def _without_flock(self, fd: int) -> int:
        holder = _read_fd(fd)
        if owner_state(holder) == "running" and holder.get("pid") != os.getpid():
            os.close(fd)
            raise DdpmkitError(self._in_use(holder))
        return fd

    def _in_use(self, holder: dict[str, Any]) -> str:
        where = f"run directory {self.run_dir} is in use"
        advice = "wait for it to finish or use another --run-dir"
        if not holder:
            return f"{where} by another process that is just starting; {advice}"
        if owner_state(holder) == "gone":
            return (f"{where}: the lock of {describe_owner(holder)} is still held by a process it left "
                    f"behind (that PID has exited); stop the leftover process or use another --run-dir")
        return f"{where} by {describe_owner(holder)}; {advice}"

    def _check_previous(self, previous: dict[str, Any]) -> Optional[str]:
        """The note for a stale lock; refuses a lock file written on another host."""
        if not previous:
            return None
        if owner_state(previous) == "elsewhere":
            raise DdpmkitError(
                f"run directory {self.run_dir} is locked by {describe_owner(previous)}, which cannot be "
                f"checked from host {socket.gethostname()}; if that training is no longer running, "
                f"delete {self.path} and start again"
            )
        gone = "which is no longer running" if owner_state(previous) != "running" else "which no longer holds it"
        return f"note: took over the lock of run directory {self.run_dir} from {describe_owner(previous)}, {gone}"


__all__ = ["RunLock", "LOCK_NAME", "owner_record", "owner_state", "describe_owner", "read_record", "pid_alive"]
