"""`python -m ddpmkit` (and `torchrun -m ddpmkit train ...`) runs the CLI."""

from ddpmkit.cli.app import main

main()
