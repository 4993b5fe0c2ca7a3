"""The down, mid and up stages of the Stable Video Diffusion UNet.

Each stage works on image batches ``[(B·F), C, H, W]`` with a per-image time embedding
``temb [(B·F), D]`` and context ``[(B·F), L, cross_attention_dim]``. Attribute names
(``resnets``, ``attentions``, ``downsamplers``, ``upsamplers``) are the checkpoint's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers.resnet import Downsample2D, Upsample2D
from ..layers.spatiotemporal_transformer import TransformerSpatioTemporalModel
from ..layers.temporal import SpatioTemporalResBlock
from .unet_2d_blocks import per_layer, up_resnet_in_channels


def _video_transformers(
    channels: int, heads: int, layers: Sequence[int], cross_attention_dim: int
) -> nn.ModuleList:
    return nn.ModuleList(
        TransformerSpatioTemporalModel(
            heads, channels // heads, in_channels=channels, num_layers=n, cross_attention_dim=cross_attention_dim
        )
        for n in layers
    )


class SpatioTemporalDownBlock(nn.Module):
    """Resnets (each optionally followed by a video transformer), then an optional stride-2 conv.

    ``forward`` returns the output and the skip tensors the matching up stage will consume.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_downsample: bool,
        *,
        with_attention: bool,
        resnet_eps: float,
        num_attention_heads: int = 1,
        transformer_layers_per_block: int | Sequence[int] = 1,
        cross_attention_dim: int = 1024,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels, eps=resnet_eps)
            for i in range(num_layers)
        )
        layers = per_layer(transformer_layers_per_block, num_layers, "transformer_layers_per_block")
        self.attentions = (
            _video_transformers(out_channels, num_attention_heads, layers, cross_attention_dim)
            if with_attention
            else None
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, temb, num_frames)
            if self.attentions is not None:
                hidden_states = self.attentions[i](hidden_states, context, num_frames)
            skips.append(hidden_states)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips.append(hidden_states)
        return hidden_states, skips


class SpatioTemporalMidBlock(nn.Module):
    """Resnet, then (video transformer, resnet) ``num_layers`` times, at the lowest resolution."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        num_attention_heads: int,
        cross_attention_dim: int,
        transformer_layers_per_block: int | Sequence[int] = 1,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        layers = per_layer(transformer_layers_per_block, num_layers, "transformer_layers_per_block")
        self.attentions = _video_transformers(channels, num_attention_heads, layers, cross_attention_dim)
        self.resnets = nn.ModuleList(
            SpatioTemporalResBlock(channels, channels, temb_channels, eps=1e-5) for _ in range(num_layers + 1)
        )

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int
    ) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb, num_frames)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = attention(hidden_states, context, num_frames)
            hidden_states = resnet(hidden_states, temb, num_frames)
        return hidden_states


class SpatioTemporalUpBlock(nn.Module):
    """Resnets on (input ⧺ skip) channels, each optionally followed by a video transformer, then ×2 upsampling.

    ``in_channels`` is the width of the deepest skip this stage takes, ``prev_output_channel``
    the width arriving from the stage below.
    """

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_upsample: bool,
        *,
        with_attention: bool,
        num_attention_heads: int = 1,
        transformer_layers_per_block: int | Sequence[int] = 1,
        cross_attention_dim: int = 1024,
        resnet_eps: float = 1e-6,
    ) -> None:
        super().__init__()

        self.resnets = nn.ModuleList(
            SpatioTemporalResBlock(
                up_resnet_in_channels(i, num_layers, in_channels, prev_output_channel, out_channels),
                out_channels,
                temb_channels,
                eps=resnet_eps,
            )
            for i in range(num_layers)
        )
        layers = per_layer(transformer_layers_per_block, num_layers, "transformer_layers_per_block")
        self.attentions = (
            _video_transformers(out_channels, num_attention_heads, layers, cross_attention_dim)
            if with_attention
            else None
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor,
        num_frames: int,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``skips`` are consumed last-first (the deepest skip meets the first resnet)."""
        for i, resnet in enumerate(self.resnets):
            hidden_states = torch.cat([hidden_states, skips[-1 - i]], dim=1)
            hidden_states = resnet(hidden_states, temb, num_frames)
            if self.attentions is not None:
                hidden_states = self.attentions[i](hidden_states, context, num_frames)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states
