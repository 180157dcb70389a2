"""`python -m cvaegan <command>`: entry point of the command-line interface."""

from .cli import main

raise SystemExit(main())
