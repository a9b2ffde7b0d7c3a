"""`python -m llama3` runs the command-line interface."""

from .cli import main

raise SystemExit(main())
