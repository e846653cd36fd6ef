"""`ddpmkit serve`: the job queue, the API of each panel on a real server (a free port on
127.0.0.1, uvicorn in a thread) over tiny runs made here, the safety rules, the command itself,
and the page driven in Debian's Chromium through Playwright (no browser download).

Every job samples a 16 px network with a few steps, so each takes well under a second."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny
from ddpmkit.cli.app import app as cli_app
from ddpmkit.data.synthetic import draw_face
from ddpmkit.generate import generate, load_run
from ddpmkit.images import load_face, to_uint8
from ddpmkit.samplers import make_sampler
from ddpmkit.serve import server
from ddpmkit.serve.app import make_app
from ddpmkit.serve.jobs import CANCELLED, DONE, FAILED, JobQueue
from ddpmkit.serve.runs import ServedRuns
from ddpmkit.train import train

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_UPLOAD = 200_000
TERMINAL = ("done", "failed", "cancelled")


# ----------------------------------------------------------------------------- the queue alone


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_queue_runs_one_job_at_a_time_in_order_and_survives_failures(tmp_path):
    gate, order = threading.Event(), []

    def held(ctx):
        order.append("held")
        while not gate.is_set():
            ctx.check()
            time.sleep(0.005)
        return {"ok": 1}

    def boom(ctx):
        order.append("boom")
        raise RuntimeError("boom\nsecond line")

    queue = JobQueue(tmp_path, log=lambda line: None)
    queue.start()
    try:
        first = queue.submit("generate", "r", held)
        wait_for(lambda: first.state == "running")
        failing, after, dropped = (queue.submit("generate", "r", boom), queue.submit("generate", "r", lambda c: {"n": 2}),
                                   queue.submit("generate", "r", lambda c: {"n": 3}))
        assert [queue.position(j) for j in (first, failing, after, dropped)] == [0, 1, 2, 3]
        queue.cancel(dropped.id)
        assert dropped.state == CANCELLED and queue.position(after) == 2
        gate.set()
        wait_for(lambda: after.state == DONE)
        assert order == ["held", "boom"] and first.result == {"ok": 1} and after.result == {"n": 2}
        assert failing.state == FAILED and failing.error == "RuntimeError: boom"
        assert [e["type"] for e in dropped.events] == ["queued", "cancelled"]
        # a running job stops at its next check
        gate.clear()
        running = queue.submit("inpaint", "r", held)
        wait_for(lambda: running.state == "running")
        queue.cancel(running.id)
        wait_for(lambda: running.state == CANCELLED)
        assert running.folder is not None and running.folder.parent == tmp_path
    finally:
        queue.close()


# ----------------------------------------------------------------------------- a served folder


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """runs/plain (unconditional), runs/attrs (conditional on the demo faces' 11 attributes),
    outside/ (a run beside the served folder) and runs/linked, a symlink to it."""
    base = tmp_path_factory.mktemp("serve")
    train(tiny(base / "runs" / "plain", train={"max_steps": 2}), log=lambda m: None, progress=False)
    shutil.copytree(base / "runs" / "plain", base / "outside")
    time.sleep(0.05)  # attrs is the newer run
    train(tiny(base / "runs" / "attrs", train={"max_steps": 2, "condition": "attributes"}), log=lambda m: None,
          progress=False)
    (base / "runs" / "linked").symlink_to(base / "outside", target_is_directory=True)
    return base


def files_under(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


class Client:
    """Requests to the server with the standard library, as a page would make them."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def call(self, method: str, path: str, data: Optional[bytes] = None,
             headers: Optional[dict[str, str]] = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str) -> tuple[int, Any]:
        status, raw = self.call("GET", path)
        return status, json.loads(raw)

    def post(self, path: str, payload: Any, headers: Optional[dict[str, str]] = None) -> tuple[int, Any]:
        status, raw = self.call("POST", path, json.dumps(payload).encode(),
                                {"Content-Type": "application/json", **(headers or {})})
        return status, json.loads(raw)

    def upload(self, data: bytes, name: str) -> tuple[int, Any]:
        status, raw = self.call("POST", "/api/upload", data, {"Content-Type": "application/octet-stream",
                                                             "X-Filename": name})
        return status, json.loads(raw)

    def job(self, payload: dict[str, Any]) -> dict[str, Any]:
        status, job = self.post("/api/jobs", payload)
        assert status == 200, job
        return job

    def events(self, job_id: str, on_event=None) -> list[dict[str, Any]]:
        """The job's event stream, read to its end (each event also to on_event)."""
        out = []
        with urllib.request.urlopen(f"{self.url}/api/jobs/{job_id}/events", timeout=120) as r:
            for line in r:
                if line.startswith(b"data:"):
                    out.append(json.loads(line[5:]))
                    if on_event is not None:
                        on_event(out[-1])
        assert out and out[-1]["type"] in TERMINAL, out[-3:]
        return out

    def picture(self, url: str) -> np.ndarray:
        status, raw = self.call("GET", url)
        assert status == 200, raw[:200]
        return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


@pytest.fixture(scope="module")
def served(root):
    """The server on a free port over root/runs, writing into root/out."""
    runs = ServedRuns([root / "runs"], torch.device("cpu"))
    app = make_app(runs, root / "out", max_upload_bytes=MAX_UPLOAD)
    sock = server.bind("127.0.0.1", 0)
    before = files_under(root / "runs")
    srv, thread = server.start_in_thread(app, sock)
    yield Client(server.url_of(sock))
    server.stop(srv, thread)
    assert files_under(root / "runs") == before  # nothing written in the served folder


def done(client: Client, payload: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job = client.job(payload)
    events = client.events(job["id"])
    assert events[-1]["type"] == "done", events[-1]
    return events[-1]["result"], events


def one_line_error(status: int, answer: dict[str, Any], code: int, *needles: str) -> None:
    assert status == code, answer
    assert "\n" not in answer["error"] and all(n in answer["error"] for n in needles), answer["error"]


# ----------------------------------------------------------------------------- the API, panel by panel


def test_runs_newest_first_and_only_those_inside(served, root):
    status, data = served.get("/api/runs")
    assert status == 200
    assert [r["name"] for r in data["runs"]] == ["attrs", "plain"]
    assert any("linked" in p and "outside the served folder" in p for p in data["problems"])
    attrs, plain = data["runs"]
    assert len(attrs["attributes"]) == 11 and attrs["no_attributes"] is None
    assert plain["attributes"] == [] and "unconditional" in plain["no_attributes"]
    assert plain["sample"]["steps"] == 10 and plain["size"] == 16 and plain["T"] == 100


def expected(run_path: Path, sampler: str, steps: int, n: int, seed: int, cond=None, w: float = 1.0) -> np.ndarray:
    """What `ddpmkit sample` draws for these settings: (n, 16, 16, 3) uint8."""
    opened = load_run(run_path, torch.device("cpu"))
    cfg = opened.settings.sample.model_copy(update={"sampler": sampler, "steps": steps})
    x = torch.cat(list(generate(opened.denoiser.eps(cond, w), make_sampler(opened.sched, cfg), n, opened.shape,
                                seed=seed, batch_size=64, device=torch.device("cpu"))))
    return to_uint8(x).permute(0, 2, 3, 1).numpy()


def test_generate_live_frames_images_and_gif(served, root):
    result, events = done(served, {"kind": "generate", "run": "plain", "sampler": "ddim", "steps": 6, "n": 3,
                                   "seed": 7})
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["queued", "started"] and kinds.count("frame") >= 3
    assert kinds.index("frame") < kinds.index("images") < kinds.index("done")
    frame = [e for e in events if e["type"] == "frame"][-1]
    assert served.picture(frame["url"]).shape[1] > 2 * 16  # x_t beside x̂_0, enlarged
    got = np.stack([served.picture(u) for u in result["images"]])
    assert np.array_equal(got, expected(root / "runs" / "plain", "ddim", 6, 3, 7))  # the very images of `sample`
    assert result["seed"] == 7
    status, gif = served.call("GET", result["gif"])
    assert status == 200 and Image.open(io.BytesIO(gif)).n_frames > 2
    assert served.picture(result["grid"]).shape[0] >= 16


def test_random_seed_is_told(served):
    job = served.job({"kind": "generate", "run": "plain", "sampler": "ddim", "steps": 2, "n": 1, "seed": "random"})
    (seed,) = job["seeds"]
    assert 0 <= seed < 2**31
    assert served.events(job["id"])[-1]["result"]["seed"] == seed


def test_conditional_generate(served, root):
    from ddpmkit.conditioning import attribute_vector
    from ddpmkit.data.synthetic import FACE_ATTRIBUTES

    result, _ = done(served, {"kind": "generate", "run": "attrs", "sampler": "ddim", "steps": 4, "n": 2, "seed": 3,
                              "attributes": {"Smiling": 1, "Eyeglasses": -1, "Bangs": 0}, "guidance": 2.5})
    cond = attribute_vector(FACE_ATTRIBUTES, ["Smiling", "-Eyeglasses"])
    got = np.stack([served.picture(u) for u in result["images"]])
    assert np.array_equal(got, expected(root / "runs" / "attrs", "ddim", 4, 2, 3, cond, 2.5))
    one_line_error(*served.post("/api/jobs", {"kind": "generate", "run": "attrs", "attributes": {"Smilin": 1}}),
                   400, "attribute 'Smilin'", "did you mean Smiling")
    one_line_error(*served.post("/api/jobs", {"kind": "generate", "run": "plain", "attributes": {"Smiling": 1}}),
                   400, "unconditional")
    one_line_error(*served.post("/api/jobs", {"kind": "generate", "run": "plain", "steps": 101}), 400,
                   "steps 101 is out of range")


def face_png(side: int = 40, index: int = 5) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(draw_face(side, 3, index)).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(side: int = 64, box: tuple[int, int, int, int] = (8, 8, 40, 56)) -> bytes:
    """A painted mask as the page sends it: square, white = fill."""
    img = Image.new("L", (side, side), 0)
    img.paste(255, box)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_inpaint_with_a_painted_mask_keeps_the_known_pixels(served, root, tmp_path):
    status, face = served.upload(face_png(), "my face.png")
    assert status == 200 and (face["width"], face["height"]) == (40, 40) and face["name"] == "my face.png"
    status, mask = served.upload(mask_png(), "painted-mask.png")
    assert status == 200
    status, shown = served.call("GET", f"/api/face?run=plain&upload={face['id']}")
    assert status == 200 and Image.open(io.BytesIO(shown)).size == (16, 16)
    result, events = done(served, {"kind": "inpaint", "run": "plain", "image": {"upload": face["id"]},
                                   "mask": {"upload": mask["id"]}, "n": 2, "steps": 5, "jump": 2, "resample": 2})
    assert any(e["type"] == "frame" for e in events) and len(result["images"]) == 2
    (tmp_path / "face.png").write_bytes(face_png())
    pixels = load_face(tmp_path / "face.png", "full", 16)[0].permute(1, 2, 0).numpy()
    fill = np.zeros((16, 16), bool)
    fill[2:14, 2:10] = True  # the 64 px box (8, 8, 40, 56) at 16 px
    assert np.array_equal(served.picture(result["mask"])[..., 0] > 127, fill)
    for url in result["images"]:
        got = served.picture(url)
        assert np.array_equal(got[~fill], pixels[~fill])  # known pixels exactly the input's
        assert not np.array_equal(got[fill], pixels[fill])
    assert result["masked"] == pytest.approx(fill.mean(), abs=1e-3)


def test_inpaint_a_generated_face_with_a_named_mask(served):
    job = served.job({"kind": "generate", "run": "plain", "sampler": "ddim", "steps": 2, "n": 2, "seed": 1})
    served.events(job["id"])
    result, _ = done(served, {"kind": "inpaint", "run": "plain", "image": {"job": job["id"], "index": 1},
                              "mask": "left", "n": 1, "steps": 4, "jump": 1, "resample": 1})
    generated = served.picture(f"/files/{job['id']}/images/sample_00001.png")
    assert np.array_equal(served.picture(result["images"][0])[:, 8:], generated[:, 8:])
    status, mask = served.call("GET", "/api/mask?run=plain&name=eyes")
    assert status == 200 and Image.open(io.BytesIO(mask)).size == (16, 16)


def test_interpolate_seeds_and_faces(served):
    result, _ = done(served, {"kind": "interpolate", "run": "plain", "seeds": [3, 4], "frames": 4, "steps": 5})
    assert len(result["images"]) == 4 and result["inputs"] is None
    assert served.picture(result["strip"]).shape[1] > 4 * 16
    assert Image.open(io.BytesIO(served.call("GET", result["gif"])[1])).n_frames >= 4
    ids = [served.upload(face_png(16, k), f"face{k}.png")[1]["id"] for k in (1, 2)]
    result, _ = done(served, {"kind": "interpolate", "run": "plain", "images": [{"upload": i} for i in ids],
                              "frames": 3, "steps": 3, "refine": 0})
    assert len(result["images"]) == 3 and result["inputs"] and len(result["ends"]) == 2
    one_line_error(*served.post("/api/jobs", {"kind": "interpolate", "run": "plain", "seeds": [1]}), 400, "two")


def long_job(run: str = "plain") -> dict[str, Any]:
    """A job of a few seconds: 8 images, 100 DDPM steps, each of 100 network calls reported."""
    return {"kind": "generate", "run": run, "sampler": "ddpm", "steps": 100, "n": 8}


def test_a_second_job_waits_its_turn(served):
    first = served.job(long_job())
    second = served.job({"kind": "generate", "run": "plain", "sampler": "ddim", "steps": 2, "n": 1})
    assert second["position"] >= 1 and second["state"] == "queued"
    status, listing = served.get("/api/jobs")
    assert status == 200 and second["id"] in [j["id"] for j in listing["jobs"]]
    a, b = served.events(first["id"]), served.events(second["id"])
    assert b[0]["type"] == "queued" and b[0]["position"] >= 1
    started = next(e["t"] for e in b if e["type"] == "started")
    assert a[-1]["type"] == "done" and started >= a[-1]["t"]


def test_cancel_a_waiting_and_a_running_job(served):
    running = served.job(long_job())
    waiting = served.job(long_job())
    status, answer = served.post(f"/api/jobs/{waiting['id']}/cancel", {})
    assert status == 200 and answer["state"] == "cancelled"
    assert "started" not in [e["type"] for e in served.events(waiting["id"])]

    def cancel_once_running(event):
        if event["type"] == "progress" and not cancel_once_running.sent:
            cancel_once_running.sent = True
            assert served.post(f"/api/jobs/{running['id']}/cancel", {})[0] == 200

    cancel_once_running.sent = False
    assert served.events(running["id"], cancel_once_running)[-1]["type"] == "cancelled"
    done(served, {"kind": "generate", "run": "plain", "sampler": "ddim", "steps": 2, "n": 1})  # the next runs


def test_a_failing_job_is_one_line_and_the_server_stays_up(served):
    status, blank = served.upload(mask_png(box=(0, 0, 0, 0)), "blank.png")
    assert status == 200
    job = served.job({"kind": "inpaint", "run": "plain", "image": {"demo": 2}, "mask": {"upload": blank["id"]},
                      "steps": 3, "jump": 1, "resample": 1})
    last = served.events(job["id"])[-1]
    assert last["type"] == "failed" and "no white pixels" in last["error"] and "\n" not in last["error"]
    assert served.get(f"/api/jobs/{job['id']}")[1]["error"] == last["error"]
    done(served, {"kind": "generate", "run": "plain", "sampler": "ddim", "steps": 2, "n": 1})


def test_bad_uploads_are_messages(served, root):
    kept = set((root / "out" / "uploads").iterdir()) if (root / "out" / "uploads").exists() else set()
    one_line_error(*served.upload(b"not a picture at all", "notes.txt"), 400, "notes.txt", "not a readable image")
    one_line_error(*served.upload(face_png()[:60], "cut.png"), 400, "cut.png")
    one_line_error(*served.upload(b"\0" * (MAX_UPLOAD + 1), "big.png"), 413, "big.png", "limited to")
    huge = io.BytesIO()
    Image.new("1", (5000, 5000)).save(huge, format="PNG")  # a few kB holding 25 M pixels
    one_line_error(*served.upload(huge.getvalue(), "huge.png"), 400, "5000x5000")
    one_line_error(*served.upload(b"", "empty.png"), 400, "empty")
    assert set((root / "out" / "uploads").iterdir()) == kept  # nothing refused is kept


def test_paths_outside_the_served_folder_are_refused(served, root):
    for name in ["../outside", str(root / "outside"), "linked", "plain/../../outside"]:
        one_line_error(*served.post("/api/jobs", {"kind": "generate", "run": name}), 400, "no run named")
    one_line_error(*served.post("/api/jobs", {"kind": "inpaint", "run": "plain", "image": {"upload": "../../x"}}),
                   400, "not an upload id")
    status, _ = served.call("GET", f"/api/face?run=plain&upload={'a' * 16}")
    assert status == 400
    job = served.job({"kind": "generate", "run": "plain", "sampler": "ddim", "steps": 2, "n": 1})
    served.events(job["id"])
    for path in ["../../runs/plain/config.yaml", "%2e%2e/%2e%2e/runs/plain/config.yaml", "images", "/etc/passwd"]:
        status, raw = served.call("GET", f"/files/{job['id']}/{path}")
        assert status in (400, 404), (path, raw[:200])
    assert served.call("GET", f"/files/{job['id']}/images/sample_00000.png")[0] == 200


def test_other_sites_are_refused(served):
    status, answer = served.post("/api/jobs", {"kind": "generate", "run": "plain"},
                                 headers={"Origin": "http://elsewhere.example"})
    assert status == 403 and "another site" in answer["error"]
    status, raw = served.call("GET", "/api/runs", headers={"Host": "rebound.example"})
    assert status == 403 and b"127.0.0.1" in raw
    status, raw = served.call("POST", "/api/jobs", b"{}", {"Content-Type": "text/plain"})
    assert status == 400 and b"JSON" in raw


# ----------------------------------------------------------------------------- the command


def test_serve_command_starts_prints_its_address_and_stops(root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ddpmkit", "serve", str(root / "runs"), "--port", "0",
                             "--out", str(tmp_path / "out"), "--set", "sample.sampler=ddim", "--device", "cpu"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not any(ln.startswith("open http://127.0.0.1:") for ln in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        url = lines[-1].split()[1]
        assert "serving 2 run(s)" in "".join(lines) and "left out" in "".join(lines)
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "<title>ddpmkit serve</title>" in page and "http://" not in page and "https://" not in page
        runs = json.loads(urllib.request.urlopen(url + "api/runs", timeout=30).read())["runs"]
        assert runs[0]["sample"]["sampler"] == "ddim"  # --set applies to the defaults shown
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_load_check_benchmark_runs(root, tmp_path, capsys):
    """benchmarks/bench_serve.py on a tiny run: its checks pass and it says so (its timings are
    for an idle machine, not for a test)."""
    sys.path.insert(0, str(SRC.parent / "benchmarks"))
    import bench_serve

    assert bench_serve.main([str(root / "runs" / "plain"), "--clients", "3", "--n", "2", "--steps", "3",
                             "--out-json", str(tmp_path / "load.json")]) == 0
    summary = json.loads((tmp_path / "load.json").read_text())
    assert summary["ok"] and summary["problems"] == [] and len(summary["jobs"]) == 3
    assert all(j["position"] >= 1 and j["state"] == "done" for j in summary["jobs"])
    assert "in queue order" in capsys.readouterr().out
    assert bench_serve.check([{"id": "generate2", "started": 1.0, "state": "done", "images_ok": 2},
                              {"id": "generate1", "started": 2.0, "state": "failed", "images_ok": 0}], 2) == [
        "generate1: failed", "generate1: 0 of 2 images", "jobs did not start in the order they were queued: "
        "generate1, generate2"]


def test_serve_command_errors(root, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = CliRunner().invoke(cli_app, ["serve", str(root / "runs"), "--port", str(port), "--out", str(tmp_path)])
    assert r.exit_code == 2 and f"port {port} on 127.0.0.1 is in use" in r.output
    r = CliRunner().invoke(cli_app, ["serve", str(root / "runs"), "--set", "sample.sampler=ddmp"])
    assert r.exit_code == 2 and "sample.sampler" in r.output
    r = CliRunner().invoke(cli_app, ["serve", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "is not a folder" in r.output
    assert server.public_warning("127.0.0.1") is None and "anyone" in server.public_warning("0.0.0.0")


# ----------------------------------------------------------------------------- the page in a real browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (never `playwright install`: no browser download)."""
    path = find_chromium()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Chromium for the page's browser test: run scripts/ci_browser.sh")
        pytest.skip("no Chromium installed (scripts/ci_browser.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


def decoded(page, selector: str) -> list[int]:
    """naturalWidth of each picture the selector finds (0: not decoded)."""
    return page.eval_on_selector_all(selector, "els => els.map(e => e.complete ? e.naturalWidth : 0)")


def until(page, js: str, timeout: float = 60.0) -> Any:
    """Poll `js` (a function's text) in the page until it is true; Playwright's wait_for_function
    would evaluate a string inside the page, which the page's Content-Security-Policy forbids."""
    deadline = time.monotonic() + timeout
    while not (value := page.evaluate(js)):
        assert time.monotonic() < deadline, f"timed out waiting for {js}"
        time.sleep(0.05)
    return value


def test_the_page_in_chromium(served, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(served.url + "/")
    page.wait_for_selector("body[data-ready=yes]")
    page.select_option("#run", "plain")
    page.click("nav button[data-panel=attributes]")
    assert "unconditional" in page.inner_text("#attr-absent")
    page.select_option("#run", "attrs")
    assert page.locator("#attr-table tr").count() == 11
    page.click("nav button[data-panel=generate]")
    page.select_option("#gen-form [name=sampler]", "ddim")
    page.fill("#gen-form [name=steps]", "8")
    page.fill("#gen-form [name=n]", "4")
    page.click("#gen-form button[type=submit]")
    until(page, "() => document.querySelectorAll('#gen-job .images img').length == 4 && "
                "document.querySelector('#gen-job .status').textContent.startsWith('done')")
    until(page, "() => [...document.querySelectorAll('#gen-job img')].every(i => i.complete)")
    assert decoded(page, "#gen-job .images img") == [16] * 4
    assert int(page.get_attribute("body", "data-frames")) >= 3  # live x_t / x̂_0 pictures came as computed
    assert decoded(page, "#gen-job .live img")[0] > 32  # the GIF in their place at the end
    # a generated face into the inpaint panel, a brush stroke, and the fills
    page.click("#gen-job figure:nth-child(2) button")
    until(page, "() => document.querySelector('#inp-face').complete && "
                "document.querySelector('#inp-face').naturalWidth == 16")
    box = page.locator("#inp-canvas").bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 120)
    page.mouse.down()
    page.mouse.move(box["x"] + 200, box["y"] + 130, steps=8)
    page.mouse.up()
    for name, value in (("n", "2"), ("steps", "4"), ("jump", "1"), ("resample", "1")):
        page.fill(f"#inp-form [name={name}]", value)
    page.click("#inp-form button[type=submit]")
    until(page, "() => /^(done|failed)/.test(document.querySelector('#inp-job .status').textContent)")
    assert page.inner_text("#inp-job .status").startswith("done"), page.inner_text("#inp-job .status")
    until(page, "() => [...document.querySelectorAll('#inp-job img')].every(i => i.complete)")
    assert decoded(page, "#inp-job .images img") == [16] * 2
    status, jobs = served.get("/api/jobs")
    masked = [j["result"]["masked"] for j in jobs["jobs"] if j["kind"] == "inpaint" and j["state"] == "done"][-1]
    assert 0.02 < masked < 0.5  # the stroke, not the whole face
    # two uploaded faces, walked into each other through DDIM inversion on the unconditional run
    page.select_option("#run", "plain")
    page.click("nav button[data-panel=interpolate]")
    for k, side in ((1, "a"), (2, "b")):
        (tmp_path / f"face{k}.png").write_bytes(face_png(16, k))
        with page.expect_response(lambda r: r.url.endswith("/api/upload") and r.ok):
            page.set_input_files(f"#int-file-{side}", str(tmp_path / f"face{k}.png"))
    for name, value in (("frames", "3"), ("steps", "3"), ("refine", "0")):
        page.fill(f"#int-form [name={name}]", value)
    page.click("#int-form button[type=submit]")
    until(page, "() => /^(done|failed)/.test(document.querySelector('#int-job .status').textContent)")
    assert page.inner_text("#int-job .status").startswith("done"), page.inner_text("#int-job .status")
    until(page, "() => [...document.querySelectorAll('#int-job img')].every(i => i.complete)")
    assert decoded(page, "#int-job .wide img")[0] >= 3 * 16  # the strip: the three frames side by side
    assert decoded(page, "#int-job .live img")[0] > 0  # the GIF
    assert page.locator("#int-job .links a", has_text="frame").count() == 3
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert page.get_attribute("body", "data-js-errors") == "0"
    assert problems == []
