"""The ``vidiff`` command line (also ``python -m vidiff``): thin, parse flags → pipeline → media.

``main(argv)`` runs it and returns the exit status; see :mod:`vidiff.cli.main`.
"""

from .main import main

__all__ = ["main"]
