"""The `ddpmkit` Typer application: each subcommand lives in its own module.

`ddpmkit --help` and `--version` load no torch (the commands import it when they run), so they
answer at once. The help is tidied for people: a usage line names each argument by its metavar
as the command declares it (IMAGE, [RUN]), where Typer would write `{IMAGE}`; flags show no
`<bool>` type, repeatable options `<int>`, not `<list[int]>`. This goes through click's own
`collect_usage_pieces` and Typer's option attributes, with Typer pinned to the range the CLI
convention test checks (pyproject.toml).
"""

from __future__ import annotations

import re
import sys
from typing import Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typing_extensions import Annotated

from ddpmkit import __version__
from ddpmkit.cli.export_cmd import export
from ddpmkit.cli.fid_cmd import fid
from ddpmkit.cli.import_cmd import import_
from ddpmkit.cli.inpaint_cmd import inpaint
from ddpmkit.cli.inspect_cmd import inspect
from ddpmkit.cli.interpolate_cmd import interpolate, paired_command
from ddpmkit.cli.noise_demo_cmd import noise_demo
from ddpmkit.cli.prepare_cmd import prepare
from ddpmkit.cli.report_cmd import report
from ddpmkit.cli.sample_cmd import sample
from ddpmkit.cli.serve_cmd import serve
from ddpmkit.cli.train_cmd import train
from ddpmkit.io_utils import ignore_sigxfsz


def _usage_name(param: TyperArgument) -> str:
    """An argument's metavar as declared ([RUN] optional, IMAGE required); without one, its name
    in capitals, bracketed when optional, with ... when repeatable."""
    if param.metavar:
        return param.metavar
    name = (param.name or "arg").upper() + ("..." if param.nargs != 1 else "")
    return name if param.required else f"[{name}]"


def _plain_types(params: list[Any], ctx: Any) -> list[Any]:
    """A flag takes no value: show none (Typer shows `<bool>`). A repeatable option takes one
    value each time: show that value's type, `<int>`, not `<list[int]>`."""
    for p in params:
        if not isinstance(p, TyperOption) or p.metavar is not None:
            continue
        if p.is_flag:
            p.metavar = ""
        elif p.multiple and hasattr(p, "display_type"):  # Typer < 0.29 has no display_type: keep its own
            p.metavar = re.sub(r"^<list\[(.*)\]>$", r"<\1>", p.display_type(ctx))
    return params


class Command(TyperCommand):
    """A subcommand whose help has plain usage pieces and option types (`_plain_types`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            pieces.extend([_usage_name(p)] if isinstance(p, TyperArgument) else p.get_usage_pieces(ctx))
        return pieces

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_types(super().get_params(ctx), ctx)


class Group(TyperGroup):
    """The top-level group, its own flags (--help, --version) without a type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_types(super().get_params(ctx), ctx)


app = typer.Typer(
    name="ddpmkit",
    cls=Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"ddpmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Train DDPMs on CelebA (or generated demo faces) and generate faces with them.

    The flow: prepare the data, train, sample, and look inside:
      ddpmkit prepare --size 64
      ddpmkit train --epochs 50
      ddpmkit sample --n 16 --gif
      ddpmkit noise-demo face.jpg
      ddpmkit serve                 (a page in the browser over the runs under runs/)
    `ddpmkit COMMAND --help` shows a command's options and examples.
    """


app.command(cls=Command)(prepare)
app.command(cls=Command)(train)
app.command(cls=Command)(sample)
app.command(cls=Command)(inpaint)
app.command("noise-demo", cls=Command)(noise_demo)
app.command(cls=Command)(inspect)
app.command(cls=Command)(fid)
app.command(cls=Command)(report)
app.command(cls=paired_command(Command))(interpolate)
app.command(cls=Command)(export)
app.command("import", cls=Command)(import_)
app.command(cls=Command)(serve)


def main() -> None:
    ignore_sigxfsz()  # a write past `ulimit -f` then fails with one line instead of killing us
    try:
        app(prog_name="ddpmkit")
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handler (start-up): no traceback
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
