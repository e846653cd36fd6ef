"""Which preset a bare `ddpmkit train` uses, and a preset fitted to another image size.

The rule (docs/settings.md, "Presets"): presets are named by data and size, each sized for a machine.

    data          CelebA at data.root, or a prepared CelebA cache in data.cache_dir; else the
                  generated demo faces (preset demo)
    size          --size; else the newest prepared CelebA cache's; else 32 on a CPU, 64 on a GPU
    preset        the one for that size and machine; on a CPU the small model for that size if
                  there is one, else the size's GPU model (with a warning once the ETA is known);
                  for a size no preset has, the nearest one, resized

Nothing here trains or imports torch: the CLI calls it to resolve the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ddpmkit.data import cache as C
from ddpmkit.data.celeba import detect_layout
from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import DataConfig, PresetInfo, available_presets, deep_merge, preset_dict, preset_info

DEFAULT_SIZE = {"cpu": 32, "gpu": 64}  # CelebA found but not prepared


@dataclass
class Choice:
    """A preset, the changes that fit it to the data found (below --config and --set), and why."""

    preset: str
    patch: dict[str, Any] = field(default_factory=dict)
    why: str = ""
    resized: Optional[str] = None  # how the preset's attention moved with the size (`fit_to_size`)

    def explain(self, attn_resolutions: tuple[int, ...]) -> str:
        """`why`, plus the resize note while the model's attention is still the one moved."""
        moved = (self.patch.get("model") or {}).get("attn_resolutions")
        if self.resized and moved is not None and list(attn_resolutions) == list(moved):
            return f"{self.why}; {self.resized}" if self.why else self.resized
        return self.why


@dataclass(frozen=True)
class Prepared:
    """A complete prepared cache and what its index says about it."""

    path: Path
    dataset: str
    root: str
    size: int
    crop: str
    split: str


def machine_of(device_type: str) -> str:
    return "cpu" if device_type == "cpu" else "gpu"


def presets_for(dataset: str) -> list[PresetInfo]:
    """The presets for real images (CelebA or a folder) or for the generated faces."""
    real = dataset != "synthetic"
    return [p for p in map(preset_info, available_presets()) if (p.dataset != "synthetic") == real]


def preset_for(size: int, machine: str, dataset: str = "celeba") -> tuple[str, str]:
    """(preset, why) for images of `size` px on `machine` ("cpu" or "gpu")."""
    infos = presets_for(dataset)
    if not infos:
        raise DdpmkitError(f"no preset for dataset {dataset}")
    exact = [p for p in infos if p.size == size]
    mine = [p for p in exact if p.machine == machine]
    if mine:
        return mine[0].name, f"the {machine.upper()} model for {size} px"
    if exact:
        p = exact[0]
        return p.name, f"the {size} px model (sized for a {p.machine.upper()}; no {machine.upper()} model for {size} px)"
    pool = [p for p in infos if p.machine == machine] or infos
    p = min(pool, key=lambda q: (abs(q.size - size), q.size))
    return p.name, f"no preset for {size} px: {p.name}'s {p.machine.upper()} model, resized"


def fit_to_size(preset: str, size: int) -> tuple[dict[str, Any], Optional[str]]:
    """The patch that runs `preset` at `size` px, and a note when its attention had to move.

    A preset's attention resolutions are meant relative to its own size (celeba32's 8x8 is a
    quarter of the side): at another size they are scaled with it, so attention is never dropped
    silently. A resolution that does not scale to a whole number is left for `check_model` to refuse.
    """
    info = preset_info(preset)
    patch: dict[str, Any] = {"data": {"size": size}}
    if size == info.size:
        return patch, None
    attn = tuple((preset_dict(preset).get("model", {}) or {}).get("attn_resolutions", (16,)))
    scaled = tuple(r * size // info.size for r in attn)
    if not attn or any(r * size % info.size for r in attn) or min(scaled) < 1:
        return patch, None
    patch["model"] = {"attn_resolutions": list(scaled)}
    was, now = ", ".join(map(str, attn)), ", ".join(map(str, scaled))
    return patch, f"{preset} is made for {info.size} px: its attention at {was} px moves to {now} px at {size} px"


def prepared_caches(cache_dir: Path, dataset: str, root: Optional[Path] = None, size: Optional[int] = None) -> list[Prepared]:
    """Complete caches of `dataset` (celeba or folder), newest first; only those made from `root`
    and at `size` when given."""
    want_root = str(Path(root).expanduser().resolve()) if root is not None else None
    found: list[tuple[int, Prepared]] = []
    for path in C.find_caches(cache_dir):
        try:
            index = C.read_index(path)
        except DdpmkitError:
            continue
        data, settings = index.get("data") or {}, index.get("settings") or {}
        kind = data.get("dataset") or path.name.split("-", 1)[0]
        p_root = data.get("root") or (index.get("source") or {}).get("root", "")
        p_size = settings.get("size")
        if kind != dataset or (want_root and p_root != want_root) or not isinstance(p_size, int):
            continue
        if size is None or p_size == size:
            prepared = Prepared(path, kind, p_root, p_size, settings.get("crop", "ddim"), settings.get("split", "train"))
            found.append(((path / C.MARKER).stat().st_mtime_ns, prepared))
    return [p for _, p in sorted(found, key=lambda item: item[0], reverse=True)]


def celeba_at(root: Path) -> bool:
    """True when `root` holds CelebA in one of its layouts (a plain image folder is not CelebA)."""
    try:
        return detect_layout(root, "celeba").kind != "folder"
    except DdpmkitError:
        return False


def choose_preset(data: DataConfig, machine: str, size: Optional[int] = None, dataset: Optional[str] = None) -> Choice:
    """The preset of `ddpmkit train` without --preset and --config (the rule in the module docstring).

    `size` and `dataset` are the user's (--size, --dataset), None when not given."""
    if dataset == "synthetic":
        return _resized("demo", size, "--dataset synthetic: the generated demo faces")
    kind = dataset or "celeba"
    here = kind == "folder" or celeba_at(data.root)
    caches = prepared_caches(data.cache_dir, kind, data.root if here else None, size)
    if not here and not caches and dataset is None:
        return _resized("demo", size, f"no CelebA in {data.root} and none prepared in {data.cache_dir}: "
                                      "the generated demo faces (see `ddpmkit prepare`)")
    name_of = {"celeba": "CelebA", "folder": "the image folder"}[kind]
    patch: dict[str, Any] = {"data": {"dataset": kind}}
    if caches:
        c = caches[0]
        size = c.size
        patch["data"].update(root=c.root, crop=c.crop, split=c.split)
        found = f"{name_of} prepared at {size} px ({c.path.name})"
    else:
        size = size or DEFAULT_SIZE[machine]
        where = f"{name_of} in {data.root}" if here else f"--dataset {kind} from {data.root}"
        found = f"{where}, not prepared yet: {size} px on a {machine.upper()} (prepared first)"
    name, why = preset_for(size, machine, kind)
    fit, note = fit_to_size(name, size)
    patch = deep_merge(fit, patch)
    if preset_info(name).size != size or kind != "celeba":
        patch.setdefault("train", {})["run_dir"] = f"runs/{kind}{size}"
    return Choice(name, patch, f"{found}; {why}", note)


def _resized(preset: str, size: Optional[int], why: str) -> Choice:
    if size is None:
        return Choice(preset, {}, why)
    patch, note = fit_to_size(preset, size)
    return Choice(preset, patch, why, note)


def cpu_alternative(preset: Optional[str], dataset: str) -> Optional[str]:
    """The preset to suggest when `preset` is too slow on a CPU: the largest CPU preset for the
    same kind of data, unless `preset` is a CPU preset already."""
    try:
        if preset and preset_info(preset).machine == "cpu":
            return None
    except DdpmkitError:  # a name that is no preset (a config file's own)
        pass
    cpu = [p for p in presets_for(dataset) if p.machine == "cpu"]
    return max(cpu, key=lambda p: p.size).name if cpu else None
