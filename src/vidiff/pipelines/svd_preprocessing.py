"""Stable Video Diffusion's own CLIP input: no PIL resize, but a gaussian blur and a bicubic resize of
the image tensor to the feature extractor's crop size (224×224 for every released checkpoint), then
the feature extractor's normalization; the config's resize, crop and rescale flags do not apply, as in
diffusers' ``StableVideoDiffusionPipeline``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..image_processing import CLIPImageProcessor


def svd_clip_input(processor: CLIPImageProcessor, images: torch.Tensor) -> torch.Tensor:
    """SVD's CLIP ``pixel_values`` [N, 3, crop, crop] for ``images`` [N, 3, H, W] in [0, 1].

    The images go to [-1, 1] first because SVD resizes there (the blur and bicubic weights sum to 1,
    so only rounding depends on it; keeping the order keeps diffusers' numbers).
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [N, 3, H, W] in [0, 1], got {_describe(images)}")
    return pixels_from_signed_range(processor, images * 2.0 - 1.0)


def pixels_from_signed_range(processor: CLIPImageProcessor, images: torch.Tensor) -> torch.Tensor:
    """``images`` [N, 3, H, W] in [-1, 1] → anti-aliased resize to the crop size, back to [0, 1], normalized."""
    crop = processor.config.crop_size
    resized = resize_with_antialiasing(images, (crop["height"], crop["width"]))
    return processor.normalize((resized + 1.0) / 2.0)


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    # [size], odd size, centred, summing to 1; built in float64 and cast by the caller.
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    weights = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def _odd_kernel_size(sigma: float) -> int:
    # Two sigmas each side (a compromise between quality and speed), at least 3 taps, always odd.
    size = int(max(4.0 * sigma, 3.0))
    return size if size % 2 == 1 else size + 1


def _blur_along(images: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Convolve every channel of [N, C, H, W] with a 1-D ``kernel`` along ``dim`` (2 = H, 3 = W),
    reflecting at the borders so the size is kept."""
    batch, channels, height, width = images.shape
    taps, half = kernel.numel(), kernel.numel() // 2
    shape = (1, 1, taps, 1) if dim == 2 else (1, 1, 1, taps)
    padding = (0, 0, half, half) if dim == 2 else (half, half, 0, 0)
    flat = images.reshape(batch * channels, 1, height, width)
    flat = F.pad(flat, padding, mode="reflect")
    weight = kernel.to(device=images.device, dtype=images.dtype).view(shape)
    return F.conv2d(flat, weight).view(batch, channels, height, width)


def resize_with_antialiasing(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Gaussian-blur then bicubically resize ``images`` [N, C, H, W] to ``size`` (height, width).

    This is how Stable Video Diffusion shrinks its conditioning image for CLIP (diffusers'
    ``_resize_with_antialiasing``): the blur's sigma per axis is ``max((in / out - 1) / 2, 0.001)``
    (scikit-image's anti-aliasing rule), the kernel spans two sigmas each side (odd, ≥ 3 taps) with
    reflected borders, and the resize is ``interpolate(mode="bicubic", align_corners=True)``.
    Returns [N, C, *size] in the input dtype; values may overshoot the input range slightly.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [N, C, H, W], got {_describe(images)}")
    out_h, out_w = (int(s) for s in size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be two positive ints (height, width), got {size!r}")
    in_h, in_w = images.shape[-2:]
    sigma_h = max((in_h / out_h - 1.0) / 2.0, 0.001)
    sigma_w = max((in_w / out_w - 1.0) / 2.0, 0.001)
    blurred = _blur_along(images, _gaussian_kernel(_odd_kernel_size(sigma_w), sigma_w), dim=3)
    blurred = _blur_along(blurred, _gaussian_kernel(_odd_kernel_size(sigma_h), sigma_h), dim=2)
    return F.interpolate(blurred, size=(out_h, out_w), mode="bicubic", align_corners=True)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__
