"""The Stable Video Diffusion denoiser: ``UNetSpatioTemporalConditionModel``.

A 2-D UNet whose every resnet is followed by a temporal resnet and whose transformers alternate
spatial and temporal attention. It is conditioned on the noise level (SVD feeds the continuous
``0.25·ln σ``), on the CLIP image embedding of the conditioning frame (cross-attention context)
and on three micro-conditions ``added_time_ids = (fps − 1, motion_bucket_id, noise_aug_strength)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from ..layers.embeddings import TimestepEmbedding, batch_timesteps, sinusoidal_embedding
from ..layers.frames import images_to_video, video_to_images
from ..layers.unet_stage import DownStage, MidStage, UpStage, run_stages
from .base import PretrainedModel
from .unet_svd_blocks import spatiotemporal_resnet, video_transformers

# Block type names of the config → whether the stage has video transformers.
_DOWN_BLOCK_ATTENTION = {"CrossAttnDownBlockSpatioTemporal": True, "DownBlockSpatioTemporal": False}
_UP_BLOCK_ATTENTION = {"CrossAttnUpBlockSpatioTemporal": True, "UpBlockSpatioTemporal": False}

PerBlock = int | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class UNetSpatioTemporalConditionConfig(Config):
    """Hyper-parameters of :class:`UNetSpatioTemporalConditionModel`; defaults are SVD-XT's released values.

    ``num_attention_heads``, ``cross_attention_dim``, ``layers_per_block`` and
    ``transformer_layers_per_block`` take one int for every stage or a tuple with one entry per stage.
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "in_channels", "out_channels", "block_out_channels", "addition_time_embed_dim",
                 "projection_class_embeddings_input_dim", "cross_attention_dim", "num_attention_heads"),
        **ranges(COUNT, "layers_per_block", "transformer_layers_per_block"),
        **ranges(SIZE, "sample_size", "num_frames"),
    }

    sample_size: int | None = 96
    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    )
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    layers_per_block: PerBlock = 2
    cross_attention_dim: PerBlock = 1024
    transformer_layers_per_block: int | tuple[int | tuple[int, ...], ...] = 1
    num_attention_heads: PerBlock = (5, 10, 20, 20)
    num_frames: int = 25

    def __post_init__(self) -> None:
        stages = len(self.down_block_types)
        for name, valid in (("down_block_types", _DOWN_BLOCK_ATTENTION), ("up_block_types", _UP_BLOCK_ATTENTION)):
            unknown = [t for t in getattr(self, name) if t not in valid]
            if unknown:
                raise ValueError(f"{name} has unsupported entries {unknown}; valid: {sorted(valid)}")
        if len(self.up_block_types) != stages or len(self.block_out_channels) != stages:
            raise ValueError(
                f"down_block_types, up_block_types and block_out_channels must have equal lengths, got "
                f"{stages}, {len(self.up_block_types)} and {len(self.block_out_channels)}"
            )
        for name in ("num_attention_heads", "cross_attention_dim", "layers_per_block", "transformer_layers_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) and len(value) != stages:
                raise ValueError(f"{name} must be an int or have one entry per block ({stages}), got {value}")
        if self.projection_class_embeddings_input_dim % self.addition_time_embed_dim:
            raise ValueError(
                "projection_class_embeddings_input_dim must be a multiple of addition_time_embed_dim, got "
                f"{self.projection_class_embeddings_input_dim} and {self.addition_time_embed_dim}"
            )

    def per_block(self, name: str) -> tuple:
        """The option ``name`` as a tuple with one entry per down stage."""
        value = getattr(self, name)
        return (value,) * len(self.down_block_types) if isinstance(value, int) else tuple(value)

    @property
    def num_added_time_ids(self) -> int:
        """How many micro-conditions ``added_time_ids`` carries per video (3 for SVD)."""
        return self.projection_class_embeddings_input_dim // self.addition_time_embed_dim


class UNetSpatioTemporalConditionModel(PretrainedModel):
    """SVD's video UNet; takes and returns vidiff's ``[B, C, F, H, W]`` layout."""

    config_class = UNetSpatioTemporalConditionConfig
    config: UNetSpatioTemporalConditionConfig

    def __init__(self, config: UNetSpatioTemporalConditionConfig) -> None:
        super().__init__(config)
        channels = config.block_out_channels
        time_embed_dim = channels[0] * 4
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)
        self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, time_embed_dim)
        self.down_blocks = self._build_down_blocks(time_embed_dim)
        heads, cross, transformer_layers = (
            config.per_block(n) for n in ("num_attention_heads", "cross_attention_dim", "transformer_layers_per_block")
        )
        self.mid_block = MidStage(
            channels[-1],
            spatiotemporal_resnet(time_embed_dim, eps=1e-5),
            [video_transformers(heads[-1], transformer_layers[-1], cross[-1])],
        )
        self.up_blocks = self._build_up_blocks(time_embed_dim)
        self.conv_norm_out = nn.GroupNorm(32, channels[0], eps=1e-5)
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, kernel_size=3, padding=1)

    def _build_down_blocks(self, temb_channels: int) -> nn.ModuleList:
        config = self.config
        channels = config.block_out_channels
        heads, cross, layers, transformer_layers = (
            config.per_block(n)
            for n in ("num_attention_heads", "cross_attention_dim", "layers_per_block", "transformer_layers_per_block")
        )
        blocks = nn.ModuleList()
        for i, block_type in enumerate(config.down_block_types):
            with_attention = _DOWN_BLOCK_ATTENTION[block_type]
            blocks.append(
                DownStage(
                    channels[max(i - 1, 0)],
                    channels[i],
                    layers[i],
                    # as released: eps 1e-6 in the attention stages, 1e-5 in the plain one
                    spatiotemporal_resnet(temb_channels, eps=1e-6 if with_attention else 1e-5),
                    [video_transformers(heads[i], transformer_layers[i], cross[i], with_attention)],
                    add_downsample=i < len(channels) - 1,
                )
            )
        return blocks

    def _build_up_blocks(self, temb_channels: int) -> nn.ModuleList:
        config = self.config
        channels = config.block_out_channels[::-1]
        heads, cross, layers, transformer_layers = (
            config.per_block(n)[::-1]
            for n in ("num_attention_heads", "cross_attention_dim", "layers_per_block", "transformer_layers_per_block")
        )
        blocks = nn.ModuleList()
        for i, block_type in enumerate(config.up_block_types):
            with_attention = _UP_BLOCK_ATTENTION[block_type]
            blocks.append(
                UpStage(
                    channels[min(i + 1, len(channels) - 1)],
                    channels[max(i - 1, 0)],
                    channels[i],
                    layers[i] + 1,
                    spatiotemporal_resnet(temb_channels, eps=1e-6),
                    [video_transformers(heads[i], transformer_layers[i], cross[i], with_attention)],
                    add_upsample=i < len(channels) - 1,
                )
            )
        return blocks

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the network output for noisy video latents.

        Args:
            sample: ``[B, in_channels, F, H, W]`` noisy latents (SVD: 4 noise + 4 image-latent channels).
            timestep: a number, a 0-dim tensor or one value per video ``[B]`` (SVD: ``0.25·ln σ``).
            encoder_hidden_states: ``[B, L, cross_attention_dim]`` context; SVD's is the CLIP image
                embedding with ``L = 1``. Every frame attends to its video's context.
            added_time_ids: ``[B, 3]`` micro-conditions ``(fps − 1, motion_bucket_id, noise_aug_strength)``.

        Returns:
            ``[B, out_channels, F, H, W]`` in the parameters' dtype.
        """
        batch, num_frames = self._check_inputs(sample, encoder_hidden_states, added_time_ids)
        dtype = self.conv_in.weight.dtype
        emb = self._condition_embedding(timestep, added_time_ids, batch, sample.device, dtype)  # [B, D]
        emb = emb.repeat_interleave(num_frames, dim=0)  # [(B·F), D]
        # one context per video [B, L, D]: each video transformer gives it to the frames (spatial
        # attention) and attends to it once per video (temporal attention)
        context = encoder_hidden_states.to(dtype)

        hidden = self.conv_in(video_to_images(sample.to(dtype)))  # [(B·F), C0, H, W]
        hidden = run_stages(self.down_blocks, self.mid_block, self.up_blocks, hidden, emb, context, num_frames)
        hidden = self.conv_out(F.silu(self.conv_norm_out(hidden)))  # [(B·F), C_out, H, W]
        return images_to_video(hidden, num_frames).contiguous()

    def _condition_embedding(
        self,
        timestep: torch.Tensor | float | int,
        added_time_ids: torch.Tensor,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        # Noise level and micro-conditions, each a sinusoid → MLP, summed: [B, 4·C0]
        timesteps = batch_timesteps(timestep, batch, device)
        t_emb = sinusoidal_embedding(timesteps, self.config.block_out_channels[0]).to(dtype)
        ids = added_time_ids.to(device).reshape(-1)  # [B·3]
        ids_emb = sinusoidal_embedding(ids, self.config.addition_time_embed_dim).reshape(batch, -1)
        return self.time_embedding(t_emb) + self.add_embedding(ids_emb.to(dtype))

    def _check_inputs(
        self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor, added_time_ids: torch.Tensor
    ) -> tuple[int, int]:
        config = self.config
        if sample.ndim != 5 or sample.shape[1] != config.in_channels:
            raise ValueError(
                f"sample must be [B, {config.in_channels}, F, H, W] (vidiff's layout), got {tuple(sample.shape)}"
            )
        batch, num_frames = sample.shape[0], sample.shape[2]
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states must be [{batch}, L, D], got {tuple(encoder_hidden_states.shape)}"
            )
        expected_ids = (batch, config.num_added_time_ids)
        if tuple(added_time_ids.shape) != expected_ids:
            raise ValueError(f"added_time_ids must have shape {list(expected_ids)}, got {tuple(added_time_ids.shape)}")
        return batch, num_frames

