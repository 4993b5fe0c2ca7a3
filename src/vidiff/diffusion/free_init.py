"""FreeInit's tensor math (Wu et al. 2023, "FreeInit: Bridging Initialization Gap in Video Diffusion
Models"): a 3-D low-pass filter over (frames, height, width), the frequency mix of a re-noised
result with fresh noise, and the forward diffusion to the terminal noise level.

Numbers follow diffusers 0.42.1's ``FreeInitMixin`` (reproduced for parity, including where they
differ from the paper):

- the normalised squared distance of bin (t, h, w) from the spectrum's centre is
  ``d² = ((d_s / d_t)·(2t/F − 1))² + (2h/H − 1)² + (2w/W − 1)²`` (``d_s``, ``d_t``: the spatial and
  temporal stop frequencies), evaluated on the fft-shifted grid, so the low frequencies sit at the
  centre bin ``(F//2, H//2, W//2)``;
- butterworth: ``1 / (1 + (d² / d_s²)^order)`` (the ratio of *squared* distances, raised to ``order``);
- gaussian: ``exp(−d² / (2·d_s²))``;
- ideal: 1 where ``d² ≤ 2·d_s`` (not the paper's ``d ≤ d_s``), else 0;
- a stop frequency of 0 gives an all-zero filter (the result is then all fresh noise).

The filter is evaluated in float64 and stored as float32, as diffusers writes its Python-float
values into a float32 tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["FILTER_METHODS", "diffuse_ve", "diffuse_vp", "low_pass_filter", "mix_frequencies"]

FILTER_METHODS = ("butterworth", "ideal", "gaussian")
# The three axes FreeInit filters over in a [B, C, F, H, W] tensor: frames, height, width.
SPECTRAL_DIMS = (-3, -2, -1)


def _centred_square(count: int) -> Tensor:
    """(2i/count − 1)² for i in [0, count), float64: the squared offset of each fft-shifted bin from
    the centre, normalised to [−1, 1)."""
    offset = torch.arange(count, dtype=torch.float64) * 2 / count - 1
    return offset * offset


def _squared_distance(frames: int, height: int, width: int, spatial: float, temporal: float) -> Tensor:
    """d² [F, H, W] float64 (see the module docstring); time is scaled by d_s / d_t so that the
    temporal stop frequency lands where the spatial one does."""
    offset_t = (torch.arange(frames, dtype=torch.float64) * 2 / frames - 1) * (spatial / temporal)
    d_t = (offset_t * offset_t).view(frames, 1, 1)
    d_h = _centred_square(height).view(1, height, 1)
    d_w = _centred_square(width).view(1, 1, width)
    return d_t + d_h + d_w  # the reference's summation order: (time + height) + width


def low_pass_filter(
    shape: Sequence[int],
    method: str = "butterworth",
    order: float = 4,
    spatial_stop_frequency: float = 0.25,
    temporal_stop_frequency: float = 0.25,
) -> Tensor:
    """FreeInit's low-pass filter of ``shape`` (its last three axes are frames, height, width) on the
    fft-shifted grid: float32 in [0, 1], the same value in every leading index (e.g. [1, C, F, H, W]).

    Args:
        shape: the filtered tensor's shape, at least 3-D.
        method: "butterworth", "ideal" or "gaussian" (formulas in the module docstring).
        order: butterworth's order (higher: closer to ideal); unused by the others.
        spatial_stop_frequency / temporal_stop_frequency: normalised stop frequencies in [0, 1].
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        raise ValueError(f"low_pass_filter needs a shape with frames, height and width last, got {list(shape)}")
    if method not in FILTER_METHODS:
        raise ValueError(f"`method` must be one of {list(FILTER_METHODS)}, got {method!r}")
    if spatial_stop_frequency == 0 or temporal_stop_frequency == 0:
        return torch.zeros(shape)
    d2 = _squared_distance(*shape[-3:], spatial_stop_frequency, temporal_stop_frequency)  # [F, H, W] float64
    if method == "butterworth":
        values = 1 / (1 + (d2 / spatial_stop_frequency**2) ** order)
    elif method == "gaussian":
        values = torch.exp(-1 / (2 * spatial_stop_frequency**2) * d2)
    else:  # ideal: the reference compares d² (not d) with 2·d_s
        values = (d2 <= spatial_stop_frequency * 2).to(torch.float64)
    return values.to(torch.float32).expand(shape).contiguous()


def mix_frequencies(latents: Tensor, noise: Tensor, low_pass: Tensor) -> Tensor:
    """The low frequencies of ``latents`` with the high frequencies of ``noise``, over frames, height
    and width; float32 in, float32 (the inverse transform's real part) out.

    ``low_pass`` is laid out on the fft-shifted grid (:func:`low_pass_filter`). Shifting it back once
    is the same permutation of the same elementwise products as shifting both spectra forth and the
    mix back, so the numbers equal the reference's.
    """
    low = torch.fft.ifftshift(low_pass, dim=SPECTRAL_DIMS).to(latents.device)
    high = 1 - low
    latents_freq = torch.fft.fftn(latents, dim=SPECTRAL_DIMS)
    noise_freq = torch.fft.fftn(noise, dim=SPECTRAL_DIMS)
    mixed = latents_freq * low + noise_freq * high
    return torch.fft.ifftn(mixed, dim=SPECTRAL_DIMS).real


def diffuse_vp(sample: Tensor, noise: Tensor, alpha_cumprod: Tensor) -> Tensor:
    """``sqrt(ᾱ)·sample + sqrt(1 − ᾱ)·noise``, the coefficients taken in the sample's dtype (as a
    VP scheduler's ``add_noise`` computes them); ``alpha_cumprod`` is a 0-dim ᾱ."""
    alpha = alpha_cumprod.to(device=sample.device, dtype=sample.dtype)
    return alpha**0.5 * sample + (1 - alpha) ** 0.5 * noise


def diffuse_ve(sample: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """``sample + noise·σ`` (a σ-space scheduler's ``add_noise``), σ in the sample's dtype."""
    return sample + noise * sigma.to(device=sample.device, dtype=sample.dtype)


def diffuse_flow(sample: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``(1 − t)·sample + t·noise``, the flow-matching forward process (a flow scheduler's
    ``scale_noise`` / ``add_noise``), t in the sample's dtype; ``t`` is 0-dim or broadcastable."""
    t = t.to(device=sample.device, dtype=sample.dtype)
    return (1 - t) * sample + t * noise
