"""vidiff: text- and image-to-video diffusion, diffusers-compatible."""

__version__ = "0.1.0"
