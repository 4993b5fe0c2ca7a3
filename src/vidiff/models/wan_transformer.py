"""Wan 2.1 / 2.2's video diffusion transformer ``WanTransformer3DModel`` (text-, image- and text+image-to-video).

A latent video ``[B, C, F, H, W]`` is cut into 3-D patches (a strided ``Conv3d``), giving tokens
on a (frames, height, width) grid with rotary positions; each block modulates its self-attention
and MLP by the timestep (adaLN) and cross-attends to UMT5 text states (and, for Wan 2.1 I2V, to
CLIP image tokens). A modulated LayerNorm and a linear head map tokens back to patches.

Two timestep forms: one per video ``[B]`` (Wan 2.1, Wan 2.2 A14B), or one per token ``[B, L]``
(Wan 2.2 TI2V's ``expand_timesteps``: the conditioning frame's tokens sit at timestep 0).

Weights load as diffusers 0.42.1 loads them: with ``dtype=torch.bfloat16`` (or float16) the time
embedder, the modulation tables and the affine LayerNorms stay float32, and the upcasts in the
forward pass are the reference's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from ..layers.embeddings import batch_timesteps
from ..layers.normalization import Float32LayerNorm
from ..layers.rotary import rotary_axis_dims, rotary_tables_3d
from .base import PretrainedModel
from .wan_transformer_blocks import WanConditionEmbedder, WanTransformerBlock, modulation

# Parameters diffusers keeps in float32 when it loads the transformer in half precision: those whose
# dotted name contains one of these parts (the time MLP, the adaLN tables, the affine LayerNorms).
FLOAT32_PARTS = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")
# The only query/key normalisation Wan checkpoints use (and the only one diffusers builds).
QK_NORM = "rms_norm_across_heads"


@dataclasses.dataclass(frozen=True)
class WanTransformer3DConfig(Config):
    """Hyper-parameters of :class:`WanTransformer3DModel`: diffusers' keys and defaults (Wan 2.1 14B).

    ``patch_size`` is (frames, height, width) per token; the width is ``num_attention_heads ·
    attention_head_dim``. ``image_dim`` adds the CLIP image embedder (Wan 2.1 I2V: 1280) and
    ``added_kv_proj_dim`` the image keys/values of each cross-attention (the width, 5120);
    ``pos_embed_seq_len`` a learned position table over first+last image tokens (Wan 2.1 FLF2V).
    ``out_channels=None`` means ``in_channels``. ``qk_norm`` must be ``"rms_norm_across_heads"``.
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
                 "freq_dim", "ffn_dim", "image_dim", "added_kv_proj_dim"),
        **ranges(COUNT, "num_layers"),
        **ranges((1, 64), "patch_size"),
        **ranges(SIZE, "rope_max_seq_len", "pos_embed_seq_len"),
    }

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = QK_NORM
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    def __post_init__(self) -> None:
        if self.qk_norm != QK_NORM:
            raise ValueError(
                f"qk_norm={self.qk_norm!r} is not supported: Wan transformers normalise queries and keys "
                f"with {QK_NORM!r} (the only form diffusers 0.42.1 builds, whatever this key says)"
            )
        rotary_axis_dims_or_error(self.attention_head_dim)
        if self.added_kv_proj_dim is not None and self.added_kv_proj_dim != self.inner_dim:
            raise ValueError(
                f"added_kv_proj_dim={self.added_kv_proj_dim} must equal the transformer width "
                f"num_attention_heads·attention_head_dim={self.inner_dim}: the image keys/values are "
                "projected from the embedded image tokens, which have that width"
            )
        if self.eps <= 0:
            raise ValueError(f"eps={self.eps} must be a positive number (added to variances)")

    @property
    def inner_dim(self) -> int:
        """Token width: ``num_attention_heads · attention_head_dim``."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        """``out_channels``, or ``in_channels`` where it is None (as diffusers reads it)."""
        return self.out_channels or self.in_channels


def rotary_axis_dims_or_error(head_dim: int) -> tuple[int, int, int]:
    """The rotary band split of ``attention_head_dim``, or a ValueError naming the option."""
    try:
        return rotary_axis_dims(head_dim)
    except ValueError as error:
        raise ValueError(f"attention_head_dim={head_dim} is not valid: {error}") from error


class WanTransformer3DModel(PretrainedModel):
    """Wan's diffusion transformer; call it as diffusers' (see :meth:`forward`), load it with
    :meth:`from_pretrained` (``subfolder="transformer"`` / ``"transformer_2"``), build it with
    :meth:`from_config`. ``config`` holds the typed :class:`WanTransformer3DConfig`."""

    config_class = WanTransformer3DConfig
    # Wan 2.1 I2V files written by diffusers 0.33 hold an unused query norm of the image branch.
    ignored_checkpoint_keys = (r"(^|\.)norm_added_q\.",)

    def __init__(self, config: WanTransformer3DConfig) -> None:
        super().__init__(config)
        dim = config.inner_dim
        self.patch_embedding = nn.Conv3d(
            config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.condition_embedder = WanConditionEmbedder(
            dim, config.freq_dim, config.text_dim, config.image_dim, config.pos_embed_seq_len
        )
        self.blocks = nn.ModuleList(
            WanTransformerBlock(
                dim, config.ffn_dim, config.num_attention_heads, config.cross_attn_norm, config.eps,
                config.added_kv_proj_dim,
            )
            for _ in range(config.num_layers)
        )
        self.norm_out = Float32LayerNorm(dim, config.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, config.output_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    @classmethod
    def keeps_float32(cls, key: str, dtype: torch.dtype) -> bool:
        """In any dtype, the :data:`FLOAT32_PARTS` stay float32, as diffusers keeps them."""
        return any(part in key.split(".") for part in FLOAT32_PARTS)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: that of the patch embedding (the float32-kept parts do not count)."""
        return self.patch_embedding.weight.dtype

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = False,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Predict the flow (velocity) of a latent video.

        Args:
            hidden_states: latents ``[B, in_channels, F, H, W]``; F, H, W multiples of ``patch_size``.
            timestep: ``[B]`` (float or int64, flow time × 1000), a number, or per token ``[B, L]``
                with ``L = (F/p_t)·(H/p_h)·(W/p_w)`` (Wan 2.2 TI2V's ``expand_timesteps``).
            encoder_hidden_states: UMT5 states ``[B, L_text, text_dim]`` (512 tokens in the pipelines).
            encoder_hidden_states_image: CLIP states ``[B, 257, image_dim]`` (Wan 2.1 I2V) or None.
            return_dict, attention_kwargs: accepted for diffusers' call signature and ignored; the
                result is always a tensor.

        Returns:
            ``[B, out_channels, F, H, W]`` in the weights' compute dtype. Inputs are cast to it first.
        """
        grid = self._token_grid(hidden_states)
        batch = hidden_states.shape[0]
        compute_dtype = self.dtype
        timesteps, tokens_per_row = self._timesteps(timestep, batch, math.prod(grid), hidden_states.device)
        text, image = self._context_inputs(encoder_hidden_states, encoder_hidden_states_image, batch, compute_dtype)
        rotary = rotary_tables_3d(
            self.config.attention_head_dim, grid, max_positions=self.config.rope_max_seq_len,
            device=hidden_states.device,
        )
        states = self.patch_embedding(hidden_states.to(compute_dtype))  # [B, dim, F', H', W']
        states = states.flatten(2).transpose(1, 2).contiguous()  # [B, L, dim], frame-major tokens
        temb, time_projection, text, image = self.condition_embedder(timesteps, text, image, tokens_per_row)
        time_projection = time_projection.unflatten(-1, (6, -1))  # [B(, L), 6, dim]
        context = text if image is None else torch.cat([image, text], dim=1)  # image tokens first
        for block in self.blocks:
            states = block(states, context, time_projection, rotary)
        return self._to_patches(states, temb, batch, grid)

    def _to_patches(self, states: torch.Tensor, temb: torch.Tensor, batch: int, grid: tuple[int, int, int]) -> torch.Tensor:
        # [B, L, dim] → [B, out_channels, F, H, W]: modulated norm, linear head, un-patchify.
        per_token = temb.ndim == 3
        shift, scale = modulation(self.scale_shift_table, temb.unsqueeze(2 if per_token else 1), upcast=False)
        normed = self.norm_out(states.float()) * (1 + scale) + shift  # float32
        patches = self.proj_out(normed.to(states.dtype))  # [B, L, p_t·p_h·p_w·C_out]
        p_t, p_h, p_w = self.config.patch_size
        frames, height, width = grid
        patches = patches.reshape(batch, frames, height, width, p_t, p_h, p_w, -1)
        video = patches.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, F', p_t, H', p_h, W', p_w]
        return video.reshape(batch, -1, frames * p_t, height * p_h, width * p_w)

    def _token_grid(self, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        """(frames, height, width) in tokens, after checking the latents' shape."""
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.ndim != 5:
            shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states)
            raise ValueError(f"hidden_states must be latents [B, C, F, H, W], got {shape}")
        channels, *sizes = hidden_states.shape[1:]
        if channels != self.config.in_channels:
            raise ValueError(
                f"hidden_states has {channels} channels; this transformer takes in_channels={self.config.in_channels}"
            )
        for axis, size, patch in zip(("frames", "height", "width"), sizes, self.config.patch_size):
            if size % patch:
                raise ValueError(
                    f"hidden_states {axis} {size} is not a multiple of patch_size={list(self.config.patch_size)} "
                    f"({patch} along {axis})"
                )
        return tuple(size // patch for size, patch in zip(sizes, self.config.patch_size))

    def _timesteps(
        self, timestep: Any, batch: int, tokens: int, device: torch.device
    ) -> tuple[torch.Tensor, int | None]:
        """Flat timesteps ``[B]`` or ``[B·L]``, and L when they are per token (else None)."""
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 2:
            if timestep.shape != (batch, tokens):
                raise ValueError(
                    f"per-token timestep must have shape [batch, tokens] = [{batch}, {tokens}] for these "
                    f"latents, got {tuple(timestep.shape)}"
                )
            return timestep.to(device).flatten(), tokens
        return batch_timesteps(timestep, batch, device), None

    def _context_inputs(
        self, text: torch.Tensor, image: torch.Tensor | None, batch: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check the text and image states against the config; cast them to the compute dtype."""
        if not isinstance(text, torch.Tensor) or text.ndim != 3 or text.shape[-1] != self.config.text_dim:
            shape = tuple(text.shape) if isinstance(text, torch.Tensor) else type(text)
            raise ValueError(
                f"encoder_hidden_states must be text states [B, L, text_dim={self.config.text_dim}], got {shape}"
            )
        if text.shape[0] != batch:
            raise ValueError(f"encoder_hidden_states has batch {text.shape[0]}; hidden_states has {batch}")
        if image is None:
            return text.to(dtype), None
        if self.config.image_dim is None:
            raise ValueError(
                "encoder_hidden_states_image was given, but this transformer has no image branch (image_dim is null)"
            )
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[-1] != self.config.image_dim:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)
            raise ValueError(
                f"encoder_hidden_states_image must be image states [B, T, image_dim={self.config.image_dim}], got {shape}"
            )
        # Wan 2.1 FLF2V (pos_embed_seq_len) passes a first and a last image per video: as two rows
        # [2B, T, D] (diffusers' layout) or joined along the tokens [B, 2T, D] (vidiff's pipeline).
        images_per_video = 1 if self.config.pos_embed_seq_len is None else 2
        if image.shape[1] == self.config.pos_embed_seq_len:
            images_per_video = 1  # first and last image already joined along the tokens
        if image.shape[0] != images_per_video * batch:
            raise ValueError(
                f"encoder_hidden_states_image has batch {image.shape[0]}; expected {images_per_video * batch} "
                f"({images_per_video} per video of hidden_states' batch {batch})"
            )
        return text.to(dtype), image.to(dtype)
