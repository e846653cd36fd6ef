"""Progress of long work (`ddpmkit.progress`), numbers for people (`ddpmkit.human`), and what
`ddpmkit fid` says while it works."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ddpmkit.cli.app import app
from ddpmkit.human import fmt_bytes, fmt_duration
from ddpmkit.progress import LogConsole, Progress

from conftest import FID_WEIGHTS, tiny


def _piped(width: int = 40) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return LogConsole(file=buf, force_terminal=False, width=width, color_system=None), buf


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The progress module's clock, moved by hand."""
    now = [0.0]
    monkeypatch.setattr("ddpmkit.progress.time.perf_counter", lambda: now[0])
    return now


def test_durations_and_sizes_for_people():
    assert [fmt_duration(s) for s in (-3, 0, 42.4, 185, 7620, 3 * 86400 + 4 * 3600)] == [
        "0s", "0s", "42s", "3m 05s", "2h 07m", "3d 4h"]
    assert [fmt_bytes(n) for n in (512, 3.5 * 1024, 12 * 2**20, 1.5 * 2**30, 4096 * 2**30)] == [
        "512 B", "3.5 KiB", "12.0 MiB", "1.5 GiB", "4096.0 GiB"]


def test_plain_lines_when_piped_with_rate_and_eta_never_wrapped(clock):
    console, buf = _piped(width=40)
    what = "Inception features of a-folder-with-a-rather-long-name"
    with Progress(what, 300, unit="images", console=console, every_s=0.0, show_rate=True) as bar:
        assert bar.mode == "lines"
        for k in range(3):
            clock[0] += 10.0 if k else 60.0  # the first batch (warm-up) is slow
            bar.advance(100)
    lines = buf.getvalue().splitlines()
    # a line after each advance (the last one says the end: not twice); the first only starts the clock
    assert lines == [
        f"{what} 100/300 images (33%) · ETA —",
        f"{what} 200/300 images (67%) · 10.0 images/s · ETA 10s",
        f"{what} 300/300 images (100%) · 10.0 images/s · ETA 0s",
    ]
    assert all(len(line) > 40 for line in lines)  # longer than the console, still one line each


def test_plain_lines_are_rate_limited_and_the_end_is_always_said(clock):
    console, buf = _piped()
    with Progress("sampling", 1000, unit="images", console=console, every_s=3600) as bar:
        for _ in range(10):
            clock[0] += 1.0
            bar.advance(100)
    assert buf.getvalue().splitlines() == ["sampling 1,000/1,000 images (100%) · ETA 0s"]


def test_a_job_done_in_one_update_has_no_eta_to_give():
    console, buf = _piped()
    with Progress("features", 4, unit="images", console=console) as bar:
        bar.advance(4)
    assert buf.getvalue() == "features 4/4 images (100%)\n"


def test_fractional_work_is_counted_and_shown_rounded():
    console, buf = _piped()
    with Progress("sampling", 64, unit="images", console=console, every_s=3600) as bar:
        for _ in range(50):  # 64 images, 50 network calls: 64/50 of an image a call
            bar.advance(64 / 50)
        bar.advance(1)  # never past the total
    assert bar.done == pytest.approx(64)
    assert buf.getvalue().startswith("sampling 64/64 images (100%)")


def test_rich_bar_in_a_terminal():
    buf = io.StringIO()
    term = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with Progress("sampling [8] images", 8, unit="images", console=term, info="batch 1") as bar:
        assert bar.mode == "bar"
        bar.advance(8)
    text = buf.getvalue()
    # the label is shown as written (not read as rich markup), with the count, the info and time left
    assert "sampling [8] images" in text and "8/8" in text and "batch 1" in text and "left" in text
    assert " · " not in text  # no plain line in a terminal


def test_off_prints_nothing():
    console, buf = _piped()
    with Progress("train", 10, mode="off", console=console) as bar:
        bar.advance(10)
        bar.line(force=True)
    assert buf.getvalue() == ""


@pytest.mark.fid_weights
def test_fid_says_what_it_does_and_warns_about_few_images(tmp_path: Path):
    from ddpmkit.train import train

    train(tiny(tmp_path / "run", train={"max_steps": 1}), log=lambda m: None, progress=False)
    out = tmp_path / "fid.json"
    args = [
        "fid", str(tmp_path / "run"), "--n", "3", "--steps", "2", "--sampler", "ddim", "--device", "cpu",
        "--set", f"fid.weights={FID_WEIGHTS}", "--set", "fid.ref_n=4", "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--out-json", str(out),
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    text = r.output
    assert "warning: SOURCE has 3 images, fewer than 2,048" in text and "not comparable with papers" in text
    assert "warning: REFERENCE has 4 images" in text
    assert "sampling 3 images (ddim, 2 steps, on cpu) for their Inception features 3/3 images (100%)" in text
    assert "Inception features of synthetic-16px-seed0 4/4 images (100%)" in text
    assert json.loads(out.read_text())["n"] == 3
