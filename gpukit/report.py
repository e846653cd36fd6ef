"""The check's results as $OUT/gpu_check.json (everything measured) and $OUT/gpu_check.md (for people),
rewritten after every stage so that a run killed at its time limit still leaves what it measured."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from setup_stages import Ctx, Result

LOG_TAIL_BYTES = 400_000  # per stage in gpu_check.log: the end of a long log is the part that explains


def write(ctx: Ctx, results: list[Result], meta: dict[str, Any]) -> None:
    passed = bool(results) and all(r.status == "PASS" for r in results)
    data = {**meta, "passed": passed, "stages": [asdict(r) for r in results],
            "reduced": {r.name: r.reduced for r in results if r.reduced}}
    _atomic(ctx.out / "gpu_check.json", json.dumps(data, indent=1, default=str) + "\n")
    _atomic(ctx.out / "gpu_check.md", markdown(results, meta, passed))


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(results: list[Result], meta: dict[str, Any], passed: bool) -> str:
    device = next((r for r in results if r.name == "device"), None)
    lines = [f"# GPU check of ddpmkit: {'all stages passed' if passed else 'FAILED'}", ""]
    for k, v in meta.items():
        if k == "omitted" and v:
            lines += [f"- not run in this mode: {name} ({why})" for name, why in v.items()]
        elif k != "stages_asked" and v is not None:
            lines.append(f"- {k}: {v}")
    if device is not None and device.summary:
        lines.append(f"- Device: {device.summary}")
    if meta.get("mode", "").startswith("tiny"):
        lines.append("- **Dry run with tiny sizes on the CPU: it checks the script, its numbers measure nothing.**")
    lines += ["", "| stage | result | seconds | CPU seconds | summary |", "|---|---|--:|--:|---|"]
    lines += [f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.cpu_seconds:.1f} | {_cell(r.summary)} |" for r in results]
    reduced = [r for r in results if r.reduced]
    if reduced:
        lines += ["", "Reduced in this mode:", ""] + [f"- {r.name}: {r.reduced}" for r in reduced]
    for r in results:
        lines += _section(r)
    lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section(r: Result) -> list[str]:
    out = ["", f"## {r.name}: {r.status}", ""]
    if r.status != "PASS":
        out += [f"{r.summary}", ""]
        if r.details.get("rows"):  # a benchmark stopped part-way: what it measured
            out += _rows(r.details["rows"]) + [""]
        out += ["```", r.log_tail or "(no output)", "```"]
        return out
    if r.name.startswith("bench_") and "markdown" in r.details:
        body = r.details["markdown"].splitlines()
        out += [ln.replace("# ", "### ", 1) if ln.startswith("# ") else ln for ln in body]
    elif r.name == "profile":
        out += ["```", *r.details.get("text", []), "```"]
    elif r.name == "train":
        out += _curve(r.details.get("curve", []))
    elif r.name in ("sample", "fid"):
        out += _table(r.details.get("runs", []))
        if r.details.get("note"):
            out += ["", r.details["note"]]
    else:
        out += [f"- {k}: {v}" for k, v in r.details.items()]
    return out


def _curve(records: list[dict[str, Any]], rows: int = 25) -> list[str]:
    """The loss curve at up to `rows` evenly spaced log records (all of them are in the JSON)."""
    if not records:
        return ["(no log records)"]
    step = max(1, len(records) // rows)
    picked = records[::step] + ([records[-1]] if (len(records) - 1) % step else [])
    out = ["| step | loss | lr | img/s |", "|--:|--:|--:|--:|"]
    out += [f"| {r['step']} | {r['loss']:.4f} | {r.get('lr', 0):.2e} | {r.get('img_per_s', 0):,.0f} |" for r in picked]
    return out


def _rows(rows: list[dict[str, Any]]) -> list[str]:
    """bench_speed.py's rows (what, unit, ddpmkit, diffusers, note) as a table."""
    out = ["| measurement | unit | ddpmkit | diffusers | setting |", "|---|---|--:|--:|---|"]
    num = lambda v: "n/a" if v is None else f"{v:,.4g}"  # noqa: E731
    out += [f"| {r['what']} | {r['unit']} | {num(r['ddpmkit'])} | {num(r['diffusers'])} | {_cell(r['note'])} |" for r in rows]
    return out


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(nothing measured)"]
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        out.append("| " + " | ".join(f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return out


def collect_logs(ctx: Ctx, results: list[Result]) -> None:
    """Every stage's subprocess output (the last LOG_TAIL_BYTES of each) in one $OUT/gpu_check.log."""
    parts = []
    for r in results:
        log = ctx.work / "logs" / f"{r.name}.log"
        if log.is_file():
            size = log.stat().st_size
            with open(log, "rb") as f:
                f.seek(max(0, size - LOG_TAIL_BYTES))
                text = f.read().decode(errors="replace")
            cut = f" (last {LOG_TAIL_BYTES:,} of {size:,} bytes)" if size > LOG_TAIL_BYTES else ""
            parts.append(f"===== {r.name}: {r.status}{cut}\n{text}")
    _atomic(ctx.out / "gpu_check.log", "\n".join(parts) + "\n")
