"""Prove ddpmkit on a GPU without internet in one command, or dry-run it on a CPU (scripts/gpu_check.sh).

    bash scripts/gpu_check.sh                                   # on the GPU machine, from the repo root
    DDPMKIT_GPU_CHECK_TINY=1 bash scripts/gpu_check.sh          # the dry run: tiny sizes, on the CPU
    bash scripts/gpu_check.sh --stages sample,fid               # some stages again, reusing the work folder

Stages, in order, each printing PASS or FAIL as it ends: bundle (every piece of the kit there,
digests right), wheels (offline install, imports), device, weights (the FID Inception weights,
joined when they came in pieces), profile (where a training and a sampling step's time goes, and
the convolution floor: benchmarks/profile_step.py), bench_eager and bench_compiled (ddpmkit beside
diffusers, eager then torch.compile'd: benchmarks/bench_speed.py, each side's rate printed as it
ends), pack (prepare rebuilds the training pack pixel for pixel), train (celeba64 from the pack for
a fixed time, compiling included, stopped by SIGINT), sample (DPM-Solver++-20), fid (against the
carried reference statistics), pytest (the tests marked cuda). The budget is 9 minutes;
$OUT/gpu_check.md and $OUT/gpu_check.json hold everything measured, rewritten after every stage;
the exit code is 0 only when every stage passed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

import report
import setup_stages
import work_stages
from kit import Profile, add_shared_options, parse_shared, profile
from setup_stages import Ctx, Result, StageFailed

STAGES = {
    "bundle": setup_stages.stage_bundle,
    "wheels": setup_stages.stage_wheels,
    "device": setup_stages.stage_device,
    "weights": setup_stages.stage_weights,
    "profile": work_stages.stage_profile,
    "bench_eager": work_stages.stage_bench_eager,
    "bench_compiled": work_stages.stage_bench_compiled,
    "pack": work_stages.stage_pack,
    "train": work_stages.stage_train,
    "sample": work_stages.stage_sample,
    "fid": work_stages.stage_fid,
    "pytest": setup_stages.stage_pytest,
}
# What the dry run leaves out, and why; the report lists it.
TINY_OMITS = {"bench_compiled": "not run: torch.compile of even the demo model takes minutes on 2 CPU cores "
                                "(tests/test_compiling.py compiles a tiny U-Net)"}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(ap, "--bundle", "tiny sizes on the CPU")
    ap.add_argument("--stages", default=os.environ.get("DDPMKIT_GPU_CHECK_STAGES"),
                    help=f"comma-separated subset of: {', '.join(STAGES)} (default all; also $DDPMKIT_GPU_CHECK_STAGES)")
    ap.add_argument("--out", type=Path, default=os.environ.get("OUT") or None, help="results folder (default $OUT, else a new temporary folder)")
    ap.add_argument("--work", type=Path, default=os.environ.get("DDPMKIT_GPU_CHECK_WORK") or None,
                    help="scratch folder (default $DDPMKIT_GPU_CHECK_WORK, else /tmp/ddpmkit_gpu_check[_tiny])")
    return parse_shared(ap, argv)


def stage_names(prof: Profile, asked: Optional[str]) -> list[str]:
    every = [s for s in STAGES if not (prof.tiny and s in TINY_OMITS)]
    if not asked:
        return every
    names = [s.strip() for s in asked.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise SystemExit(f"error: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    return [s for s in every if s in names] + [s for s in names if s not in every]


def run_stage(ctx: Ctx, name: str) -> Result:
    res = Result(name)
    ctx.ran = None
    t0, cpu0 = time.monotonic(), _children_cpu()
    print(f"[gpu_check] {name} ...", flush=True)
    try:
        STAGES[name](ctx, res)
        res.status = "PASS"
    except StageFailed as e:
        res.summary = str(e)
    except Exception as e:  # a bug or a surprise in the stage itself: still a FAIL with a reason, never a crash
        res.summary = f"{type(e).__name__}: {e}".splitlines()[0]
        res.log_tail = traceback.format_exc()
    res.seconds, res.cpu_seconds = time.monotonic() - t0, round(_children_cpu() - cpu0, 1)
    if res.status != "PASS" and ctx.ran is not None and not res.log_tail:
        res.log_tail = ctx.ran.tail(40)
    print(f"[gpu_check] {name}: {res.status} ({res.seconds:.1f} s) {res.summary}", flush=True)
    return res


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def make_ctx(args: argparse.Namespace, prof: Profile, started: float, full_run: bool) -> Ctx:
    work = args.work or Path(tempfile.gettempdir()) / ("ddpmkit_gpu_check_tiny" if prof.tiny else "ddpmkit_gpu_check")
    if full_run and work.exists():
        shutil.rmtree(work)  # a complete check starts clean: no stage may pass on an earlier run's files
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="ddpmkit_gpu_check_out_"))
    out.mkdir(parents=True, exist_ok=True)
    return Ctx(prof=prof, bundle=args.bundle_dir.resolve(), work=work.resolve(), out=out.resolve(), deadline=started + prof.deadline_s)


def main(argv: Optional[list[str]] = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    prof = profile(args.tiny)
    names = stage_names(prof, args.stages)
    ctx = make_ctx(args, prof, started, full_run=not args.stages)
    meta = {
        "mode": "tiny dry run on the CPU" if prof.tiny else "GPU run",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["bash scripts/gpu_check.sh", *(sys.argv[1:] if argv is None else argv)]),
        "host": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "budget_s": prof.deadline_s,
        "stages_asked": names,
        "omitted": {k: v for k, v in TINY_OMITS.items() if prof.tiny} or None,
    }
    print(f"[gpu_check] {meta['mode']}: stages {', '.join(names)}; results in {ctx.out}; work in {ctx.work}", flush=True)
    results: list[Result] = []
    for name in names:
        results.append(run_stage(ctx, name))
        meta["seconds"] = round(time.monotonic() - started, 1)
        report.write(ctx, results, meta)
    report.collect_logs(ctx, results)
    failed = [r.name for r in results if r.status != "PASS"]
    verdict = f"FAIL: {', '.join(failed)}" if failed else "PASS: every stage"
    print(f"[gpu_check] {verdict} in {time.monotonic() - started:.0f} s; {ctx.out / 'gpu_check.md'}", flush=True)
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
