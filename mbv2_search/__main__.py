"""`python -m mbv2_search` runs the CLI."""

from mbv2_search.cli import main

main()
