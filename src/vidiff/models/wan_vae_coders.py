"""Wan's causal 3-D encoder and decoder (one chunk of frames per call, state in a FeatureCache).

Encoder: ``[B, C_in, F, H, W]`` → moments ``[B, 2·z, f, H/2ⁿ, W/2ⁿ]`` with ``n = len(dim_mult) − 1``
spatial halvings and one temporal halving per ``True`` of ``temperal_downsample`` (diffusers'
spelling, kept as the config key). Decoder: ``[B, z, f, h, w]`` → ``[B, C_out, F, h·2ⁿ, w·2ⁿ]``
with the temporal flags reversed. Sizes are those of the streamed chunk, not the whole video.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..layers.causal_conv import CausalConv3d, FeatureCache
from .wan_vae_blocks import (
    ChannelRMSNorm,
    WanFrameAttention,
    WanMidBlock,
    WanResample,
    WanResidualBlock,
    WanResidualDownBlock,
    WanResidualUpBlock,
    WanUpBlock,
)


class WanEncoder(nn.Module):
    """``conv_in`` → ``down_blocks`` → ``mid_block`` → RMS norm, SiLU → ``conv_out`` (to ``z_channels``).

    Wan 2.1 (``is_residual=False``): ``down_blocks`` is one flat list of resnets (each followed by
    a per-frame attention where the current scale is in ``attn_scales``) and resamplers. Wan 2.2:
    one :class:`WanResidualDownBlock` per stage.
    """

    def __init__(
        self,
        in_channels: int,
        base_dim: int,
        z_channels: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        attn_scales: Sequence[float],
        temperal_downsample: Sequence[bool],
        dropout: float,
        is_residual: bool,
    ) -> None:
        super().__init__()
        dims = [base_dim * m for m in (1, *dim_mult)]
        last = len(dim_mult) - 1
        self.conv_in = CausalConv3d(in_channels, dims[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        scale = 1.0  # resolution relative to the input, for attn_scales
        for i, (channels_in, channels_out) in enumerate(zip(dims[:-1], dims[1:])):
            temporal = i != last and temperal_downsample[i]
            if is_residual:
                block = WanResidualDownBlock(channels_in, channels_out, num_res_blocks, dropout, temporal, i != last)
                self.down_blocks.append(block)
                continue
            for _ in range(num_res_blocks):
                self.down_blocks.append(WanResidualBlock(channels_in, channels_out, dropout))
                if scale in attn_scales:
                    self.down_blocks.append(WanFrameAttention(channels_out))
                channels_in = channels_out
            if i != last:
                self.down_blocks.append(WanResample(channels_out, "downsample3d" if temporal else "downsample2d"))
                scale /= 2.0
        self.mid_block = WanMidBlock(dims[-1], dropout)
        self.norm_out = ChannelRMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for block in self.down_blocks:
            x = block(x, cache)
        x = self.mid_block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class WanDecoder(nn.Module):
    """``conv_in`` → ``mid_block`` → ``up_blocks`` → RMS norm, SiLU → ``conv_out`` (to ``out_channels``).

    Stage widths run ``base_dim · (dim_mult[-1], *reversed(dim_mult))``. Wan 2.1's upsamplers halve
    the channels, so every stage after the first takes half the previous width in; Wan 2.2's keep them.
    """

    def __init__(
        self,
        base_dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temperal_upsample: Sequence[bool],
        dropout: float,
        out_channels: int,
        is_residual: bool,
    ) -> None:
        super().__init__()
        dims = [base_dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        last = len(dim_mult) - 1
        self.conv_in = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.mid_block = WanMidBlock(dims[0], dropout)
        self.up_blocks = nn.ModuleList()
        for i, (channels_in, channels_out) in enumerate(zip(dims[:-1], dims[1:])):
            up = i != last
            temporal = up and temperal_upsample[i]
            if is_residual:
                block = WanResidualUpBlock(channels_in, channels_out, num_res_blocks, dropout, temporal, up)
            else:
                channels_in = channels_in // 2 if i > 0 else channels_in  # the previous upsampler halved them
                mode = ("upsample3d" if temporal else "upsample2d") if up else None
                block = WanUpBlock(channels_in, channels_out, num_res_blocks, dropout, mode)
            self.up_blocks.append(block)
        self.norm_out = ChannelRMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x, cache), cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)
