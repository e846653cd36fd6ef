"""`ddpmkit import`: a diffusers UNet2DModel (a local folder, or a Hub id) as a ddpmkit run.

    resolve_source      the folder (fetched from the Hub for an owner/name id) and where it came from
    imported_settings   model and diffusion settings from its config files; the rest from the
                        `celeba64` preset (the DDIM paper's training and sampling recipe), then --set
    read_weights        the safetensors file checked against the network before a byte is loaded,
                        then renamed tensor by tensor (interop/diffusers_unet.py), in float32
    write_run           the run folder: settings, run info (with `imported_from`), and a step-0
                        checkpoint as training writes it, so sample, inpaint, interpolate, fid,
                        inspect, report, and train --resume (fine-tuning) all work on it

The run is written under a temporary name and renamed when complete; an existing run is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from ddpmkit.checkpoint import tensor_shapes
from ddpmkit.errors import DdpmkitError
from ddpmkit.interop.diffusers_schedule import diffusion_settings
from ddpmkit.interop.diffusers_unet import diffusers_shapes, from_diffusers, model_settings, rename_legacy
from ddpmkit.interop.hub import fetch, looks_like_hub_id
from ddpmkit.interop.layout import DiffusersFolder, locate, read_json
from ddpmkit.io_utils import atomic_path
from ddpmkit.nn import UNet, count_parameters
from ddpmkit.settings import DiffusionConfig, ModelConfig, Settings, build_settings, format_validation_error, read_yaml
from ddpmkit.train.rundir import RunDir
from ddpmkit.train.state import TrainState

BASE_PRESET = "celeba64"  # train, sample and fid settings of an imported run (the DDIM paper's recipe)
ARCHITECTURE = ("model.", "diffusion.")  # sections an import takes from the model's own config files
T = TypeVar("T")


@dataclass
class Imported:
    run_dir: Path
    settings: Settings
    parameters: int
    origin: dict[str, Any]  # the run info's imported_from


def import_diffusers(src: str, run_dir: Path, *, scheduler: Optional[Path] = None, revision: Optional[str] = None,
                     sets: Optional[list[str]] = None, preset: Optional[str] = None,
                     config: Optional[Path] = None) -> Imported:
    """Make run folder `run_dir` from the UNet2DModel at `src` (a folder or a Hub id owner/name).
    The train, sample and fid settings come from `preset` (default BASE_PRESET), `config` and `sets`.
    Raises DdpmkitError (one line) for anything refused; writes nothing then."""
    check_free(run_dir)  # before any download; write_run looks again just before writing
    check_no_architecture(config, sets)
    folder, origin = resolve_source(src, scheduler, revision)
    settings = imported_settings(folder, run_dir, sets, preset, config)
    state, dtype = read_weights(folder.weights, settings.model)
    origin.update(pipeline=folder.pipeline, unet_config=_name_in(folder.unet_config, folder.root),
                  weights=_name_in(folder.weights, folder.root), weights_dtype=dtype,
                  scheduler_config=_name_in(folder.scheduler_config, folder.root))
    n = write_run(run_dir, settings, state, origin)
    return Imported(run_dir, settings, n, origin)


def _name_in(path: Path, root: Path) -> str:
    """`path` relative to the source folder when inside it (unet/config.json), else absolute."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def resolve_source(src: str, scheduler: Optional[Path], revision: Optional[str]) -> tuple[DiffusersFolder, dict]:
    """The diffusers folder `src` names, and where it came from (the run info's imported_from)."""
    path = Path(src)
    if path.exists():
        if revision is not None:
            raise DdpmkitError(f"--revision applies to Hub ids, and {src} is a local folder")
        return locate(path, scheduler), {"kind": "folder", "source": str(path.resolve())}
    if not looks_like_hub_id(src):
        raise DdpmkitError(f"{src} is neither a folder nor a Hugging Face Hub id (owner/name)")
    snapshot, commit = fetch(src, revision)
    return locate(snapshot, scheduler, label=src), {"kind": "hub", "source": src, "revision": commit}


def _mapped(mapping: Callable[[dict[str, Any]], T], config: dict[str, Any], source: Path) -> T:
    """mapping(config), a value of the wrong type in the file (a string for a number, ...) as one line."""
    try:
        return mapping(config)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise DdpmkitError(f"{source} holds a value of the wrong type ({type(e).__name__}: {str(e)[:100]})") from None


def _validated(section: type, values: dict[str, Any], source: Path) -> None:
    """Check settings derived from a config file before they meet a preset, so an error names the file."""
    try:
        section.model_validate(values)
    except ValidationError as e:
        raise DdpmkitError(format_validation_error(e, str(source))) from None


def check_no_architecture(config: Optional[Path], sets: Optional[list[str]]) -> None:
    """An imported model's model and diffusion settings come from its own config files: refuse them
    from --config or --set, in one line."""
    for s in sets or []:
        if s.strip().startswith(ARCHITECTURE):
            raise DdpmkitError(f"--set {s}: an imported model's model and diffusion settings come from its own "
                               "config files; --set the other sections only")
    sections = read_yaml(config, "config file") if config is not None else {}
    for name in ("model", "diffusion"):
        if name in sections:
            raise DdpmkitError(f"--config {config} sets {name}: an imported model's model and diffusion settings "
                               "come from its own config files; give the other sections only")


def imported_settings(folder: DiffusersFolder, run_dir: Path, sets: Optional[list[str]] = None,
                      preset: Optional[str] = None, config: Optional[Path] = None) -> Settings:
    """The run's settings: model and diffusion from the config files, the rest from the preset
    (BASE_PRESET unless given), --config and --set."""
    model = _mapped(model_settings, read_json(folder.unet_config, "UNet2DModel config"), folder.unet_config)
    diffusion, sample = _mapped(diffusion_settings, read_json(folder.scheduler_config, "scheduler config"),
                                folder.scheduler_config)
    _validated(ModelConfig, model, folder.unet_config)
    _validated(DiffusionConfig, diffusion, folder.scheduler_config)
    patch = {"model": model, "diffusion": diffusion, "sample": sample, "data": {"size": model["image_size"]}}
    settings = build_settings(preset or BASE_PRESET, config, {"train": {"run_dir": str(run_dir)}}, sets,
                              preset_patch=patch)
    settings.preset = None  # no preset describes this network
    settings.check_model()
    return settings


def _check_tensors(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: Path) -> None:
    """One line unless the file holds exactly the tensors (names and shapes) its config describes."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise DdpmkitError(f"{source} does not hold the network its config.json describes: "
                           f"{len(missing) + len(extra)} tensors differ ({what})")
    for k, shape in expected.items():
        if tuple(found[k]) != shape:
            raise DdpmkitError(f"{source} does not hold the network its config.json describes: {k} has shape "
                               f"{tuple(found[k])} there, {shape} in the config's network")


def _check_declared(cfg: ModelConfig, found: Mapping[str, tuple[int, ...]], source: Path) -> None:
    """The levels, residual blocks and widths the config declares are those of the file's tensors,
    checked before any network is built: the file, not its config, bounds what is built."""
    levels = len({k.split(".")[1] for k in found if k.startswith("down_blocks.")})
    blocks = len({k.split(".")[3] for k in found if k.startswith("down_blocks.0.resnets.")})
    widths = tuple((found.get(f"down_blocks.{i}.resnets.0.conv1.weight") or (0,))[0] for i in range(levels))
    declared = (len(cfg.ch_mult), cfg.num_res_blocks, tuple(cfg.ch * m for m in cfg.ch_mult))
    if (levels, blocks, widths) != declared:
        raise DdpmkitError(f"{source} does not hold the network its config.json describes: {levels} levels of "
                           f"{blocks} residual blocks, widths {list(widths)} in the file; {declared[0]} of "
                           f"{declared[1]}, widths {list(declared[2])} in the config")


def read_weights(weights: Path, cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], str]:
    """ddpmkit's float32 state dict from UNet2DModel safetensors, and the file's dtype. The header
    is checked against the network first: a wrong or hostile file allocates nothing."""
    levels = len(cfg.ch_mult)
    found = rename_legacy(tensor_shapes(weights))
    _check_declared(cfg, found, weights)
    with torch.device("meta"):  # shapes only
        own = {k: tuple(v.shape) for k, v in UNet.from_config(cfg).state_dict().items()}
    _check_tensors(diffusers_shapes(own, levels), found, weights)
    try:
        theirs = rename_legacy(load_file(str(weights)))
    except (SafetensorError, OSError, ValueError) as e:
        raise DdpmkitError(f"{weights} is not a readable safetensors file ({e})") from None
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in theirs.values()})
    state = {k: t.float() for k, t in from_diffusers(theirs, own, levels).items()}
    return state, "/".join(dtypes)


def check_free(run_dir: Path) -> None:
    """Refuse a run directory that holds a run, or any file (nothing is overwritten unasked)."""
    RunDir(run_dir).checkpoint_to_resume(False)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise DdpmkitError(f"{run_dir} already exists and holds files: choose a new --run-dir")


def write_run(run_dir: Path, settings: Settings, state: dict[str, torch.Tensor], origin: dict[str, Any]) -> int:
    """Write the run folder (atomically): its settings, its run info, checkpoints/step_00000000 with the
    imported weights as both the raw and the EMA weights and a fresh training state. Returns the
    parameter count."""
    check_free(run_dir)
    with atomic_path(run_dir) as tmp:
        fresh = TrainState.new(settings, torch.device("cpu"))  # the optimizer and RNG a resume starts from
        fresh.model.load_state_dict(state)
        fresh.ema.model.load_state_dict(state)
        n = count_parameters(fresh.model)
        room = RunDir(tmp)
        room.create_for(settings, {"imported_from": origin, "parameters": n})
        fresh.save(room.checkpoints, world_size=1, keep=settings.train.keep_checkpoints)
    return n
