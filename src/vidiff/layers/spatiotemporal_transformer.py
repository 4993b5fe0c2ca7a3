"""The video transformer of SVD-style UNets: spatial blocks interleaved with temporal blocks."""

from __future__ import annotations

import torch
from torch import nn

from .embeddings import TimestepEmbedding, sinusoidal_embedding
from .frames import images_to_tokens, tokens_to_images
from .temporal import AlphaBlender, TemporalBasicTransformerBlock
from .transformer import BasicTransformerBlock


class TransformerSpatioTemporalModel(nn.Module):
    """Image features ``[(B·F), C, H, W]`` → same shape, attending within and across frames.

    Per layer: a :class:`BasicTransformerBlock` over each frame's pixels, then a
    :class:`TemporalBasicTransformerBlock` over each pixel's frames (with a sinusoidal embedding
    of the frame index added), blended with the spatial result by a learned :class:`AlphaBlender`.
    The context is one per video: the spatial cross-attention gives it to each of the video's frames,
    the temporal one attends to it once per video.
    """

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: int = 320,
        num_layers: int = 1,
        cross_attention_dim: int | None = None,
    ) -> None:
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim=cross_attention_dim
            )
            for _ in range(num_layers)
        )
        self.temporal_transformer_blocks = nn.ModuleList(
            TemporalBasicTransformerBlock(
                inner_dim,
                inner_dim,
                num_attention_heads,
                attention_head_dim,
                cross_attention_dim=cross_attention_dim,
            )
            for _ in range(num_layers)
        )
        # Frame-index embedding; its width is in_channels, so it assumes inner_dim == in_channels
        # (true for every released SVD checkpoint).
        self.time_pos_embed = TimestepEmbedding(in_channels, in_channels * 4, out_dim=in_channels)
        self.time_mixer = AlphaBlender(alpha=0.5)
        self.proj_out = nn.Linear(inner_dim, in_channels)

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, num_frames: int
    ) -> torch.Tensor:
        """``hidden_states`` ``[(B·F), C, H, W]``, ``encoder_hidden_states`` ``[B, L, D]`` (one per video)."""
        batch_frames, _, height, width = hidden_states.shape
        batch = batch_frames // num_frames
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] * num_frames != batch_frames:
            raise ValueError(
                f"encoder_hidden_states must be one context per video [{batch}, L, D] for {batch_frames} frames "
                f"of {num_frames}, got {list(encoder_hidden_states.shape)}"
            )
        time_context = encoder_hidden_states  # [B, L, D]: the temporal blocks attend once per video
        context = encoder_hidden_states.repeat_interleave(num_frames, dim=0)  # [(B·F), L, D] for the spatial blocks

        tokens = self.proj_in(images_to_tokens(self.norm(hidden_states)))  # [(B·F), H·W, inner]
        frame_index = torch.arange(num_frames, device=tokens.device).repeat(batch)  # [(B·F)]
        frame_emb = sinusoidal_embedding(frame_index, self.in_channels).to(tokens.dtype)
        frame_emb = self.time_pos_embed(frame_emb)[:, None, :]  # [(B·F), 1, C]

        for spatial_block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            tokens = spatial_block(tokens, encoder_hidden_states=context)
            mixed = temporal_block(tokens + frame_emb, num_frames, encoder_hidden_states=time_context)
            tokens = self.time_mixer(x_spatial=tokens, x_temporal=mixed)

        out = tokens_to_images(self.proj_out(tokens), height, width)  # channels-last view
        # residual first: the sum takes the residual's contiguous NCHW layout
        return hidden_states + out
