"""quality_cpu.py's results (JSON lines, one per evaluation) as the Markdown of results_quality.md.

One table row per evaluation, in file order; below it, the command of each run. Records that
are not JSON objects with a name and an FID (a line cut by a crash) are skipped and counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
TITLE = "# Sample quality on the CPU: FID and colours against wall-clock"

HEAD = (
    "| run | preset, settings | step | images seen | train min | img/s | sampler | x̂_0 | n | FID | KID x10³ "
    "| saturated % (data) | mean R/G/B (data) | std R/G/B (data) | date |"
)
ALIGN = "|---|---|--:|--:|--:|--:|---|---|--:|--:|--:|--:|---|---|---|"


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The evaluations in `path` and the number of lines skipped as unreadable."""
    records, skipped = [], 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("fid"), (int, float)):
            records.append(r)
        else:
            skipped += 1
    return records, skipped


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def _side(colour: dict[str, Any], side: str) -> dict[str, Any]:
    got = colour.get(side) if isinstance(colour, dict) else None
    return got if isinstance(got, dict) else {}


def _rgb(values: Any) -> str:
    if not isinstance(values, list) or len(values) != 3:
        return "—"
    return "/".join(_num(v, ".0f") for v in values)


def _with_data(sample: str, data: str) -> str:
    return sample if data in ("—", "") else f"{sample} ({data})"


def row(r: dict[str, Any]) -> str:
    """One Markdown table row of an evaluation record (what quality_cpu.py writes)."""
    colour = r.get("colour") or {}
    s, d = _side(colour, "samples"), _side(colour, "reference")
    sat = _with_data(_num(100 * s["saturated_all"], ".1f") if "saturated_all" in s else "—",
                     _num(100 * d["saturated_all"], ".1f") if "saturated_all" in d else "—")
    length = [f"`--time {r['time_budget']}`"] if r.get("time_budget") else []
    length += [f"`--max-steps {r['max_steps']}`"] if r.get("max_steps") else []
    sets = " ".join([str(r.get("preset", "?"))] + length + [f"`{x}`" for x in r.get("sets") or []])
    minutes = r["train_wall_s"] / 60 if isinstance(r.get("train_wall_s"), (int, float)) else None
    stopped = " (time)" if r.get("stopped_by_time") else ""
    cells = [
        f"{r['name']}", sets, _num(r.get("step"), ",d") + stopped, _num(r.get("images_seen"), ",d"),
        _num(minutes, ".1f"), _num(r.get("img_per_s"), ".1f"), f"{r.get('sampler', '?')} {r.get('steps', '?')}",
        str(r.get("x0", "?")), _num(r.get("n"), ",d"), _num(r.get("fid"), ".2f"), _kid(r.get("kid")), sat,
        _with_data(_rgb(s.get("mean")), _rgb(d.get("mean"))), _with_data(_rgb(s.get("std")), _rgb(d.get("std"))),
        str(r.get("date", "?"))[:10],
    ]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _kid(kid: Any) -> str:
    """KID x10³ as `mean ± std`; — for evaluations made before KID existed."""
    if not isinstance(kid, dict) or not isinstance(kid.get("mean_x1e3"), (int, float)):
        return "—"
    return f"{kid['mean_x1e3']:.1f} ± {kid.get('std_x1e3', 0):.1f}"


def commands(records: list[dict[str, Any]]) -> list[str]:
    """Each run's command and machine once, in order of first appearance."""
    seen: dict[tuple[str, str], str] = {}
    for r in records:
        key = (r["name"], str(r.get("run_dir", "")))
        if key not in seen:
            m = r.get("machine") or {}
            where = f"{m.get('cpu', '?')}, {m.get('threads', '?')} threads, load {m.get('load', '?')}"
            note = f" {r['note']}" if r.get("note") else ""  # what a record's numbers alone do not say
            seen[key] = f"- **{r['name']}** ({str(r.get('date', '?'))[:16]}; {where}): `{r.get('command', '?')}`{note}"
    return list(seen.values())


def markdown(records: list[dict[str, Any]], source: Path, made_by: str, skipped: int = 0) -> str:
    shown = source.relative_to(REPO) if source.is_relative_to(REPO) else source
    lines = [TITLE, "", f"From `{shown}` ({len(records)} evaluations), written by `{made_by}`.", ""]
    lines += [
        "FID: samples of the EMA model against the first `ref_n` images of the training split "
        "(Inception pool3, `ddpmkit fid`); FID of fewer than 2,048 samples is biased upwards, compare "
        "it at equal n. Saturated: share of channel values at 0 or 255. img/s: median training rate "
        "after the first log window (start-up excluded); train min: wall-clock of training to that "
        "step, start-up included. The run's length: `--time D` fitted the step count (and the "
        "learning-rate schedule) to D on that machine, `--max-steps N` fixed it; rows with neither "
        "took it from the preset of their day (their command says).",
        "",
        HEAD,
        ALIGN,
    ]
    lines += [row(r) for r in records]
    if skipped:
        lines += ["", f"({skipped} unreadable line(s) skipped.)"]
    lines += ["", "## Commands", ""] + commands(records)
    return "\n".join(lines) + "\n"


def write_report(source: Path, dest: Optional[Path], made_by: str) -> str:
    """The Markdown of `source`; written (atomically) to `dest` when given, and returned."""
    records, skipped = read_records(source)
    text = markdown(records, source, made_by, skipped)
    if dest is not None:
        from ddpmkit.io_utils import write_text_atomic

        write_text_atomic(dest, text)
    return text
