"""Writes that fail: disk full, read-only, a file-size limit; and fsync before the rename (issue 12 §2, §3)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import save_file

from ddpmkit import io_utils
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import atomic_path, write_text_atomic

SRC = Path(__file__).resolve().parents[1] / "src"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# /dev/full fails every write with ENOSPC: pointing the temporary name at it runs the real writer
# (Python, torch, PIL) against a real full device
WRITERS = {
    "text": lambda p: p.write_text("x" * 100_000),
    "torch.save": lambda p: torch.save({"w": torch.zeros(50_000)}, p),
    "PIL png": lambda p: Image.new("RGB", (256, 256), (1, 2, 3)).save(p, format="PNG"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_disk_full_is_one_line_and_the_old_file_is_intact(tmp_path, writer):
    final = tmp_path / "kept.bin"
    final.write_text("previous version")
    with pytest.raises(DdpmkitError) as e:
        with atomic_path(final) as tmp:
            tmp.symlink_to("/dev/full")
            WRITERS[writer](tmp)
    msg = str(e.value)
    assert "\n" not in msg and str(final) in msg and "intact" in msg
    assert "No space left on device" in msg or "cut short" in msg
    assert final.read_text() == "previous version" and _leftovers(tmp_path) == []


def test_disk_full_inside_a_checkpoint_folder_names_the_file(tmp_path):
    final = tmp_path / "checkpoints" / "step_00000004"
    with pytest.raises(DdpmkitError) as e:
        with atomic_path(final) as tmp:
            tmp.mkdir(parents=True)
            (tmp / "model.safetensors").write_text("ok")
            (tmp / "state.pt").symlink_to("/dev/full")
            with open(tmp / "state.pt", "w") as f:
                f.write("x" * 100_000)
    msg = str(e.value)
    assert f"could not write {final}: No space left on device" in msg
    assert "nothing was left half-written" in msg and not final.exists()
    assert _leftovers(final.parent) == []


def test_safetensors_and_torch_write_errors_are_recognised(tmp_path):
    final = tmp_path / "ema.safetensors"

    def full(*_a, **_k):  # the message safetensors 0.4-0.8 raise when the disk fills up
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(DdpmkitError, match=r"ema.safetensors: No space left on device \(free some space\)"):
        with atomic_path(final) as tmp:
            full(tmp)
    # errors that are not write failures pass through untouched
    with pytest.raises(SafetensorError, match="header too large"):
        with atomic_path(final) as tmp:
            raise SafetensorError("Error while deserializing header: header too large")
    with pytest.raises(ValueError):
        with atomic_path(final) as tmp:
            raise ValueError("a bug, not a full disk")
    assert _leftovers(tmp_path) == [] and not final.exists()


@pytest.mark.parametrize("where", ["create", "rename"])
def test_read_only_directory(tmp_path, monkeypatch, where):
    final = tmp_path / "config.yaml"
    final.write_text("old: 1\n")

    def erofs(*_a, **_k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    if where == "create":
        monkeypatch.setattr(io_utils.tempfile, "mkdtemp", erofs)
    else:
        monkeypatch.setattr(io_utils.os, "replace", erofs)
    with pytest.raises(DdpmkitError) as e:
        write_text_atomic(final, "new: 2\n")
    msg = str(e.value)
    assert msg == (f"could not write {final}: Read-only file system (the file system is read-only); "
                   f"the previous config.yaml is intact")
    assert final.read_text() == "old: 1\n" and _leftovers(tmp_path) == []


def test_permission_denied_is_one_line(tmp_path, monkeypatch):
    def eacces(*_a, **_k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path))

    monkeypatch.setattr(io_utils.tempfile, "mkdtemp", eacces)
    with pytest.raises(DdpmkitError, match="Permission denied .check the folder's owner and permissions.; nothing"):
        write_text_atomic(tmp_path / "new.json", "{}")


def test_file_size_limit_raises_instead_of_killing(tmp_path):
    """`ulimit -f`: a real EFBIG from real writers, in a child process with RLIMIT_FSIZE set
    (no torch there, to start fast: torch.save meets a real full device above). The child
    restores SIGXFSZ's default action (death), as an embedding application may."""
    script = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        import numpy as np
        from PIL import Image
        from safetensors.numpy import save_file
        from ddpmkit.errors import DdpmkitError
        from ddpmkit.io_utils import atomic_path
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        writers = {{
            "text": lambda p: p.write_text("x" * 200_000),
            "safetensors": lambda p: save_file({{"w": np.zeros(50_000, np.float32)}}, str(p)),
            "png": lambda p: Image.effect_noise((300, 300), 64).save(p, format="PNG"),
        }}
        for name, write in writers.items():
            try:
                with atomic_path({str(tmp_path)!r} + "/" + name) as tmp:
                    write(tmp)
                print(name, "WROTE")
            except DdpmkitError as e:
                print(name, "ERROR", e)
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]  # before the fix: killed by SIGXFSZ (-25)
    # (with Python's own SIG_IGN, before the fix: a SafetensorError traceback)
    lines = r.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [[n, "ERROR"] for n in ("text", "safetensors", "png")]
    for ln in lines:
        assert "intact" in ln or "half-written" in ln
    assert "File too large (a file-size limit (ulimit -f) was reached)" in lines[0]
    assert "File too large" in lines[1]  # safetensors' own error, translated
    assert sorted(os.listdir(tmp_path)) == []


def test_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(a)))
        real_replace(a, b)

    monkeypatch.setattr(io_utils.os, "fsync", fsync)
    monkeypatch.setattr(io_utils.os, "replace", replace)
    with atomic_path(tmp_path / "ck") as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "a.safetensors").write_text("a")
        (tmp / "sub" / "b.pt").write_text("b")
    renamed = next(i for i, (kind, _) in enumerate(events) if kind == "replace")
    before = [p for kind, p in events[:renamed] if kind == "fsync"]
    tmp_name = events[renamed][1]
    assert f"{tmp_name}/a.safetensors" in before and f"{tmp_name}/sub/b.pt" in before
    assert tmp_name in before  # the folder's own entries too
    assert ("fsync", str(tmp_path)) in events[renamed:]  # then the parent, for the new name
    events.clear()
    write_text_atomic(tmp_path / "latest", "ck\n")
    renamed = next(i for i, (kind, _) in enumerate(events) if kind == "replace")
    assert events[0][0] == "fsync" and events[0][1] == events[renamed][1]
    assert (tmp_path / "latest").read_text() == "ck\n" and (tmp_path / "ck" / "sub" / "b.pt").read_text() == "b"


def test_a_safetensors_write_that_succeeds_is_unchanged(tmp_path):
    final = tmp_path / "model.safetensors"
    with atomic_path(final) as tmp:
        save_file({"w": torch.ones(3)}, str(tmp), {"step": "4"})
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(final))["w"], torch.ones(3)) and _leftovers(tmp_path) == []


def test_the_file_inside_a_folder_is_named_when_the_error_says_which(tmp_path):
    final = tmp_path / "step_00000008"
    with pytest.raises(DdpmkitError) as e:
        with atomic_path(final) as tmp:
            tmp.mkdir()
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp / "ema.safetensors"))
    assert str(e.value).startswith(f"could not write {final} (ema.safetensors): Read-only file system")


def test_leftovers_of_killed_writers_are_removed_and_a_moved_aside_folder_restored(tmp_path):
    ck = tmp_path / "checkpoints"
    (ck / ".step_00000004.k2j4h5g1.tmp").mkdir(parents=True)  # killed while writing a checkpoint
    (ck / ".step_00000004.k2j4h5g1.tmp" / "model.safetensors").write_bytes(b"\0" * 1000)
    (ck / ".latest.a8b7c6d5.tmp").write_text("step_00000004")
    (ck / ".step_00000002.old").mkdir()  # killed between the two renames of a re-save
    (ck / ".step_00000002.old" / "state.pt").write_text("previous")
    (ck / ".hidden").write_text("not ours")
    (ck / "step_00000001").mkdir()
    assert io_utils.remove_leftovers(ck) == (2, 1000 + len("step_00000004"))
    assert sorted(p.name for p in ck.iterdir()) == [".hidden", "step_00000001", "step_00000002"]
    assert (ck / "step_00000002" / "state.pt").read_text() == "previous"
    # atomic_path itself puts a moved-aside folder back before writing the same name again
    (ck / "step_00000002").rename(ck / ".step_00000002.old")
    with pytest.raises(RuntimeError):
        with atomic_path(ck / "step_00000002"):
            raise RuntimeError("killed")
    assert (ck / "step_00000002" / "state.pt").read_text() == "previous"
