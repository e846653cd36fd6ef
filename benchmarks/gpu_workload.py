"""The workload stages of scripts/gpu_check.sh: speed beside diffusers, training, sampling, FID.

Like the set-up stages (gpu_stages.py), each finds its inputs in the bundle or the work folder, so
it can run again alone, and uses ddpmkit only through its command line and bench_speed.py.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from gpu_common import PACK_IMAGES, REF_STATS, REPO, kill_group, sampler_label, unpack_stats
from gpu_stages import Ctx, Result, StageFailed


# ---------------------------------------------------------------- speed


def bench(ctx: Ctx, res: Result, variant: str) -> None:
    """benchmarks/bench_speed.py, ddpmkit beside diffusers: training img/s, sampling img·steps/s, memory, MFU."""
    stage = f"bench_{variant}"
    out_json, out_md = ctx.work / f"{stage}.json", ctx.work / f"{stage}.md"
    for p in (out_json, out_md):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_speed.py"), *ctx.prof.bench_args,
           "--variants", "compiled" if variant == "compiled" else "eager", "--json", str(out_json), "--out", str(out_md)]
    try:
        r = ctx.run(stage, cmd)
        failed = None if r.code == 0 and out_json.is_file() else f"bench_speed.py failed (exit {r.code})"
    except StageFailed as e:  # killed at the time limit: keep what it wrote before
        failed = str(e)
    rows = {row["what"]: row for row in json.loads(out_json.read_text())["rows"]} if out_json.is_file() else {}
    res.details = {"rows": list(rows.values())}
    if out_md.is_file():
        res.details["markdown"] = out_md.read_text()
    if failed:
        timed = [k for k, v in rows.items() if k.startswith(("training (", "sampling (")) and v["ddpmkit"] is not None]
        raise StageFailed(f"{failed}; measured before that: {', '.join(timed) or 'nothing'}")
    want = [f"training ({variant})", f"sampling ({variant})", f"training MFU ({variant})", f"sampling MFU ({variant})"]
    if not ctx.prof.tiny:
        want += [f"training peak memory ({variant})", f"sampling peak memory ({variant})"]
    missing = [w for w in want if w not in rows or rows[w]["ddpmkit"] is None or rows[w]["diffusers"] is None]
    if missing:
        raise StageFailed(f"not measured: {', '.join(missing)}")
    if rows["parameters"]["ddpmkit"] != rows["parameters"]["diffusers"]:
        raise StageFailed("ddpmkit's and diffusers' networks differ in size: the comparison is unfair")
    t, s = rows[f"training ({variant})"], rows[f"sampling ({variant})"]
    tm, sm = rows[f"training MFU ({variant})"], rows[f"sampling MFU ({variant})"]
    res.summary = (f"training {t['ddpmkit']:,.1f} img/s (diffusers {t['diffusers']:,.1f}), MFU {tm['ddpmkit']:.1f}%; "
                   f"sampling {s['ddpmkit']:,.0f} img·steps/s (diffusers {s['diffusers']:,.0f}), MFU {sm['ddpmkit']:.1f}%")


def stage_bench_eager(ctx: Ctx, res: Result) -> None:
    bench(ctx, res, "eager")
    if ctx.prof.tiny:
        res.reduced = "the demo model (0.69M) at batch 4 on the CPU, one timed step, instead of celeba64"


def stage_bench_compiled(ctx: Ctx, res: Result) -> None:
    bench(ctx, res, "compiled")


# ---------------------------------------------------------------- train, sample, FID


def pack_cache(ctx: Ctx) -> Path:
    return ctx.work / "cache_pack"


def stage_pack(ctx: Ctx, res: Result) -> None:
    """`ddpmkit prepare` of the carried PNGs rebuilds, pixel for pixel, the cache made on the CPU machine."""
    import hashlib

    import numpy as np

    m = ctx.manifest()["pack"]
    shutil.rmtree(pack_cache(ctx), ignore_errors=True)
    r = ctx.ddpmkit("pack", "prepare", "--data-root", str(ctx.main / PACK_IMAGES), "--set", "data.dataset=folder", "--crop", "full",
                    "--size", str(m["size"]), "--split", "all", "--cache-dir", str(pack_cache(ctx)))
    caches = [c.parent for c in pack_cache(ctx).glob("*/COMPLETE")]
    if r.code != 0 or len(caches) != 1:
        raise StageFailed(f"ddpmkit prepare of the pack failed (exit {r.code}, {len(caches)} caches)")
    images = np.load(caches[0] / "images.npy", mmap_mode="r")
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    res.details = {"cache": str(caches[0]), "images": int(images.shape[0]), "pixels_sha256": digest}
    if images.shape[0] != m["count"] or digest != m["pixels_sha256"]:
        raise StageFailed(f"the prepared pack ({images.shape[0]} images) differs from the {m['count']} prepared on the CPU machine")
    res.summary = f"{images.shape[0]} images of {m['size']} px, identical to the cache prepared on the CPU machine"


def stage_train(ctx: Ctx, res: Result) -> None:
    """celeba64 training from the pack for a fixed wall-clock time, stopped by SIGINT (ddpmkit saves a checkpoint)."""
    p = ctx.prof
    run_dir = ctx.work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [f"data.root={ctx.main / PACK_IMAGES}", "data.dataset=folder", "data.crop=full", f"data.cache_dir={pack_cache(ctx)}",
            f"train.batch_size={p.batch}", f"train.log_every={p.log_every}", "train.sample_every=0", "train.ckpt_every=0",
            "train.tensorboard=false", *p.train_sets, *ctx.manifest()["model_sets"]]
    cmd = [sys.executable, "-m", "ddpmkit", "train", "--preset", "celeba64", "--run-dir", str(run_dir), "--max-steps", "1000000",
           "--device", p.device, "--no-progress", *[a for s in sets for a in ("--set", s)]]
    code, signalled, seconds = _timed_training(ctx, cmd, run_dir / "log.jsonl")
    records = [r for r in _jsonl(run_dir / "log.jsonl") if "loss" in r]
    res.details = {"exit": code, "stopped_by_sigint": signalled, "seconds": round(seconds, 1), "command": " ".join(cmd[1:]),
                   "curve": records}
    if code not in ((0, 130) if signalled else (0,)):
        raise StageFailed(f"ddpmkit train exited with {code}")
    if len(records) < p.train_min_records or not all(math.isfinite(r["loss"]) for r in records):
        raise StageFailed(f"{len(records)} log records, losses {[r['loss'] for r in records][:5]}")
    if not any(run_dir.rglob("*.safetensors")):
        raise StageFailed("no checkpoint after the stop")
    rates = [r["img_per_s"] for r in records[1:]] or [records[0]["img_per_s"]]  # the first interval holds the warm-up
    rate = sorted(rates)[len(rates) // 2]
    first, last = records[0]["loss"], records[-1]["loss"]
    res.details.update(steps=records[-1]["step"], img_per_s_median=rate, loss_first=first, loss_last=last)
    if not p.tiny and not last < first:
        raise StageFailed(f"the loss did not fall: {first:.4f} at step {records[0]['step']}, {last:.4f} at step {records[-1]['step']}")
    res.summary = (f"{records[-1]['step']} steps of {p.batch} in {seconds:.0f} s, {rate:,.0f} img/s (median of "
                   f"{len(rates)} logs), loss {first:.4f} -> {last:.4f}")
    if p.tiny:
        res.reduced = (f"a 45k-parameter U-Net ({', '.join(p.model_sets)}) at batch {p.batch} for {p.train_budget_s:.0f} s "
                       "instead of celeba64 (78.7M) at batch 128 for 60 s")


def _timed_training(ctx: Ctx, cmd: list[str], log_jsonl: Path) -> tuple[Optional[int], bool, float]:
    """Run training; SIGINT once the budget is spent and enough records exist. (exit, signalled, seconds)."""
    limit = ctx.timeout("train")
    log = ctx.work / "logs" / "train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0, signalled = time.monotonic(), False
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=ctx.env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            if elapsed > limit:
                kill_group(proc)
                raise StageFailed(f"ddpmkit train did not stop within {limit:.0f} s (SIGINT sent: {signalled})")
            if not signalled and elapsed >= ctx.prof.train_budget_s and len(_jsonl(log_jsonl)) >= ctx.prof.train_min_records:
                proc.send_signal(signal.SIGINT)  # the trainer finishes the step, saves a checkpoint, exits 130
                signalled = True
            time.sleep(0.2)
    return proc.returncode, signalled, time.monotonic() - t0


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return out


def stage_sample(ctx: Ctx, res: Result) -> None:
    """`ddpmkit sample` with DDIM-50 and DPM-Solver++-20 from the trained run; an 8x8 grid of each to $OUT."""
    run_dir, n = ctx.work / "run", ctx.prof.n_fid
    if not any(run_dir.rglob("*.safetensors")):
        raise StageFailed(f"no trained run at {run_dir}: the train stage must pass first")
    rows = []
    for name, steps in ctx.prof.samplers:
        label = sampler_label(name, steps)
        out = ctx.work / "samples" / label
        shutil.rmtree(out, ignore_errors=True)
        r = ctx.ddpmkit("sample", "sample", str(run_dir), "--n", str(n), "--sampler", name, "--steps", str(steps),
                        "--batch-size", str(ctx.prof.sample_batch), "--out", str(out), "--device", ctx.prof.device)
        got = len(list((out / "images").glob("*.png")))
        if r.code != 0 or got != n:
            raise StageFailed(f"ddpmkit sample --sampler {name} --steps {steps}: exit {r.code}, {got} of {n} images")
        grid = ctx.out / f"samples_{label}.png"
        _grid(sorted((out / "images").glob("*.png"))[:64], grid)
        rows.append({"sampler": name, "steps": steps, "n": n, "seconds": round(r.seconds, 2), "img_per_s": n / r.seconds,
                     "img_steps_per_s": n * steps / r.seconds, "grid": grid.name})
    res.details = {"runs": rows, "note": "wall time of the whole command: start-up, model load, sampling, PNG writing"}
    res.summary = "; ".join(f"{r['sampler']}-{r['steps']}: {r['n']} images in {r['seconds']:.1f} s" for r in rows)
    if ctx.prof.tiny:
        res.reduced = (f"{n} images per sampler, " + " and ".join(f"{a}-{b}" for a, b in ctx.prof.samplers)
                       + " instead of 2,000 with ddim-50 and dpmsolver++-20")


def _grid(files: list[Path], dest: Path, cols: int = 8) -> None:
    from PIL import Image

    tiles = [Image.open(f).convert("RGB") for f in files]
    side = tiles[0].width
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * side, rows * side), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * side, (i // cols) * side))
    sheet.save(dest)


def stage_fid(ctx: Ctx, res: Result) -> None:
    """FID of each sampler's images against the reference statistics computed on the CPU machine."""
    ref = ctx.main / REF_STATS
    if not ref.is_file():
        raise StageFailed(f"reference statistics missing: {ref} (scripts/gpu_bundle.sh makes them)")
    if not ctx.weights.is_file():
        raise StageFailed(f"FID weights missing at {ctx.weights}: the weights stage must pass first")
    ref_full = ctx.work / "ref_full.npz"
    ref_n = unpack_stats(ref, ref_full)
    rows = []
    # the dry run scores one sampler: each `ddpmkit fid` builds the Inception network, seconds on a CPU
    for name, steps in ctx.prof.samplers[:1] if ctx.prof.tiny else ctx.prof.samplers:
        label = sampler_label(name, steps)
        images, out = ctx.work / "samples" / label / "images", ctx.work / f"fid_{label}.json"
        if not images.is_dir():
            raise StageFailed(f"no samples at {images}: the sample stage must pass first")
        r = ctx.ddpmkit("fid", "fid", str(images), str(ref_full), "--out-json", str(out), "--force", "--device", ctx.prof.device,
                        "--batch-size", "200", "--set", f"data.cache_dir={ctx.work / 'fid_cache'}")
        if r.code != 0 or not out.is_file():
            raise StageFailed(f"ddpmkit fid of {label} failed (exit {r.code})")
        got = json.loads(out.read_text())
        if not math.isfinite(got["fid"]) or got["n"] != ctx.prof.n_fid:
            raise StageFailed(f"FID {got['fid']} of {got['n']} images for {label}")
        rows.append({"sampler": name, "steps": steps, "fid": got["fid"], "n": got["n"], "reference_n": ref_n, "seconds": round(r.seconds, 2)})
    res.details = {"runs": rows}
    res.summary = "; ".join(f"{r['sampler']}-{r['steps']}: FID {r['fid']:.2f} ({r['n']} vs {r['reference_n']})" for r in rows)
    if ctx.prof.tiny:
        res.reduced = (f"the first sampler only, {ctx.prof.n_fid} samples against statistics of {ref_n} images: "
                       "the number means nothing")
