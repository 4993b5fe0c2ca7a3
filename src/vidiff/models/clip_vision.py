"""CLIP's vision tower with its visual projection: pixel values in, one image embedding out.

Parameter names are those of transformers' ``CLIPVisionModelWithProjection``
(``vision_model.embeddings.patch_embedding.weight``, ``vision_model.pre_layrnorm.*`` — sic —,
``visual_projection.weight`` …), so the ``image_encoder`` folders of SVD and I2VGen-XL load as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from .base import PretrainedModel
from .clip_layers import CLIPEncoder, check_tower_options
from .legacy_keys import clip_position_ids


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(Config):
    """Options of a transformers ``clip_vision_model`` config; defaults are SVD-XT's image encoder
    (OpenCLIP ViT-H/14)."""

    int_ranges: ClassVar = {
        **ranges(WIDTH, "hidden_size", "intermediate_size", "num_attention_heads", "num_channels", "projection_dim"),
        **ranges(COUNT, "num_hidden_layers"),
        **ranges(SIZE, "patch_size", "image_size"),
    }

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_attention_heads: int = 16
    num_hidden_layers: int = 32
    patch_size: int = 14
    image_size: int = 224
    num_channels: int = 3
    projection_dim: int = 1024
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_tower_options(self)
        if not 0 < self.patch_size <= self.image_size:
            raise ValueError(f"patch_size={self.patch_size} must be in 1..image_size={self.image_size}")

    def to_diffusers(self) -> dict[str, Any]:
        """The ``config.json`` dict; always names transformers' ``model_type`` so its Auto classes read it."""
        return {"model_type": "clip_vision_model", **super().to_diffusers()}

    @property
    def num_patches(self) -> int:
        """Patches per image: a (image_size // patch_size)² grid."""
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass
class CLIPVisionOutput:
    """Everything one pass of the vision tower computes.

    ``image_embeds`` [N, projection_dim]; ``pooled_output`` [N, hidden_size] (the normed class token);
    ``last_hidden_state`` [N, 1 + num_patches, hidden_size] (class token first, not normed).
    """

    image_embeds: torch.Tensor
    pooled_output: torch.Tensor
    last_hidden_state: torch.Tensor


class CLIPVisionEmbeddings(nn.Module):
    """Patchify with a stride-``patch_size`` conv, prepend the class token, add learned positions."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        # Random init at CLIP's scale (width ** -0.5); checkpoints overwrite it.
        self.class_embedding = nn.Parameter(torch.randn(config.hidden_size) * config.hidden_size**-0.5)
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )
        # One row per position: the class token, then the patches in row-major order.
        self.position_embedding = nn.Embedding(config.num_patches + 1, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` [N, C, S, S] → tokens [N, 1 + num_patches, D]."""
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype))  # [N, D, S/p, S/p]
        patches = patches.flatten(2).transpose(1, 2)  # [N, num_patches, D]
        class_token = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # [N, 1, D]
        tokens = torch.cat([class_token, patches], dim=1)
        # Adding the whole table equals looking up positions 0..num_patches, with no index buffer.
        return tokens + self.position_embedding.weight.unsqueeze(0)


class CLIPVisionTransformer(nn.Module):
    """Embeddings → pre-norm → encoder; the pooled output is the post-normed class token."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        # "pre_layrnorm" is the (misspelt) name in every published CLIP checkpoint.
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder.for_tower(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values`` [N, C, S, S] → (last_hidden_state [N, 1 + P, D], pooled_output [N, D])."""
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values))
        hidden_states = self.encoder(hidden_states)
        pooled = self.post_layernorm(hidden_states[:, 0])
        return hidden_states, pooled


class CLIPVisionModelWithProjection(PretrainedModel):
    """transformers' ``CLIPVisionModelWithProjection`` rebuilt: images → ``image_embeds``.

    Input is already-normalized CLIP pixels ``[N, num_channels, image_size, image_size]`` (see
    :class:`vidiff.image_processing.CLIPImageProcessor`). ``forward`` returns the image embeddings;
    :meth:`encode` also returns the hidden states it computed on the way.
    """

    config_class = CLIPVisionConfig
    weights_name = "model"
    library = "transformers"
    # Checkpoints saved by older transformers versions (e.g. SD 1.5's) hold the position-index buffer.
    ignored_checkpoint_keys: ClassVar[tuple[str, ...]] = clip_position_ids("vision_model")

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__(config)
        self.vision_model = CLIPVisionTransformer(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        size, channels = self.config.image_size, self.config.num_channels
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"pixel_values must have shape [N, {channels}, {size}, {size}], "
                f"got {list(pixel_values.shape)}"
            )

    def encode(self, pixel_values: torch.Tensor) -> CLIPVisionOutput:
        """Run the tower and keep its intermediate results (see :class:`CLIPVisionOutput`)."""
        self._check_pixels(pixel_values)
        last_hidden_state, pooled = self.vision_model(pixel_values)
        return CLIPVisionOutput(
            image_embeds=self.visual_projection(pooled),
            pooled_output=pooled,
            last_hidden_state=last_hidden_state,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` [N, C, S, S] (normalized CLIP input) → ``image_embeds`` [N, projection_dim]."""
        return self.encode(pixel_values).image_embeds

    def penultimate_hidden_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tokens after all but the last encoder layer, [N, 1 + num_patches, hidden_size]: transformers'
        ``hidden_states[-2]``, what IP-Adapter Plus reads (the last layer is not run)."""
        self._check_pixels(pixel_values)
        tower = self.vision_model
        tokens = tower.pre_layrnorm(tower.embeddings(pixel_values))
        return tower.encoder(tokens, num_layers=len(tower.encoder.layers) - 1)
