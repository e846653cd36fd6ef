"""The report's sections, each built from a RunData: (id, title, inner HTML)."""

from __future__ import annotations

import json
from typing import Any, Optional

from ddpmkit.human import fmt_bytes, fmt_duration
from ddpmkit.report import plots
from ddpmkit.report.collect import Picture, RunData, is_number
from ddpmkit.report.page import img, note, table
from ddpmkit.runfolder import CONFIG_FILE

MAX_GRIDS = 24  # a long run saves hundreds of grids: show this many, evenly spread, first and last kept
Section = tuple[str, str, str]


def flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as (dotted.key, value) rows; long lists are summarised by their length."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += flatten(v, key + ".")
        elif isinstance(v, list) and len(v) > 8:
            rows.append((key, f"[{len(v)} items]"))
        else:
            rows.append((key, json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v)))
    return rows


def planned_steps(run: RunData) -> Optional[int]:
    """The run's total steps as the trainer computes them: the smaller of max_steps and epochs' steps."""
    if isinstance(run.info.get("total_steps"), int):
        return run.info["total_steps"]
    train = run.config.get("train", {}) or {}
    limits = [train["max_steps"]] if isinstance(train.get("max_steps"), int) else []
    count, batch = run.info.get("count"), train.get("batch_size")
    if isinstance(train.get("epochs"), int) and isinstance(count, int) and isinstance(batch, int) and batch > 0:
        limits.append(train["epochs"] * (count // batch))
    return min(limits) if limits else None


def plan_section(run: RunData) -> Section:
    cfg, info, log = run.config, run.info, run.train_log
    train, data = cfg.get("train", {}) or {}, cfg.get("data", {}) or {}
    step = max([int(r["step"]) for r in log] + [c.step for c in run.checkpoints], default=0)
    total = planned_steps(run)
    done = f"{step:,} of {total:,} ({100 * step / total:.0f}%)" if total else f"{step:,}"
    params = info.get("parameters")
    origin = info.get("imported_from")
    rows = [("imported from", str(origin.get("source", "?")))] if isinstance(origin, dict) else []
    rows += [
        ("preset", cfg.get("preset") or "none"),
        ("parameters", f"{params / 1e6:.2f}M ({params:,})" if isinstance(params, int) else "?"),
        ("data", _data_line(data, info)),
        ("batch size", train.get("batch_size", "?")),
        ("steps", done),
        ("images seen", f"{step * train['batch_size']:,}" if isinstance(train.get("batch_size"), int) else "?"),
        ("device", f"{info.get('device', '?')}" + (f" x {info['world_size']}" if info.get("world_size", 1) != 1 else "")),
    ]
    if info.get("precision"):
        rows.append(("precision", f"{info['precision']}" + (", compiled" if info.get("compile") else "")))
    skipped = [r["skipped_steps"] for r in log if isinstance(r.get("skipped_steps"), int)]
    if skipped:  # fp16: steps the loss scaler skipped because their gradients overflowed
        rows.append(("skipped steps (fp16 overflow)", f"{sum(skipped):,}"))
    if len(log) >= 2 and all(isinstance(r.get("time"), (int, float)) for r in (log[0], log[-1])):
        rows.append(("training time (logged)", fmt_duration(log[-1]["time"] - log[0]["time"])))
    if log:
        rows.append(("last loss", f"{log[-1]['loss']:.5g} at step {int(log[-1]['step']):,}"))
    rows.append(("created", info.get("created", "?")))
    rows.append(("versions", ", ".join(f"{k} {info[k]}" for k in ("ddpmkit", "torch", "python") if k in info)))
    body = table(rows)
    if run.problems:
        body += note("Incomplete run directory: " + "; ".join(run.problems), "problems")
    return "plan", "Plan", body


def _data_line(data: dict[str, Any], info: dict[str, Any]) -> str:
    kind = info.get("dataset", data.get("dataset", "?"))
    split = f", split {data['split']}" if kind != "synthetic" and data.get("split") else ""
    size = info.get("size", data.get("size", "?"))
    count = info.get("count")
    return f"{kind}{split}, {size}x{size} px" + (f", {count:,} images" if isinstance(count, int) else "")


def loss_title(config: dict) -> str:
    """What the logged loss is, from the run's settings: the MSE of its prediction target, weighted."""
    target = (config.get("diffusion", {}) or {}).get("prediction", "eps")
    weight = (config.get("train", {}) or {}).get("loss_weight", "uniform")
    if target == "eps" and weight == "uniform":
        return "loss (L_simple, MSE of ε)"
    name = {"eps": "ε", "v": "v"}.get(target, str(target))
    return f"loss (MSE of {name}, {'min-SNR weighted' if weight == 'min_snr' else weight + ' weights'})"


def curves_section(run: RunData) -> Section:
    log = run.train_log
    if not log:
        return "curves", "Training curves", note("No training steps logged yet.")
    steps = [r["step"] for r in log]
    parts = [img(plots.raw_and_smoothed(steps, [r["loss"] for r in log], loss_title(run.config), "loss",
                                        log_y=True), "image/png", "loss curve")]
    lr = [(r["step"], r["lr"]) for r in log if isinstance(r.get("lr"), (int, float))]
    if lr:
        parts.append(img(plots.line(*zip(*lr), "learning rate", "lr"), "image/png", "learning-rate curve"))
    speed = [(r["step"], r["img_per_s"]) for r in log if isinstance(r.get("img_per_s"), (int, float))]
    if speed:
        s_steps, s_vals = zip(*speed)
        parts.append(img(plots.raw_and_smoothed(s_steps, s_vals, "throughput", "images / s"), "image/png",
                         "throughput curve"))
    return "curves", "Training curves", '<div class="plots">' + "".join(parts) + "</div>"


def spread(items: list[Picture], k: int = MAX_GRIDS) -> list[Picture]:
    """At most k items, evenly spaced, always the first and the last."""
    if len(items) <= k:
        return items
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


def samples_section(run: RunData) -> Section:
    if not run.grids:
        every = (run.config.get("train", {}) or {}).get("sample_every")
        why = " (train.sample_every = 0)" if every == 0 else ""
        return "samples", "Samples during training", note(f"No sample grids saved yet{why}.")
    shown = spread(run.grids)
    figs = [
        f'<figure>{img(g.data, g.mime, f"EMA samples at step {g.step}", "pixels", g.size)}'
        f"<figcaption>step {g.step:,}</figcaption></figure>"
        for g in shown
    ]
    head = note("EMA model, fixed seed: the same noise at every step, so the grids differ only by training.")
    if len(shown) < len(run.grids):
        head += note(f"Showing {len(shown)} of {len(run.grids)} grids.")
    return "samples", "Samples during training", head + '<div class="timeline">' + "".join(figs) + "</div>"


def fid_section(run: RunData) -> Section:
    log = run.fid_log
    if not log:
        every = (run.config.get("fid", {}) or {}).get("every")
        why = " (fid.every = 0: set it to measure FID while training)" if not every else " yet"
        return "fid", "FID", note(f"No FID measured{why}.")
    charts = img(plots.line([r["step"] for r in log], [r["fid"] for r in log], "FID (lower is better)", "FID",
                            marker="o"), "image/png", "FID over steps")
    kids = [(r["step"], kid[0]) for r in log if (kid := _kid(r)) is not None]
    if kids:
        charts += img(plots.line([s for s, _ in kids], [k for _, k in kids], "KID x10³ (lower is better)", "KID x10³",
                                 marker="o"), "image/png", "KID over steps")
    rows = [(f"{int(r['step']):,}", f"{r['fid']:.2f}", _kid_text(r), r.get("fid_n", "?"), r.get("fid_sampler", "?"),
             _saturated(r)) for r in log]
    caveat = ""
    if any(isinstance(r.get("fid_n"), int) and r["fid_n"] < 2048 for r in log):
        caveat = note("FID from fewer than 2,048 samples is biased upwards: compare it across steps, not with papers. "
                      "KID is unbiased at any count; its spread (±) says how far to trust a difference.")
    return "fid", "FID", f'<div class="plots">{charts}</div>{caveat}' + table(
        rows, ["step", "FID", "KID x10³", "samples", "sampler", "saturated (data)"], numeric=(0, 1, 2, 3))


def _kid(record: dict[str, Any]) -> Optional[tuple[float, Optional[float]]]:
    """(mean, std) of the record's KID x10³ (ddpmkit.fid.kid), None when it has none."""
    kid = record.get("kid") if isinstance(record.get("kid"), dict) else {}
    mean, std = kid.get("mean_x1e3"), kid.get("std_x1e3")
    if not is_number(mean):
        return None
    return float(mean), float(std) if is_number(std) else None


def _kid_text(record: dict[str, Any]) -> str:
    kid = _kid(record)
    if kid is None:
        return "—"
    return f"{kid[0]:.2f}" + (f" ± {kid[1]:.2f}" if kid[1] is not None else "")


def _saturated(record: dict[str, Any]) -> str:
    """The samples' share of channel values at 0 or 255, the data's in brackets (ddpmkit.fid.colour)."""
    colour = record.get("colour") if isinstance(record.get("colour"), dict) else {}
    sides = [side.get("saturated_all") if isinstance(side, dict) else None
             for side in (colour.get("samples"), colour.get("reference"))]
    pct = [100 * v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in sides]
    if pct[0] is None:
        return "—"
    return f"{pct[0]:.1f}%" + (f" ({pct[1]:.1f}%)" if pct[1] is not None else "")


def picture_section(sid: str, title: str, pic: Optional[Picture], missing: str) -> Section:
    if pic is None:
        return sid, title, note(missing)
    rel = pic.path.name if pic.path.parent.name != "samples" else f"samples/{pic.path.name}"
    body = img(pic.data, pic.mime, title, "pixels big", pic.size)
    return sid, title, body + note(f"{rel}, {pic.size[0]}x{pic.size[1]} px, {fmt_bytes(len(pic.data))}")


def data_section(run: RunData) -> Section:
    sid, title, body = picture_section("data", "Data", run.preview, "No data preview in this run.")
    rows = [(k, v) for k, v in flatten(run.info) if k.split(".")[0] in ("dataset", "count", "size", "seed", "cache",
                                                                          "layout", "counts", "settings")]
    return sid, title, body + (table(rows) if rows else "")


def checkpoints_section(run: RunData) -> Section:
    if not run.checkpoints:
        return "checkpoints", "Checkpoints", note("No checkpoint saved yet.")
    rows = [(f"{c.step:,}", fmt_bytes(c.bytes_on_disk), ", ".join(c.files), "latest" if c.latest else "")
            for c in run.checkpoints]
    total = sum(c.bytes_on_disk for c in run.checkpoints)
    keep = (run.config.get("train", {}) or {}).get("keep_checkpoints")
    tail = note(f"{len(run.checkpoints)} kept, {fmt_bytes(total)} in all" + (f" (train.keep_checkpoints = {keep})"
                                                                                   if keep else "") + ".")
    return "checkpoints", "Checkpoints", table(rows, ["step", "size on disk", "files", ""], numeric=(0, 1)) + tail


def settings_section(run: RunData) -> Section:
    """The run's resolved settings as one small table per section (model, diffusion, data, ...), side by side."""
    if not run.config:
        return "settings", "Settings", note(f"{CONFIG_FILE} is missing or unreadable.")
    groups = {k: v for k, v in run.config.items() if isinstance(v, dict)}
    top = {k: v for k, v in run.config.items() if not isinstance(v, dict)}
    tables = [f"<div>{table(flatten(top), ['setting', 'value'])}</div>"] if top else []
    tables += [f"<div>{table(flatten(v), [name, 'value'])}</div>" for name, v in groups.items()]
    head = note(f"Resolved settings ({CONFIG_FILE}): ddpmkit train --config {CONFIG_FILE} repeats the run.")
    return "settings", "Settings", head + '<div class="settings">' + "".join(tables) + "</div>"
