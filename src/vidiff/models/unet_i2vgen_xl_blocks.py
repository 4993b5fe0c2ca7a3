"""The stages of I2VGen-XL's video UNet (diffusers' ``*Block3D``) and the layers only it uses.

Every layer of a stage is a per-frame resnet, a temporal convolution stack (``temp_convs``), and in
attention stages a per-frame image transformer (``attentions``) and a temporal transformer
(``temp_attentions``) — in that order. Stages work on image batches ``[(B·F), C, H, W]`` with the
frames of a video consecutive, a per-frame time embedding ``[(B·F), D]`` and a per-frame context
``[(B·F), L, cross_attention_dim]``, so :func:`~vidiff.models.unet_2d_blocks.run_stages` drives them.

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
from ..layers.resnet import Downsample2D, Upsample2D
from ..layers.temporal import TemporalConv
from .unet_2d_blocks import CrossAttentionOptions, ResnetOptions, up_resnet_in_channels


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

    def attention(self, channels: int, head_dim: int) -> CrossAttentionOptions:
        # Linear projections everywhere: diffusers' 3-D block factory defaults to them.
        return CrossAttentionOptions(channels // head_dim, self.cross_attention_dim, use_linear_projection=True)


class _VideoStage(nn.Module):
    """Per-layer ``resnets`` + ``temp_convs``, optionally ``attentions`` + ``temp_attentions``."""

    def _build(
        self, channels: int, num_layers: int, options: VideoStageOptions, head_dim: int | None
    ) -> None:
        groups = options.resnet.groups
        self.temp_convs = nn.ModuleList(TemporalConvStack(channels, groups) for _ in range(len(self.resnets)))
        if head_dim is None:
            self.attentions = self.temp_attentions = None
            return
        self.attentions = options.attention(channels, head_dim).build(channels, num_layers, groups)
        self.temp_attentions = nn.ModuleList(
            temporal_transformer(channels, channels // head_dim, head_dim, groups) for _ in range(num_layers)
        )

    def _convolve(self, index: int, hidden: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.temp_convs[index](self.resnets[index](hidden, temb), num_frames)

    def _attend(self, index: int, hidden: torch.Tensor, context: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        if self.attentions is None:
            return hidden
        hidden = self.attentions[index](hidden, context)  # within each frame, and to the context
        return self.temp_attentions[index](hidden, num_frames)  # across frames


class VideoDownBlock(_VideoStage):
    """diffusers' ``DownBlock3D`` (``head_dim=None``) / ``CrossAttnDownBlock3D``, then an optional stride-2 conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        options: VideoStageOptions,
        *,
        head_dim: int | None,
        add_downsample: bool,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            options.resnet.build(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)
        )
        self._build(out_channels, num_layers, options, head_dim)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=1)]) if add_downsample else None

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None, num_frames: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for index in range(len(self.resnets)):
            hidden_states = self._convolve(index, hidden_states, temb, num_frames)
            hidden_states = self._attend(index, hidden_states, context, num_frames)
            skips.append(hidden_states)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips.append(hidden_states)
        return hidden_states, skips


class VideoMidBlock(_VideoStage):
    """diffusers' ``UNetMidBlock3DCrossAttn``: resnet+temporal conv, then one (attention, resnet) layer."""

    def __init__(self, channels: int, options: VideoStageOptions, *, head_dim: int, num_layers: int = 1) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(options.resnet.build(channels, channels) for _ in range(num_layers + 1))
        self._build(channels, num_layers, options, head_dim)

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None, num_frames: int
    ) -> torch.Tensor:
        hidden_states = self._convolve(0, hidden_states, temb, num_frames)
        for index in range(len(self.attentions)):
            hidden_states = self._attend(index, hidden_states, context, num_frames)
            hidden_states = self._convolve(index + 1, hidden_states, temb, num_frames)
        return hidden_states


class VideoUpBlock(_VideoStage):
    """diffusers' ``UpBlock3D`` / ``CrossAttnUpBlock3D``: resnets on (input ⧺ skip), then ×2 upsampling.

    ``in_channels`` is the width of the deepest skip this stage takes, ``prev_output_channel`` the
    width arriving from the stage below.
    """

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        num_layers: int,
        options: VideoStageOptions,
        *,
        head_dim: int | None,
        add_upsample: bool,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            options.resnet.build(
                up_resnet_in_channels(i, num_layers, in_channels, prev_output_channel, out_channels), out_channels
            )
            for i in range(num_layers)
        )
        self._build(out_channels, num_layers, options, head_dim)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor | None,
        num_frames: int,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``skips`` are consumed last-first (the deepest skip meets the first resnet)."""
        for index in range(len(self.resnets)):
            hidden_states = torch.cat([hidden_states, skips[-1 - index]], dim=1)
            hidden_states = self._convolve(index, hidden_states, temb, num_frames)
            hidden_states = self._attend(index, hidden_states, context, num_frames)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states
