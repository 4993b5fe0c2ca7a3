"""Context windows for every pipeline: the network runs on overlapping windows of frames (long videos).

(Being written: ``enable_context_windows`` / ``disable_context_windows`` as :class:`ContextWindowsMixin`.)
"""

from __future__ import annotations


class ContextWindowsMixin:
    """Long videos by windows of frames around the network (see :mod:`vidiff.diffusion.windows`)."""
