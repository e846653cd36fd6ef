"""The run-directory lock, with real processes (issue 12 §1)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ddpmkit.errors import DdpmkitError
from ddpmkit.runlock import LOCK_NAME, RunLock

SRC = Path(__file__).resolve().parents[1] / "src"

# takes the lock, says so, optionally forks a child that outlives it, then sleeps until killed
HOLDER = textwrap.dedent("""
    import os, sys, time
    from ddpmkit.runlock import RunLock
    lock = RunLock(sys.argv[1])
    note = lock.acquire()
    if sys.argv[2] == "fork" and os.fork() == 0:
        os.write(1, b"child\\n")  # past fork: the at-fork handler has closed its copy of the lock
        time.sleep(60)  # a leftover worker: must not keep the lock of its dead parent
        os._exit(0)
    os.write(1, f"locked {note}\\n".encode())  # one write: the child's line cannot cut into it
    time.sleep(60)
""")


def _hold(run_dir: Path, fork: bool = False) -> tuple[subprocess.Popen, str]:
    """A process holding the lock, and its "locked <note>" line."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), "fork" if fork else "-"],
                         stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    lines = [p.stdout.readline() for _ in range(2 if fork else 1)]  # the child's line, if any, first or second
    line = next((ln for ln in lines if ln.startswith("locked")), "")
    assert line and (not fork or "child\n" in lines), lines
    return p, line


def _kill(p: subprocess.Popen) -> None:
    p.kill()
    p.wait(timeout=30)


def test_second_process_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    first, line = _hold(run)
    assert line == "locked None\n"
    try:
        record = json.loads((run / LOCK_NAME).read_text())
        assert record["pid"] == first.pid and record["host"] == socket.gethostname()
        # a second process (this one) is refused, with one line naming the holder
        with pytest.raises(DdpmkitError) as e:
            RunLock(run).acquire()
        msg = str(e.value)
        assert "\n" not in msg
        assert msg.startswith(f"run directory {run} is in use by PID {first.pid} on host {socket.gethostname()} since ")
        assert "started as `" in msg and msg.endswith("wait for it to finish or use another --run-dir")
        assert json.loads((run / LOCK_NAME).read_text()) == record  # the refused one changed nothing
    finally:
        _kill(first)  # kill -9: no clean-up runs
    assert (run / LOCK_NAME).exists()  # left behind by the killed holder
    third, line = _hold(run)  # a third process takes the stale lock over, with a note
    _kill(third)
    assert f"took over the lock of run directory {run} from PID {first.pid} on host" in line
    assert "which is no longer running" in line


def test_stale_note_names_the_dead_holder(tmp_path):
    run = tmp_path / "run"
    first, _ = _hold(run)
    _kill(first)
    with RunLock(run) as lock:
        assert lock.note is not None and "\n" not in lock.note
        assert f"from PID {first.pid} on host {socket.gethostname()}" in lock.note
        assert "no longer running" in lock.note
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (run / LOCK_NAME).exists()  # released: the next one gets no note
    with RunLock(run) as again:
        assert again.note is None


def test_a_forked_leftover_does_not_keep_the_lock(tmp_path):
    run = tmp_path / "run"
    holder, _ = _hold(run, fork=True)
    try:
        os.kill(holder.pid, signal.SIGKILL)  # the parent only; its forked child lives on
        holder.wait(timeout=30)
        with RunLock(run) as lock:
            assert "no longer running" in (lock.note or "")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the child (same session)


def test_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    record = {"pid": 4242, "host": "other-node-7", "since": "2024-01-01 10:00:00 +0000", "command": "ddpmkit train"}
    (run / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(DdpmkitError) as e:
        RunLock(run).acquire()
    msg = str(e.value)
    assert "PID 4242 on host other-node-7" in msg and f"delete {run / LOCK_NAME}" in msg and "\n" not in msg
    assert json.loads((run / LOCK_NAME).read_text()) == record


def test_release_removes_what_acquire_created(tmp_path):
    fresh = tmp_path / "a" / "b"
    lock = RunLock(fresh)
    assert lock.acquire() is None and lock.held and (fresh / LOCK_NAME).exists()
    lock.release()
    assert not fresh.exists() and not lock.held  # a failed start leaves no empty run directory
    kept = tmp_path / "kept"
    with RunLock(kept):
        (kept / "config.yaml").write_text("x: 1\n")
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml"]
    (tmp_path / "file").write_text("")
    with pytest.raises(DdpmkitError, match="exists and is a file"):
        RunLock(tmp_path / "file").acquire()


def test_same_process_twice_is_refused(tmp_path):
    with RunLock(tmp_path / "r"):
        with pytest.raises(DdpmkitError, match=f"in use by PID {os.getpid()} "):
            RunLock(tmp_path / "r").acquire()
