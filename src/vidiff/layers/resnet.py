"""2-D residual blocks and the resolution changers between UNet/VAE stages.

All work on image batches ``[N, C, H, W]`` (a video is ``N = B·F`` images). Parameter names
(``norm1``, ``conv1``, ``time_emb_proj``, ``conv_shortcut``, ``conv``) follow the checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResBlock2D(nn.Module):
    """GroupNorm → SiLU → conv, twice, plus a shortcut; optionally adds a per-image time embedding.

    ``temb_channels=None`` builds the unconditioned form (VAE). The shortcut is a 1×1 conv when
    the channel count changes. The sum is divided by ``output_scale_factor``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        temb_channels: int | None = 512,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        output_scale_factor: float = 1.0,
        conv_shortcut_bias: bool = True,
    ) -> None:
        super().__init__()
        out_channels = out_channels if out_channels is not None else in_channels
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups_out if groups_out is not None else groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=conv_shortcut_bias)
            if in_channels != out_channels
            else None
        )

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, C_in, H, W]``, ``temb`` ``[N, temb_channels]`` or None → ``[N, C_out, H, W]``."""
        # In-place adds land on fresh conv outputs: no extra [N, C, H, W] buffer per sum, and autograd
        # is unaffected (a sum saves no inputs). Addition commutes exactly, so results are unchanged.
        hidden = self.conv1(F.silu(self.norm1(input_tensor)))
        if self.time_emb_proj is not None and temb is not None:
            hidden += self.time_emb_proj(F.silu(temb))[:, :, None, None]
        hidden = self.conv2(F.silu(self.norm2(hidden)))
        shortcut = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
        out = hidden.add_(shortcut)
        if self.output_scale_factor != 1.0:
            out = out.div_(self.output_scale_factor)
        return out


class Downsample2D(nn.Module):
    """Halve H and W with a stride-2 3×3 conv (``use_conv``) or a 2×2 average pool.

    ``padding=0`` pads one row/column at the bottom/right only (the VAE encoder's asymmetric form).
    """

    def __init__(
        self, channels: int, use_conv: bool = True, out_channels: int | None = None, padding: int = 1
    ) -> None:
        super().__init__()
        out_channels = out_channels if out_channels is not None else channels
        if not use_conv and out_channels != channels:
            raise ValueError(
                f"Downsample2D without a conv keeps the channel count; got {channels} → {out_channels}"
            )
        self.padding = padding
        self.conv = (
            nn.Conv2d(channels, out_channels, kernel_size=3, stride=2, padding=padding)
            if use_conv
            else nn.AvgPool2d(kernel_size=2, stride=2)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.padding == 0 and isinstance(self.conv, nn.Conv2d):
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1))
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    """Double H and W (or reach ``output_size``) by nearest-neighbour, then an optional 3×3 conv."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels if out_channels is not None else channels
        self.conv = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1) if use_conv else None

    def forward(
        self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``output_size`` forces the spatial size, for inputs whose sides are not multiples of 2ⁿ."""
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=tuple(output_size), mode="nearest")
        return self.conv(hidden_states) if self.conv is not None else hidden_states
