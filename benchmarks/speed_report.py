"""The results of bench_speed.py as rows: a terminal table, a Markdown file and a JSON file."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

# Targets from the issue, for an H100 (80 GB); they are printed, never asserted.
GPU_TARGET_TRAIN = 2400.0  # img/s, celeba64, batch 128, loader + EMA included
GPU_TARGET_SAMPLE = 11000.0  # img·steps/s, celeba64, batch 256, real sampling loop


@dataclass
class Row:
    what: str
    unit: str
    ddpmkit: Optional[float] = None
    diffusers: Optional[float] = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def fmt(v: Optional[float], unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "GiB":
        return f"{v:.2f}"
    if unit in ("M", "GFLOP"):
        return f"{v:.3f}"
    if unit == "%":
        return f"{v:.1f}"
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def ratio(r: Row) -> str:
    if r.ddpmkit is None or r.diffusers is None or r.unit in ("M", "GFLOP") or r.diffusers == 0:
        return ""
    return f"{r.ddpmkit / r.diffusers:.2f}x"


def print_table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col, just in (("measurement", "left"), ("unit", "left"), ("ddpmkit", "right"), ("diffusers", "right"), ("ddpmkit/diffusers", "right"), ("setting", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r.what, r.unit, fmt(r.ddpmkit, r.unit), fmt(r.diffusers, r.unit), ratio(r), r.note)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def markdown(rows: list[Row], header: dict[str, str], notes: list[str]) -> str:
    lines = ["# Training and sampling speed: ddpmkit vs diffusers", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| measurement | unit | ddpmkit | diffusers | ddpmkit/diffusers | setting |", "|---|---|--:|--:|--:|---|"]
    for r in rows:
        lines.append(f"| {r.what} | {r.unit} | {fmt(r.ddpmkit, r.unit)} | {fmt(r.diffusers, r.unit)} | {ratio(r)} | {r.note} |")
    for n in notes:
        lines += ["", n]
    lines.append("")
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], header: dict[str, Any], notes: list[str]) -> None:
    """Every row with its numbers (None where not measured), for scripts such as the GPU kit (gpukit/work_stages.py)."""
    data = {"header": header, "rows": [asdict(r) for r in rows], "notes": notes}
    path.write_text(json.dumps(data, indent=2) + "\n")


def target_note(rows: list[Row], device_type: str, device_name: str) -> str:
    """The issue's H100 targets, and whether this run can say anything about them."""
    targets = f"GPU targets (H100): training >= {GPU_TARGET_TRAIN:,.0f} img/s, sampling >= {GPU_TARGET_SAMPLE:,.0f} img·steps/s"
    if device_type != "cuda":
        return f"{targets}: NOT measured, this run had no CUDA device; the same command on a CUDA machine measures them."
    got = {r.what: r.ddpmkit for r in rows}
    train = [v for k, v in got.items() if k.startswith("training (") and v is not None]
    samp = [v for k, v in got.items() if k.startswith("sampling (") and v is not None]
    if not train or not samp:
        return f"{targets}; this run measured too little to compare."
    verdict = (f"best training {max(train):,.0f} img/s ({'meets' if max(train) >= GPU_TARGET_TRAIN else 'misses'} the target), "
               f"best sampling {max(samp):,.0f} img·steps/s ({'meets' if max(samp) >= GPU_TARGET_SAMPLE else 'misses'} the target)")
    return f"{targets}; on this {device_name}: {verdict}."
