"""`python -m facelab` runs the CLI."""

from facelab.cli import main

main()
