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


def batch_timesteps(timestep: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    """One timestep per sample ``[batch]`` from a number, a 0-dim tensor or a ``[batch]`` tensor.

    Raises ``ValueError`` naming ``timestep`` for any other shape; the dtype is left as given.
    """
    timesteps = torch.as_tensor(timestep, device=device)
    if timesteps.ndim > 1 or timesteps.numel() not in (1, batch):
        raise ValueError(
            f"timestep must be a number, a 0-dim tensor or have shape [{batch}], got {tuple(timesteps.shape)}"
        )
    return timesteps.reshape(-1).expand(batch)


class TimestepEmbedding(nn.Module):
    """Two-layer SiLU MLP on a sinusoidal embedding: ``[N, in_channels]`` → ``[N, out_dim]``.

    Parameter names ``linear_1`` / ``linear_2`` follow the published checkpoints. ``cond_proj_dim``
    adds ``cond_proj``, a bias-free projection of an extra condition ``[N, cond_proj_dim]`` added to
    the input (LCM-distilled UNets feed the guidance scale's embedding through it).
    """

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        out_dim: int | None = None,
        cond_proj_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.linear_2 = nn.Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim)

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """``sample`` ``[N, in_channels]``, optional ``condition`` ``[N, cond_proj_dim]`` → ``[N, out_dim]``."""
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("a condition was given, but this embedding was built without cond_proj_dim")
            sample = sample + self.cond_proj(condition)
        return self.linear_2(F.silu(self.linear_1(sample)))


class SinusoidalPositionTable(nn.Module):
    """Adds a fixed sinusoidal code of each token's position to a sequence ``[N, L, dim]``.

    The table ``pe`` ``[1, max_seq_length, dim]`` has interleaved columns ``sin, cos, sin, cos, …``
    at frequencies ``10000^(-2i/dim)``. It is a *persistent* buffer because the published
    AnimateDiff checkpoints store it (``…pos_embed.pe``) and the stored values are the ones used;
    it is computed here only for randomly initialised models.
    """

    def __init__(self, dim: int, max_seq_length: int = 32) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"a sinusoidal position table needs an even dim (sin/cos pairs), got dim={dim}")
        self.register_buffer("pe", self._table(dim, max_seq_length))

    @staticmethod
    def _table(dim: int, length: int) -> torch.Tensor:
        # Computed in float64 so the float32 table is correctly rounded even at angles of ~30 rad.
        positions = torch.arange(length, dtype=torch.float64)[:, None]  # [L, 1]
        frequencies = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [dim/2]
        angles = positions * frequencies  # [L, dim/2], radians
        pairs = torch.stack((angles.sin(), angles.cos()), dim=-1)  # [L, dim/2, 2]
        return pairs.reshape(1, length, dim).float()

    @property
    def max_seq_length(self) -> int:
        return self.pe.shape[1]

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """``[N, L, dim]`` → same, with ``L ≤ max_seq_length``."""
        length = sequence.shape[1]
        if length > self.max_seq_length:
            raise ValueError(
                f"sequence length {length} exceeds the position table's max_seq_length={self.max_seq_length}"
            )
        return sequence + self.pe[:, :length].to(sequence.dtype)
