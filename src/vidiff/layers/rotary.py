"""Rotary position embedding (RoPE) over a 3-D grid of tokens (frames, height, width).

Each attention head's channels are split into three bands, one per grid axis; inside a band,
consecutive channel pairs ``(2i, 2i+1)`` are rotated by the angle ``position · θ^(−2i/band)`` of
the token's coordinate on that axis (Su et al. 2021, "RoFormer"; the 3-D split is the one Wan's
video transformers were trained with). The tables are computed when first asked for and kept per
(grid, device) in a small cache, not in the model, so models hold no non-persistent buffers and a
denoising run computes them once, not at every step.
"""

from __future__ import annotations

import functools

import torch


def rotary_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of a head rotated by (frame, height, width) position: height and width get
    ``2·(head_dim // 6)`` each, frames the rest. ``head_dim`` must be even (channel pairs)."""
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"a rotary embedding needs an even head dimension of at least 2, got {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _axis_angles(band: int, length: int, theta: float) -> torch.Tensor:
    # [length, band/2] radians. float64 on the CPU, like the reference tables, so the float32
    # cos/sin are the correctly rounded values on every device.
    frequencies = 1.0 / (theta ** (torch.arange(0, band, 2, dtype=torch.float64) / band))  # [band/2]
    positions = torch.arange(length, dtype=torch.float64)
    return torch.outer(positions, frequencies)


def rotary_tables_3d(
    head_dim: int,
    grid: tuple[int, int, int],
    *,
    max_positions: int,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every token's rotation angles: ``[L, head_dim/2]`` float32 each, ``L = F·H·W``.

    ``grid`` is the token grid ``(frames, height, width)``, flattened frame-major (then row, then
    column), as a patchified video is. Columns hold the frame band's angles, then height's, then
    width's. ``max_positions`` is the model's trained range per axis (``rope_max_seq_len``); a grid
    axis longer than it is a ``ValueError``.
    """
    if any(size > max_positions for size in grid):
        raise ValueError(
            f"the token grid (frames, height, width) = {tuple(grid)} has an axis longer than the "
            f"rotary embedding's rope_max_seq_len={max_positions}; use fewer frames or a smaller size"
        )
    return _tables(head_dim, tuple(grid), theta, str(torch.device("cpu" if device is None else device)))


@functools.lru_cache(maxsize=8)
def _tables(head_dim: int, grid: tuple[int, int, int], theta: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Shared by every call with these arguments: callers only read them.
    frames, height, width = grid
    bands = rotary_axis_dims(head_dim)
    angles = [_axis_angles(band, size, theta) for band, size in zip(bands, grid)]
    # Broadcast each axis's angles over the grid: [F, H, W, band/2] each, then side by side.
    per_token = torch.cat(
        [
            angles[0][:, None, None, :].expand(frames, height, width, -1),
            angles[1][None, :, None, :].expand(frames, height, width, -1),
            angles[2][None, None, :, :].expand(frames, height, width, -1),
        ],
        dim=-1,
    ).reshape(frames * height * width, head_dim // 2)
    return per_token.cos().float().to(device), per_token.sin().float().to(device)


def apply_rotary_pairs(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``states`` ``[N, L, heads, head_dim]`` by the tables
    ``[L, head_dim/2]``; returns the input's shape and dtype (the rotation runs in float32)."""
    even, odd = states.unflatten(-1, (-1, 2)).unbind(-1)  # [N, L, heads, head_dim/2] each
    cos, sin = cos[:, None, :], sin[:, None, :]  # [L, 1, head_dim/2]: one rotation for every head
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(states.dtype)
