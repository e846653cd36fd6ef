"""One self-contained HTML page describing a training run: `RUN/report.html`.

    from ddpmkit.report import write_report
    write_report(Path("runs/demo"))     # -> runs/demo/report.html

It reads only files inside the run folder (its settings, run info, log, samples/, checkpoints/, an
optional denoising GIF and data preview: `ddpmkit.runfolder`) and writes only report.html, atomically.
Safe to call from a training loop at every checkpoint: a section that cannot be drawn shows why
instead, and the one exception it raises is DdpmkitError (no run directory, or the page could not
be written), which the caller may log and ignore.
"""

from __future__ import annotations

import time
from pathlib import Path

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import write_text_atomic
from ddpmkit.report import sections as S
from ddpmkit.report.collect import RunData, read_run
from ddpmkit.report.page import note, page
from ddpmkit.runfolder import RunFolder


def _denoising(run: RunData) -> S.Section:
    return S.picture_section("denoising", "Denoising", run.gif, "No denoising GIF in this run yet.")


# (section id, builder) in display order; every id is always on the page, with content or a note
BUILDERS = (
    ("plan", S.plan_section),
    ("curves", S.curves_section),
    ("samples", S.samples_section),
    ("fid", S.fid_section),
    ("denoising", _denoising),
    ("data", S.data_section),
    ("checkpoints", S.checkpoints_section),
    ("settings", S.settings_section),
)
SECTION_IDS = tuple(sid for sid, _ in BUILDERS)

__all__ = ["SECTION_IDS", "build_html", "write_report"]


def build_html(run: RunData) -> str:
    """The report page for a collected run; a section that fails says so instead of failing the page."""
    parts = []
    for sid, build in BUILDERS:
        try:
            parts.append(build(run))
        except ImportError as e:  # matplotlib missing: say how to get it
            parts.append((sid, sid.capitalize(), note(f"could not build this section: {e} (pip install matplotlib)",
                                                      "problems")))
        except Exception as e:  # one broken file or plot must not cost the whole report
            parts.append((sid, sid.capitalize(), note(f"could not build this section: {type(e).__name__}: {e}",
                                                      "problems")))
    name = run.path.resolve().name
    subtitle = f"{run.path} · written {time.strftime('%Y-%m-%d %H:%M:%S')}"
    return page(f"ddpmkit run {name}", subtitle, parts)


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.html from the files in run_dir and return its path.

    Raises DdpmkitError (one line) when run_dir is missing or not a run, or the page cannot be
    written; never anything else.
    """
    run_dir = Path(run_dir)
    try:
        text = build_html(read_run(run_dir))
    except DdpmkitError:
        raise
    except Exception as e:
        raise DdpmkitError(f"could not build the report of {run_dir}: {type(e).__name__}: {e}") from None
    target = RunFolder(run_dir).report
    write_text_atomic(target, text)
    return target
