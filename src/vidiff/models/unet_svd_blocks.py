"""What the Stable Video Diffusion UNet's stages hold (the generic stages of :mod:`vidiff.layers.unet_stage`).

Every resnet is a :class:`~vidiff.layers.temporal.SpatioTemporalResBlock` (``resnets.N.spatial_res_block``,
``temporal_res_block``, ``time_mixer``); attention stages follow each with a video transformer
(``attentions``) that attends within frames, to the context, and across frames.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..layers.spatiotemporal_transformer import TransformerSpatioTemporalModel
from ..layers.temporal import SpatioTemporalResBlock
from ..layers.unet_stage import ExtraPart, ResnetPart, call_with_context_and_frames, call_with_temb_and_frames
from .unet_2d_blocks import per_layer


def spatiotemporal_resnet(temb_channels: int, eps: float) -> ResnetPart:
    """Resnets that mix frames too; called with the time embedding and the frame count."""

    def build(in_channels: int, out_channels: int) -> SpatioTemporalResBlock:
        return SpatioTemporalResBlock(in_channels, out_channels, temb_channels, eps=eps)

    return ResnetPart(build, call_with_temb_and_frames)


def video_transformers(
    heads: int, transformer_layers: int | Sequence[int], cross_attention_dim: int, present: bool = True
) -> ExtraPart:
    """One video transformer per layer, ``transformer_layers`` blocks deep (per layer or for all);
    without ``present`` the stage's ``attentions`` is None."""

    def build(channels: int, count: int) -> list[TransformerSpatioTemporalModel]:
        depths = per_layer(transformer_layers, count, "transformer_layers_per_block")
        return [
            TransformerSpatioTemporalModel(
                heads, channels // heads, in_channels=channels, num_layers=depth, cross_attention_dim=cross_attention_dim
            )
            for depth in depths
        ]

    return ExtraPart("attentions", build if present else None, call_with_context_and_frames)
