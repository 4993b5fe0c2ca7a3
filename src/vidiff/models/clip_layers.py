"""The transformer encoder shared by CLIP's vision and text towers.

Module and parameter names follow transformers' CLIP checkpoints (``self_attn.q_proj``,
``layer_norm1``, ``mlp.fc1`` …) so published ``model.safetensors`` files load unchanged. The towers
differ only in what they feed in (patch or token embeddings) and in the attention mask (none for
images; causal plus padding for text), so the encoder takes an optional mask and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    # OpenAI CLIP's sigmoid approximation of GELU (Hendrycks & Gimpel 2016, §2).
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh_formula(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation written out (GPT-2's "gelu_new"); differs from the fused kernel by rounding.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _gelu_tanh_fused(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


# The ``hidden_act`` values of transformers' CLIP configs that vidiff understands, with the same math
# transformers uses for each name (the tanh variants differ by rounding, so each keeps its own formula).
CLIP_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "quick_gelu": _quick_gelu,
    "gelu_new": _gelu_tanh_formula,
    "gelu_fast": _gelu_fast,
    "gelu_pytorch_tanh": _gelu_tanh_fused,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def check_activation(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a ``hidden_act`` value listed in :data:`CLIP_ACTIVATIONS`."""
    if name not in CLIP_ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} is not supported; valid values: {sorted(CLIP_ACTIVATIONS)}")


class CLIPTowerOptions(Protocol):
    """The encoder options both towers' configs carry under transformers' names."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    hidden_act: str
    layer_norm_eps: float


def check_tower_options(config: CLIPTowerOptions) -> None:
    """Raise ``ValueError`` naming the option unless the activation is known and the width splits into heads."""
    check_activation(config.hidden_act)
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(
            f"hidden_size={config.hidden_size} must be divisible by "
            f"num_attention_heads={config.num_attention_heads}"
        )


class CLIPAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (transformers' names), run by SDPA."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"hidden_size={hidden_size} must be divisible by num_attention_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, heads, L, d]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden_states`` [B, L, D]; ``attention_mask`` additive or boolean, broadcastable to
        [B, heads, L, L] (``True`` = may attend). Returns [B, L, D]."""
        batch, length, width = hidden_states.shape
        query = self._split_heads(self.q_proj(hidden_states))
        key = self._split_heads(self.k_proj(hidden_states))
        value = self._split_heads(self.v_proj(hidden_states))
        # SDPA's default scale is head_dim ** -0.5, the scale CLIP was trained with.
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        attended = attended.transpose(1, 2).reshape(batch, length, width)  # [B, L, D]
        return self.out_proj(attended)


class CLIPMLP(nn.Module):
    """fc1 → activation → fc2."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str) -> None:
        super().__init__()
        check_activation(hidden_act)
        self.activation = CLIP_ACTIVATIONS[hidden_act]
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_heads: int,
        hidden_act: str,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(hidden_size, num_heads)
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = CLIPMLP(hidden_size, intermediate_size, hidden_act)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), attention_mask)
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class CLIPEncoder(nn.Module):
    """A stack of :class:`CLIPEncoderLayer` under the checkpoint name ``layers``."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        intermediate_size: int,
        num_heads: int,
        hidden_act: str,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(hidden_size, intermediate_size, num_heads, hidden_act, layer_norm_eps)
            for _ in range(num_layers)
        )

    @classmethod
    def for_tower(cls, config: CLIPTowerOptions) -> CLIPEncoder:
        """The encoder a tower's config describes (``num_hidden_layers`` layers of its width and heads)."""
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=config.num_attention_heads,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        num_layers: int | None = None,
    ) -> torch.Tensor:
        """Run the first ``num_layers`` layers (all by default) on ``hidden_states`` [B, L, D].

        Stopping early gives transformers' ``hidden_states[k]`` (the output after layer ``k``)
        without computing the rest — what text encoders with a "clip skip" need.
        """
        total = len(self.layers)
        count = total if num_layers is None else num_layers
        if not 0 <= count <= total:
            raise ValueError(f"num_layers={num_layers} must be between 0 and {total}")
        for layer in self.layers[:count]:
            hidden_states = layer(hidden_states, attention_mask)
        return hidden_states
