"""`python -m nmtkit` runs the command line."""

from nmtkit.cli import main

main()
