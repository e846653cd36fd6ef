"""`ddpmkit report`: write a run's report.html (plots, sample timeline, checkpoints) to open in a browser."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import console, out, user_errors
from ddpmkit.errors import DdpmkitError

RUNS = Path("runs")


def newest_run(root: Path = RUNS) -> Path:
    """The run directory under `root` touched last (its log, settings or latest checkpoint)."""
    from ddpmkit.report import is_run_dir

    runs = [p for p in root.iterdir() if is_run_dir(p)] if root.is_dir() else []
    if not runs:
        raise DdpmkitError(f"no RUN given and no run directory under {root}/: give the run to report on")

    def touched(p: Path) -> float:
        files = [p / "log.jsonl", p / "config.yaml", p / "checkpoints" / "latest", p]
        return max(f.stat().st_mtime for f in files if f.exists())

    return max(runs, key=touched)


@user_errors
def report(
    run: Annotated[
        Optional[Path],
        typer.Argument(metavar="RUN", help="Run directory (as written by train). Omitted: the newest run under runs/."),
    ] = None,
) -> None:
    """Write RUN/report.html: plan, settings, loss and lr curves, samples over training, FID, checkpoints.

    One self-contained file (images embedded): open it in any browser, or copy it off a cluster.

    Example: ddpmkit report runs/demo
    """
    from ddpmkit.report import write_report

    if run is None:
        run = newest_run()
        console.print(f"reporting on the newest run: {run}", soft_wrap=True)
    target = write_report(run)
    size = target.stat().st_size / 1e6
    out.print(f"wrote {target} ({size:.1f} MB): open it in a browser", soft_wrap=True)
