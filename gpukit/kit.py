"""What the bundle (gpukit/bundle.py) and the check (gpukit/check.py) share: the bundle's layout,
the two sizes (the GPU run and its CPU dry run), file digests and sizes, subprocesses.

Standard library only (numpy where a function says so): the check starts on the GPU machine before
the carried packages are installed, so nothing here may import ddpmkit or pydantic. The helpers for
running ddpmkit's CLI and reading its runs are the benchmarks' (benchmarks/runs.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from runs import cli_env, kill_group  # noqa: E402  (benchmarks/runs.py)

BUNDLE = REPO / ".gpu_bundle"  # ignored by git; copied to the GPU machine beside the repository
KIT = "kit"  # the folder the check needs: manifest, wheels, training pack, reference statistics, weights
MANIFEST = "manifest.json"
PACK_ZIP = "pack.zip"  # the training pack: PNGs in one uncompressed zip (PNG is compressed already)
REF_STATS = "ref_stats.npz"
WHEELS_DIR = "wheels"
PART_PREFIX = "piece"  # piece1/, piece2/, ...: the FID weights cut to a size budget (bundle --max-bytes)
WEIGHTS_NAME = "pt_inception-2015-12-05-fid-nofc.pth"
# with a size budget: room left for the repository to change between bundling and the run, and for
# the archive a copy makes of the files
MARGIN_BYTES = 4 * 2**20

STAGING_ENV = "DDPMKIT_FID_STAGING"  # where scripts/gpu_stash.sh leaves weight pieces copied in earlier
DEFAULT_STAGING = "/tmp/ddpmkit_fid"
TINY_ENV = "DDPMKIT_GPU_CHECK_TINY"

# The packages a GPU image with torch usually lacks, pinned to the versions this project is developed
# with. diffusers' other needs (huggingface-hub, safetensors, filelock, numpy, regex, requests, Pillow)
# come with torch images; typing-extensions travels because pydantic-core needs >= 4.16.
WHEELS = (
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
    "pytorch-fid==0.3.0",
    "diffusers==0.42.1",
)
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")

# A U-Net of 45k parameters at the pack's 64 px: the dry run's model (celeba64 otherwise).
TINY_MODEL_SETS = (
    "model.ch=8", "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[32]",
    "model.dropout=0.0", "model.num_groups=8",
)


@dataclass(frozen=True)
class Profile:
    """Sizes of one mode: the GPU run, or the dry run that checks the same script on a CPU."""

    tiny: bool
    subset: int  # train-split images handed to `ddpmkit prepare` here
    n_train_max: int  # pack images at most (fewer when a size budget says so)
    n_train_min: int
    batch: int  # training batch; the pack is a whole number of batches
    n_ref: int  # images behind the reference statistics
    model_sets: tuple[str, ...]
    train_budget_s: float  # wall-clock training time (compiling included) before SIGINT
    train_min_records: int  # log records to wait for before SIGINT (training really ran)
    log_every: int
    train_sets: tuple[str, ...]  # --set options of the timed training beyond the celeba64 preset
    n_fid: int  # samples, all of them in the FID
    samplers: tuple[tuple[str, int], ...]  # (sampler, steps)
    profile_args: tuple[str, ...]  # benchmarks/profile_step.py
    bench_args: tuple[str, ...]  # benchmarks/bench_speed.py
    deadline_s: float  # the whole check
    caps: dict[str, float] = field(default_factory=dict)  # per-stage time limits

    @property
    def device(self) -> str:
        return "cpu" if self.tiny else "cuda"


# Budgeted for 9 minutes on an H100/H200 (the first H200 run: wheels 24 s, eager benchmark 83 s,
# 500 steps of 128 in 105 s, 2,000 samples 32 s, FID 18 s; compiling both libraries' networks took
# over 171 s): the compiled benchmark gets up to 200 s and prints each side's rate as it ends; the
# timed training then compiles from the warm cache the benchmark left.
GPU = Profile(
    tiny=False, subset=4096, n_train_max=4096, n_train_min=256, batch=128, n_ref=2048, model_sets=(),
    train_budget_s=75.0, train_min_records=2, log_every=50, train_sets=("train.warmup_steps=200",), n_fid=2000,
    samplers=(("dpmsolver++", 20),),  # the FID the recipe comparison uses: 2,000 DPM-Solver++-20 samples
    profile_args=("--device", "cuda"),
    bench_args=("--device", "cuda", "--train-steps", "20", "--warmup", "5"), deadline_s=530.0,
    caps={"bundle": 30, "wheels": 90, "device": 60, "weights": 30, "profile": 60, "bench_eager": 90,
          "bench_compiled": 200, "pack": 30, "train": 110, "sample": 60, "fid": 45, "pytest": 60},
)
TINY = Profile(
    tiny=True, subset=24, n_train_max=16, n_train_min=8, batch=8, n_ref=6, model_sets=TINY_MODEL_SETS,
    train_budget_s=3.0, train_min_records=3, log_every=1, train_sets=(), n_fid=4, samplers=(("dpmsolver++", 4),),
    profile_args=("--device", "cpu", "--preset", "demo", "--batch", "2", "--sample-batch", "2", "--steps", "1",
                  "--sample-steps", "1", "--reps", "1"),
    bench_args=("--device", "cpu", "--preset", "demo", "--train-batch", "4", "--train-steps", "1", "--warmup", "1",
                "--sample-batch", "2", "--sample-steps", "2", "--sample-passes", "1", "--no-demo"),
    deadline_s=480.0,  # 2-3 min on 2 cores shared with other jobs: room for worse
    caps={"bundle": 30, "wheels": 60, "device": 60, "weights": 30, "profile": 90, "bench_eager": 120,
          "pack": 60, "train": 90, "sample": 60, "fid": 90, "pytest": 120},
)


def tiny_from_env() -> bool:
    return os.environ.get(TINY_ENV, "").strip().lower() not in ("", "0", "false", "no")


def add_shared_options(ap: argparse.ArgumentParser, bundle_option: str, tiny_help: str) -> None:
    """--tiny and the bundle folder (as `bundle_option`), options of both the bundle and the check."""
    ap.add_argument("--tiny", "--dry-run", dest="tiny", action="store_true", default=None,
                    help=f"{tiny_help} (also {TINY_ENV}=1)")
    ap.add_argument(bundle_option, dest="bundle_dir", type=Path, default=Path(os.environ.get("DDPMKIT_GPU_BUNDLE") or BUNDLE),
                    help="the bundle folder (default .gpu_bundle; also $DDPMKIT_GPU_BUNDLE)")


def parse_shared(ap: argparse.ArgumentParser, argv: Optional[list[str]]) -> argparse.Namespace:
    args = ap.parse_args(argv)
    if args.tiny is None:
        args.tiny = tiny_from_env()
    return args


def profile(tiny: bool) -> Profile:
    return TINY if tiny else GPU


def sampler_label(name: str, steps: int) -> str:
    return f"{name.replace('+', 'p')}{steps}"  # 'dpmsolverpp20': a file name without '+'


# ---------------------------------------------------------------- files and sizes


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


TOP_NOT_COPIED = {".git", ".venv", ".gpu_bundle", "data", "runs", "outputs", "build", "dist"}  # .gitignore's folders


def repo_bytes(repo: Path = REPO) -> int:
    """Bytes of the working tree a copy of the repository holds: tracked and untracked-not-ignored
    files (git's list; without git, every file outside the usual ignored folders)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo, capture_output=True, check=True,
        ).stdout
        names = {n for n in out.decode().split("\0") if n}
    except (OSError, subprocess.CalledProcessError):
        rel = [p.relative_to(repo) for p in repo.rglob("*") if p.is_file()]
        names = {str(r) for r in rel if r.parts[0] not in TOP_NOT_COPIED and "__pycache__" not in r.parts}
    return sum((repo / n).stat().st_size for n in names if (repo / n).is_file())


def parse_bytes(text: str) -> int:
    """'64MiB', '500MB', '1GiB' or a number of bytes."""
    units = {"gib": 2**30, "mib": 2**20, "kib": 2**10, "gb": 10**9, "mb": 10**6, "kb": 10**3, "b": 1}
    t = text.strip().lower()
    for unit, factor in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(t)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def read_manifest(kit: Path) -> dict[str, Any]:
    return json.loads((kit / MANIFEST).read_text())


def staging_dir() -> Path:
    return Path(os.environ.get(STAGING_ENV) or DEFAULT_STAGING)


# ---------------------------------------------------------------- reference statistics


def pack_stats(src_npz: Path, dst_npz: Path, meta: dict[str, Any]) -> None:
    """Store FID statistics with Σ's upper triangle only: exact, and half of the 32 MiB a 2048x2048
    float64 Σ takes. numpy."""
    import numpy as np

    with np.load(src_npz, allow_pickle=False) as f:
        mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
        count = int(f["count"]) if "count" in f.files else 0
    iu = np.triu_indices(mu.shape[0])
    np.savez(dst_npz, mu=mu, sigma_triu=sigma[iu], count=np.int64(count), meta=np.array(json.dumps(meta)))


def unpack_stats(src_npz: Path, dst_npz: Path) -> int:
    """Rebuild the symmetric Σ and write pytorch-fid's .npz (mu, sigma) that `ddpmkit fid` reads.
    Returns the image count. numpy."""
    import numpy as np

    with np.load(src_npz, allow_pickle=False) as f:
        mu, tri, count = f["mu"], f["sigma_triu"], int(f["count"])
    d = mu.shape[0]
    sigma = np.zeros((d, d), dtype=np.float64)
    sigma[np.triu_indices(d)] = tri
    sigma = sigma + np.triu(sigma, 1).T
    np.savez(dst_npz, mu=mu, sigma=sigma)
    return count


# ---------------------------------------------------------------- subprocesses


def python_env(site: Optional[Path] = None, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment for ddpmkit's CLI and the benchmarks: this checkout's src first, then the
    carried packages (when installed), then whatever PYTHONPATH was there."""
    return cli_env([site] if site else [], extra)


@dataclass
class Ran:
    """A finished subprocess: exit code (None when it was killed at its time limit), seconds, output."""

    code: Optional[int]
    seconds: float
    output: str

    @property
    def timed_out(self) -> bool:
        return self.code is None

    def tail(self, n: int = 25) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-n:])


def run(cmd: Sequence[str], log: Path, timeout: float, env: Optional[dict[str, str]] = None, cwd: Path = REPO,
        echo: bool = False) -> Ran:
    """Run `cmd`, its stdout and stderr together into `log` (appended) and returned; `echo`: also
    print each line as it comes (a stage whose numbers should show before it ends)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        p = subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=env, stdout=subprocess.PIPE if echo else f,
                             stderr=subprocess.STDOUT, start_new_session=True, text=echo)
        code = _pump(p, f, timeout) if echo else _wait(p, timeout)
        if code is None:
            f.write(f"\n[killed at its time limit of {timeout:.0f} s]\n")
    return Ran(code, time.perf_counter() - t0, _read_tail(log))


def _wait(p: subprocess.Popen, timeout: float) -> Optional[int]:
    try:
        return p.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        kill_group(p)
        return None


def _pump(p: subprocess.Popen, f: Any, timeout: float) -> Optional[int]:
    """Copy the process's lines to `f` and to stdout until it ends or `timeout` passes."""
    import selectors

    end = time.monotonic() + max(1.0, timeout)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    while time.monotonic() < end:
        if sel.select(timeout=0.5):
            line = p.stdout.readline()
            if not line:
                break
            f.write(line)
            f.flush()
            print(f"    {line}", end="", flush=True)
    else:
        kill_group(p)
        return None
    return _wait(p, end - time.monotonic())


def _read_tail(log: Path, limit: int = 200_000) -> str:
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - limit))
        return f.read().decode(errors="replace")
