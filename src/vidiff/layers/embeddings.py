"""Sinusoidal embeddings of scalars (timesteps, micro-conditions, frame indices) and their MLP."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def sinusoidal_embedding(
    positions: torch.Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Transformer-style sinusoids of 1-D ``positions`` (may be fractional): ``[N]`` → ``[N, dim]`` float32.

    Frequencies are ``max_period ** (-i / (dim/2 - downscale_freq_shift))`` for ``i < dim/2``; the
    halves are ordered ``[cos, sin]`` when ``flip_sin_to_cos`` (what SD/SVD-family UNets were
    trained with), else ``[sin, cos]``. An odd ``dim`` gets one zero column at the end. The
    frequencies are computed here, not stored, so models hold no non-persistent buffers.
    """
    if positions.ndim != 1:
        raise ValueError(f"positions must be 1-D, got shape {tuple(positions.shape)}")
    half = dim // 2
    # Same float32 operation order as the reference DDPM code, so large timesteps (~1000 rad)
    # give bit-identical arguments.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device)
    frequencies = torch.exp(exponent / (half - downscale_freq_shift))
    angles = positions[:, None].float() * frequencies[None, :]  # [N, dim/2], radians
    halves = (angles.cos(), angles.sin()) if flip_sin_to_cos else (angles.sin(), angles.cos())
    embedding = torch.cat(halves, dim=-1)
    if dim % 2 == 1:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedding(nn.Module):
    """Two-layer SiLU MLP on a sinusoidal embedding: ``[N, in_channels]`` → ``[N, out_dim]``.

    Parameter names ``linear_1`` / ``linear_2`` follow the published checkpoints.
    """

    def __init__(self, in_channels: int, time_embed_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(sample)))
