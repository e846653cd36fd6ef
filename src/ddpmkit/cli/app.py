"""The `ddpmkit` Typer application: each subcommand lives in its own module."""

from __future__ import annotations

import typer

from ddpmkit.cli.fid_cmd import fid
from ddpmkit.cli.inspect_cmd import inspect
from ddpmkit.cli.noise_demo_cmd import noise_demo
from ddpmkit.cli.prepare_cmd import prepare
from ddpmkit.cli.report_cmd import report
from ddpmkit.cli.sample_cmd import sample
from ddpmkit.cli.train_cmd import train

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
    app()


if __name__ == "__main__":
    main()
