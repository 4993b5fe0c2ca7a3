"""The down, mid and up stages of the Stable Diffusion UNet, with or without AnimateDiff motion modules.

One set of stage classes serves both :class:`~vidiff.models.unet_2d.UNet2DConditionModel` (SD 1.5)
and :class:`~vidiff.models.unet_motion.UNetMotionModel` (AnimateDiff). Every layer of a stage is a
resnet, then an image transformer when the stage has cross-attention (``attention`` options), then a
motion module when the stage is part of a motion UNet (``motion`` options); without ``motion`` the
stage has no ``motion_modules`` at all, so the plain UNet's state dict is SD's. Attribute names
(``resnets``, ``attentions``, ``motion_modules``, ``downsamplers``, ``upsamplers``) are the checkpoints'.

Stages work on image batches ``[N, C, H, W]`` with ``N = B·F`` (``F = 1`` for still images), a
per-image time embedding ``temb [N, D]`` and a per-image context ``[N, L, cross_attention_dim]``.
The plain-data :class:`UNetLayout` both UNet configs resolve into, and the config checks they
share, live here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from ..config import Config
from ..layers.motion import MotionModule
from ..layers.resnet import Downsample2D, ResBlock2D, Upsample2D
from ..layers.transformer_2d import Transformer2DModel

PerLayer = int | tuple[int, ...]
PerBlock = int | tuple[int, ...]  # one value for every stage, or one per stage


def per_layer(value: PerLayer, num_layers: int, name: str) -> tuple[int, ...]:
    """An int repeated ``num_layers`` times, or a per-layer tuple checked for length."""
    if isinstance(value, int):
        return (value,) * num_layers
    if len(value) != num_layers:
        raise ValueError(f"{name} must be an int or have one entry per layer ({num_layers}), got {tuple(value)}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class CrossAttentionOptions:
    """How the image transformers of one stage are built (one per layer)."""

    num_attention_heads: int
    cross_attention_dim: int
    transformer_layers: PerLayer = 1  # BasicTransformerBlocks per transformer, per layer or for all
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    upcast_attention: bool = False

    def build(self, channels: int, num_layers: int, norm_num_groups: int) -> nn.ModuleList:
        depths = per_layer(self.transformer_layers, num_layers, "transformer_layers_per_block")
        return nn.ModuleList(
            Transformer2DModel(
                self.num_attention_heads,
                channels // self.num_attention_heads,
                in_channels=channels,
                num_layers=depth,
                cross_attention_dim=self.cross_attention_dim,
                norm_num_groups=norm_num_groups,
                use_linear_projection=self.use_linear_projection,
                only_cross_attention=self.only_cross_attention,
                upcast_attention=self.upcast_attention,
            )
            for depth in depths
        )


@dataclasses.dataclass(frozen=True)
class MotionOptions:
    """How the motion modules of one stage are built (one per layer; AnimateDiff's fixed choices)."""

    num_attention_heads: int
    transformer_layers: PerLayer = 1  # temporal transformer blocks per module, per layer or for all
    max_seq_length: int = 32  # the most frames a call may have

    def build(self, channels: int, num_layers: int, norm_num_groups: int) -> nn.ModuleList:
        depths = per_layer(self.transformer_layers, num_layers, "temporal_transformer_layers_per_block")
        # The motion UNet normalises with the UNet's norm_num_groups, not the adapter's
        # motion_norm_num_groups (diffusers' UNetMotionModel does the same; equal in released weights).
        return nn.ModuleList(
            MotionModule(
                channels,
                num_attention_heads=self.num_attention_heads,
                num_layers=depth,
                norm_num_groups=norm_num_groups,
                max_seq_length=self.max_seq_length,
            )
            for depth in depths
        )


@dataclasses.dataclass(frozen=True)
class ResnetOptions:
    """What every resnet of the UNet shares."""

    temb_channels: int  # width of the time embedding
    groups: int = 32
    eps: float = 1e-5
    output_scale_factor: float = 1.0

    def build(self, in_channels: int, out_channels: int) -> ResBlock2D:
        return ResBlock2D(
            in_channels,
            out_channels,
            self.temb_channels,
            groups=self.groups,
            eps=self.eps,
            output_scale_factor=self.output_scale_factor,
        )


@dataclasses.dataclass(frozen=True)
class StageLayout:
    """What one UNet stage holds besides its resnets' channel arithmetic."""

    num_layers: int  # resnets (up stages: one more than the mirrored down stage)
    attention: CrossAttentionOptions | None = None
    motion: MotionOptions | None = None


@dataclasses.dataclass(frozen=True)
class UNetLayout:
    """A config resolved into the skeleton's terms; built by the configs' ``layout()``."""

    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    down: tuple[StageLayout, ...]
    mid: StageLayout | None  # num_layers = attention layers of the mid stage; None: no mid stage
    up: tuple[StageLayout, ...]  # from the lowest resolution up
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    time_embed_dim: int | None = None  # default 4 × block_out_channels[0]
    time_cond_proj_dim: int | None = None
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3


def check_config(
    config: Config,
    unsupported_unless: Mapping[str, tuple],
    block_types: tuple[Mapping[str, bool], Mapping[str, bool]],
    per_block_options: tuple[str, ...],
) -> None:
    """The checks both UNet configs share; every error names the offending key.

    ``unsupported_unless`` maps diffusers options vidiff does not implement to the values meaning
    "unused"; ``block_types`` are the valid down and up block type names; ``per_block_options``
    take one value or one entry per stage.
    """
    for name, allowed in unsupported_unless.items():
        if getattr(config, name) not in allowed:
            raise ValueError(
                f"{name}={getattr(config, name)!r} is not supported by vidiff's {type(config).__name__}; "
                f"supported: {list(allowed)}"
            )
    for name, valid in zip(("down_block_types", "up_block_types"), block_types):
        unknown = [t for t in getattr(config, name) if t not in valid]
        if unknown:
            raise ValueError(f"{name} has unsupported entries {unknown}; valid: {sorted(valid)}")
    stages = len(config.down_block_types)
    if len(config.up_block_types) != stages or len(config.block_out_channels) != stages:
        raise ValueError(
            "down_block_types, up_block_types and block_out_channels must have equal lengths, got "
            f"{stages}, {len(config.up_block_types)} and {len(config.block_out_channels)}"
        )
    for name in per_block_options:
        value = getattr(config, name)
        if isinstance(value, tuple) and len(value) != stages:
            raise ValueError(f"{name} must be one value or have one entry per block ({stages}), got {value}")
    groups = config.norm_num_groups
    bad = [c for c in config.block_out_channels if c % groups]
    if bad:
        raise ValueError(f"norm_num_groups={groups} must divide every block_out_channels entry; not {bad}")


def run_stages(
    down_blocks: nn.ModuleList,
    mid_block: nn.Module | None,
    up_blocks: nn.ModuleList,
    hidden: torch.Tensor,
    emb: torch.Tensor,
    context: torch.Tensor | None,
    num_frames: int,
) -> torch.Tensor:
    """Run a UNet's down, mid and up stages on ``hidden`` ``[N, C0, H, W]`` (the ``conv_in`` output).

    Every down stage's outputs are kept as skips; each up stage takes as many as it has resnets,
    deepest first. Shared by the SD/AnimateDiff skeleton and SVD's UNet, whose stages take the same
    arguments. Returns ``[N, C0, H, W]``, ready for ``conv_norm_out``.
    """
    skips = [hidden]
    for block in down_blocks:
        hidden, block_skips = block(hidden, emb, context, num_frames)
        skips.extend(block_skips)
    if mid_block is not None:
        hidden = mid_block(hidden, emb, context, num_frames)
    for block in up_blocks:
        taken = len(block.resnets)
        block_skips, skips = skips[-taken:], skips[:-taken]
        # Upsample to the next skip's size, so sides that are not multiples of 2ⁿ round-trip.
        upsample_size = tuple(skips[-1].shape[-2:]) if skips else None
        hidden = block(hidden, block_skips, emb, context, num_frames, upsample_size)
    return hidden


def up_resnet_in_channels(
    index: int, num_layers: int, in_channels: int, prev_output_channel: int, out_channels: int
) -> int:
    """Input channels of an up stage's resnet ``index``: what arrives plus the skip concatenated to it.

    The first resnet receives the stage below's output (``prev_output_channel``), later ones this
    stage's ``out_channels``; the last one's skip comes from the down stage's input (``in_channels``),
    the others' from its outputs (``out_channels``).
    """
    arriving = prev_output_channel if index == 0 else out_channels
    skip = in_channels if index == num_layers - 1 else out_channels
    return arriving + skip


def per_block(config: Config, name: str) -> tuple:
    """The option ``name`` as a tuple with one entry per down stage."""
    value = getattr(config, name)
    return tuple(value) if isinstance(value, tuple) else (value,) * len(config.block_out_channels)


class _Stage(nn.Module):
    """Shared parts of a stage: optional per-layer image transformers and motion modules."""

    def _build_layers(
        self,
        channels: int,
        num_layers: int,
        groups: int,
        attention: CrossAttentionOptions | None,
        motion: MotionOptions | None,
    ) -> None:
        self.attentions = attention.build(channels, num_layers, groups) if attention is not None else None
        self.motion_modules = motion.build(channels, num_layers, groups) if motion is not None else None

    def _after_resnet(
        self, index: int, hidden_states: torch.Tensor, context: torch.Tensor | None, num_frames: int
    ) -> torch.Tensor:
        # layer `index`: image attention (within each frame), then motion (across frames)
        if self.attentions is not None:
            hidden_states = self.attentions[index](hidden_states, context)
        if self.motion_modules is not None:
            hidden_states = self.motion_modules[index](hidden_states, num_frames)
        return hidden_states


class UNetDownBlock(_Stage):
    """``num_layers`` resnet(+attention)(+motion) layers, then an optional stride-2 conv.

    Serves as diffusers' ``DownBlock2D`` / ``CrossAttnDownBlock2D`` and their ``*Motion`` forms.
    ``forward`` returns the output and the skip tensors the mirrored up stage consumes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        resnet: ResnetOptions,
        *,
        add_downsample: bool,
        downsample_padding: int = 1,
        attention: CrossAttentionOptions | None = None,
        motion: MotionOptions | None = None,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            resnet.build(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)
        )
        self._build_layers(out_channels, num_layers, resnet.groups, attention, motion)
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, padding=downsample_padding)]) if add_downsample else None
        )

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None, num_frames: int = 1
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for index, resnet in enumerate(self.resnets):
            hidden_states = self._after_resnet(index, resnet(hidden_states, temb), context, num_frames)
            skips.append(hidden_states)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips.append(hidden_states)
        return hidden_states, skips


class UNetMidBlock(_Stage):
    """A resnet, then ``num_layers`` × (attention, optional motion, resnet), at the lowest resolution.

    Serves as diffusers' ``UNetMidBlock2DCrossAttn`` and ``UNetMidBlockCrossAttnMotion`` (whose
    motion module sits between the attention and the resnet).
    """

    def __init__(
        self,
        channels: int,
        resnet: ResnetOptions,
        attention: CrossAttentionOptions,
        *,
        num_layers: int = 1,
        motion: MotionOptions | None = None,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnet.build(channels, channels) for _ in range(num_layers + 1))
        self._build_layers(channels, num_layers, resnet.groups, attention, motion)

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None, num_frames: int = 1
    ) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for index, resnet in enumerate(self.resnets[1:]):
            hidden_states = resnet(self._after_resnet(index, hidden_states, context, num_frames), temb)
        return hidden_states


class UNetUpBlock(_Stage):
    """Resnets on (input ⧺ skip) channels, each followed by optional attention and motion, then ×2 upsampling.

    Serves as diffusers' ``UpBlock2D`` / ``CrossAttnUpBlock2D`` and their ``*Motion`` forms.
    ``in_channels`` is the width of the deepest skip this stage takes, ``prev_output_channel`` the
    width arriving from the stage below.
    """

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        num_layers: int,
        resnet: ResnetOptions,
        *,
        add_upsample: bool,
        attention: CrossAttentionOptions | None = None,
        motion: MotionOptions | None = None,
    ) -> None:
        super().__init__()

        self.resnets = nn.ModuleList(
            resnet.build(
                up_resnet_in_channels(i, num_layers, in_channels, prev_output_channel, out_channels), out_channels
            )
            for i in range(num_layers)
        )
        self._build_layers(out_channels, num_layers, resnet.groups, attention, motion)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor | None,
        num_frames: int = 1,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``skips`` are consumed last-first (the deepest skip meets the first resnet)."""
        for index, resnet in enumerate(self.resnets):
            hidden_states = torch.cat([hidden_states, skips[-1 - index]], dim=1)
            hidden_states = self._after_resnet(index, resnet(hidden_states, temb), context, num_frames)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states
