"""The blocks of the UMT5 encoder, under the module names of transformers' checkpoints.

T5-family specifics kept here, each matching transformers' arithmetic so hidden states agree:
the norm is an RMS norm (no mean subtraction, no bias) computed in float32; attention has no
1/√d scaling and instead adds a learned bias per relative-position bucket — UMT5 gives every layer
its own bias table (T5 only the first); half-precision residual streams are clamped below ±inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .clip_layers import CLIP_ACTIVATIONS


class UMT5LayerNorm(nn.Module):
    """RMS norm: ``weight · x / √(mean(x²) + eps)``, the mean of squares taken in float32."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)  # [..., 1]
        # A half-precision input times the float32 factor is float32; it returns to the weight's dtype.
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device: torch.device) -> torch.Tensor:
    """Bucket ids [L, L] (query × key) of a bidirectional encoder (Raffel et al. 2020, §2.1; Mesh
    TensorFlow's scheme): half the buckets for keys after the query, half for keys before; in each
    half, exact distances below a quarter of ``num_buckets``, then log-spaced bins up to
    ``max_distance``, beyond which all distances share the last bucket."""
    positions = torch.arange(length, dtype=torch.long, device=device)
    relative = positions[None, :] - positions[:, None]  # key − query
    half = num_buckets // 2
    buckets = (relative > 0).to(torch.long) * half
    distance = relative.abs()
    exact = half // 2
    # log(0) = -inf at distance 0 is harmless: torch.where takes the exact branch there.
    scaled = torch.log(distance.float() / exact) / math.log(max_distance / exact) * (half - exact)
    large = torch.clamp(exact + scaled.to(torch.long), max=half - 1)
    return buckets + torch.where(distance < exact, distance, large)


class UMT5Attention(nn.Module):
    """Unscaled multi-head self-attention plus this layer's relative position bias (``q, k, v, o``)."""

    def __init__(self, d_model: int, d_kv: int, num_heads: int, num_buckets: int) -> None:
        super().__init__()
        self.num_heads, self.d_kv = num_heads, d_kv
        inner = num_heads * d_kv
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)
        self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.d_kv).transpose(1, 2)  # [B, H, L, d_kv]

    def forward(self, hidden_states: torch.Tensor, buckets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``hidden_states`` [B, L, D]; ``buckets`` [L, L]; ``mask`` additive [B, 1, 1, L] or None → [B, L, D]."""
        batch, length, _ = hidden_states.shape
        query, key, value = (self._heads(proj(hidden_states)) for proj in (self.q, self.k, self.v))
        # T5 folds the 1/√d_kv scale into its initialisation, so scores are plain dot products.
        scores = torch.matmul(query, key.transpose(3, 2))  # [B, H, L, L]
        bias = self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, H, L, L]
        if mask is not None:
            bias = bias + mask
        scores = scores + bias
        # Softmax in float32, then back to the scores' dtype, as transformers does.
        weights = torch.softmax(scores.float(), dim=-1).type_as(scores)
        attended = torch.matmul(weights, value).transpose(1, 2).reshape(batch, length, -1)  # [B, L, H·d_kv]
        return self.o(attended)


class UMT5LayerSelfAttention(nn.Module):
    """``x + SelfAttention(layer_norm(x))``."""

    def __init__(self, d_model: int, d_kv: int, num_heads: int, num_buckets: int, eps: float) -> None:
        super().__init__()
        self.SelfAttention = UMT5Attention(d_model, d_kv, num_heads, num_buckets)
        self.layer_norm = UMT5LayerNorm(d_model, eps)

    def forward(self, hidden_states: torch.Tensor, buckets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return hidden_states + self.SelfAttention(self.layer_norm(hidden_states), buckets, mask)


def _to_output_dtype(hidden_states: torch.Tensor, output: nn.Linear) -> torch.Tensor:
    # `wo` may be kept in float32 while the rest is float16 (see UMT5EncoderModel.keeps_float32): the
    # projection then runs, and its residual sum continues, in float32 — as in transformers.
    return hidden_states.to(output.weight.dtype) if hidden_states.dtype != output.weight.dtype else hidden_states


class UMT5DenseGatedActDense(nn.Module):
    """Gated feed-forward (``gated-gelu``): ``wo(act(wi_0 x) · wi_1 x)``."""

    def __init__(self, d_model: int, d_ff: int, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.activation = activation

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gated = self.activation(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        return self.wo(_to_output_dtype(gated, self.wo))


class UMT5DenseActDense(nn.Module):
    """Plain feed-forward (e.g. ``relu``): ``wo(act(wi x))``."""

    def __init__(self, d_model: int, d_ff: int, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.activation = activation

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.wo(_to_output_dtype(self.activation(self.wi(hidden_states)), self.wo))


class UMT5LayerFF(nn.Module):
    """``x + DenseReluDense(layer_norm(x))`` (the checkpoint name is ``DenseReluDense`` whatever the activation)."""

    def __init__(self, d_model: int, d_ff: int, activation_name: str, gated: bool, eps: float) -> None:
        super().__init__()
        activation = CLIP_ACTIVATIONS[activation_name]
        dense = UMT5DenseGatedActDense if gated else UMT5DenseActDense
        self.DenseReluDense = dense(d_model, d_ff, activation)
        self.layer_norm = UMT5LayerNorm(d_model, eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.DenseReluDense(self.layer_norm(hidden_states))


def clamp_float16(hidden_states: torch.Tensor) -> torch.Tensor:
    """Keep a float16 residual stream finite, as transformers does after each sub-layer: clamp to
    ±(max − 1000) if it already holds an inf, else to ±max. Other dtypes pass unchanged."""
    if hidden_states.dtype != torch.float16:
        return hidden_states
    largest = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(hidden_states).any(), largest - 1000, largest)
    return torch.clamp(hidden_states, min=-limit, max=limit)


class UMT5Block(nn.Module):
    """One encoder layer: ``layer[0]`` self-attention, ``layer[1]`` feed-forward, each pre-normed and residual."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, buckets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[B, L, D] → [B, L, D]."""
        hidden_states = clamp_float16(self.layer[0](hidden_states, buckets, mask))
        return clamp_float16(self.layer[1](hidden_states))
