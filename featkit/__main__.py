"""``python -m featkit`` (and ``torchrun -m featkit``) run the CLI."""

from featkit.cli import main

main()
