"""`ddpmkit serve [RUN]...`: a local web page over the runs (generate, attributes, inpaint,
interpolate), one job on the device at a time. The application is `ddpmkit.serve`; this wires
the options to it and runs it until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, asked_sample, console, default_is, resolve_settings, user_errors
from ddpmkit.cli.options import DeviceOpt, NoEmaOpt, out_option, set_option
from ddpmkit.errors import DdpmkitError
from ddpmkit.runfolder import RUNS

SetOpt = set_option("sample.sampler=ddim")
MAX_UPLOAD_MB = 8


@user_errors
def serve(
    runs: Annotated[Optional[list[Path]], typer.Argument(metavar="[RUN]...", show_default=False, help="Run folders, or folders holding runs, to offer; only runs under them can be opened. " + default_is("runs/"))] = None,  # noqa: E501
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but 127.0.0.1 or localhost lets other machines in (a warning says so).")] = "127.0.0.1",  # noqa: E501
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 8000,
    max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", help="Largest picture the page may upload, MB.")] = MAX_UPLOAD_MB,  # noqa: E501
    out: out_option("outputs/serve") = None,
    no_ema: NoEmaOpt = False,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Open the runs in a web page: generate (live denoising), steer attributes, inpaint, interpolate.

    Example: ddpmkit serve runs/   then open http://127.0.0.1:8000/

    Everything the page makes goes into --out, one folder per job.
    --config and --set sample.* change the defaults the page shows.
    --preset and --config also describe foreign weights.
    """
    check_options(runs, port, max_upload_mb)
    try:  # lazy: the web stack is an extra, and torch loads when the command runs, not for --help
        from ddpmkit.serve import server
        from ddpmkit.serve.app import make_app
        from ddpmkit.serve.runs import ServedRuns, sample_defaults
    except ImportError as e:
        raise DdpmkitError(f"ddpmkit serve needs its web extra ({e.name} is missing): pip install 'ddpmkit[ui]'") from None
    from ddpmkit.device import resolve_device

    settings = resolve_settings(config, preset, sets, {"train": {"device": device}})
    asked = asked_sample(config, sets)
    sample_defaults(settings, asked)  # a bad --set sample.* is one line now, not on every run
    served = ServedRuns(runs or [RUNS], resolve_device(settings.train.device), asked=asked, fallback=settings,
                        ema=not no_ema)
    listed = served.listing()
    out_dir = out if out is not None else settings.sample.out_dir.parent / "serve"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DdpmkitError(f"cannot make the output folder {out_dir}: {e.strerror or e}; choose another --out") from None
    sock = server.bind(host, port)
    warning = server.public_warning(host)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    for problem in served.problems:
        console.print(f"left out {problem}", markup=False, soft_wrap=True)
    if not listed:
        console.print("[yellow]warning:[/] no run with a checkpoint there yet (ddpmkit train makes one); "
                      "the page lists runs as they appear", soft_wrap=True)
    where = ", ".join(str(r) for r in served.roots)
    console.print(f"serving {len(listed)} run(s) from {where} on {served.device}; outputs in {out_dir}",
                  markup=False, soft_wrap=True)
    console.print(f"open {server.url_of(sock)} in a browser (Ctrl-C stops)", markup=False, soft_wrap=True)
    app = make_app(served, out_dir, max_upload_bytes=max_upload_mb * 1024 * 1024, local_only=warning is None,
                   log=lambda line: console.print(line, markup=False, soft_wrap=True))
    try:
        server.run(app, sock)
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: not a failure
        pass
    console.print("stopped", markup=False)


def check_options(runs: Optional[list[Path]], port: int, max_upload_mb: int) -> None:
    """The folders exist, the numbers are in range: one line each, before anything starts."""
    if not 1 <= max_upload_mb <= 1024:
        raise DdpmkitError(f"--max-upload-mb {max_upload_mb} is out of range: 1 to 1024")
    if not 0 <= port <= 65535:
        raise DdpmkitError(f"--port {port} is out of range: 0 to 65535")
    for folder in runs or []:
        if not folder.is_dir():
            raise DdpmkitError(f"{folder} is not a folder: give run folders, or folders holding runs")
