"""I2VGen-XL's video denoiser ``I2VGenXLUNet``: a 3-D UNet conditioned on text, a still image and fps.

The conditioning image enters three ways: its VAE latents (one per frame: the pipeline passes the
image's latent in frame 0 and constant planes marking each frame's position after it) are encoded
per frame and across frames and concatenated to the noisy sample along channels; the first frame's latents are pooled into 64 context tokens; and its CLIP image embedding
is projected into ``in_channels`` more context tokens. Text states, image-latent tokens and
image-embedding tokens form the cross-attention context of every frame. The frame rate is
embedded like a timestep and added to the time embedding.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from ..layers.embeddings import TimestepEmbedding, batch_timesteps, sinusoidal_embedding
from ..layers.frames import (
    frame_sequences_to_video,
    images_to_tokens,
    images_to_video,
    video_to_frame_sequences,
    video_to_images,
)
from ..layers.unet_stage import DownStage, MidStage, UpStage, run_stages
from .base import PretrainedModel
from .unet_2d_blocks import ResnetOptions, check_config, per_block
from .unet_i2vgen_xl_blocks import ImageLatentsTemporalEncoder, VideoStageOptions, temporal_transformer

# Block type names of the config → whether the stage has transformers.
_DOWN_BLOCK_ATTENTION = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}
_UP_BLOCK_ATTENTION = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}
_LATENT_CHANNELS = 4  # the image-latent encoders take the SD VAE's 4 channels, whatever in_channels is
_TRANSFORMER_IN_HEADS = 8  # fixed in the released architecture

PerBlock = int | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class I2VGenXLUNetConfig(Config):
    """Hyper-parameters of :class:`I2VGenXLUNet`: diffusers' keys, defaults as released.

    ``attention_head_dim`` (one value or one per stage) is, despite its name in the image and
    temporal transformers, used by diffusers as the width of each head there (``C // value`` heads)
    and as the head *width* of ``transformer_in`` (8 heads). ``num_attention_heads`` is accepted and
    ignored, as diffusers does.
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "in_channels", "out_channels", "block_out_channels", "norm_num_groups",
                 "cross_attention_dim", "attention_head_dim", "num_attention_heads"),
        **ranges(COUNT, "layers_per_block"),
        **ranges(SIZE, "sample_size"),
    }

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    cross_attention_dim: int = 1024
    attention_head_dim: PerBlock = 64
    num_attention_heads: PerBlock | None = None

    def __post_init__(self) -> None:
        check_config(self, {}, (_DOWN_BLOCK_ATTENTION, _UP_BLOCK_ATTENTION), ("attention_head_dim",))
        for channels, head_dim in zip(self.block_out_channels, per_block(self, "attention_head_dim")):
            if channels % head_dim:
                raise ValueError(
                    f"attention_head_dim={head_dim} must divide the stage's block_out_channels entry {channels}"
                )

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]


class I2VGenXLUNet(PretrainedModel):
    """I2VGen-XL's video UNet; takes and returns vidiff's ``[B, C, F, H, W]`` layout."""

    config_class = I2VGenXLUNetConfig
    config: I2VGenXLUNetConfig

    def __init__(self, config: I2VGenXLUNetConfig) -> None:
        super().__init__(config)
        channels, in_channels, cross = config.block_out_channels, config.in_channels, config.cross_attention_dim
        time_embed_dim = config.time_embed_dim
        head_dims = per_block(config, "attention_head_dim")
        # the sample and the encoded image latents, concatenated along channels
        self.conv_in = nn.Conv2d(2 * in_channels, channels[0], kernel_size=3, padding=1)
        self.transformer_in = temporal_transformer(
            channels[0], _TRANSFORMER_IN_HEADS, head_dims[0], config.norm_num_groups
        )
        self._build_image_encoders(in_channels, cross)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)
        self.context_embedding = nn.Sequential(
            nn.Linear(cross, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, cross * in_channels)
        )
        self.fps_embedding = nn.Sequential(
            nn.Linear(channels[0], time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        options = VideoStageOptions(ResnetOptions(time_embed_dim, config.norm_num_groups, 1e-5), cross)
        self._build_stages(options, head_dims)
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, channels[0], eps=1e-5)
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, kernel_size=3, padding=1)

    def _build_image_encoders(self, in_channels: int, cross: int) -> None:
        # per-frame latents → in_channels features, then mixed across frames per pixel
        self.image_latents_proj_in = nn.Sequential(
            nn.Conv2d(_LATENT_CHANNELS, 4 * in_channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(4 * in_channels, 4 * in_channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(4 * in_channels, in_channels, 3, padding=1),
        )
        self.image_latents_temporal_encoder = ImageLatentsTemporalEncoder(in_channels)
        # first-frame latents → a 32×32 pool → two stride-2 convs → 8×8 = 64 context tokens
        self.image_latents_context_embedding = nn.Sequential(
            nn.Conv2d(_LATENT_CHANNELS, 8 * in_channels, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d((32, 32)),
            nn.Conv2d(8 * in_channels, 16 * in_channels, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(16 * in_channels, cross, 3, stride=2, padding=1),
        )

    def _build_stages(self, options: VideoStageOptions, head_dims: tuple[int, ...]) -> None:
        config = self.config
        channels, layers, last = config.block_out_channels, config.layers_per_block, len(config.block_out_channels) - 1
        resnet = options.resnet_part()
        self.down_blocks = nn.ModuleList(
            DownStage(
                channels[max(i - 1, 0)], channels[i], layers, resnet,
                options.extras(head_dims[i] if _DOWN_BLOCK_ATTENTION[kind] else None), add_downsample=i < last,
            )
            for i, kind in enumerate(config.down_block_types)
        )
        self.mid_block = MidStage(channels[-1], resnet, options.extras(head_dims[-1]))
        up_channels, up_heads = channels[::-1], head_dims[::-1]  # from the lowest resolution up
        self.up_blocks = nn.ModuleList(
            UpStage(
                up_channels[min(j + 1, last)], up_channels[max(j - 1, 0)], up_channels[j], layers + 1, resnet,
                options.extras(up_heads[j] if _UP_BLOCK_ATTENTION[kind] else None), add_upsample=j < last,
            )
            for j, kind in enumerate(config.up_block_types)
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        fps: torch.Tensor | float | int,
        image_latents: torch.Tensor,
        image_embeddings: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the network output (v for the released weights) for noisy video latents.

        Args:
            sample: ``[B, in_channels, F, H, W]`` noisy latents.
            timestep: the discrete timestep as a number, a 0-dim tensor or one per video ``[B]``.
            fps: frames per second of the video to make: a number, a 0-dim tensor or ``[B]``.
            image_latents: ``[B, 4, F, H, W]`` VAE latents of the conditioning image per frame (the
                pipeline puts the image in frame 0 and the constant k / (F − 1) in frame k); frame 0 also
                feeds the context.
            image_embeddings: ``[B, cross_attention_dim]`` CLIP image embeddings.
            encoder_hidden_states: ``[B, L, cross_attention_dim]`` text-encoder states.

        Returns:
            ``[B, out_channels, F, H, W]`` in the parameters' dtype.
        """
        self._check_inputs(sample, image_latents, image_embeddings, encoder_hidden_states)
        context = self.encode_context(image_latents, image_embeddings, encoder_hidden_states)
        return self.denoise(sample, timestep, fps, context, self.encode_image_latents(image_latents))

    def denoise(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        fps: torch.Tensor | float | int,
        context: torch.Tensor,
        image_features: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`forward` with the conditioning already encoded, for a sampler that calls the UNet
        many times with the same conditioning (the encodings depend on no timestep).

        ``context`` is :meth:`encode_context`'s ``[B, L', D]`` (one per video; every frame attends to
        it), ``image_features`` :meth:`encode_image_latents`'s ``[B, in_channels, F, H, W]``, whose
        frames match ``sample``'s (a window of frames takes the same window of both).
        """
        batch, num_frames = sample.shape[0], sample.shape[2]
        _check_encoded(sample, context, image_features)
        dtype = self.conv_in.weight.dtype
        emb = self._embed_time_and_fps(timestep, fps, batch, sample.device)  # [B, D]
        images = video_to_images(torch.cat([sample.to(dtype), image_features], dim=1))  # [(B·F), 2·in_channels, H, W]
        hidden = self.transformer_in(self.conv_in(images), num_frames)  # [(B·F), C0, H, W]
        hidden = run_stages(
            self.down_blocks,
            self.mid_block,
            self.up_blocks,
            hidden,
            emb.repeat_interleave(num_frames, dim=0),  # [(B·F), D]
            context,  # [B, L', D]: cross-attention shares it with the frames (keys/values once per video)
            num_frames,
        )
        out = self.conv_out(F.silu(self.conv_norm_out(hidden)))  # [(B·F), C_out, H, W]
        return images_to_video(out, num_frames).contiguous()

    def _embed_time_and_fps(
        self, timestep: torch.Tensor | float | int, fps: torch.Tensor | float | int, batch: int, device: torch.device
    ) -> torch.Tensor:
        """``[batch, D]``: the time embedding plus the fps embedding (same sinusoid, its own MLP), on
        ``device`` (the sample's: under sequential CPU offload ``conv_in`` may still be parked)."""
        dtype = self.conv_in.weight.dtype
        width = self.config.block_out_channels[0]
        features = [
            sinusoidal_embedding(batch_timesteps(value, batch, device), width).to(dtype)
            for value in (timestep, fps)
        ]
        return self.time_embedding(features[0]) + self.fps_embedding(features[1])

    def encode_context(
        self, image_latents: torch.Tensor, image_embeddings: torch.Tensor, text_states: torch.Tensor
    ) -> torch.Tensor:
        """The cross-attention context of each video, ``[B, L + 64 + in_channels, D]``: text states,
        first-frame latent tokens and image-embedding tokens; :meth:`denoise` gives it to every frame.
        Inputs as in :meth:`forward`."""
        dtype = self.conv_in.weight.dtype
        image_latents, image_embeddings, text_states = (t.to(dtype) for t in (image_latents, image_embeddings, text_states))
        batch, cross = text_states.shape[0], self.config.cross_attention_dim
        first_frame = image_latents[:, :, 0]  # [B, 4, H, W]
        latent_tokens = images_to_tokens(self.image_latents_context_embedding(first_frame))  # [B, 64, D]
        image_tokens = self.context_embedding(image_embeddings).view(batch, self.config.in_channels, cross)
        return torch.cat([text_states, latent_tokens, image_tokens], dim=1)  # [B, L', D]

    def encode_image_latents(self, image_latents: torch.Tensor) -> torch.Tensor:
        """``[B, 4, F, H, W]`` → ``[B, in_channels, F, H, W]``: per-frame convs, then attention across
        frames; concatenated to the noisy sample along channels."""
        image_latents = image_latents.to(self.conv_in.weight.dtype)
        num_frames, height, width = image_latents.shape[2:]
        features = self.image_latents_proj_in(video_to_images(image_latents))  # [(B·F), in_channels, H, W]
        sequences = video_to_frame_sequences(images_to_video(features, num_frames))  # [(B·H·W), F, in_channels]
        return frame_sequences_to_video(self.image_latents_temporal_encoder(sequences), height, width)

    def _check_inputs(
        self,
        sample: torch.Tensor,
        image_latents: torch.Tensor,
        image_embeddings: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
    ) -> None:
        in_channels, cross = self.config.in_channels, self.config.cross_attention_dim
        if not isinstance(sample, torch.Tensor) or sample.ndim != 5 or sample.shape[1] != in_channels:
            raise ValueError(f"sample must be [B, {in_channels}, F, H, W] (vidiff's layout), got {_shape(sample)}")
        batch, _, frames, height, width = sample.shape
        expected = {
            "image_latents": ((batch, _LATENT_CHANNELS, frames, height, width), image_latents),
            "image_embeddings": ((batch, cross), image_embeddings),
        }
        for name, (shape, value) in expected.items():
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {_shape(value)}")
        states = encoder_hidden_states
        if not isinstance(states, torch.Tensor) or states.ndim != 3 or states.shape[0] != batch or states.shape[2] != cross:
            raise ValueError(f"encoder_hidden_states must be [{batch}, L, {cross}], got {_shape(states)}")


def _check_encoded(sample: torch.Tensor, context: torch.Tensor, image_features: torch.Tensor) -> None:
    """:meth:`I2VGenXLUNet.denoise`'s inputs must be per video and share ``sample``'s frames."""
    batch, num_frames = sample.shape[0], sample.shape[2]
    if context.ndim != 3 or context.shape[0] != batch:
        raise ValueError(f"context must be one per video [{batch}, L', D] (encode_context's output), got {_shape(context)}")
    if image_features.ndim != 5 or image_features.shape[0] != batch or image_features.shape[2:] != sample.shape[2:]:
        raise ValueError(
            f"image_features must be [{batch}, C, {num_frames}, H, W] like sample's frames, got {_shape(image_features)}"
        )


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
