"""The workload stages of scripts/gpu_check.sh: the profile, speed beside diffusers (eager, then
compiled), a fixed-time training from the pack, its samples and their FID.

Like the set-up stages (setup_stages.py), each finds its inputs in the bundle or the work folder,
so it can run again alone, and uses ddpmkit only through its command line and the benchmark
scripts (benchmarks/profile_step.py, bench_speed.py; the run's log through benchmarks/runs.py).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import sys
import zipfile
from pathlib import Path

from kit import GPU, PACK_ZIP, REF_STATS, REPO, sampler_label, unpack_stats
from runs import read_log, steady_rate, train_for  # benchmarks/runs.py (kit.py put it on the path)
from setup_stages import Ctx, Result, StageFailed

BENCHMARKS = REPO / "benchmarks"


# ---------------------------------------------------------------- where the time goes, and speed


def stage_profile(ctx: Ctx, res: Result) -> None:
    """benchmarks/profile_step.py: a training and a sampling step's time by kind of work, and the
    convolution floor."""
    out_json = ctx.work / "profile.json"
    out_json.unlink(missing_ok=True)
    r = ctx.run("profile", [sys.executable, str(BENCHMARKS / "profile_step.py"), *ctx.prof.profile_args,
                            "--json", str(out_json)], echo=True)
    if r.code != 0 or not out_json.is_file():
        raise StageFailed(f"profile_step.py failed (exit {r.code})")
    got = json.loads(out_json.read_text())
    res.details = {"profile": got, "text": [ln for ln in r.output.splitlines() if ln.startswith(("  ", "training", "sampling"))]}
    parts = []
    for kind in ("train", "sample"):
        p = got[kind]
        top = max(p["groups"], key=p["groups"].get)
        parts.append(f"{kind} {p['wall_ms']:.1f} ms/step ({top} {100 * p['groups'][top] / p['wall_ms']:.0f}%, idle "
                     f"{100 * p['idle_ms'] / p['wall_ms']:.0f}%), {p['wall_ms'] / max(p['conv_floor_ms'], 1e-9):.1f}x the "
                     "convolution floor")
    res.summary = "; ".join(parts)
    if ctx.prof.tiny:
        res.reduced = "the demo model at batch 2 on the CPU, one step of each"


def bench(ctx: Ctx, res: Result, variant: str) -> None:
    """benchmarks/bench_speed.py, ddpmkit beside diffusers: training img/s, sampling img·steps/s, memory, MFU."""
    stage = f"bench_{variant}"
    out_json, out_md = ctx.work / f"{stage}.json", ctx.work / f"{stage}.md"
    for p in (out_json, out_md):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCHMARKS / "bench_speed.py"), *ctx.prof.bench_args,
           "--variants", variant, "--json", str(out_json), "--out", str(out_md)]
    try:
        r = ctx.run(stage, cmd, echo=True)
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


def pack_images(ctx: Ctx) -> Path:
    return ctx.work / "pack_images"


def pack_cache(ctx: Ctx) -> Path:
    return ctx.work / "cache_pack"


def stage_pack(ctx: Ctx, res: Result) -> None:
    """Unpack the training pack; `ddpmkit prepare` of its PNGs rebuilds, pixel for pixel, the cache
    the bundle was made from."""
    import hashlib

    import numpy as np

    m = ctx.manifest()["pack"]
    shutil.rmtree(pack_images(ctx), ignore_errors=True)
    shutil.rmtree(pack_cache(ctx), ignore_errors=True)
    with zipfile.ZipFile(ctx.kit / PACK_ZIP) as z:
        z.extractall(pack_images(ctx))
    r = ctx.ddpmkit("pack", "prepare", "--data-root", str(pack_images(ctx)), "--set", "data.dataset=folder", "--crop", "full",
                    "--size", str(m["size"]), "--split", "all", "--cache-dir", str(pack_cache(ctx)))
    caches = [c.parent for c in pack_cache(ctx).glob("*/COMPLETE")]
    if r.code != 0 or len(caches) != 1:
        raise StageFailed(f"ddpmkit prepare of the pack failed (exit {r.code}, {len(caches)} caches)")
    images = np.load(caches[0] / "images.npy", mmap_mode="r")
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    res.details = {"cache": str(caches[0]), "images": int(images.shape[0]), "pixels_sha256": digest}
    if images.shape[0] != m["count"] or digest != m["pixels_sha256"]:
        raise StageFailed(f"the prepared pack ({images.shape[0]} images) differs from the {m['count']} it was made from")
    res.summary = f"{images.shape[0]} images of {m['size']} px, identical to the cache the bundle was made from"


COMPILED_IN = re.compile(r"compiled in ([0-9.]+) s")


def stage_train(ctx: Ctx, res: Result) -> None:
    """celeba64 training from the pack for a fixed wall-clock time (compiling included), stopped by
    SIGINT (ddpmkit saves a checkpoint)."""
    p = ctx.prof
    run_dir = ctx.work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    if not pack_images(ctx).is_dir():
        raise StageFailed(f"no unpacked training pack at {pack_images(ctx)}: the pack stage must pass first")
    sets = [f"data.root={pack_images(ctx)}", "data.dataset=folder", "data.crop=full", f"data.cache_dir={pack_cache(ctx)}",
            f"train.batch_size={p.batch}", f"train.log_every={p.log_every}", "train.sample_every=0", "train.ckpt_every=0",
            "train.tensorboard=false", *p.train_sets, *ctx.manifest()["model_sets"]]
    cmd = [sys.executable, "-m", "ddpmkit", "train", "--preset", "celeba64", "--run-dir", str(run_dir), "--max-steps", "1000000",
           "--device", p.device, "--no-progress", *[a for s in sets for a in ("--set", s)]]
    log = ctx.work / "logs" / "train.log"
    limit = ctx.timeout("train")
    code, signalled, seconds = train_for(cmd, p.train_budget_s, env=ctx.env(), out=log, limit=limit, stop=signal.SIGINT,
                                         ready=lambda: len(read_log(run_dir)) >= p.train_min_records)
    if code is None:
        raise StageFailed(f"ddpmkit train did not stop within {limit:.0f} s (SIGINT sent: {signalled})")
    records = read_log(run_dir)
    compiled = COMPILED_IN.search(log.read_text(errors="replace"))
    res.details = {"exit": code, "stopped_by_sigint": signalled, "seconds": round(seconds, 1), "command": " ".join(cmd[1:]),
                   "compile_s": float(compiled.group(1)) if compiled else None, "curve": records}
    if code not in ((0, 130) if signalled else (0,)):
        raise StageFailed(f"ddpmkit train exited with {code}")
    if len(records) < p.train_min_records or not all(math.isfinite(r["loss"]) for r in records):
        raise StageFailed(f"{len(records)} log records, losses {[r['loss'] for r in records][:5]}")
    if not any(run_dir.rglob("*.safetensors")):
        raise StageFailed("no checkpoint after the stop")
    rate = steady_rate(records) or records[0]["img_per_s"]
    first, last = records[0]["loss"], records[-1]["loss"]
    res.details.update(steps=records[-1]["step"], img_per_s_median=rate, loss_first=first, loss_last=last)
    if not p.tiny and not last < first:
        raise StageFailed(f"the loss did not fall: {first:.4f} at step {records[0]['step']}, {last:.4f} at step {records[-1]['step']}")
    warm = f", compiled in {res.details['compile_s']:.1f} s" if compiled else ""
    res.summary = (f"{records[-1]['step']} steps of {p.batch} in {seconds:.0f} s{warm}, {rate:,.0f} img/s (median of "
                   f"{max(1, len(records) - 1)} logs), loss {first:.4f} -> {last:.4f}")
    if p.tiny:
        res.reduced = (f"a 45k-parameter U-Net ({', '.join(p.model_sets)}) at batch {p.batch} for {p.train_budget_s:.0f} s "
                       f"instead of celeba64 (78.7M) at batch {GPU.batch} for {GPU.train_budget_s:.0f} s")


def stage_sample(ctx: Ctx, res: Result) -> None:
    """`ddpmkit sample` of the FID's images from the trained run; its grid.png to $OUT."""
    run_dir, n = ctx.work / "run", ctx.prof.n_fid
    if not any(run_dir.rglob("*.safetensors")):
        raise StageFailed(f"no trained run at {run_dir}: the train stage must pass first")
    rows = []
    for name, steps in ctx.prof.samplers:
        label = sampler_label(name, steps)
        out = ctx.work / "samples" / label
        shutil.rmtree(out, ignore_errors=True)
        r = ctx.ddpmkit("sample", "sample", str(run_dir), "--n", str(n), "--sampler", name, "--steps", str(steps),
                        "--out", str(out), "--device", ctx.prof.device)
        got = len(list((out / "images").glob("*.png")))
        if r.code != 0 or got != n:
            raise StageFailed(f"ddpmkit sample --sampler {name} --steps {steps}: exit {r.code}, {got} of {n} images")
        shutil.copyfile(out / "grid.png", ctx.out / f"samples_{label}.png")
        rows.append({"sampler": name, "steps": steps, "n": n, "seconds": round(r.seconds, 2), "img_per_s": n / r.seconds,
                     "img_steps_per_s": n * steps / r.seconds, "grid": f"samples_{label}.png"})
    res.details = {"runs": rows, "note": "wall time of the whole command: start-up, model load, compiling, sampling, "
                   "PNG writing; the batch is chosen from free memory"}
    res.summary = "; ".join(f"{r['sampler']}-{r['steps']}: {r['n']} images in {r['seconds']:.1f} s" for r in rows)
    if ctx.prof.tiny:
        res.reduced = (f"{n} images, " + " and ".join(f"{a}-{b}" for a, b in ctx.prof.samplers)
                       + " instead of 2,000 with dpmsolver++-20")


def stage_fid(ctx: Ctx, res: Result) -> None:
    """FID of the samples against the reference statistics the bundle carries."""
    ref = ctx.kit / REF_STATS
    if not ref.is_file():
        raise StageFailed(f"reference statistics missing: {ref} (scripts/gpu_bundle.sh makes them)")
    if not ctx.weights.is_file():
        raise StageFailed(f"FID weights missing at {ctx.weights}: the weights stage must pass first")
    ref_full = ctx.work / "ref_full.npz"
    ref_n = unpack_stats(ref, ref_full)
    rows = []
    for name, steps in ctx.prof.samplers:
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
        res.reduced = f"{ctx.prof.n_fid} samples against statistics of {ref_n} images: the number means nothing"
