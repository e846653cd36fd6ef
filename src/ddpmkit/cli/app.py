"""The `ddpmkit` Typer application: each subcommand lives in its own module."""

from __future__ import annotations

import sys

import typer

from ddpmkit.cli.fid_cmd import fid
from ddpmkit.cli.inspect_cmd import inspect
from ddpmkit.cli.noise_demo_cmd import noise_demo
from ddpmkit.cli.prepare_cmd import prepare
from ddpmkit.cli.report_cmd import report
from ddpmkit.cli.sample_cmd import sample
from ddpmkit.cli.train_cmd import train
from ddpmkit.io_utils import ignore_sigxfsz

app = typer.Typer(
    name="ddpmkit",
    help="Train DDPMs on CelebA (or generated demo faces) and generate faces with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(prepare)
app.command()(train)
app.command()(sample)
app.command("noise-demo")(noise_demo)
app.command()(inspect)
app.command()(fid)
app.command()(report)


def main() -> None:
    ignore_sigxfsz()  # a write past `ulimit -f` then fails with one line instead of killing us
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handler (start-up): no traceback
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
