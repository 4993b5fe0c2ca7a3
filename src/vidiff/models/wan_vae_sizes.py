"""Input checks of Wan's VAE: clear errors for what the network cannot take, before it runs.

diffusers' ``AutoencoderKLWan`` accepts the same inputs and fails on the others deep inside torch;
here those fail first, naming the argument and valid values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def _check_5d(name: str, tensor: Any, channels: int, axes: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [{axes}], got {type(tensor).__name__}")
    if tensor.ndim != 5 or tensor.shape[1] != channels:
        raise ValueError(f"{name} must be [{axes}] with {channels} channels, got shape {tuple(tensor.shape)}")
    if min(tensor.shape) < 1:
        raise ValueError(f"{name} must not be empty, got shape {tuple(tensor.shape)}")


def _encodable(size: int, config: Any) -> bool:
    """Whether a side of ``size`` video pixels survives the encoder's spatial downsampling."""
    if size % config.patch:
        return False
    size //= config.patch
    for _ in range(config.downsamples):
        # Wan 2.2's pixel-shuffle shortcut needs an even side; a stride-2 conv after right
        # padding by one needs at least two pixels.
        if size < 2 or (config.is_residual and size % 2):
            return False
        size = (size - 2) // 2 + 1
    return True


def check_encode_input(video: Any, config: Any, channels: int) -> None:
    """``video`` must be ``[B, channels, F ≥ 1, H, W]`` with sides the encoder can downsample."""
    _check_5d("x", video, channels, f"B, {channels}, F, H, W")
    for axis, size in (("height", video.shape[3]), ("width", video.shape[4])):
        if not _encodable(size, config):
            valid = [s for s in range(max(size - 64, 1), size + 65) if _encodable(s, config)]
            nearest = sorted(valid, key=lambda s: (abs(s - size), s))[:2]
            raise ValueError(
                f"x has {axis} {size}, which this VAE's encoder cannot downsample "
                f"({config.downsamples} halvings after a {config.patch}×{config.patch} patchify"
                f"{', even sides at every stage' if config.is_residual else ''}); nearest valid: {sorted(nearest)}"
            )


def check_decode_input(latents: Any, z_dim: int) -> None:
    """``latents`` must be ``[B, z_dim, f ≥ 1, h ≥ 1, w ≥ 1]``."""
    _check_5d("z", latents, z_dim, f"B, {z_dim}, f, h, w")


def check_tile_options(sizes: Mapping[str, Any], scale: int) -> None:
    """Tile sides and strides (pixels) must be ints with ``scale ≤ stride ≤ side``, so every window
    moves by at least one latent cell and neighbours overlap or touch."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int (pixels), got {value!r}")
    for axis in ("height", "width"):
        side, stride = sizes[f"tile_sample_min_{axis}"], sizes[f"tile_sample_stride_{axis}"]
        if not scale <= stride <= side:
            raise ValueError(
                f"tile_sample_stride_{axis} ({stride}) must be at least the spatial scale factor ({scale}) "
                f"and at most tile_sample_min_{axis} ({side})"
            )
