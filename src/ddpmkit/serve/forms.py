"""The page's requests, checked before anything is queued: a bad value is one line naming the
field, answered at once (a job that is queued has a run, values in range and inputs that exist).

    {"kind": "generate", "run": NAME, "sampler", "steps", "eta", "seed": S | "random", "n",
     "attributes": {NAME: 1 | -1}, "guidance"}
    {"kind": "inpaint", "run": NAME, "image": SOURCE, "mask": MASK_NAME | {"upload": ID},
     "n", "steps", "jump", "resample", "seed"}
    {"kind": "interpolate", "run": NAME, "seeds": [A, B] | "images": [SOURCE, SOURCE],
     "frames", "steps", "refine"}

A SOURCE is {"upload": ID}, {"job": JOB, "index": K} (a picture that job made) or {"demo": K};
nothing from the page is a path.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Optional

from pydantic import ValidationError

from ddpmkit.conditioning import asked_condition
from ddpmkit.errors import DdpmkitError
from ddpmkit.inpainting import check_options
from ddpmkit.serve.jobs import JobQueue
from ddpmkit.serve.runs import MAX_COUNT, RunInfo, ServedRuns, sample_defaults
from ddpmkit.serve.tasks import GenerateJob, InpaintJob, InterpolateJob
from ddpmkit.serve.uploads import Uploads
from ddpmkit.settings import MASK_NAMES, MAX_SEED, REPAINT_JUMP, REPAINT_RESAMPLE, REPAINT_STEPS, SampleConfig

MAX_FILLS = 16
MAX_FRAMES = 64
MAX_REFINE = 10
RANDOM_SEEDS = 2**31  # a "random" seed is drawn below this: short enough to type back in
KINDS = ("generate", "inpaint", "interpolate")


@dataclass(frozen=True)
class Checked:
    """A request made into a job: its kind, run and what it will do."""

    kind: str
    run: str
    job: Any  # GenerateJob | InpaintJob | InterpolateJob


def whole(body: dict[str, Any], key: str, default: Any, lo: int, hi: int) -> int:
    """body[key] as a whole number in [lo, hi] (absent: default)."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DdpmkitError(f"{key} must be a whole number, got {str(value)[:40]!r}")
    if not lo <= value <= hi:
        raise DdpmkitError(f"{key} {value} is out of range: {lo:,} to {hi:,}")
    return value


def seed_of(body: dict[str, Any], key: str = "seed", default: Any = 0) -> int:
    """A seed, or a fresh one for "random"."""
    if body.get(key, default) == "random":
        return secrets.randbelow(RANDOM_SEEDS)
    return whole(body, key, default, 0, MAX_SEED)


def check_request(body: Any, runs: ServedRuns, uploads: Uploads, queue: JobQueue) -> Checked:
    """The job a request asks for, every value checked; one line naming the first bad one."""
    if not isinstance(body, dict):
        raise DdpmkitError("a job is a JSON object with its kind and run")
    kind = body.get("kind")
    if kind not in KINDS:
        raise DdpmkitError(f"kind {str(kind)[:40]!r} is not one of: {', '.join(KINDS)}")
    run = runs.find(body.get("run"))
    if kind == "generate":
        return Checked(kind, run.name, generate_job(body, run, runs))
    if kind == "inpaint":
        return Checked(kind, run.name, inpaint_job(body, run, uploads, queue))
    return Checked(kind, run.name, interpolate_job(body, run, runs, uploads, queue))


def sample_config(base: SampleConfig, changes: dict[str, Any], T: int) -> SampleConfig:
    """`base` with the asked changes, checked as the settings check them; steps at most T."""
    try:
        cfg = SampleConfig.model_validate({**base.model_dump(), **changes})
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise DdpmkitError(f"{field} {changes.get(field)!r}: {first['msg'].removeprefix('Value error, ')}") from None
    if cfg.steps is not None and cfg.steps > T:
        raise DdpmkitError(f"steps {cfg.steps} is more than the model's T = {T} diffusion steps")
    return cfg


def generate_job(body: dict[str, Any], run: RunInfo, runs: ServedRuns) -> GenerateJob:
    base = sample_defaults(run.settings, runs.asked)
    T = run.settings.diffusion.timesteps
    changes = {"sampler": body.get("sampler", base.sampler), "steps": whole(body, "steps", base.steps, 1, T),
               "eta": body.get("eta", base.eta), "seed": seed_of(body, "seed", base.seed),
               "n": whole(body, "n", min(base.n, MAX_COUNT), 1, MAX_COUNT)}
    cfg = sample_config(base, changes, T)
    attrs = body.get("attributes") or {}
    if not isinstance(attrs, dict) or any(v not in (1, -1, 0) or isinstance(v, bool) for v in attrs.values()):
        raise DdpmkitError("attributes must map each attribute's name to 1 (want), -1 (don't want) or 0 (don't care)")
    asked = tuple(("" if v > 0 else "-") + str(name) for name, v in attrs.items() if v)
    guidance = body.get("guidance") if asked else None
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))):
        raise DdpmkitError(f"guidance must be a number, got {str(guidance)[:40]!r}")
    m = run.settings.model
    try:
        asked_condition(m.cond_dim, m.cond_names, list(asked), guidance)  # one line for what does not fit
    except DdpmkitError as e:  # in the page's words, not the command line's
        raise DdpmkitError(str(e).replace("--attr", "attribute").replace("--guidance", "guidance")) from None
    return GenerateJob(run.name, cfg, asked, guidance)


def source(spec: Any, uploads: Uploads, queue: JobQueue, what: str) -> str:
    """A SOURCE (see the module's doc) as `inpainting.face_and_mask` reads it: a file's path or demo:K."""
    if isinstance(spec, dict) and "upload" in spec:
        return str(uploads.path(spec["upload"]))
    if isinstance(spec, dict) and "job" in spec:
        job = queue.job(spec["job"])
        index = whole(spec, "index", None, 0, max(len(job.images) - 1, 0))
        if index >= len(job.images):
            raise DdpmkitError(f"{what}: job {job.id} has made no picture yet")
        return str(job.images[index])
    if isinstance(spec, dict) and "demo" in spec:
        return f"demo:{whole(spec, 'demo', None, 0, 1_000_000)}"
    raise DdpmkitError(f"{what} must be an upload, a picture a job made or a demo face, not {str(spec)[:60]!r}")


def inpaint_job(body: dict[str, Any], run: RunInfo, uploads: Uploads, queue: JobQueue) -> InpaintJob:
    T = run.settings.diffusion.timesteps
    image = source(body.get("image"), uploads, queue, "image")
    mask: Any = body.get("mask", "box")
    if isinstance(mask, dict):
        mask = str(uploads.path(mask.get("upload")))
    elif not isinstance(mask, str) or mask.lower() not in MASK_NAMES:
        raise DdpmkitError(f"mask {str(mask)[:40]!r} is not one of {', '.join(MASK_NAMES)} or a painted mask")
    n = whole(body, "n", 4, 1, MAX_FILLS)
    steps = whole(body, "steps", min(REPAINT_STEPS, T), 1, T)
    jump = whole(body, "jump", REPAINT_JUMP, 1, T)
    resample = whole(body, "resample", REPAINT_RESAMPLE, 1, 100)
    seed = seed_of(body)
    check_options(n, steps, jump, resample, seed, None, T)
    return InpaintJob(run.name, image, mask, n, steps, jump, resample, seed)


def interpolate_job(body: dict[str, Any], run: RunInfo, runs: ServedRuns, uploads: Uploads,
                    queue: JobQueue) -> InterpolateJob:
    seeds, images = body.get("seeds"), body.get("images")
    if (seeds is None) == (images is None):
        raise DdpmkitError("give either two seeds or two images")
    pair = seeds if seeds is not None else images
    if not isinstance(pair, list) or len(pair) != 2:
        raise DdpmkitError(f"{'seeds' if seeds is not None else 'images'} needs exactly two")
    T = run.settings.diffusion.timesteps
    stored = sample_defaults(run.settings, runs.asked)
    default_steps = runs.describe(run)["interpolate"]["steps"]
    cfg = sample_config(stored, {"sampler": "ddim", "eta": 0.0, "steps": whole(body, "steps", default_steps, 1, T)}, T)
    frames = whole(body, "frames", 16, 2, MAX_FRAMES)
    refine = whole(body, "refine", 2, 0, MAX_REFINE)
    if seeds is not None:
        ends = tuple(seed_of({"seed": s}) for s in pair)
        return InterpolateJob(run.name, cfg, seed_pair=ends, frames=frames, refine=refine)
    faces = tuple(source(s, uploads, queue, f"image {'AB'[k]}") for k, s in enumerate(pair))
    return InterpolateJob(run.name, cfg, faces=faces, frames=frames, refine=refine)


def optional_int(value: Optional[str]) -> Optional[int]:
    """A whole number from a query string ("3"), else None."""
    return int(value) if value is not None and value.isdigit() and len(value) < 19 else None
