"""The report's charts, drawn by matplotlib's Agg renderer into PNG bytes.

Figures are built with `matplotlib.figure.Figure` and an explicit Agg canvas rather than pyplot:
no global figure registry and no backend switch, so drawing a report inside a training process
leaves that process's matplotlib state as it was. matplotlib is imported on first use, so
importing the report (e.g. from the trainer) costs nothing until a chart is drawn.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RAW = "#9ecae1"
SMOOTH = "#08519c"
STYLE = {
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def smoothing_weight(n: int) -> float:
    """EMA weight so the smoothing window spans about a twentieth of n points, at most 0.99."""
    window = max(1.0, n / 20)
    return min(0.99, 1.0 - 1.0 / window)


def smooth(values: Sequence[float], weight: Optional[float] = None) -> list[float]:
    """Debiased exponential moving average (TensorBoard-style): the start is not pulled to 0."""
    w = smoothing_weight(len(values)) if weight is None else weight
    out, m, norm = [], 0.0, 0.0
    for v in values:
        m = w * m + (1 - w) * v
        norm = w * norm + (1 - w)
        out.append(m / norm if norm > 0 else v)
    return out


def _render(fig: "Figure") -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: on first chart (module docstring)

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _axes(title: str, ylabel: str, size: tuple[float, float] = (5.3, 2.7)) -> tuple["Figure", Any]:
    from matplotlib.figure import Figure  # lazy: on first chart (module docstring)

    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    return fig, ax


def raw_and_smoothed(
    steps: Sequence[float], values: Sequence[float], title: str, ylabel: str, log_y: bool = False
) -> bytes:
    """A faint raw curve under its smoothed version, as PNG bytes."""
    with _style():
        fig, ax = _axes(title, ylabel)
        ax.plot(steps, values, color=RAW, linewidth=1.0, label="raw")
        if len(values) > 2:
            ax.plot(steps, smooth(values), color=SMOOTH, linewidth=1.8, label="smoothed")
        ax.legend(loc="best", frameon=False)
        if log_y and _wide_positive(values):
            ax.set_yscale("log")
        return _render(fig)


def line(steps: Sequence[float], values: Sequence[float], title: str, ylabel: str, marker: str = "") -> bytes:
    """One plain curve (a schedule such as the learning rate, or sparse points such as FID)."""
    with _style():
        fig, ax = _axes(title, ylabel)
        ax.plot(steps, values, color=SMOOTH, linewidth=1.6, marker=marker, markersize=4)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        return _render(fig)


def _style() -> Any:
    import matplotlib  # lazy: on first chart (module docstring)

    return matplotlib.rc_context(STYLE)


def _wide_positive(values: Sequence[float]) -> bool:
    """A log axis helps when all values are positive and span more than a factor of 3."""
    lo, hi = min(values), max(values)
    return lo > 0 and math.isfinite(hi) and hi / lo > 3
