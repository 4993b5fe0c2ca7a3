"""Layers that mix information across frames, and the learned blend with their per-frame input.

Video batches arrive as image batches ``[(B·F), C, H, W]`` (frames of a video consecutive) or
token batches ``[(B·F), S, C]``; ``num_frames`` says how to regroup them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .attention import Attention, FeedForward
from .frames import (
    frame_sequences_to_tokens,
    images_to_video,
    merge_frames,
    split_frames,
    tokens_to_frame_sequences,
)
from .resnet import ResBlock2D


class AlphaBlender(nn.Module):
    """``α·spatial + (1−α)·temporal`` with ``α = sigmoid(mix_factor)`` learned (a ``[1]`` parameter).

    ``switch_spatial_to_temporal_mix`` swaps the roles (α weighs the temporal branch), as the SVD
    VAE decoder was trained. Checkpoints call both the "learned" and "learned_with_images"
    strategies ``mix_factor``; they agree whenever every input is a video (vidiff's only case).
    """

    def __init__(self, alpha: float = 0.5, switch_spatial_to_temporal_mix: bool = False) -> None:
        super().__init__()
        self.switch_spatial_to_temporal_mix = switch_spatial_to_temporal_mix
        self.mix_factor = nn.Parameter(torch.full((1,), float(alpha)))

    def forward(self, x_spatial: torch.Tensor, x_temporal: torch.Tensor) -> torch.Tensor:
        """The blend, in one pass; the result has ``x_spatial``'s memory layout."""
        alpha = torch.sigmoid(self.mix_factor).to(x_spatial.dtype)  # [1], broadcasts
        temporal_weight = alpha if self.switch_spatial_to_temporal_mix else 1.0 - alpha
        # lerp(s, t, w) = s + w·(t − s) = (1−w)·s + w·t; its output takes the first operand's strides.
        return torch.lerp(x_spatial, x_temporal, temporal_weight)


class TemporalConv(nn.Conv3d):
    """A 3-D conv with kernel ``(k, 1, 1)``: mixes each pixel with itself in the neighbouring frames.

    Same parameters as ``nn.Conv3d`` (so checkpoints load), but runs as a 2-D conv with kernel
    ``(k, 1)`` over ``[B, C, F, H·W]``: identical math, and CPU backends have fast 2-D kernels only.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_frames: int = 3) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size=(kernel_frames, 1, 1), padding=(kernel_frames // 2, 0, 0)
        )

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, F, H, W]`` → ``[B, C_out, F, H, W]``."""
        batch, channels, frames, height, width = video.shape
        flat = video.reshape(batch, channels, frames, height * width)  # a view when contiguous
        out = F.conv2d(flat, self.weight.squeeze(-1), self.bias, padding=(self.padding[0], 0))
        return out.view(batch, -1, frames, height, width)


class TemporalResnetBlock(nn.Module):
    """A residual block of (3,1,1) 3-D convolutions: mixes each pixel with its neighbouring frames.

    Input ``[B, C, F, H, W]``; GroupNorm statistics span all frames of a video. ``temb`` is
    ``[B, F, temb_channels]`` (one embedding per frame) or None.
    """

    def __init__(
        self, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512, eps: float = 1e-6
    ) -> None:
        super().__init__()
        out_channels = out_channels if out_channels is not None else in_channels
        self.norm1 = nn.GroupNorm(32, in_channels, eps=eps)
        self.conv1 = TemporalConv(in_channels, out_channels)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(32, out_channels, eps=eps)
        self.conv2 = TemporalConv(out_channels, out_channels)
        self.conv_shortcut = TemporalConv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.conv1(F.silu(self.norm1(input_tensor)))  # [B, C, F, H, W]
        if self.time_emb_proj is not None and temb is not None:
            frame_bias = self.time_emb_proj(F.silu(temb))  # [B, F, C]
            hidden += frame_bias.transpose(1, 2)[:, :, :, None, None]  # in place on the fresh conv output
        hidden = self.conv2(F.silu(self.norm2(hidden)))
        shortcut = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
        return hidden.add_(shortcut)


class SpatioTemporalResBlock(nn.Module):
    """A per-frame :class:`ResBlock2D`, then a :class:`TemporalResnetBlock`, blended by an :class:`AlphaBlender`.

    ``[(B·F), C_in, H, W]`` → ``[(B·F), C_out, H, W]``; ``temb`` is ``[(B·F), temb_channels]`` or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        temb_channels: int | None = 512,
        eps: float = 1e-6,
        temporal_eps: float | None = None,
        merge_factor: float = 0.5,
        switch_spatial_to_temporal_mix: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels if out_channels is not None else in_channels
        self.spatial_res_block = ResBlock2D(in_channels, out_channels, temb_channels=temb_channels, eps=eps)
        self.temporal_res_block = TemporalResnetBlock(
            out_channels,
            out_channels,
            temb_channels=temb_channels,
            eps=temporal_eps if temporal_eps is not None else eps,
        )
        self.time_mixer = AlphaBlender(merge_factor, switch_spatial_to_temporal_mix)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        images = self.spatial_res_block(hidden_states, temb)  # [(B·F), C, H, W]
        frame_temb = split_frames(temb, num_frames) if temb is not None else None  # [B, F, D]
        temporal = self.temporal_res_block(images_to_video(images, num_frames), frame_temb)  # [B, C, F, H, W]
        # Blend in frame-major order [B, F, C, H, W]: the spatial operand is contiguous there, so the
        # result is already an image batch and needs no copy back.
        blended = self.time_mixer(split_frames(images, num_frames), temporal.transpose(1, 2))
        return merge_frames(blended)


class TemporalBasicTransformerBlock(nn.Module):
    """A transformer block whose sequences run over frames: each pixel attends to itself in other frames.

    Takes and returns per-frame tokens ``[(B·F), S, dim]``; internally works on ``[(B·S), F, C]``.
    ``ff_in`` first maps ``dim`` to ``time_mix_inner_dim`` (residual when they are equal);
    ``attn2`` cross-attends to one context per *video* ``[B, L_ctx, cross_attention_dim]``, shared
    by all its pixels.
    """

    def __init__(
        self,
        dim: int,
        time_mix_inner_dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        cross_attention_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.is_res = dim == time_mix_inner_dim
        inner = time_mix_inner_dim
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim_out=inner, activation_fn="geglu")
        self.norm1 = nn.LayerNorm(inner)
        self.attn1 = Attention(inner, heads=num_attention_heads, dim_head=attention_head_dim)
        if cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(inner)
            self.attn2 = Attention(
                inner, cross_attention_dim, heads=num_attention_heads, dim_head=attention_head_dim
            )
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = nn.LayerNorm(inner)
        self.ff = FeedForward(inner, activation_fn="geglu")

    def forward(
        self, hidden_states: torch.Tensor, num_frames: int, encoder_hidden_states: torch.Tensor | None = None
    ) -> torch.Tensor:
        seq_len = hidden_states.shape[1]
        sequences = tokens_to_frame_sequences(hidden_states, num_frames)  # [(B·S), F, C]
        mixed = self.ff_in(self.norm_in(sequences))  # a fresh MLP output: residuals add in place
        if self.is_res:
            mixed.add_(sequences)
        mixed = mixed + self.attn1(self.norm1(mixed))
        if self.attn2 is not None:
            # Every pixel of a video shares its context, and attention treats queries independently,
            # so attending from [B, S·F, C] equals attending per pixel from [(B·S), F, C] against a
            # copied context — without the S copies and their key/value projections.
            per_video = mixed.view(encoder_hidden_states.shape[0], -1, mixed.shape[-1])  # [B, S·F, C]
            attended = self.attn2(self.norm2(per_video), encoder_hidden_states)
            mixed = (per_video + attended).view(mixed.shape)
        out = self.ff(self.norm3(mixed))
        if self.is_res:
            out.add_(mixed)
        return frame_sequences_to_tokens(out, seq_len)
