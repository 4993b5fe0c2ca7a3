"""AnimateDiff's ``MotionAdapter``: the motion modules of a UNet, stored apart from the UNet.

The adapter is a weight container with no forward of its own. Its modules sit where
:class:`~vidiff.models.unet_motion.UNetMotionModel` expects them — ``down_blocks.i.motion_modules.j``,
``mid_block.motion_modules.j`` and ``up_blocks.i.motion_modules.j`` — so
``UNetMotionModel.from_unet2d(unet, motion_adapter)`` copies them over block by block.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from ..layers.motion import MotionModule
from .base import PretrainedModel
from .single_file import motion_modules as original_motion_modules
from .single_file import read_single_file
from .single_file.build import ConfigOverride, build_strict, read_config_override

PerLayer = int | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class MotionAdapterConfig(Config):
    """Hyper-parameters of :class:`MotionAdapter`; defaults are guoyww/animatediff-motion-adapter-v1-5-2's.

    Options named ``motion_*_per_block`` and ``motion_num_attention_heads`` take one int for every
    stage or a tuple with one entry per stage (of ``block_out_channels``). A stage's
    ``motion_transformer_layers_per_block`` entry may itself be a tuple, one per motion module.
    Published configs also carry ``motion_activation_fn``, ``motion_attention_bias`` and
    ``motion_cross_attention_dim``; diffusers ignores them (always geglu, no bias, no context), so
    they are kept in :attr:`extra` only.
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "block_out_channels", "motion_num_attention_heads", "motion_norm_num_groups",
                 "conv_in_channels"),
        **ranges(COUNT, "motion_layers_per_block", "motion_transformer_layers_per_block",
                 "motion_mid_block_layers_per_block", "motion_transformer_layers_per_mid_block"),
        **ranges(SIZE, "motion_max_seq_length"),
    }

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    motion_layers_per_block: PerLayer = 2
    motion_transformer_layers_per_block: int | tuple[PerLayer, ...] = 1
    motion_mid_block_layers_per_block: int = 1
    motion_transformer_layers_per_mid_block: PerLayer = 1
    motion_num_attention_heads: PerLayer = 8
    motion_norm_num_groups: int = 32
    motion_max_seq_length: int = 32
    use_motion_mid_block: bool = True
    conv_in_channels: int | None = None

    def __post_init__(self) -> None:
        stages = len(self.block_out_channels)
        if stages == 0:
            raise ValueError("block_out_channels must name at least one stage")
        for name in ("motion_layers_per_block", "motion_transformer_layers_per_block", "motion_num_attention_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) and len(value) != stages:
                raise ValueError(
                    f"{name} must be an int or have one entry per block_out_channels stage ({stages}), got {value}"
                )
        groups = self.motion_norm_num_groups
        bad = [c for c in self.block_out_channels if groups < 1 or c % groups]
        if bad:
            raise ValueError(
                f"motion_norm_num_groups={groups} must divide every entry of block_out_channels; "
                f"it does not divide {bad}"
            )
        mid = self.motion_transformer_layers_per_mid_block
        if not isinstance(mid, int) and len(mid) != self.motion_mid_block_layers_per_block:
            raise ValueError(
                "motion_transformer_layers_per_mid_block must be an int or have "
                f"motion_mid_block_layers_per_block={self.motion_mid_block_layers_per_block} entries, got {mid}"
            )

    def per_block(self, name: str) -> tuple:
        """The per-stage option ``name`` as a tuple with one entry per down stage."""
        value = getattr(self, name)
        return (value,) * len(self.block_out_channels) if isinstance(value, int) else tuple(value)

    def motion_module_kwargs(self, stage: int) -> dict:
        """Keyword arguments of :class:`MotionModule` for down stage ``stage`` (up stages mirror them).

        Everything except ``num_layers``, which depends on the module's place in the stage.
        """
        return dict(
            in_channels=self.block_out_channels[stage],
            num_attention_heads=self.per_block("motion_num_attention_heads")[stage],
            norm_num_groups=self.motion_norm_num_groups,
            max_seq_length=self.motion_max_seq_length,
        )


class MotionModuleGroup(nn.Module):
    """The motion modules of one UNet stage, held under the checkpoint's name ``motion_modules``."""

    def __init__(self, count: int, transformer_layers: PerLayer, **module_kwargs) -> None:
        super().__init__()
        if isinstance(transformer_layers, int):
            transformer_layers = (transformer_layers,) * count
        if len(transformer_layers) != count:
            raise ValueError(
                f"a stage with {count} motion modules got {len(transformer_layers)} transformer-layer counts "
                f"{tuple(transformer_layers)}; give an int or one count per module"
            )
        self.motion_modules = nn.ModuleList(
            MotionModule(num_layers=layers, **module_kwargs) for layers in transformer_layers
        )


class MotionAdapter(PretrainedModel):
    """The AnimateDiff motion modules for an SD 1.5 UNet (a weight container: it has no forward).

    Down stage ``i`` holds ``motion_layers_per_block[i]`` modules (one after each resnet/attention
    pair), up stage ``i`` — counted from the bottom, with channels ``block_out_channels[::-1][i]`` —
    one more (up stages have an extra resnet), and the mid block ``motion_mid_block_layers_per_block``
    when ``use_motion_mid_block``. ``conv_in`` exists only when ``conv_in_channels`` is set
    (checkpoints that also replace the UNet's input convolution). Load with
    ``MotionAdapter.from_pretrained(...)`` and pass it to ``UNetMotionModel.from_unet2d``.
    """

    config_class = MotionAdapterConfig
    config: MotionAdapterConfig

    def __init__(self, config: MotionAdapterConfig) -> None:
        super().__init__(config)
        channels = config.block_out_channels
        stages = range(len(channels))
        self.conv_in = (
            nn.Conv2d(config.conv_in_channels, channels[0], kernel_size=3, padding=1)
            if config.conv_in_channels
            else None
        )
        layers = config.per_block("motion_layers_per_block")
        transformer_layers = config.per_block("motion_transformer_layers_per_block")
        self.down_blocks = nn.ModuleList(
            MotionModuleGroup(layers[i], transformer_layers[i], **config.motion_module_kwargs(i)) for i in stages
        )
        self.mid_block = (
            MotionModuleGroup(
                config.motion_mid_block_layers_per_block,
                config.motion_transformer_layers_per_mid_block,
                **config.motion_module_kwargs(len(channels) - 1),
            )
            if config.use_motion_mid_block
            else None
        )
        self.up_blocks = nn.ModuleList(
            MotionModuleGroup(layers[i] + 1, transformer_layers[i], **config.motion_module_kwargs(i))
            for i in reversed(stages)
        )

    @classmethod
    def from_single_file(
        cls,
        path: str | os.PathLike,
        *,
        config: ConfigOverride = None,
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> MotionAdapter:
        """Load an original AnimateDiff motion-module file (``mm_sd_v15.ckpt``, ``mm_sd_v15_v2.ckpt``,
        ``v3_sd15_mm.ckpt``, or their ``.safetensors``), or a diffusers adapter saved as one file.

        The version (v1, v2, v3) and the structure (stage widths, modules per stage, mid block,
        position-table length) are read from the tensors; attention heads and group-norm groups,
        which no tensor shows, come from the release config (8 and 32) unless ``config`` (a dict, a
        ``config.json`` or a folder holding one) gives them; ``config`` overrides everything else too.
        Pickles are read only through ``torch.load(weights_only=True)``; the load is strict. ``dtype``
        (alias ``torch_dtype``, default float32) and ``device`` (default CPU) as in :meth:`from_pretrained`.
        """
        source = os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)
        overrides = read_config_override(config)
        converted, merged = original_motion_modules.convert(read_single_file(path), source, overrides)
        return build_strict(cls, merged, converted, source=source, dtype=dtype, torch_dtype=torch_dtype, device=device)

    def forward(self, *args, **kwargs) -> None:
        """Not callable: the adapter only stores weights for ``UNetMotionModel.from_unet2d``."""
        raise NotImplementedError(
            "MotionAdapter holds motion-module weights and has no forward; build a denoiser with "
            "UNetMotionModel.from_unet2d(unet, motion_adapter) and call that"
        )
