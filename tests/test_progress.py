"""Progress of long work (`cli.progress`) and what `ddpmkit fid` says while it works."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from ddpmkit.cli.app import app
from ddpmkit.cli.progress import PlainProgress, RichProgress, format_duration, work_progress

from conftest import FID_WEIGHTS, tiny


def _console(terminal: bool, width: int = 40) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=width, color_system=None), buf


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.4, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]


def test_plain_lines_when_piped_never_wrapped():
    console, buf = _console(terminal=False, width=40)
    what = "Inception features of a-folder-with-a-rather-long-name"
    with work_progress(console, what, total=300, every_s=0.0) as bar:
        assert isinstance(bar, PlainProgress)
        for _ in range(3):
            bar.advance(100)
    lines = buf.getvalue().splitlines()
    # a line after each advance but the last (the final line covers it), then the final line
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{what}: 100/300 images (33%)") and "images/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith(f"{what}: 300/300 images (100%)") and "ETA" not in lines[-1]
    assert all(len(line) > 40 for line in lines)  # longer than the console, still one line each


def test_plain_lines_are_rate_limited():
    console, buf = _console(terminal=False)
    with work_progress(console, "sampling 1,000 images", total=1000, every_s=3600) as bar:
        for _ in range(10):
            bar.advance(100)
    assert buf.getvalue().splitlines() == [buf.getvalue().splitlines()[-1]]  # only the final line
    assert "1,000/1,000 images (100%)" in buf.getvalue()


def test_rich_bar_in_a_terminal():
    console, buf = _console(terminal=True, width=120)
    with work_progress(console, "sampling 8 images", total=8) as bar:
        assert isinstance(bar, RichProgress)
        bar.advance(8)
    text = buf.getvalue()
    assert "sampling 8 images" in text and "8/8 images" in text and "100%" in text


def test_fid_says_what_it_does_and_warns_about_few_images(tmp_path: Path):
    from ddpmkit.train import train

    train(tiny(tmp_path / "run", train={"max_steps": 1}), log=lambda m: None, progress=False)
    out = tmp_path / "fid.json"
    args = [
        "fid", str(tmp_path / "run"), "--n", "3", "--steps", "2", "--sampler", "ddim", "--device", "cpu",
        "--set", f"fid.weights={FID_WEIGHTS}", "--set", "fid.ref_n=4", "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--out", str(out),
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    text = r.output
    assert "warning: SOURCE has 3 images, fewer than 2,048" in text and "not comparable with papers" in text
    assert "warning: REFERENCE has 4 images" in text
    assert "sampling 3 images (ddim, 2 steps, on cpu) for their Inception features: 3/3 images (100%)" in text
    assert "Inception features of synthetic-16px-seed0: 4/4 images (100%)" in text
    assert json.loads(out.read_text())["n"] == 3
