"""AnimateDiff SparseCtrl's ``SparseControlNetModel``: a ControlNet with motion modules, for sparse key frames.

SparseCtrl (Guo et al. 2023, arXiv 2311.16933) steers an AnimateDiff video from a few conditioned
frames (scribbles, or RGB images encoded by the VAE) plus a per-frame mask saying which frames carry
a condition. The network is the encoder half of the motion UNet: ``conv_in``, the time embedding,
the down stages (resnets, image transformers, motion modules) and an image-only mid stage, with a
zero-initialised 1×1 conv per skip. Unlike an SD ControlNet it never sees the noisy latents: its
input is zeros plus the embedded condition, so only the condition, the timestep and the text matter.

Its outputs are residuals on image batches ``[(B·F), C, h, w]``, one per skip of the motion UNet
and one for its mid stage: what :func:`vidiff.layers.unet_stage.run_stages` adds at its residual
seam. Parameter names are diffusers', so its checkpoints load strictly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .. import loading
from ..layers.embeddings import TimestepEmbedding, batch_timesteps, sinusoidal_embedding
from ..layers.frames import video_to_images
from ..layers.unet_stage import StageInputs
from .base import PretrainedModel
from .controlnet import scale_residuals
from .controlnet_sparsectrl_config import SparseControlNetConfig
from .unet_2d import UNet2DConditionModel, build_down_stages, build_mid_stage
from .unet_2d_blocks import ResnetOptions


class SparseControlNetConditioningEmbedding(nn.Module):
    """Scribble frames ``[N, C_cond, H, W]`` → ``[N, C0, H/8, W/8]``: a SiLU conv stack that halves the
    size at each width change, then a zero-initialised ``conv_out`` (so a fresh model adds nothing).

    Unlike the SD ControlNet's embedding, every block is a bare conv (``blocks.2k`` keeps the width,
    ``blocks.2k+1`` changes it with stride 2) and ``conv_out`` has no activation after it.
    """

    def __init__(self, out_channels: int, conditioning_channels: int, block_out_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for width, next_width in zip(block_out_channels, block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(width, width, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(width, next_width, kernel_size=3, padding=1, stride=2))
        self.conv_out = _zeroed(nn.Conv2d(block_out_channels[-1], out_channels, kernel_size=3, padding=1))

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            hidden = F.silu(block(hidden))
        return self.conv_out(hidden)


class SparseControlNetOutput(NamedTuple):
    """Residuals for the motion UNet's seam, on image batches ``[(B·F), C, h, w]``: one per skip
    (``conv_in``'s, then every down stage's) and one for the mid stage. A tuple, so
    ``down, mid = controlnet(...)`` works as diffusers' ``return_dict=False`` does."""

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


def _zeroed(module: nn.Module) -> nn.Module:
    # ControlNet's zero convs: a fresh model's residuals are exactly zero. On `meta` this is a no-op.
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class SparseControlNetModel(PretrainedModel):
    """SparseCtrl's ControlNet for AnimateDiff (RGB and scribble checkpoints), in diffusers' layout.

    Build one with ``from_pretrained`` (e.g. ``guoyww/animatediff-sparsectrl-scribble``) or from an
    SD UNet with :meth:`from_unet`. ``forward`` takes vidiff's ``[B, C, F, H, W]`` video layout and
    returns the residuals :class:`~vidiff.models.unet_motion.UNetMotionModel`'s stages add.
    """

    config_class = SparseControlNetConfig
    config: SparseControlNetConfig

    def __init__(self, config: SparseControlNetConfig) -> None:
        super().__init__(config)
        channels = config.block_out_channels
        time_embed_dim = 4 * channels[0]
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        if config.use_simplified_condition_embedding:  # RGB: the condition is already latents
            embedding = _zeroed(nn.Conv2d(config.condition_channels_in, channels[0], kernel_size=3, padding=1))
        else:
            embedding = SparseControlNetConditioningEmbedding(
                channels[0], config.condition_channels_in, config.conditioning_embedding_out_channels
            )
        self.controlnet_cond_embedding = embedding
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)
        layout = config.layout()
        resnet = ResnetOptions(time_embed_dim, config.norm_num_groups, config.norm_eps)
        self.down_blocks = build_down_stages(layout, resnet)  # the motion UNet's, with SparseCtrl's motion modules
        # One zero 1×1 conv per skip, in the order the skips are made.
        skip_channels = [channels[0]] + [c for block in self.down_blocks for c in block.skip_channels]
        self.controlnet_down_blocks = nn.ModuleList(_zeroed(nn.Conv2d(c, c, kernel_size=1)) for c in skip_channels)
        self.controlnet_mid_block = _zeroed(nn.Conv2d(channels[-1], channels[-1], kernel_size=1))
        self.mid_block = build_mid_stage(layout, resnet)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        conditioning_mask: torch.Tensor | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> SparseControlNetOutput:
        """Residuals for the motion UNet from the conditioned frames.

        Args:
            sample: ``[B, in_channels, F, h, w]`` noisy latents (vidiff's layout). Only its shape is
                used: SparseCtrl replaces the latents by zeros (diffusers does the same).
            timestep: the discrete timestep as a number, a 0-dim tensor or one per video ``[B]``.
            encoder_hidden_states: text states per video ``[B, L, D]`` or per frame ``[B·F, L, D]``.
            controlnet_cond: ``[B, conditioning_channels, F, H_c, W_c]``: latents of RGB frames
                (``H_c = h``) or scribbles at image size (``H_c = 8h``); zeros where a frame has no condition.
            conditioning_scale: factor on every residual.
            conditioning_mask: ``[B, 1, F, H_c, W_c]``, 1 on conditioned frames; required when the
                config has ``concat_conditioning_mask``.
            guess_mode: scale the residuals from 0.1 (first skip) up to 1 (mid stage), logarithmically.
            return_dict: accepted for diffusers compatibility; the result is a named tuple either way.

        Returns:
            :class:`SparseControlNetOutput` with residuals on ``[(B·F), C, h', w']`` image batches.
        """
        batch, num_frames, height, width = self._check_sample(sample)
        dtype = self.conv_in.weight.dtype
        cond = self._embed_condition(controlnet_cond, conditioning_mask, (batch, num_frames, height, width))
        # conv_in of all-zero latents is its bias at every pixel (exactly: 0·w sums to 0).
        hidden = self.conv_in.bias.to(dtype)[None, :, None, None] + cond  # [(B·F), C0, h, w]
        emb = self._time_embedding(timestep, batch).repeat_interleave(num_frames, dim=0)  # [(B·F), D]
        self._check_context(encoder_hidden_states, batch, num_frames)
        inputs = StageInputs(emb, encoder_hidden_states.to(dtype), num_frames)
        skips = [hidden]
        for block in self.down_blocks:
            hidden, block_skips = block(hidden, inputs)
            skips.extend(block_skips)
        hidden = self.mid_block(hidden, inputs)
        down = [conv(skip) for conv, skip in zip(self.controlnet_down_blocks, skips)]
        down, mid = scale_residuals(
            down, self.controlnet_mid_block(hidden), conditioning_scale, guess_mode, self.config.global_pool_conditions
        )
        return SparseControlNetOutput(tuple(down), mid)

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
        conditioning_channels: int = 3,
    ) -> SparseControlNetModel:
        """A SparseControlNet with an SD UNet's sizes and, with ``load_weights_from_unet``, copies of its
        ``conv_in``, time embedding, down stages and mid stage (diffusers' ``from_unet``).

        The motion modules and the condition embedding start random, the residual convs at zero; the
        motion options are the config defaults, as in diffusers. A copy in the UNet's dtype and device.
        Unlike diffusers, the UNet's config is left unchanged, and a UNet whose weights cannot all be
        copied (LCM's ``time_cond_proj_dim``, another ``conv_in_kernel``) is a ValueError, not a partial copy.
        """
        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(f"unet must be a vidiff UNet2DConditionModel, got {type(unet).__name__}")
        unet_config = unet.config
        for key, assumed in (("conv_in_kernel", 3), ("time_embedding_dim", None), ("time_cond_proj_dim", None),
                             ("mid_block_type", "UNetMidBlock2DCrossAttn")):
            if unet_config[key] != assumed:
                raise ValueError(f"the SparseControlNet assumes the UNet's {key}={assumed!r}, got {unet_config[key]!r}")
        copied = ("in_channels", "flip_sin_to_cos", "freq_shift", "only_cross_attention", "block_out_channels",
                  "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups",
                  "norm_eps", "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim",
                  "num_attention_heads", "use_linear_projection", "upcast_attention", "resnet_time_scale_shift")
        raw = unet_config.to_diffusers()
        config = SparseControlNetConfig.from_diffusers(
            {key: raw[key] for key in copied},
            down_block_types=tuple(
                "CrossAttnDownBlockMotion" if "CrossAttn" in t else "DownBlockMotion" for t in raw["down_block_types"]
            ),
            conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
        )
        model = cls(config).to(device=unet.device, dtype=unet.dtype)
        if load_weights_from_unet:
            source = unet.state_dict()
            state = dict(model.state_dict())
            shared = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
            taken = {key: value for key, value in source.items() if key.startswith(shared)}
            # what the SD UNet lacks is exactly the motion modules (kept random)
            state.update({key: value.detach().clone() for key, value in taken.items()})
            loading.load_state_dict_strict(model, state, dtype=unet.dtype, device=unet.device)
        return model.train(unet.training)

    def _check_sample(self, sample: torch.Tensor) -> tuple[int, int, int, int]:
        in_channels = self.config.in_channels
        if not isinstance(sample, torch.Tensor) or sample.ndim != 5 or sample.shape[1] != in_channels:
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"sample must be [B, {in_channels}, F, H, W] (vidiff's layout), got {shape}")
        batch, _, num_frames, height, width = sample.shape
        return batch, num_frames, height, width

    def _embed_condition(
        self, controlnet_cond: torch.Tensor, conditioning_mask: torch.Tensor | None, sizes: tuple[int, int, int, int]
    ) -> torch.Tensor:
        """``[B, C_cond, F, H_c, W_c]`` (+ mask) → ``[(B·F), C0, h, w]``, checked against the latents' sizes."""
        config = self.config
        batch, num_frames, height, width = sizes
        if not isinstance(controlnet_cond, torch.Tensor) or controlnet_cond.ndim != 5 or tuple(
            controlnet_cond.shape[:3]
        ) != (batch, config.conditioning_channels, num_frames):
            shape = tuple(getattr(controlnet_cond, "shape", ())) or type(controlnet_cond).__name__
            raise ValueError(
                f"controlnet_cond must be [{batch}, {config.conditioning_channels}, {num_frames}, H, W] "
                f"(batch, conditioning_channels, frames of sample), got {shape}"
            )
        if config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        if config.concat_conditioning_mask:
            expected = (batch, 1, num_frames, *controlnet_cond.shape[3:])
            if not isinstance(conditioning_mask, torch.Tensor) or tuple(conditioning_mask.shape) != expected:
                shape = tuple(conditioning_mask.shape) if isinstance(conditioning_mask, torch.Tensor) else None
                raise ValueError(
                    f"conditioning_mask must be {list(expected)} (this model concatenates it to the condition), "
                    f"got {shape}"
                )
            controlnet_cond = torch.cat([controlnet_cond, conditioning_mask.to(controlnet_cond.dtype)], dim=1)
        dtype = self.conv_in.weight.dtype
        embedded = self.controlnet_cond_embedding(video_to_images(controlnet_cond.to(dtype)))  # [(B·F), C0, h, w]
        if tuple(embedded.shape[-2:]) != (height, width):
            # the scribble embedding halves the size once per width change
            widths = () if config.use_simplified_condition_embedding else config.conditioning_embedding_out_channels
            scale = 2 ** max(len(widths) - 1, 0)
            factor = "the latents'" if scale == 1 else f"{scale} × the latents'"
            raise ValueError(
                f"controlnet_cond's height and width {tuple(controlnet_cond.shape[-2:])} do not fit latents of "
                f"{(height, width)}: this model needs {factor} size"
            )
        return embedded

    def _time_embedding(self, timestep: torch.Tensor | float | int, batch: int) -> torch.Tensor:
        """``[batch, 4·C0]`` embedding of one timestep per video."""
        timesteps = batch_timesteps(timestep, batch, self.conv_in.weight.device)
        features = sinusoidal_embedding(
            timesteps, self.config.block_out_channels[0],
            flip_sin_to_cos=self.config.flip_sin_to_cos, downscale_freq_shift=self.config.freq_shift,
        )
        return self.time_embedding(features.to(self.conv_in.weight.dtype))

    def _check_context(self, encoder_hidden_states: torch.Tensor, batch: int, num_frames: int) -> None:
        shape = tuple(getattr(encoder_hidden_states, "shape", ()))
        if not isinstance(encoder_hidden_states, torch.Tensor) or len(shape) != 3 or shape[0] not in (
            batch, batch * num_frames
        ):
            raise ValueError(
                f"encoder_hidden_states must be [{batch} or {batch * num_frames}, L, D] (per video or per frame), "
                f"got {shape or type(encoder_hidden_states).__name__}"
            )
