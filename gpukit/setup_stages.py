"""The set-up stages of scripts/gpu_check.sh (bundle, wheels, device, weights, the cuda tests) and
what every stage shares. Each stage fills its `Result` or raises `StageFailed` with one line.

Every stage finds its inputs in the bundle or the work folder, never in another stage's memory,
so any stage can be run again alone (`--stages fid`). ddpmkit is used only through its command
line (`python -m ddpmkit prepare/train/sample/fid`) and the benchmark scripts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kit import (
    KIT, MANIFEST, PACK_ZIP, REF_STATS, REPO, WEIGHTS_NAME, WHEELS_DIR, Profile, Ran, python_env, read_manifest, run,
    sha256_file, staging_dir,
)


class StageFailed(Exception):
    """A stage's verdict: what is wrong, in one line."""


@dataclass
class Result:
    name: str
    status: str = "FAIL"
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system time of the stage's subprocesses
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""
    reduced: str = ""  # what the dry run leaves out of this stage


@dataclass
class Ctx:
    """Where everything is, and the clock."""

    prof: Profile
    bundle: Path  # .gpu_bundle
    work: Path  # scratch on the machine: the weights, the unpacked pack, the run, samples, logs
    out: Path  # $OUT: the report and a few pictures
    deadline: float  # time.monotonic() by which the check must end
    ran: Optional[Ran] = None  # the last subprocess, for the report when a stage fails

    @property
    def kit(self) -> Path:
        return self.bundle / KIT

    @property
    def site(self) -> Optional[Path]:
        site = self.work / "site"
        return site if site.is_dir() and any(site.iterdir()) else None

    @property
    def weights(self) -> Path:
        return self.work / "fid" / WEIGHTS_NAME

    def env(self, **extra: str) -> dict[str, str]:
        return python_env(self.site, {"DDPMKIT_FID_WEIGHTS": str(self.weights), **extra})

    def manifest(self) -> dict[str, Any]:
        if not (self.kit / MANIFEST).is_file():
            raise StageFailed(f"no bundle manifest at {self.kit / MANIFEST}: run scripts/gpu_bundle.sh on a machine "
                              "with internet and copy its kit folder here (docs/offline-gpu-kit.md)")
        return read_manifest(self.kit)

    def timeout(self, stage: str) -> float:
        left = self.deadline - time.monotonic() - 5.0
        if left < 10.0:
            raise StageFailed(f"not run: only {max(left, 0):.0f} s of the check's {self.prof.deadline_s:.0f} s budget left")
        return min(self.prof.caps.get(stage, 120.0), left)

    def run(self, stage: str, cmd: list[str], timeout: Optional[float] = None, echo: bool = False, **env: str) -> Ran:
        limit = timeout or self.timeout(stage)
        self.ran = run(cmd, self.work / "logs" / f"{stage}.log", limit, self.env(**env), echo=echo)
        if self.ran.timed_out:
            what = " ".join(Path(c).name for c in cmd[1:4] if len(c) < 80)  # e.g. "-m ddpmkit train"
            raise StageFailed(f"'{what}' killed at its time limit of {limit:.0f} s")
        return self.ran

    def ddpmkit(self, stage: str, *args: str, timeout: Optional[float] = None) -> Ran:
        return self.run(stage, [sys.executable, "-m", "ddpmkit", *args], timeout)


# ---------------------------------------------------------------- the bundle, the wheels, the device


def stage_bundle(ctx: Ctx, res: Result) -> None:
    """Every piece the bundle's manifest lists is here with its digest."""
    m = ctx.manifest()
    if m["tiny"] != ctx.prof.tiny:
        kind = {True: "tiny", False: "full-size"}
        raise StageFailed(f"the bundle is {kind[m['tiny']]} but this check is {kind[ctx.prof.tiny]}: rebuild the bundle")
    problems = []
    for what, name, digest in (("training pack", PACK_ZIP, m["pack"]["sha256"]),
                               ("reference statistics", REF_STATS, m["reference"]["sha256"])):
        path = ctx.kit / name
        if not path.is_file():
            problems.append(f"{what} {path} missing")
        elif sha256_file(path) != digest:
            problems.append(f"{what} {path} differ from the manifest's")
    for w in m["wheels"]:
        path = ctx.kit / WHEELS_DIR / w["file"]
        if not path.is_file() or sha256_file(path) != w["sha256"]:
            problems.append(f"wheel {w['file']} missing or changed")
    if problems:
        raise StageFailed("; ".join(problems))
    pieces = len(m["weights"]["parts"])
    res.details = {"created": m["created"], "pack_images": m["pack"]["count"], "reference_images": m["reference"]["images"],
                   "wheels": [w["file"] for w in m["wheels"]], "weight_pieces": pieces}
    res.summary = (f"pack of {m['pack']['count']} images, reference statistics of {m['reference']['images']}, "
                   f"{len(m['wheels'])} wheels, weights {'in ' + str(pieces) + ' pieces' if pieces else 'whole'}")


IMPORT_CHECK = """
import importlib.metadata, json, sys, pydantic, pytorch_fid
if sys.argv[1] == "full":
    import torch, diffusers, ddpmkit.cli.app
    from diffusers import UNet2DModel, DDIMScheduler
# the dry run only looks diffusers up (importing it takes seconds on a CPU; bench_eager imports it)
versions = {"pydantic": pydantic.__version__, "pytorch_fid": pytorch_fid.__version__,
            "diffusers": importlib.metadata.version("diffusers")}
print("VERSIONS " + json.dumps(versions))
"""


def stage_wheels(ctx: Ctx, res: Result) -> None:
    """Install the carried wheels offline into work/site, then import what ddpmkit and the benchmark need."""
    m = ctx.manifest()
    wheels = sorted((ctx.kit / WHEELS_DIR).glob("*.whl"))
    if ctx.prof.tiny:
        res.reduced = "a tiny bundle carries no wheels (CI downloads none): pydantic and pytorch_fid are imported, diffusers looked up"
    elif len(wheels) != len(m["wheels"]) or not wheels:
        raise StageFailed(f"{len(wheels)} wheels in {ctx.kit / WHEELS_DIR}, the manifest lists {len(m['wheels'])}")
    else:
        site = ctx.work / "site"
        shutil.rmtree(site, ignore_errors=True)
        r = ctx.run("wheels", [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)])
        if r.code != 0:
            raise StageFailed(f"pip install of the carried wheels failed (exit {r.code})")
    r = ctx.run("wheels", [sys.executable, "-c", IMPORT_CHECK, "tiny" if ctx.prof.tiny else "full"])
    line = next((ln for ln in r.output.splitlines() if ln.startswith("VERSIONS ")), None)
    if r.code != 0 or line is None:
        raise StageFailed("importing pydantic, pytorch_fid, diffusers and ddpmkit failed")
    res.details = json.loads(line[len("VERSIONS "):])
    res.summary = ", ".join(f"{k} {v}" for k, v in res.details.items()) + (f" ({len(wheels)} wheels installed)" if wheels else "")


DEVICE_CHECK = """
import json, torch
d = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
     "threads": torch.get_num_threads()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    d.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
             multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
             cudnn=torch.backends.cudnn.version())
print("DEVICE " + json.dumps(d))
"""


def stage_device(ctx: Ctx, res: Result) -> None:
    """torch and the accelerator it sees; a full-size check without CUDA fails here."""
    r = ctx.run("device", [sys.executable, "-c", DEVICE_CHECK])
    line = next((ln for ln in r.output.splitlines() if ln.startswith("DEVICE ")), None)
    if r.code != 0 or line is None:
        raise StageFailed("torch did not start")
    d = json.loads(line[len("DEVICE "):])
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        d["nvidia_smi"] = q.stdout.strip()
    res.details = d
    if ctx.prof.tiny:
        res.summary = f"CPU dry run, torch {d['torch']}, {d['threads']} threads"
        return
    if not d["cuda_available"]:
        raise StageFailed("no CUDA device: the full-size check needs a GPU (DDPMKIT_GPU_CHECK_TINY=1 is the CPU dry run)")
    res.summary = f"{d['name']} ({d['memory_gib']} GiB, sm {d['capability']}), torch {d['torch']}, CUDA {d['cuda']}"


def stage_weights(ctx: Ctx, res: Result) -> None:
    """The FID Inception weights into the work folder, checked by sha256: the kit's whole file, or
    its pieces (bundle --max-bytes) joined, each from the staging folder (scripts/gpu_stash.sh put it
    there) or from its piece folder in the bundle."""
    w = ctx.manifest()["weights"]
    if ctx.weights.is_file() and sha256_file(ctx.weights) == w["sha256"]:
        res.summary, res.details = f"{ctx.weights} already there", {"sources": ["already there"]}
        return
    whole = ctx.kit / WEIGHTS_NAME
    if not w["parts"]:
        sources, missing = ([str(whole)], []) if whole.is_file() else ([], [str(whole)])
    else:
        sources, missing = _pieces(ctx, w["parts"])
    if missing:
        raise StageFailed(f"FID weights not found: {', '.join(missing)}; a piece copied in alone must be put into "
                          f"{staging_dir()} by `bash scripts/gpu_stash.sh` (docs/offline-gpu-kit.md)")
    ctx.weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = ctx.weights.with_suffix(".part")
    with open(tmp, "wb") as out:
        for src in sources:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    if sha256_file(tmp) != w["sha256"]:
        raise StageFailed("the FID weights' sha256 differs from the manifest's")
    tmp.replace(ctx.weights)
    res.details = {"sources": sources, "path": str(ctx.weights), "sha256": w["sha256"]}
    joined = f"{len(sources)} pieces joined" if w["parts"] else "copied"
    res.summary = f"{joined}, sha256 {w['sha256'][:12]}… verified"


def _pieces(ctx: Ctx, parts: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(where each weights piece is, the pieces found nowhere)."""
    sources, missing = [], []
    for p in parts:
        candidates = [staging_dir() / p["file"], ctx.bundle / p["folder"] / p["file"]]
        found = next((c for c in candidates if c.is_file() and c.stat().st_size == p["bytes"] and sha256_file(c) == p["sha256"]), None)
        if found:
            sources.append(str(found))
        else:
            missing.append(f"{p['file']} (folder {p['folder']})")
    return sources, missing


def cuda_test_files(tests: Path) -> list[str]:
    """The test files that use the cuda marker (collecting only those saves importing the whole suite);
    all of `tests` when none does, so that a marker added some other way is still collected."""
    if tests.is_file():
        return [str(tests)]
    files = sorted(p for p in tests.rglob("test_*.py") if "mark.cuda" in p.read_text(errors="replace"))
    return [str(p) for p in files] or [str(tests)]


def stage_pytest(ctx: Ctx, res: Result) -> None:
    """The tests marked `cuda`, on the real device. None collected is a failure, not a pass."""
    tests = Path(os.environ.get("DDPMKIT_GPU_CHECK_TESTS") or REPO / "tests")
    junit = ctx.work / "pytest.xml"
    junit.unlink(missing_ok=True)
    files = cuda_test_files(tests)
    r = ctx.run("pytest", [sys.executable, "-m", "pytest", "-m", "cuda", *files, "-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={junit}"])
    counts, problems = _junit(junit)
    res.details = {"files": files, "exit": r.code, **counts, "problems": problems}
    if r.code == 5 or counts["tests"] == 0:
        raise StageFailed(f"no tests marked cuda were collected from {tests}: the device-strict layer "
                          "(tests/test_device_strict.py, @pytest.mark.cuda) is missing, so nothing ran on the device")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if r.code != 0 or counts["failures"] or counts["errors"]:
        raise StageFailed(f"{counts['failures'] + counts['errors']} of {counts['tests']} cuda tests failed: {'; '.join(problems[:5])}")
    if counts["skipped"] and not ctx.prof.tiny:
        raise StageFailed(f"{counts['skipped']} cuda tests skipped on a CUDA machine: {'; '.join(problems[:5])}")
    if passed < 1:
        raise StageFailed(f"all {counts['tests']} cuda tests were skipped")
    res.summary = f"{passed} passed, {counts['skipped']} skipped, from {len(files)} files"
    if ctx.prof.tiny:
        res.reduced = "on the CPU: tests that need CUDA skip themselves"


def _junit(path: Path) -> tuple[dict[str, int], list[str]]:
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    problems: list[str] = []
    if not path.is_file():
        return counts, problems
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for k in counts:
            counts[k] += int(suite.get(k, 0))
        for case in suite.iter("testcase"):
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    problems.append(f"{child.tag} {case.get('name')}: {(child.get('message') or '').splitlines()[0][:160] if child.get('message') else ''}")
    return counts, problems
