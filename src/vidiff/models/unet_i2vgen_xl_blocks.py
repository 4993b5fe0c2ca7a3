"""What the stages of I2VGen-XL's video UNet (diffusers' ``*Block3D``) hold, and the layers only it uses.

Every layer of a stage is a per-frame resnet, a temporal convolution stack (``temp_convs``), and in
attention stages a per-frame image transformer (``attentions``) and a temporal transformer
(``temp_attentions``) — in that order. Stages work on image batches ``[(B·F), C, H, W]`` with the
frames of a video consecutive, a per-frame time embedding ``[(B·F), D]`` and a per-frame context
``[(B·F), L, cross_attention_dim]``: the generic stages of :mod:`vidiff.layers.unet_stage`.

Head counts follow the checkpoints' legacy naming: the config's ``attention_head_dim`` is the width
of one head, so a stage of ``C`` channels has ``C // attention_head_dim`` heads in both transformers.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..layers.attention import Attention, FeedForward
from ..layers.frames import images_to_video, video_to_images
from ..layers.motion import MotionModule
from ..layers.temporal import TemporalConv
from ..layers.unet_stage import ExtraPart, ResnetPart, call_with_context, call_with_frames
from .unet_2d_blocks import CrossAttentionOptions, ResnetOptions


class TemporalConvStack(nn.Module):
    """Four (GroupNorm → SiLU → (3,1,1) conv) steps over each pixel's frames, added to the input.

    diffusers' ``TemporalConvLayer`` (ModelScope's): ``[(B·F), C, H, W]`` → same shape. Indices 2 of
    ``conv2``–``conv4`` held dropouts in training (inert at inference); Identities keep the
    checkpoint's ``convN.3`` names. GroupNorm statistics span all frames of a video.
    """

    def __init__(self, channels: int, norm_num_groups: int = 32) -> None:
        super().__init__()

        def step(with_dropout_slot: bool) -> nn.Sequential:
            layers = [nn.GroupNorm(norm_num_groups, channels), nn.SiLU()]
            if with_dropout_slot:
                layers.append(nn.Identity())
            return nn.Sequential(*layers, TemporalConv(channels, channels))

        self.conv1 = step(False)
        self.conv2 = step(True)
        self.conv3 = step(True)
        self.conv4 = step(True)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        video = images_to_video(hidden_states, num_frames)  # [B, C, F, H, W] view
        update = self.conv4(self.conv3(self.conv2(self.conv1(video))))
        return video_to_images(video + update)


def temporal_transformer(channels: int, heads: int, head_dim: int, norm_num_groups: int) -> MotionModule:
    """diffusers' ``TransformerTemporalModel`` as I2VGen-XL builds it: one block, two self-attentions, no positions."""
    return MotionModule(
        channels,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        norm_num_groups=norm_num_groups,
        positional_embeddings=None,
    )


class ImageLatentsTemporalEncoder(nn.Module):
    """Self-attention over frames, then an un-normalised MLP, both residual (``image_latents_temporal_encoder``).

    Takes per-pixel frame sequences ``[(B·H·W), F, dim]``. Two heads of width ``dim``; the
    feed-forward (plain GELU, ``4·dim`` wide) sees the attention output without a norm, as trained.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=2, dim_head=dim, bias=False, out_bias=True)
        self.ff = FeedForward(dim, activation_fn="gelu", inner_dim=4 * dim)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        sequences = sequences + self.attn1(self.norm1(sequences))
        return sequences + self.ff(sequences)


@dataclasses.dataclass(frozen=True)
class VideoStageOptions:
    """What every stage of the I2VGen-XL UNet shares."""

    resnet: ResnetOptions
    cross_attention_dim: int

    def resnet_part(self) -> ResnetPart:
        return ResnetPart(self.resnet.build)

    def extras(self, head_dim: int | None) -> list[ExtraPart]:
        """A temporal conv stack after every resnet; with ``head_dim`` (attention stages) then per
        layer an image transformer (within each frame, and to the context) and a temporal one."""
        groups = self.resnet.groups

        def temporal_convs(channels: int, count: int) -> list[TemporalConvStack]:
            return [TemporalConvStack(channels, groups) for _ in range(count)]

        def attentions(channels: int, count: int) -> nn.ModuleList:
            # Linear projections everywhere: diffusers' 3-D block factory defaults to them.
            options = CrossAttentionOptions(channels // head_dim, self.cross_attention_dim, use_linear_projection=True)
            return options.build(channels, count, groups)

        def temporal_attentions(channels: int, count: int) -> list[MotionModule]:
            return [temporal_transformer(channels, channels // head_dim, head_dim, groups) for _ in range(count)]

        with_attention = head_dim is not None  # else the attributes are None
        return [
            ExtraPart("temp_convs", temporal_convs, call_with_frames, per_resnet=True),
            ExtraPart("attentions", attentions if with_attention else None, call_with_context),
            ExtraPart("temp_attentions", temporal_attentions if with_attention else None, call_with_frames),
        ]
