"""Python warnings and third-party log lines on the command line: one ``vidiff: warning:`` line each,
or nothing when they only speak to the libraries' own developers.

A raw Python warning prints two lines (``file:line: Category: message`` and the source line), and
transformers logs its own advisories (a prompt longer than the tokenizer's limit, which vidiff already
reports in its own words). The library itself keeps Python's default behaviour; only the CLI routes
them here.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from .errors import one_line

logger = logging.getLogger("vidiff.cli")

# Warnings addressed to developers of the code that calls a library, never to a CLI user.
_DEVELOPER_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# Packages whose own UserWarnings are about their internals (torch's storage, kernels, tokenizer
# files…); vidiff checks its inputs itself and says so in its own words.
_INTERNAL_PACKAGES = frozenset({"torch", "transformers", "tokenizers", "huggingface_hub", "safetensors"})
_MESSAGE_LIMIT = 300  # characters of a warning's message shown


def route_warnings() -> None:
    """Show Python warnings as one log line each, and keep transformers to its errors."""
    warnings.showwarning = _show_warning
    # transformers reads this once, when it is first imported; if it already is, set its logger.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def is_noise(category: type[Warning], filename: str) -> bool:
    """Whether a warning only concerns library internals (Pillow's decompression-bomb warning
    included: vidiff enforces its own pixel limit, with its own message)."""
    if issubclass(category, _DEVELOPER_CATEGORIES) or category.__name__ == "DecompressionBombWarning":
        return True
    return _package_of(filename) in _INTERNAL_PACKAGES


def _package_of(filename: str) -> str:
    # ".../site-packages/torch/nn/functional.py" → "torch"
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1]
    return ""


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    if is_noise(category, filename):
        logger.debug("ignored %s from %s:%s: %s", category.__name__, filename, lineno, message)
        return
    text = one_line(str(message), _MESSAGE_LIMIT, empty=category.__name__)
    logger.warning("warning: %s: %s", category.__name__, text)
