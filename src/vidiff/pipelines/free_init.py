"""FreeInit for every pipeline: re-run the one loop from low-frequency-kept, re-noised latents.

(Being written: ``enable_free_init`` / ``disable_free_init`` as :class:`FreeInitMixin`.)
"""

from __future__ import annotations


class FreeInitMixin:
    """FreeInit (Wu et al. 2023) with diffusers' API and results, as a wrapper around the one loop."""
