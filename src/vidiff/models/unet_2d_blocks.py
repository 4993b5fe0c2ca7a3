"""What the Stable Diffusion UNet's stages hold, with or without AnimateDiff motion modules.

:class:`~vidiff.models.unet_2d.UNet2DConditionModel` (SD 1.5) and
:class:`~vidiff.models.unet_motion.UNetMotionModel` (AnimateDiff) both build the generic stages of
:mod:`vidiff.layers.unet_stage`. Every layer of a stage is a resnet, then an image transformer
when the stage has cross-attention (``attention`` options), then a motion module when the stage is
part of a motion UNet (``motion`` options); without ``motion`` the stage's ``motion_modules`` is
None, so the plain UNet's state dict is SD's. Attribute names (``resnets``, ``attentions``,
``motion_modules``, ``downsamplers``, ``upsamplers``) are the checkpoints'.

The plain-data :class:`UNetLayout` both UNet configs resolve into, and the config checks they
share, live here too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

from torch import nn

from ..config import Config
from ..layers.motion import MotionModule
from ..layers.resnet import ResBlock2D
from ..layers.transformer_2d import Transformer2DModel
from ..layers.unet_stage import ExtraPart, call_with_context, call_with_frames

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

    def extras(self, norm_num_groups: int) -> list[ExtraPart]:
        """What follows each resnet: image attention (within each frame), then motion (across frames)."""
        # an absent part is a None attribute: a plain SD stage has motion_modules = None
        attention, motion = (
            functools.partial(options.build, norm_num_groups=norm_num_groups) if options is not None else None
            for options in (self.attention, self.motion)
        )
        return [ExtraPart("attentions", attention, call_with_context), ExtraPart("motion_modules", motion, call_with_frames)]


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


def per_block(config: Config, name: str) -> tuple:
    """The option ``name`` as a tuple with one entry per down stage."""
    value = getattr(config, name)
    return tuple(value) if isinstance(value, tuple) else (value,) * len(config.block_out_channels)
