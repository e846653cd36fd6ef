"""`ddpmkit report`: write a run's report.html (plots, sample timeline, checkpoints) to open in a browser."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import console, out, user_errors
from ddpmkit.runfolder import newest_run
from ddpmkit.human import fmt_bytes


@user_errors
def report(
    run: Annotated[
        Optional[Path],
        typer.Argument(metavar="[RUN]", help="Run directory (as written by train). Omitted: the newest run under runs/."),
    ] = None,
) -> None:
    """Write RUN/report.html: plan, settings, loss and lr curves, samples over training, FID, checkpoints.

    One self-contained file (images embedded): open it in any browser, or copy it off a cluster.

    Example: ddpmkit report runs/demo
    """
    from ddpmkit.report import write_report  # lazy: PIL and the report's code load for this command only

    if run is None:
        run = newest_run()
        console.print(f"reporting on the newest run: {run}", soft_wrap=True)
    target = write_report(run)
    out.print(f"wrote {target} ({fmt_bytes(target.stat().st_size)}): open it in a browser", soft_wrap=True)
