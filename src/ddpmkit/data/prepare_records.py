"""What a prepared cache records about itself, beside the pixels: index.json's counts and
source, attributes.npy, report.txt (the skipped files with their reasons)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from ddpmkit.data import cache as C
from ddpmkit.data.celeba import SPLIT_CODES, AttributeTable, Layout, base_name


def make_counts(codes: list[int], kept: list[int], skipped: int, seconds: float, workers: int) -> dict[str, Any]:
    """index.json's "counts": candidates, ok, skipped, per split, speed. `codes`: the split code
    of every candidate; `kept`: the positions of the images written."""
    n = len(codes)
    per_split = {s: sum(codes[i] == c for i in kept) for s, c in SPLIT_CODES.items()}
    per_split["none"] = sum(codes[i] < 0 for i in kept)
    return {
        "candidates": n,
        "ok": len(kept),
        "skipped": skipped,
        "per_split": per_split,
        "seconds": round(seconds, 3),
        "images_per_second": round(n / max(seconds, 1e-9), 1),
        "workers": workers,
    }


def save_attributes(tmp: Path, attrs: AttributeTable, kept_names: list[str], counts: dict[str, Any]) -> list[str]:
    """tmp/attributes.npy, (ok, A) int8 in the image order (0 = no row); adds the row counts to
    `counts`. Returns the attribute names."""
    table = np.zeros((len(kept_names), len(attrs.names)), dtype=np.int8)
    missing = 0
    for row, name in enumerate(kept_names):
        v = attrs.get(base_name(name))
        if v is None:
            missing += 1
        else:
            table[row] = v
    np.save(tmp / C.ATTRIBUTES, table, allow_pickle=False)
    counts.update(attributes_missing=missing, attributes_rows=attrs.rows, attributes_declared=attrs.declared)
    return attrs.names


def source_record(layout: Layout) -> dict[str, Optional[str]]:
    """index.json's "source": where the images, partition and attribute files were found."""
    return {
        "layout": layout.kind,
        "root": str(layout.root.resolve()),
        "images": str(layout.images.resolve()),
        "partition": str(layout.partition.resolve()) if layout.partition else None,
        "attributes": str(layout.attributes.resolve()) if layout.attributes else None,
    }


def write_report(path: Path, layout: Layout, counts: dict[str, Any], skipped: Iterable[tuple[str, str]]) -> None:
    lines = [
        f"# ddpmkit prepare report: {layout.describe()}",
        f"# candidates {counts['candidates']}, ok {counts['ok']}, skipped {counts['skipped']}",
    ]
    if "attributes_missing" in counts:
        lines.append(
            f"# attributes: {counts['attributes_missing']} images have no row "
            f"(file declares {counts['attributes_declared']}, has {counts['attributes_rows']} rows)"
        )
    lines.append("# skipped files (name<TAB>reason):")
    lines.extend(f"{name}\t{reason}" for name, reason in skipped)
    # a file name that is not UTF-8 is written back as the bytes it has on disk
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
