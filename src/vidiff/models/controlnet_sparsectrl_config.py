"""The typed config of :class:`~vidiff.models.controlnet_sparsectrl.SparseControlNetModel` and the stages it describes.

diffusers' keys and defaults (its ``SparseControlNetModel.__init__`` arguments); the down stages are
the motion UNet's (resnets, image transformers, motion modules) with SparseCtrl's single-attention
motion modules, the mid stage an image-only SD mid block.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from ..layers.motion import MotionModule
from .unet_2d_blocks import (
    CrossAttentionOptions,
    MotionOptions,
    PerBlock,
    PerLayer,
    StageLayout,
    UNetLayout,
    per_block,
    per_layer,
)

# Block type names of the config → whether the stage has image transformers.
_DOWN_BLOCK_ATTENTION = {"CrossAttnDownBlockMotion": True, "DownBlockMotion": False}
_PER_BLOCK_OPTIONS = (
    "only_cross_attention", "cross_attention_dim", "transformer_layers_per_block",
    "temporal_transformer_layers_per_block", "attention_head_dim", "num_attention_heads",
    "motion_num_attention_heads",
)
# diffusers options vidiff does not implement → the values that mean "not used".
_UNSUPPORTED_UNLESS = {"act_fn": ("silu", "swish"), "resnet_time_scale_shift": ("default",)}


@dataclasses.dataclass(frozen=True)
class SparseControlNetConfig(Config):
    """Hyper-parameters of :class:`SparseControlNetModel`: diffusers' keys and defaults.

    ``conditioning_channels`` is what the condition has: 4 for VAE latents of RGB frames
    (``use_simplified_condition_embedding=True``: one conv), 3 for scribbles at image resolution
    (a small conv stack of ``conditioning_embedding_out_channels`` that downsamples by 8). With
    ``concat_conditioning_mask`` a mask channel is appended, so the first conv takes one more.
    ``attention_head_dim`` is the legacy name of the image transformers' head count (used when
    ``num_attention_heads`` is None). ``downsample_padding`` is accepted but, as in diffusers, the
    down stages always pad by 1.
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "in_channels", "conditioning_channels", "block_out_channels", "norm_num_groups",
                 "cross_attention_dim", "attention_head_dim", "num_attention_heads",
                 "conditioning_embedding_out_channels", "motion_num_attention_heads"),
        **ranges(COUNT, "layers_per_block", "transformer_layers_per_block", "transformer_layers_per_mid_block",
                 "temporal_transformer_layers_per_block"),
        **ranges(SIZE, "motion_max_seq_length"),
    }

    in_channels: int = 4
    conditioning_channels: int = 4
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlockMotion",) * 3 + ("DownBlockMotion",)
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: PerBlock = 768
    transformer_layers_per_block: int | tuple[PerLayer, ...] = 1
    transformer_layers_per_mid_block: PerLayer | None = None
    temporal_transformer_layers_per_block: int | tuple[PerLayer, ...] = 1
    attention_head_dim: PerBlock = 8
    num_attention_heads: PerBlock | None = None
    use_linear_projection: bool = False
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256)
    global_pool_conditions: bool = False
    controlnet_conditioning_channel_order: str = "rgb"
    motion_max_seq_length: int = 32
    motion_num_attention_heads: PerBlock = 8
    concat_conditioning_mask: bool = True
    use_simplified_condition_embedding: bool = True

    def __post_init__(self) -> None:
        for name, allowed in _UNSUPPORTED_UNLESS.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; supported: {list(allowed)}")
        unknown = [t for t in self.down_block_types if t not in _DOWN_BLOCK_ATTENTION]
        if unknown:
            raise ValueError(
                f"down_block_types has unsupported entries {unknown}; valid: {sorted(_DOWN_BLOCK_ATTENTION)}"
            )
        stages = len(self.down_block_types)
        if len(self.block_out_channels) != stages:
            raise ValueError(
                f"block_out_channels must have one entry per down block ({stages}), got {self.block_out_channels}"
            )
        for name in _PER_BLOCK_OPTIONS:
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != stages:
                raise ValueError(f"{name} must be one value or have one entry per block ({stages}), got {value}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every block_out_channels entry")
        if self.controlnet_conditioning_channel_order not in ("rgb", "bgr"):
            raise ValueError(
                "controlnet_conditioning_channel_order must be 'rgb' or 'bgr', "
                f"got {self.controlnet_conditioning_channel_order!r}"
            )
        if not self.use_simplified_condition_embedding and not self.conditioning_embedding_out_channels:
            raise ValueError(
                "conditioning_embedding_out_channels must list the embedding's widths when "
                "use_simplified_condition_embedding=False"
            )

    @property
    def condition_channels_in(self) -> int:
        """Channels the condition embedding takes: the condition's, plus one for the mask if concatenated."""
        return self.conditioning_channels + int(self.concat_conditioning_mask)

    def layout(self) -> UNetLayout:
        """The encoder half of a motion UNet: down stages with motion modules, an image-only mid stage.

        ``downsample_padding`` is left at 1 and no up stages are listed (a ControlNet has none).
        """
        return UNetLayout(
            self.in_channels, self.in_channels, self.block_out_channels, self._down_layouts(), self._mid_layout(), (),
            norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps,
            mid_block_scale_factor=self.mid_block_scale_factor,
            flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift,
        )

    def _heads(self) -> tuple[int, ...]:
        # diffusers: num_attention_heads, else the legacy attention_head_dim, is the head count
        return per_block(self, "num_attention_heads" if self.num_attention_heads is not None else "attention_head_dim")

    def _down_layouts(self) -> tuple[StageLayout, ...]:
        """Each down stage: resnets, image transformers if cross-attention, and motion modules."""
        heads = self._heads()
        cross, depth, only_cross, motion_heads, temporal = (
            per_block(self, name)
            for name in ("cross_attention_dim", "transformer_layers_per_block", "only_cross_attention",
                         "motion_num_attention_heads", "temporal_transformer_layers_per_block")
        )
        return tuple(
            StageLayout(
                self.layers_per_block,
                CrossAttentionOptions(heads[i], cross[i], depth[i], self.use_linear_projection, only_cross[i],
                                      self.upcast_attention)
                if _DOWN_BLOCK_ATTENTION[block_type] else None,
                SingleSelfAttentionMotion(motion_heads[i], temporal[i], self.motion_max_seq_length),
            )
            for i, block_type in enumerate(self.down_block_types)
        )

    def _mid_layout(self) -> StageLayout:
        """One image transformer between two resnets; no motion module (diffusers' ``UNetMidBlock2DCrossAttn``)."""
        depth = self.transformer_layers_per_mid_block
        if depth is None:
            # diffusers: the last down stage's depth when it is one number, else 1
            last = per_block(self, "transformer_layers_per_block")[-1]
            depth = last if isinstance(last, int) else 1
        attention = CrossAttentionOptions(self._heads()[-1], per_block(self, "cross_attention_dim")[-1], depth,
                                          self.use_linear_projection, False, self.upcast_attention)
        return StageLayout(1, attention)


@dataclasses.dataclass(frozen=True)
class SingleSelfAttentionMotion(MotionOptions):
    """SparseCtrl's motion modules: like AnimateDiff's but each block has one self-attention (``attn1``)
    and no second one (diffusers builds them with ``temporal_double_self_attention=False``)."""

    def build(self, channels: int, num_layers: int, norm_num_groups: int) -> nn.ModuleList:
        depths = per_layer(self.transformer_layers, num_layers, "temporal_transformer_layers_per_block")
        return nn.ModuleList(
            MotionModule(channels, self.num_attention_heads, num_layers=depth, norm_num_groups=norm_num_groups,
                         max_seq_length=self.max_seq_length, double_self_attention=False)
            for depth in depths
        )
