"""What scripts/gpu_bundle.sh and scripts/gpu_check.sh share: the bundle's layout, the two sizes
(the GPU run and its CPU dry run), file digests, the device tool's size limit, subprocesses.

Standard library only (numpy where a function says so): the check starts on the GPU machine
before the carried wheels are installed, so nothing here may import ddpmkit or pydantic.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".gpu_bundle"  # ignored by git; carried to the GPU machine by name
MAIN = "main"  # the folder that travels with the check: manifest, wheels, pack, reference statistics
MANIFEST = "manifest.json"
PACK_IMAGES = "pack/images"
REF_STATS = "ref_stats.npz"
WHEELS_DIR = "wheels"
PART_PREFIX = "fid"  # fid1/, fid2/, ...: the FID Inception weights in pieces, one per device call
WEIGHTS_NAME = "pt_inception-2015-12-05-fid-nofc.pth"
LIMIT_BYTES = 64 * 2**20  # what one device call may carry: tracked + untracked-not-ignored + carried
MARGIN_BYTES = 1 * 2**20  # room left for the repository to grow between bundling and the run
# The device tool refused 61.5 MiB of file contents in 4,100 files as "larger than 64 MiB": it counts more
# than contents (disk blocks or archive headers), so each file is charged its size plus one 4 KiB block.
FILE_OVERHEAD = 4096

STAGING_ENV = "DDPMKIT_FID_STAGING"  # where call 1 leaves its part of the weights (survives while warm)
DEFAULT_STAGING = "/tmp/ddpmkit_fid"
TINY_ENV = "DDPMKIT_GPU_CHECK_TINY"

# The packages the GPU image lacks, pinned to the versions this project is developed with.
# diffusers' other needs (huggingface-hub >= 1.32, safetensors >= 0.8, filelock, numpy, regex,
# requests, Pillow) are in the image; importlib_metadata is imported only on Python < 3.8.
# typing-extensions travels because pydantic-core 2.50 needs >= 4.16 and the image's is unknown.
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
    n_train_max: int  # pack images at most (fewer when the size limit says so)
    n_train_min: int
    batch: int  # training batch; the pack is a whole number of batches
    n_ref: int  # images behind the reference statistics
    model_sets: tuple[str, ...]
    train_budget_s: float  # wall-clock training time before SIGINT
    train_min_records: int  # log records to wait for before SIGINT (training really ran)
    log_every: int
    train_sets: tuple[str, ...]  # --set options of the timed training beyond the celeba64 preset
    n_fid: int  # samples per sampler, all of them in the FID
    sample_batch: int
    samplers: tuple[tuple[str, int], ...]  # (sampler, steps)
    bench_args: tuple[str, ...]
    compiled: bool  # the compiled benchmark stage runs
    deadline_s: float  # the whole check
    caps: dict[str, float] = field(default_factory=dict)  # per-stage time limits

    @property
    def device(self) -> str:
        return "cpu" if self.tiny else "cuda"


GPU = Profile(
    tiny=False, subset=4096, n_train_max=4096, n_train_min=256, batch=128, n_ref=2048, model_sets=(),
    train_budget_s=60.0, train_min_records=2, log_every=50, n_fid=2000, sample_batch=500,
    # the first H200 run trained 772 img/s (500 steps in 100 s) and left torch.compile 171 s, too few to
    # compile both benchmarked networks: 60 s of training gives that time to the compiled stage
    train_sets=("train.warmup_steps=200",),
    samplers=(("ddim", 50), ("dpmsolver++", 20)),  # the two: DDIM-50 and DPM-Solver++-20
    bench_args=("--device", "cuda"), compiled=True, deadline_s=560.0,
    caps={"bundle": 30, "wheels": 90, "device": 60, "weights": 30, "pytest": 120, "bench_eager": 120,
          "pack": 60, "train": 180, "sample": 120, "fid": 90, "bench_compiled": 240},
)
TINY = Profile(
    tiny=True, subset=24, n_train_max=16, n_train_min=8, batch=8, n_ref=6, model_sets=TINY_MODEL_SETS,
    train_budget_s=3.0, train_min_records=3, log_every=1, n_fid=4, sample_batch=4, train_sets=(),
    samplers=(("ddim", 5), ("dpmsolver++", 4)),
    bench_args=("--device", "cpu", "--preset", "demo", "--train-batch", "4", "--train-steps", "1", "--warmup", "1",
                "--sample-batch", "2", "--sample-steps", "2", "--sample-passes", "1", "--no-demo"),
    compiled=False, deadline_s=480.0,  # it took 2-3 min on 2 cores shared with other jobs: room for worse
    caps={"bundle": 30, "wheels": 60, "device": 60, "weights": 30, "pytest": 120, "bench_eager": 120,
          "pack": 60, "train": 90, "sample": 60, "fid": 90},
)


def tiny_from_env() -> bool:
    return os.environ.get(TINY_ENV, "").strip().lower() not in ("", "0", "false", "no")


def profile(tiny: bool) -> Profile:
    return TINY if tiny else GPU


def sampler_label(name: str, steps: int) -> str:
    return f"{name.replace('+', 'p')}{steps}"  # 'dpmsolverpp20': a name $OUT accepts


# ---------------------------------------------------------------- files and sizes


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_digest(folder: Path) -> tuple[str, int, int]:
    """(sha256 over every file's relative name and content digest, file count, bytes) of a folder."""
    h = hashlib.sha256()
    count = size = 0
    for p in sorted(q for q in Path(folder).rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(folder).as_posix()}\0{sha256_file(p)}\n".encode())
        count += 1
        size += p.stat().st_size
    return h.hexdigest(), count, size


def sent_bytes(path: Path) -> int:
    """What one file costs in a device call: its size plus FILE_OVERHEAD."""
    return Path(path).stat().st_size + FILE_OVERHEAD


def tree_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return sent_bytes(path)
    return sum(sent_bytes(p) for p in path.rglob("*") if p.is_file())


TOP_NOT_SENT = {".git", ".venv", ".gpu_bundle", "data", "runs", "outputs", "build", "dist"}  # .gitignore's folders


def repo_bytes(repo: Path = REPO) -> int:
    """Bytes of the working tree that every device call sends: tracked and untracked-not-ignored files
    (git's list; without git, every file outside the usual ignored folders, which errs on the large side)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo, capture_output=True, check=True,
        ).stdout
        names = {n for n in out.decode().split("\0") if n}
    except (OSError, subprocess.CalledProcessError):
        rel = [p.relative_to(repo) for p in repo.rglob("*") if p.is_file()]
        names = {str(r) for r in rel if r.parts[0] not in TOP_NOT_SENT and "__pycache__" not in r.parts}
    return sum(sent_bytes(repo / n) for n in names if (repo / n).is_file())


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def read_manifest(main: Path) -> dict[str, Any]:
    return json.loads((main / MANIFEST).read_text())


def staging_dir() -> Path:
    return Path(os.environ.get(STAGING_ENV) or DEFAULT_STAGING)


# ---------------------------------------------------------------- reference statistics


def pack_stats(src_npz: Path, dst_npz: Path, meta: dict[str, Any]) -> None:
    """Store FID statistics with Σ's upper triangle only: exact, and half of the 32 MiB a 2048x2048
    float64 Σ takes (the device call's 64 MiB must also hold the weights and the pack). numpy."""
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
    carried wheels (when installed), then whatever PYTHONPATH was there."""
    env = dict(os.environ)
    parts = [str(REPO / "src")] + ([str(site)] if site else []) + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


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


def run(cmd: Sequence[str], log: Path, timeout: float, env: Optional[dict[str, str]] = None, cwd: Path = REPO) -> Ran:
    """Run `cmd`, its stdout and stderr together into `log` (appended) and returned."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        p = subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: Optional[int] = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            kill_group(p)
            code = None
            f.write(f"\n[killed at its time limit of {timeout:.0f} s]\n")
    return Ran(code, time.perf_counter() - t0, _read_tail(log))


def kill_group(p: subprocess.Popen) -> None:
    """End a process started with start_new_session=True and everything it started (compile workers)."""
    import signal

    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def _read_tail(log: Path, limit: int = 200_000) -> str:
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - limit))
        return f.read().decode(errors="replace")
