"""The trainer's side of issue 12: leftovers removed at start, log.jsonl without repeated steps
after a resume, a changed run length said on resume, a failed log append in one line."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from ddpmkit import runlock
from ddpmkit.errors import DdpmkitError
from ddpmkit.runlock import LOCK_NAME
from ddpmkit.train import train
from ddpmkit.train.logfile import LogFile, drop_records_after

from conftest import tiny


def _run(settings, **kw) -> list[str]:
    """Train; returns the lines it logged."""
    lines: list[str] = []
    train(settings, log=lines.append, progress=False, **kw)
    return lines


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_leftovers_of_killed_writes_are_removed_when_training_starts(tmp_path):
    run = tmp_path / "run"
    _run(tiny(run, train={"max_steps": 2}))
    ck = run / "checkpoints"
    killed_save = ck / ".step_00000004.a1b2c3d4.tmp"  # a kill inside a checkpoint write
    killed_save.mkdir()
    (killed_save / "model.safetensors").write_bytes(b"\0" * 2**20)
    (ck / ".step_00000001.9f8e7d6c.tmp").mkdir()  # a kill inside a prune
    (run / ".config.yaml.Zz_09xyz.tmp").write_text("half")  # a kill inside a small write
    (run / ".notes.tmp").write_text("not ours: no random part")  # left alone
    lines = _run(tiny(run, train={"max_steps": 4}), resume=True)
    assert f"note: removed 3 leftover temporaries of killed writes from {run} (1.0 MiB)" in lines
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith(".")) == []
    assert (run / ".notes.tmp").exists() and not (run / ".config.yaml.Zz_09xyz.tmp").exists()
    assert not (run / LOCK_NAME).exists()  # released at the end
    # nothing left: nothing said
    assert not [m for m in _run(tiny(run, train={"max_steps": 5}), resume=True) if m.startswith("note: removed")]


def test_a_resumed_run_logs_every_step_once(tmp_path):
    run = tmp_path / "run"
    _run(tiny(run, train={"max_steps": 4, "ckpt_every": 2}))
    with open(run / "log.jsonl", "a") as f:  # a run killed at step 6, after the checkpoint of step 4
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n{"step": 7, "lo')
    _run(tiny(run, train={"max_steps": 8, "ckpt_every": 2}), resume=True)
    assert _steps(run) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert json.loads((run / "log.jsonl").read_text().splitlines()[4])["loss"] != 1.0  # the new step 5


def test_drop_records_after_keeps_what_is_not_past_the_step(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n\n{"step": 2, "fid": 3.5}\n{"note": "no step"}\n[1]\n{"step": 3}\n{"st')
    assert drop_records_after(log, 2) == 3  # step 3, the list, the cut line
    assert log.read_text() == '{"step": 1}\n{"step": 2, "fid": 3.5}\n{"note": "no step"}\n'
    assert drop_records_after(log, 2) == 0 and drop_records_after(tmp_path / "absent", 0) == 0


def test_resuming_with_another_length_says_so(tmp_path):
    run = tmp_path / "run"
    cosine = {"lr_decay": "cosine", "lr": 1e-3, "warmup_steps": 0}
    _run(tiny(run, train={"max_steps": 4, **cosine}))
    lines = _run(tiny(run, train={"max_steps": 8, **cosine}), resume=True)
    note = [m for m in lines if "planned" in m]
    assert note == ["note: the run was planned for 4 steps and now goes to 8; the learning-rate decay follows "
                    "the new length, so the learning rate at step 4 goes from 0 to 0.0005"]
    # stopped early and resumed with the same plan: nothing to say
    other = tmp_path / "other"

    def stop_at_2(trainer) -> None:
        if trainer.step == 2:
            trainer.request_stop()

    _run(tiny(other, train={"max_steps": 6, **cosine}), on_step=[stop_at_2])
    assert not [m for m in _run(tiny(other, train={"max_steps": 6, **cosine}), resume=True) if "planned" in m]


def test_a_failed_log_append_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.symlink("/dev/full", run / "log.jsonl")  # every write to it fails with ENOSPC, a real kernel error
    with pytest.raises(DdpmkitError) as e:
        _run(tiny(run, train={"max_steps": 2}))
    assert str(e.value) == (f"could not append to {run / 'log.jsonl'}: No space left on device (free some space); "
                            "the checkpoints written so far are intact")
    assert not (run / LOCK_NAME).exists()


def test_log_file_writes_everything_or_raises(tmp_path):
    f = LogFile(tmp_path / "log.jsonl")
    f.write('{"step": 1}\n')
    f.close()
    f.close()  # twice is fine
    assert (tmp_path / "log.jsonl").read_text() == '{"step": 1}\n'
    with pytest.raises(ValueError):
        f.write("x")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):  # root ignores permissions: nothing to check
            return
        with pytest.raises(DdpmkitError, match="could not append to .*log.jsonl: Permission denied"):
            LogFile(tmp_path / "ro" / "log.jsonl")
    finally:
        os.chmod(tmp_path / "ro", 0o700)


@pytest.mark.parametrize("resume", [False, True])
def test_a_read_only_run_directory_is_one_line_and_changes_nothing(tmp_path, monkeypatch, resume):
    run = tmp_path / "run"
    if resume:
        _run(tiny(run, train={"max_steps": 2}))
    else:
        run.mkdir()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    real_open = runlock.os.open

    def read_only(path, flags, *a, **k):
        if str(path).endswith(LOCK_NAME):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(runlock.os, "open", read_only)
    with pytest.raises(DdpmkitError) as e:
        _run(tiny(run, train={"max_steps": 4}), resume=resume)
    assert str(e.value) == (f"cannot lock run directory {run} (run.lock): Read-only file system (the file system "
                            "is read-only); nothing in it was changed")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before
