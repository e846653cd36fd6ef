"""`python -m ddpmkit` (and `torchrun -m ddpmkit train ...`) runs the CLI; so does the `ddpmkit`
script (`run`)."""

import sys


def run() -> None:
    """The CLI, with a Ctrl-C while its modules load answered by "interrupted" and status 130."""
    try:
        # imported here, not at the top, so that the Ctrl-C of a slow start-up lands in this try
        from ddpmkit.cli.app import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    run()
