"""`python -m receiver` runs the CLI."""

from receiver.cli.main import main

main()
