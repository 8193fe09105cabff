"""``python -m walbridge``: the command line."""

from walbridge.cli import main

main()
