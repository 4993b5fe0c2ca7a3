"""Stable Diffusion 1.x/2.x ControlNets (``ControlNetModel``) and several summed (``MultiControlNetModel``).

A ControlNet (Zhang et al. 2023) is a trainable copy of a UNet's encoder half: ``conv_in``, time
embedding, down stages and mid stage, built here by the UNet's own stage builders
(:func:`~vidiff.models.unet_2d.build_down_stages`, :func:`~vidiff.models.unet_2d.build_mid_stage`).
A small convolutional encoder maps the control image (edges, depth, pose … at pixel resolution) to
the latent grid and adds it to ``conv_in``'s output. Every skip the encoder produces, and the mid
stage's output, passes through a zero-initialised 1×1 convolution; the results are the residuals the
UNet adds at its one residual seam (:func:`~vidiff.layers.unet_stage.run_stages`), given to the UNet
as ``down_block_additional_residuals`` / ``mid_block_additional_residual``.

The networks work on image batches. Video pipelines (AnimateDiff) flatten frames into the batch:
``sample`` ``[B·F, 4, h, w]``, control frames ``[B·F, 3, 8h, 8w]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ..layers.embeddings import TimestepEmbedding, batch_timesteps, sinusoidal_embedding
from ..layers.unet_stage import StageInputs
from .base import PretrainedModel
from .controlnet_config import ControlNetConfig
from .single_file import controlnet as original_controlnet
from .single_file import read_single_file
from .single_file.build import ConfigOverride, build_strict, read_config_override
from .unet_2d import UNet2DConditionModel, build_down_stages, build_mid_stage
from .unet_2d_blocks import ResnetOptions

# UNet config keys that from_unet copies (diffusers' from_unet copies the same ones that vidiff's UNet has).
_KEYS_FROM_UNET = (
    "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
    "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
    "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block",
    "use_linear_projection", "upcast_attention",
)


class ControlNetOutput(NamedTuple):
    """A ControlNet's residuals; unpacks as ``(down_block_res_samples, mid_block_res_sample)``."""

    down_block_res_samples: list[torch.Tensor]  # one per UNet skip, each shaped like that skip
    mid_block_res_sample: torch.Tensor  # shaped like the mid stage's output


def _zero_conv(channels: int) -> nn.Conv2d:
    """A 1×1 convolution starting at zero, so a fresh ControlNet leaves the UNet unchanged."""
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlNetConditioningEmbedding(nn.Module):
    """The control image's encoder: ``[N, conditioning_channels, H·s, W·s]`` → ``[N, embedding_channels, H, W]``.

    ``s = 2^(len(block_out_channels) − 1)``: after ``conv_in`` each width but the first is reached by
    a 3×3 conv at the previous width and a stride-2 3×3 conv (SiLU after every conv but the last);
    ``conv_out`` (zero-initialised) projects to the UNet's first width. Parameter names are the
    checkpoints' (``conv_in``, ``blocks.N``, ``conv_out``).
    """

    def __init__(
        self,
        conditioning_embedding_channels: int,
        conditioning_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        convs = []
        for width, next_width in zip(block_out_channels[:-1], block_out_channels[1:]):
            convs.append(nn.Conv2d(width, width, kernel_size=3, padding=1))
            convs.append(nn.Conv2d(width, next_width, kernel_size=3, padding=1, stride=2))  # halves H and W
        self.blocks = nn.ModuleList(convs)
        self.conv_out = nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        embedding = F.silu(self.conv_in(conditioning))
        for conv in self.blocks:
            embedding = F.silu(conv(embedding))
        return self.conv_out(embedding)


def check_residuals_fit(net: nn.Module, unet: nn.Module, name: str = "controlnet") -> None:
    """ValueError naming ``name`` unless the residuals of ``net`` (a ControlNet or SparseControlNet)
    fit ``unet``'s skips.

    Both are built on the SD skeleton (``down_blocks`` with ``skip_channels``, ``mid_block``,
    ``conv_in``): the SD UNet or the AnimateDiff motion UNet. Compared: latent channels, text width,
    and the width of every skip and of the mid stage.
    """

    def widths(model: nn.Module) -> tuple[int, ...]:
        # the skips' widths; the mid residual has the last one's (and needs a mid stage)
        skips = [model.conv_in.out_channels] + [c for block in model.down_blocks for c in block.skip_channels]
        return tuple(skips) if model.mid_block is not None else tuple(skips) + ("no mid stage",)

    ours = (net.conv_in.in_channels, net.config.cross_attention_dim, widths(net))
    theirs = (unet.conv_in.in_channels, unet.config.cross_attention_dim, widths(unet))
    if ours != theirs:
        raise ValueError(
            f"{name} does not fit the UNet: (latent channels, cross_attention_dim, skip widths) are "
            f"{ours} for the {type(net).__name__} but {theirs} for the UNet; use one trained for this base model"
        )


class ControlNetModel(PretrainedModel):
    """An SD 1.x/2.x ControlNet (checkpoints such as ``lllyasviel/sd-controlnet-canny``), diffusers' names.

    Build one from a config (``from_config``), load one (``from_pretrained``), or start one from a
    UNet's weights (:meth:`from_unet`). :meth:`forward` returns the residuals for
    :class:`~vidiff.models.unet_2d.UNet2DConditionModel` (or the AnimateDiff motion UNet, frames
    flattened into the batch).
    """

    config_class = ControlNetConfig
    config: ControlNetConfig

    def __init__(self, config: ControlNetConfig) -> None:
        super().__init__(config)
        layout = config.layout()
        channels = layout.block_out_channels
        time_embed_dim = 4 * channels[0]  # ControlNets have no time_embedding_dim key: always 4 × C0
        self.conv_in = nn.Conv2d(layout.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            channels[0], config.conditioning_channels, config.conditioning_embedding_out_channels
        )
        resnet = ResnetOptions(time_embed_dim, layout.norm_num_groups, layout.norm_eps)
        self.down_blocks = build_down_stages(layout, resnet)
        self.mid_block = build_mid_stage(layout, resnet)
        # One zero conv per skip the UNet takes: conv_in's output, then every down stage's skips.
        skip_channels = [channels[0]] + [c for block in self.down_blocks for c in block.skip_channels]
        self.controlnet_down_blocks = nn.ModuleList(_zero_conv(c) for c in skip_channels)
        self.controlnet_mid_block = _zero_conv(channels[-1])

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
        conditioning_channels: int = 3,
    ) -> ControlNetModel:
        """A ControlNet shaped like ``unet``'s encoder half, starting from its weights (as in training).

        The control-image encoder and the zero convs start at zero (its residuals are zero until
        trained); with ``load_weights_from_unet=False`` the copied parts stay randomly initialised.
        """
        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(f"unet must be a UNet2DConditionModel, got {type(unet).__name__}")
        unet_config = unet.config
        shared = {name: getattr(unet_config, name) for name in _KEYS_FROM_UNET}
        config = ControlNetConfig.from_diffusers(
            shared,
            attention_head_dim=unet_config.attention_head_dim,
            mid_block_type=unet_config.mid_block_type,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            conditioning_channels=conditioning_channels,
        )
        controlnet = cls(config).to(device=unet.device, dtype=unet.dtype)
        if load_weights_from_unet:
            for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
                getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict(), strict=True)
        return controlnet

    @classmethod
    def from_single_file(
        cls,
        path: str | os.PathLike,
        *,
        config: ConfigOverride = None,
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> ControlNetModel:
        """Load an original ControlNet file (``control_v11p_sd15_canny.pth``, ``control_sd15_canny.pth``
        with its ``control_model.`` prefix, or their ``.safetensors``).

        Stage widths, layers, attention stages, cross-attention width, control-image encoder widths
        and linear/conv projections are read from the tensors; the rest is the SD 1.5 ControlNet
        release config unless ``config`` (a dict, a ``config.json`` or a folder holding one) says
        otherwise, e.g. ``{"global_pool_conditions": True}`` for ``control_v11e_sd15_shuffle``.
        Pickles are read only through ``torch.load(weights_only=True)``; the load is strict.
        """
        source = os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)
        overrides = read_config_override(config)
        converted, merged = original_controlnet.convert(read_single_file(path), source, overrides)
        return build_strict(cls, merged, converted, source=source, dtype=dtype, torch_dtype=torch_dtype, device=device)

    def check_fits(self, unet: nn.Module, name: str = "controlnet") -> None:
        """ValueError naming ``name`` unless this ControlNet's residuals fit ``unet``'s skips
        (see :func:`check_residuals_fit`)."""
        check_residuals_fit(self, unet, name)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        guess_mode: bool = False,
    ) -> ControlNetOutput:
        """The residuals of this ControlNet for noisy latents and a control image.

        Args:
            sample: ``[N, in_channels, H, W]`` noisy latents (``N = B·F`` for videos, frames flattened).
            timestep: a number, a 0-dim tensor or one per image ``[N]``.
            encoder_hidden_states: ``[N, L, cross_attention_dim]`` text states, or ``[N / k, L, D]``
                shared by ``k`` consecutive images (one per video, say).
            controlnet_cond: ``[N or 1, conditioning_channels, H·s, W·s]`` control images in the
                checkpoint's value range (SD ControlNets: RGB in [0, 1]); ``s`` is
                ``config.conditioning_downscale`` (8 for SD's).
            conditioning_scale: factor on every residual.
            guess_mode: scale the residuals by a ramp from 0.1 (shallowest skip) to 1.0 (mid), spaced
                evenly in log scale, times ``conditioning_scale`` (not for ``global_pool_conditions``).

        Returns:
            :class:`ControlNetOutput`: one residual per UNet skip and the mid residual, in the
            parameters' dtype.
        """
        controlnet_cond = self._check_inputs(sample, encoder_hidden_states, controlnet_cond)
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = controlnet_cond.flip(1)
        dtype = self.conv_in.weight.dtype
        context = encoder_hidden_states.to(dtype)
        if context.shape[0] != sample.shape[0]:  # shared by consecutive images: one row per image
            context = context.repeat_interleave(sample.shape[0] // context.shape[0], dim=0)
        inputs = StageInputs(self._time_embedding(timestep, sample), context, 1)  # no layer mixes frames
        hidden = self.conv_in(sample.to(dtype)) + self.controlnet_cond_embedding(controlnet_cond.to(dtype))
        skips = [hidden]  # [N, C0, H, W], then every down stage's skips
        for block in self.down_blocks:
            hidden, block_skips = block(hidden, inputs)
            skips.extend(block_skips)
        if self.mid_block is not None:
            hidden = self.mid_block(hidden, inputs)
        down = [conv(skip) for conv, skip in zip(self.controlnet_down_blocks, skips)]
        down, mid = scale_residuals(
            down, self.controlnet_mid_block(hidden), conditioning_scale, guess_mode, self.config.global_pool_conditions
        )
        return ControlNetOutput(down, mid)

    def _time_embedding(self, timestep: torch.Tensor | float | int, sample: torch.Tensor) -> torch.Tensor:
        """``[N, 4·C0]`` embeddings of the timestep(s), in the parameters' dtype."""
        timesteps = batch_timesteps(timestep, sample.shape[0], sample.device)
        features = sinusoidal_embedding(
            timesteps, self.config.block_out_channels[0],
            flip_sin_to_cos=self.config.flip_sin_to_cos, downscale_freq_shift=self.config.freq_shift,
        )
        return self.time_embedding(features.to(self.conv_in.weight.dtype))

    def _check_inputs(
        self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor, controlnet_cond: torch.Tensor
    ) -> torch.Tensor:
        """ValueErrors naming the argument for shapes that do not fit; returns ``controlnet_cond``."""
        config = self.config
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4 or sample.shape[1] != config.in_channels:
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"sample must be [N, {config.in_channels}, H, W], got {shape}")
        batch, _, height, width = sample.shape
        shape = tuple(getattr(encoder_hidden_states, "shape", ()))
        if len(shape) != 3 or shape[0] == 0 or batch % shape[0] or shape[-1] != config.cross_attention_dim:
            raise ValueError(
                f"encoder_hidden_states must be [{batch} (or a divisor of it), L, {config.cross_attention_dim}], "
                f"got {shape if shape else type(encoder_hidden_states).__name__}"
            )
        scale = config.conditioning_downscale
        expected = (config.conditioning_channels, height * scale, width * scale)
        cond_shape = tuple(getattr(controlnet_cond, "shape", ()))
        if len(cond_shape) != 4 or cond_shape[0] not in (batch, 1) or cond_shape[1:] != expected:
            raise ValueError(
                f"controlnet_cond must be [{batch} or 1, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(the latents' sides × {scale}), got {cond_shape if cond_shape else type(controlnet_cond).__name__}"
            )
        return controlnet_cond


class MultiControlNetModel(nn.Module):
    """Several ControlNets run on the same latents, their residuals summed (diffusers' Multi-ControlNet).

    ``nets`` keeps diffusers' attribute name; pipelines may equally take a plain list of ControlNets.
    """

    def __init__(self, controlnets: Sequence[ControlNetModel]) -> None:
        super().__init__()
        if not controlnets or not all(isinstance(net, ControlNetModel) for net in controlnets):
            raise TypeError("controlnets must be a non-empty list of ControlNetModel")
        self.nets = nn.ModuleList(controlnets)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: Sequence[torch.Tensor],
        conditioning_scale: Sequence[float],
        guess_mode: bool = False,
    ) -> ControlNetOutput:
        """Each ControlNet with its own control image and scale (one each, in order); residuals summed."""
        count = len(self.nets)
        for name, value in (("controlnet_cond", controlnet_cond), ("conditioning_scale", conditioning_scale)):
            if isinstance(value, torch.Tensor) or len(value) != count:
                raise ValueError(f"{name} must be a list with one entry per ControlNet ({count})")
        down, mid = None, None
        for net, image, scale in zip(self.nets, controlnet_cond, conditioning_scale):
            net_down, net_mid = net(sample, timestep, encoder_hidden_states, image, scale, guess_mode)
            if down is None:
                down, mid = net_down, net_mid
            else:
                down = [total + residual for total, residual in zip(down, net_down)]
                mid = mid + net_mid
        return ControlNetOutput(down, mid)

    def save_pretrained(self, directory: str | os.PathLike, *, variant: str | None = None) -> None:
        """The first ControlNet into ``directory``, the k-th (k ≥ 1) into ``directory_k`` (diffusers' layout,
        which a pipeline folder's ``controlnet``, ``controlnet_1`` … follow)."""
        for index, net in enumerate(self.nets):
            net.save_pretrained(_numbered(Path(directory), index), variant=variant)

    @classmethod
    def from_checkpoint(cls, checkpoint: Any, subfolder: str, **kwargs: Any) -> MultiControlNetModel:
        """The ControlNets a saved pipeline holds in ``subfolder``, ``subfolder_1`` … (used by pipelines);
        ``kwargs`` (dtype, variant, device) go to each :meth:`ControlNetModel.from_checkpoint`."""
        def folder(index: int) -> str:  # diffusers' names: controlnet, controlnet_1, controlnet_2 …
            return subfolder if index == 0 else f"{subfolder}_{index}"

        nets: list[ControlNetModel] = []
        while checkpoint.has_file(f"{folder(len(nets))}/config.json"):
            nets.append(ControlNetModel.from_checkpoint(checkpoint, folder(len(nets)), **kwargs))
        if not nets:
            raise FileNotFoundError(f"{checkpoint.name} has no ControlNet in {subfolder}/ (config.json missing)")
        return cls(nets)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> MultiControlNetModel:
        """The ControlNets in the local folders ``directory``, ``directory_1``, ``directory_2`` … up to the
        first missing one; ``kwargs`` go to each :meth:`ControlNetModel.from_pretrained`."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"directory {str(directory)!r} is not a folder of saved ControlNets")
        nets: list[ControlNetModel] = []
        while _numbered(directory, len(nets)).is_dir():
            nets.append(ControlNetModel.from_pretrained(_numbered(directory, len(nets)), **kwargs))
        return cls(nets)


def _numbered(directory: Path, index: int) -> Path:
    """``directory`` for the first ControlNet, ``directory_<index>`` for the others."""
    return directory if index == 0 else directory.with_name(f"{directory.name}_{index}")


def scale_residuals(
    down: list[torch.Tensor], mid: torch.Tensor, conditioning_scale: float, guess_mode: bool, global_pool: bool
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A ControlNet's residuals × ``conditioning_scale`` (or guess mode's ramp), then the optional
    global pooling to ``[N, C, 1, 1]`` (one value per channel, broadcast over the skip)."""
    if guess_mode and not global_pool:
        # 10^-1 … 10^0 over the skips then the mid residual: deeper features count more, since
        # without a prompt's guidance the shallow ones would dominate (ControlNet's "guess mode")
        ramp = torch.logspace(-1, 0, len(down) + 1, device=mid.device) * conditioning_scale
        down = [residual * factor for residual, factor in zip(down, ramp)]
        mid = mid * ramp[-1]
    else:
        down = [residual * conditioning_scale for residual in down]
        mid = mid * conditioning_scale
    if global_pool:
        down = [residual.mean(dim=(2, 3), keepdim=True) for residual in down]
        mid = mid.mean(dim=(2, 3), keepdim=True)
    return down, mid
