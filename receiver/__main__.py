"""`python -m receiver` runs the CLI."""

from receiver.cli import main

main()
