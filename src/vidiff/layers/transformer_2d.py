"""The image-space transformer of the Stable Diffusion UNet (diffusers' ``Transformer2DModel``, continuous input).

GroupNorm, a projection into the attention width, ``num_layers`` :class:`BasicTransformerBlock`\\ s over
each image's pixels (self-attention, cross-attention to the text context, feed-forward), a projection
back and the input added. Parameter names (``norm``, ``proj_in``, ``transformer_blocks.N``,
``proj_out``) are those of the published checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from .frames import images_to_tokens, tokens_to_images
from .transformer import BasicTransformerBlock


class Transformer2DModel(nn.Module):
    """Image features ``[N, C, H, W]`` → same shape, every pixel attending to its image and the context.

    ``use_linear_projection`` selects the projection form the checkpoint was trained with: linear
    layers on tokens (SD 2.x) or 1×1 convolutions on the image (SD 1.x); both compute the same kind of
    map but their weights have different shapes (``[out, in]`` vs ``[out, in, 1, 1]``).
    ``only_cross_attention`` makes the first attention of every block attend to the context too.
    ``upcast_attention`` is accepted for config compatibility: SDPA accumulates the softmax in
    float32 already, which is what the flag asks for (and diffusers' SDPA path ignores it as well).
    """

    def __init__(
        self,
        num_attention_heads: int,
        attention_head_dim: int,
        in_channels: int,
        num_layers: int = 1,
        cross_attention_dim: int | None = None,
        norm_num_groups: int = 32,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        attention_bias: bool = False,
        upcast_attention: bool = False,
        activation_fn: str = "geglu",
    ) -> None:
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.upcast_attention = upcast_attention
        # eps 1e-6, unlike the resnets' config value: fixed in the released architecture.
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in: nn.Module = nn.Linear(in_channels, inner_dim)
            self.proj_out: nn.Module = nn.Linear(inner_dim, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                num_attention_heads,
                attention_head_dim,
                cross_attention_dim=cross_attention_dim,
                activation_fn=activation_fn,
                attention_bias=attention_bias,
                only_cross_attention=only_cross_attention,
            )
            for _ in range(num_layers)
        )

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``hidden_states`` ``[N, C, H, W]``, context ``[N, L, cross_attention_dim]`` → ``[N, C, H, W]``.

        A context of ``N / F`` rows (one per video of ``F`` frames) is shared by consecutive images.
        """
        height, width = hidden_states.shape[-2:]
        normed = self.norm(hidden_states)
        if self.use_linear_projection:
            tokens = self.proj_in(images_to_tokens(normed))  # [N, H·W, inner]
        else:
            tokens = images_to_tokens(self.proj_in(normed))  # [N, H·W, inner]
        for block in self.transformer_blocks:
            tokens = block(tokens, encoder_hidden_states)
        if self.use_linear_projection:
            out = tokens_to_images(self.proj_out(tokens), height, width)  # channels-last view
        else:
            out = self.proj_out(tokens_to_images(tokens, height, width))
        # residual first: the sum takes the input's contiguous NCHW layout
        return hidden_states + out
