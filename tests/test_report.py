"""`ddpmkit report`: the page of a real tiny run, its structure, its bad inputs, and a headless browser.

The browser test runs Chromium (Debian's package, installed by scripts/ci_browser.sh); it is
skipped only outside CI when no Chromium is installed, and fails in CI (CI=true) without one.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from ddpmkit.cli.app import app
from ddpmkit.errors import DdpmkitError
from ddpmkit.human import fmt_bytes
from ddpmkit.report import SECTION_IDS, write_report
from ddpmkit.runfolder import REPORT_FILE as REPORT_NAME
from ddpmkit.report.sections import spread

from conftest import TINY

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run trained for 6 steps through `ddpmkit train`: grids at 2, 4, 6; checkpoints at 2, 4, 6."""
    root = tmp_path_factory.mktemp("report")
    cfg = root / "tiny.yaml"
    train = {**TINY["train"], "run_dir": str(root / "run"), "max_steps": 6, "sample_every": 2, "ckpt_every": 2,
             "num_samples": 4}
    cfg.write_text(yaml.safe_dump({**TINY, "train": train}))
    r = invoke("train", "--config", cfg, "--no-progress")
    assert r.exit_code == 0, r.output
    return root / "run"


class Page(HTMLParser):
    """The parts of a report the tests look at: section ids, <img> sources, every URL attribute."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[tuple[str, str]] = []  # (src, alt)
        self.urls: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "img":
            self.images.append((a.get("src", ""), a.get("alt", "")))
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def decode_image(src: str) -> Image.Image:
    m = re.fullmatch(r"data:image/(png|gif);base64,([A-Za-z0-9+/=]+)", src)
    assert m, src[:60]
    im = Image.open(io.BytesIO(base64.b64decode(m.group(2), validate=True)))
    im.load()
    assert im.format == m.group(1).upper()
    return im


def check_self_contained(text: str) -> Page:
    page = Page(text)
    assert page.sections == list(SECTION_IDS)
    assert "http://" not in text and "https://" not in text
    assert all(u.startswith(("data:image/", "#")) for u in page.urls), [u[:40] for u in page.urls]
    for src, _ in page.images:
        assert decode_image(src).size[0] > 0
    return page


def section_text(text: str, sid: str) -> str:
    return text.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def test_report_of_a_trained_run(run):
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    target = run / REPORT_NAME
    assert str(target) in r.output.replace("\n", "")
    text = target.read_text(encoding="ascii")  # plain ASCII whatever the locale
    page = check_self_contained(text)
    alts = [alt for _, alt in page.images]
    assert alts[:3] == ["loss curve", "learning-rate curve", "throughput curve"]
    assert [a for a in alts if a.startswith("EMA samples")] == [f"EMA samples at step {s}" for s in (2, 4, 6)]
    samples = section_text(text, "samples")
    assert [int(s) for s in re.findall(r"<figcaption>step (\d+)</figcaption>", samples)] == [2, 4, 6]
    assert "6 of 6 (100%)" in section_text(text, "plan")
    ckpts = section_text(text, "checkpoints")
    for step in (2, 4, 6):  # keep_checkpoints defaults to 3: all three are listed with their size
        folder = run / "checkpoints" / f"step_{step:08d}"
        size = sum(f.stat().st_size for f in folder.iterdir())
        assert f'<td class="num">{step}</td><td class="num">{fmt_bytes(size)}</td>' in ckpts
    assert "latest" in ckpts and "ema.safetensors" in ckpts
    assert "<td>sample_every</td><td>2</td>" in section_text(text, "settings")
    assert "No FID measured" in section_text(text, "fid")
    assert not list(run.glob(".report.html*"))  # no temporary left behind


def _dress_up(run: Path, dest: Path) -> Path:
    """A copy of the run with what later steps add: FID records, a denoising GIF, a data preview."""
    shutil.copytree(run, dest)
    with open(dest / "log.jsonl", "a") as fh:
        for step, fid in ((2, 310.5), (6, 280.25)):
            record = {"step": step, "fid": fid, "fid_n": 100, "fid_sampler": "dpmsolver++20"}
            if step == 6:  # KID beside FID (a log written before KID has none)
                record["kid"] = {"mean_x1e3": 41.25, "std_x1e3": 1.5, "subsets": 100, "subset_size": 100}
            fh.write(json.dumps(record) + "\n")
        fh.write('{"step": 7, "loss": 0.1')  # a line cut by a crash
    frames = [Image.new("RGB", (20, 20), (40 * i, 0, 0)) for i in range(3)]
    frames[0].save(dest / "samples" / "denoise.gif", save_all=True, append_images=frames[1:], duration=80)
    Image.new("RGB", (36, 36), (0, 90, 0)).save(dest / "data_preview.png")
    (dest / "samples" / "step_00000008.png").write_bytes(b"not a png")
    return dest


def test_report_shows_fid_gif_preview_and_survives_damage(run, tmp_path):
    dest = _dress_up(run, tmp_path / "run")
    text = write_report(dest).read_text()
    page = check_self_contained(text)
    gifs = [src for src, alt in page.images if src.startswith("data:image/gif")]
    assert len(gifs) == 1 and decode_image(gifs[0]).n_frames == 3
    assert decode_image(dict((a, s) for s, a in page.images)["Data"]).size == (36, 36)
    fid = section_text(text, "fid")
    assert "310.50" in fid and "280.25" in fid and "FID over steps" in fid and "2,048" in fid
    shown = html.unescape(fid)
    assert "KID x10³" in shown and "41.25 ± 1.50" in shown and "KID over steps" in shown
    assert '<td class="num">2</td><td class="num">310.50</td><td class="num">—</td>' in shown  # no KID logged then
    plan = section_text(text, "plan")
    assert "skipped 1 unreadable line" in plan and "step_00000008.png" in plan
    assert len(re.findall(r"<figcaption>", section_text(text, "samples"))) == 3


def test_report_of_a_run_just_started(tmp_path):
    """Only config.yaml so far: every section is there, saying what is missing."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"train": {"max_steps": 10, "sample_every": 0}}))
    text = write_report(tmp_path).read_text()
    page = check_self_contained(text)
    assert page.images == []
    for needle in ("No training steps logged yet", "No sample grids saved yet (train.sample_every = 0)",
                   "No checkpoint saved yet", "run.json is missing"):
        assert needle in text


def test_report_defaults_to_the_newest_run(run, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "old")
    shutil.copytree(run, runs / "new")
    (runs / "notarun").mkdir()
    for name, t in (("old", 1_000_000), ("new", 2_000_000)):
        (runs / name / REPORT_NAME).unlink(missing_ok=True)  # the first test's report, copied along
        for p in [runs / name, *(runs / name).rglob("*")]:
            os.utime(p, (t, t))
    monkeypatch.chdir(tmp_path)
    r = invoke("report")
    assert r.exit_code == 0, r.output
    assert "newest run: runs/new" in r.output
    assert (runs / "new" / REPORT_NAME).exists() and not (runs / "old" / REPORT_NAME).exists()


def one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    text = " ".join(lines)
    assert text.startswith("error:"), r.output
    for n in needles:
        assert n in text, (n, r.output)


def test_report_bad_inputs(tmp_path, monkeypatch):
    one_line_error(invoke("report", tmp_path / "nope"), "run directory not found", "nope")
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("report", tmp_path / "empty"), "not a ddpmkit run directory")
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("report"), "no RUN given", "runs/")
    with pytest.raises(DdpmkitError, match="not a ddpmkit run directory"):
        write_report(tmp_path / "empty")


def test_spread_keeps_first_and_last():
    items = list(range(100))
    shown = spread(items, 24)  # type: ignore[arg-type]
    assert len(shown) == 24 and shown[0] == 0 and shown[-1] == 99 and shown == sorted(set(shown))
    assert spread(items[:5], 24) == items[:5]  # type: ignore[arg-type]


# ---------------------------------------------------------------- a real browser

def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Chromium for the report's browser test: run scripts/ci_browser.sh")
        pytest.skip("no Chromium installed (scripts/ci_browser.sh installs it)")
    return path


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium(run, chromium, tmp_path):
    page_path = _dress_up(run, tmp_path / "run") / REPORT_NAME
    write_report(page_path.parent)
    n_images = len(Page(page_path.read_text()).images)
    r = headless(chromium, tmp_path / "profile", "--dump-dom", page_path.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", r.stdout)
    assert body, r.stdout[:500]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1)))
    # the page's own script ran after load: every image decoded, no script error
    assert attrs == {"data-images": str(n_images), "data-images-broken": "0", "data-js-errors": "0",
                     "data-loaded": "yes"}
    assert n_images >= 8
    assert [s for s in Page(r.stdout).sections] == list(SECTION_IDS)
    # nothing on the console: no error, no blocked resource (the page's CSP would report one)
    console = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console
    shot = tmp_path / "shot.png"
    r = headless(chromium, tmp_path / "profile2", "--window-size=1000,1400", f"--screenshot={shot}",
                 page_path.as_uri())
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # painted: text, plots and grids, not a blank page


def test_a_failing_section_does_not_cost_the_page(run, tmp_path, monkeypatch):
    from ddpmkit.report import plots

    def broken(*args, **kwargs):
        raise RuntimeError("plotting exploded")

    monkeypatch.setattr(plots, "raw_and_smoothed", broken)
    dest = shutil.copytree(run, tmp_path / "run")
    text = write_report(dest).read_text()
    check_self_contained(text)
    assert "could not build this section: RuntimeError: plotting exploded" in section_text(text, "curves")
    assert "EMA samples at step 6" in section_text(text, "samples")


def test_loss_title_names_the_runs_loss() -> None:
    """The loss chart says what was minimised: L_simple only for ε with uniform weights."""
    from ddpmkit.report.sections import loss_title

    assert loss_title({"diffusion": {"prediction": "eps"}, "train": {"loss_weight": "uniform"}}) == "loss (L_simple, MSE of ε)"
    assert loss_title({}) == "loss (L_simple, MSE of ε)"  # settings of old runs: the papers' defaults
    v = loss_title({"diffusion": {"prediction": "v"}, "train": {"loss_weight": "min_snr"}})
    assert "MSE of v" in v and "min-SNR" in v
