"""ddpmkit as an installed package: a wheel built from this tree, installed (not editable) into a
fresh virtual environment, runs `ddpmkit --version` and a tiny train + sample from an empty
folder (the presets travel inside the wheel); and every dependency pyproject.toml declares is
imported by the product.

Installing torch into a new environment costs gigabytes, so the new environment sees the
dependencies of the one running the tests through a .pth file naming its site-packages: a
folder named in a .pth file joins sys.path, but the .pth files inside that folder are not read,
so an editable install of ddpmkit there stays out. The test checks that `ddpmkit` is imported
from the new environment.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra installs tomli there
    import tomli as tomllib

SRC = REPO / "src" / "ddpmkit"
TINY = ["data.size=16", "data.synthetic_count=32", "model.ch=16", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
        "model.num_groups=8", "model.attn_resolutions=[8]", "diffusion.timesteps=50", "train.batch_size=8",
        "train.log_every=1", "train.num_samples=4", "train.sample_every=0", "sample.steps=4", "train.device=cpu"]


def _run(cmd: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run without PYTHONPATH (the tests' own may point at this tree's src/)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r


def _build_wheel(tmp: Path) -> Path:
    """A wheel of this tree's pyproject.toml, README.md and src/, built in a copy (the tree stays clean)."""
    tree = tmp / "tree"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", tree], tmp)
    (wheel,) = (tmp / "dist").glob("ddpmkit-*.whl")
    return wheel


def _fresh_env(tmp: Path) -> tuple[Path, Path]:
    """A new virtual environment that sees the running one's packages but not their .pth files."""
    env = tmp / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env], tmp)
    python = env / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_ddpmkit_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return env, python


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_environment_and_runs_the_tiny_flow(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    presets = sorted(p.name for p in (SRC / "presets").glob("*.yaml"))
    assert presets and all(f"ddpmkit/presets/{p}" in names for p in presets)
    assert not any(n.startswith("tests/") for n in names)
    version = re.match(r"ddpmkit-([^-]+)-", wheel.name).group(1)

    env, python = _fresh_env(tmp_path)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run([python, "-c", "import ddpmkit; print(ddpmkit.__file__)"], empty).stdout.strip()
    assert Path(where).resolve().is_relative_to(env.resolve()), where  # the wheel's copy, not the editable one
    ddpmkit = env / "bin" / "ddpmkit"
    assert _run([ddpmkit, "--version"], empty).stdout.strip() == f"ddpmkit {version}"

    sets = [x for s in TINY for x in ("--set", s)]
    r = _run([ddpmkit, "train", "--preset", "demo", "--max-steps", "2", "--run-dir", "runs/tiny", "--no-progress", *sets],
             empty)
    assert (empty / "runs" / "tiny" / "log.jsonl").is_file(), r.stdout + r.stderr
    _run([ddpmkit, "sample", "runs/tiny", "--n", "2", "--sampler", "ddim", "--steps", "2", "--out", "samples",
          "--no-progress", "--device", "cpu"], empty)
    assert len(list((empty / "samples" / "images").glob("*.png"))) == 2 and (empty / "samples" / "grid.png").is_file()


def _product_imports() -> set[str]:
    """Top-level names of every module src/ddpmkit imports (lazy imports inside functions too)."""
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_declared_dependency_is_imported_by_the_product():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    provides: dict[str, set[str]] = {}  # distribution (normalised) -> its top-level import names
    for module, dists in packages_distributions().items():
        for dist in dists:
            provides.setdefault(re.sub(r"[-_.]+", "-", dist).lower(), set()).add(module)
    imported = _product_imports()
    for requirement in declared:
        dist = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()
        assert dist in provides, f"{dist} is declared but not installed here"
        assert provides[dist] & imported, f"{requirement} is declared in pyproject.toml but ddpmkit never imports it"
