"""Atomic file writes: a reader never sees a half-written file under its final name.

`atomic_path(final)` yields a temporary name beside `final`; when the block succeeds the
temporary (a file, or a folder and every file in it) is fsynced, renamed over `final`, and the
parent folder fsynced, so after a crash or a power cut `final` is either the old or the new
version, never an empty or half-written one.

A write that fails (disk full, read-only file system, a file-size limit, no permission) becomes
one `DdpmkitError` line naming the file and saying that what was there before is intact. Write
errors arrive as `OSError`, as safetensors' `SafetensorError` ("I/O error: No space left on
device (os error 28)") or as torch's `RuntimeError` from its archive writer ("unexpected pos",
"file write failed"); all three are recognised.

`ulimit -f`: the kernel sends SIGXFSZ to a process that writes past the limit, and its default
action kills the process with no message. CPython ignores SIGXFSZ at start-up; `atomic_path`
makes sure it still is (an embedding application or a library may have restored the default),
so such a write fails with EFBIG and is reported like any other.

Also here: `remove_leftovers` (what killed writers left), `read_text_lines` (UTF-8 text files
users edit, with the line of a bad byte in the error), `user_cache_dir` (the user's cache folder).
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional

from ddpmkit.errors import DdpmkitError

try:
    from safetensors import SafetensorError
except ImportError:  # pragma: no cover - safetensors is a dependency; keep io_utils importable alone
    SafetensorError = OSError  # type: ignore[misc,assignment]

def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/ddpmkit, or ~/.cache/ddpmkit when XDG_CACHE_HOME is unset or relative."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "ddpmkit"


_HINTS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "a file-size limit (ulimit -f) was reached",
    errno.EACCES: "check the folder's owner and permissions",
    errno.EPERM: "check the folder's owner and permissions",
}
# torch's archive writer swallows the OSError: these are the messages it raises instead
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")


def ignore_sigxfsz() -> None:
    """Make writes past `ulimit -f` fail with EFBIG instead of killing the process.

    Only the main thread may change signal dispositions; elsewhere this is a no-op.
    """
    if not hasattr(signal, "SIGXFSZ") or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGXFSZ) == signal.SIG_DFL:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _fsync_path(path: Path) -> None:
    """fsync one file or folder (folders: every file below it, then each folder)."""
    if path.is_dir():
        for dirpath, _, files in os.walk(path, topdown=False):
            for f in files:
                _fsync_fd(Path(dirpath, f), os.O_RDONLY)
            _fsync_dir(Path(dirpath))
    elif path.exists():
        _fsync_fd(path, os.O_RDONLY)


def _fsync_fd(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # some file systems (and all of Windows) refuse fsync on a folder: not a write failure
    with contextlib.suppress(OSError):
        _fsync_fd(path, os.O_RDONLY)


def write_failure(e: BaseException) -> Optional[str]:
    """The reason, when `e` is a failed write (OSError, SafetensorError, torch's writer); else None."""
    if isinstance(e, OSError):
        code = e.errno
        reason = e.strerror or str(e) or type(e).__name__
    elif isinstance(e, SafetensorError) and not isinstance(e, OSError):
        m = _OS_ERROR_IN_TEXT.search(str(e))
        if m is None and "I/O error" not in str(e):
            return None
        code = int(m.group(1)) if m else None
        reason = os.strerror(code) if code else str(e).splitlines()[0]
    elif isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_WRITE_FAILED):
        code, reason = None, "the write was cut short (disk full, read-only file system or a file-size limit?)"
    else:
        return None
    hint = _HINTS.get(code) if code is not None else None
    return f"{reason} ({hint})" if hint else reason


def _failure_message(final: Path, tmp: Optional[Path], existed: bool, e: BaseException, reason: str) -> str:
    """One line; names the file inside a temporary folder when the error says which."""
    member = ""
    name = getattr(e, "filename", None)
    if tmp is not None and isinstance(name, (str, bytes, os.PathLike)):
        with contextlib.suppress(ValueError, TypeError):
            rel = Path(os.fsdecode(name)).relative_to(tmp)
            member = f" ({rel.as_posix()})" if str(rel) != "." else ""
    kept = f"the previous {final.name} is intact" if existed else "nothing was left half-written"
    return f"could not write {final}{member}: {reason}; {kept}"


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it over `final` only if the block succeeds.

    Works for files and directories: the caller creates a file or a folder at the yielded path.
    A failure (disk full, Ctrl-C) removes the temporary and leaves whatever was at `final`
    untouched; write failures raise DdpmkitError (one line, see the module docstring).
    """
    final = Path(final)
    ignore_sigxfsz()
    _restore_old(final)
    existed = final.exists()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        tmp.rmdir()  # the caller decides whether it is a file or a directory
    except OSError as e:
        raise DdpmkitError(_failure_message(final, None, existed, e, write_failure(e) or str(e))) from None
    try:
        yield tmp
        _fsync_path(tmp)  # the data reaches the disk before the name does
        if tmp.is_dir() and final.is_dir():
            # os.replace cannot replace a non-empty directory: move the old one aside first
            old = _old_name(final)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException as e:
        _remove(tmp)
        reason = write_failure(e) if isinstance(e, Exception) else None
        if reason is None:
            raise
        raise DdpmkitError(_failure_message(final, tmp, existed, e, reason)) from e


def _old_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def _restore_old(final: Path) -> None:
    # killed between moving the old folder aside and renaming the new one in: put the old one back
    old = _old_name(final)
    if old.is_dir() and not final.exists():
        with contextlib.suppress(OSError):
            os.replace(old, final)


_LEFTOVER = re.compile(r"^\..+\.(?:[A-Za-z0-9_]{8}\.tmp|old)$")  # mkdtemp's 8 random characters


def remove_leftovers(folder: Path | str) -> tuple[int, int]:
    """Delete what killed `atomic_path` writers left directly in `folder`: (count, bytes freed).

    Temporaries (``.name.XXXXXXXX.tmp``) go; a moved-aside old folder (``.name.old``) whose
    replacement never arrived is renamed back to ``name`` instead. Only for a folder this process
    owns exclusively (a run directory under `runlock.RunLock`): a live writer's temporary would go too.
    """
    folder = Path(folder)
    count = freed = 0
    if not folder.is_dir():
        return count, freed
    for p in sorted(folder.iterdir()):
        if not _LEFTOVER.match(p.name):
            continue
        if p.name.endswith(".old"):
            _restore_old(folder / p.name[1:-4])
            if not p.exists():
                continue
        freed += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        _remove(p)
        count += 1
    return count, freed


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_atomic(path: Path | str, writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` and move the result to `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def free_dir(base: Path | str) -> Path:
    """`base` if it is absent or empty, else the first free `base-2`, `base-3`, ...

    Commands whose output folder has a default use this so a second run never overwrites the
    first one's files.
    """
    base = Path(base)
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return base
    k = 2
    while (cand := base.with_name(f"{base.name}-{k}")).exists():
        k += 1
    return cand


def read_text_lines(path: Path | str, what: str) -> list[str]:
    """The lines of a UTF-8 text file (a leading byte-order mark dropped, CRLF accepted).

    Raises DdpmkitError naming `what`, the file and the line for unreadable or non-UTF-8 files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DdpmkitError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]  # else the first entry's name would start with U+FEFF
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        utf16 = " (it is UTF-16)" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else ""
        line = data.count(b"\n", 0, e.start) + 1
        raise DdpmkitError(
            f"{what} {path} line {line} is not UTF-8 text{utf16} (byte 0x{data[e.start]:02x}); "
            f"save it as UTF-8 or fetch a fresh copy"
        ) from None
    lines = text.split("\n")  # not splitlines(): line numbers must match the file's
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
