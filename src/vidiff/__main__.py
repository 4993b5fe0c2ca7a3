"""``python -m vidiff``: the command line."""

from .cli import main

raise SystemExit(main())
