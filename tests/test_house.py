"""The shape of the package, read from its code (CONTRIBUTING.md draws it):

- imports go one way, down the floors: cli -> interop -> train -> the rooms that use an opened run
  (serve; interpolation, inpainting) -> generate, fid, report, prepare -> the core; none goes up, and
  there are no cycles, counting imports made inside functions too;
- no module over 400 lines, no function over 60;
- the run folder's file names are spelled in `runfolder.py` alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "ddpmkit"
# the floor of each room, highest first; a module not listed is core (floor 0)
FLOORS = {
    "ddpmkit.cli": 6,
    "ddpmkit.__main__": 6,
    "ddpmkit.interop": 5,  # an import writes a run that training can resume (train.state)
    "ddpmkit.train": 4,
    "ddpmkit.serve": 3,
    "ddpmkit.interpolation": 2,
    "ddpmkit.inpainting": 2,
    "ddpmkit.generate": 1,
    "ddpmkit.fid": 1,
    "ddpmkit.report": 1,
    "ddpmkit.data.prepare": 1,
    "ddpmkit.data.prepare_records": 1,
    "ddpmkit.data.leftovers": 1,
}
MAX_MODULE, MAX_FUNCTION = 400, 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def floor(module: str) -> int:
    best = max((k for k in FLOORS if module == k or module.startswith(k + ".")), key=len, default=None)
    return FLOORS[best] if best is not None else 0


def imports_of(module: str) -> set[str]:
    """The ddpmkit modules `module` imports, wherever in it the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n in MODULES and n != module and n != "ddpmkit")
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (floor {floor(m)}) imports {d} (floor {floor(d)})"
                  for m, deps in graph.items() for d in deps if floor(d) > floor(m))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), a package's __init__
    re-exporting its own modules left aside (an __init__ is how the package is imported)."""
    graph = {m: {d for d in deps if not (MODULES[d].name == "__init__.py" and m.startswith(d + "."))}
             for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_no_module_imports_a_higher_floor():
    assert upward_imports(GRAPH) == []


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_the_checks_see_an_upward_import_and_a_cycle():
    fake = {"ddpmkit.schedule": {"ddpmkit.generate"}, "ddpmkit.generate": {"ddpmkit.schedule"}}
    assert upward_imports(fake) == ["ddpmkit.schedule (floor 0) imports ddpmkit.generate (floor 1)"]
    assert cycles(fake) == [["ddpmkit.generate", "ddpmkit.schedule"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_are_small(module: str):
    text = MODULES[module].read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE, f"{module}: {len(text.splitlines())} lines"
    long = [f"{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION]
    assert long == [], f"{module}: {long}"


def test_run_folder_file_names_live_in_one_module():
    names = ("config.yaml", "run.json", "log.jsonl")
    where = sorted(m for m, p in MODULES.items() if any(n in p.read_text(encoding="utf-8") for n in names))
    assert where == ["ddpmkit.runfolder"]
