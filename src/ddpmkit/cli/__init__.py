"""The `ddpmkit` command line: thin wiring from options to the library."""
