"""The spatial transformer block: pre-norm self-attention, cross-attention and feed-forward."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, FeedForward
from .embeddings import SinusoidalPositionTable


class BasicTransformerBlock(nn.Module):
    """LayerNorm'd self-attention (``attn1``), cross-attention (``attn2``) and MLP (``ff``), each residual.

    Works on token sequences ``[N, L, dim]``. Without ``cross_attention_dim`` the block has no
    ``attn2``/``norm2`` unless ``double_self_attention`` asks for a second self-attention.
    ``only_cross_attention`` makes ``attn1`` attend to the context as well.
    ``positional_embeddings="sinusoidal"`` adds a fixed position code (``pos_embed``, table length
    ``num_positional_embeddings``) to the normalised input of both attentions, as AnimateDiff's
    temporal blocks do.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        cross_attention_dim: int | None = None,
        activation_fn: str = "geglu",
        attention_bias: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        ff_inner_dim: int | None = None,
        ff_bias: bool = True,
        attention_out_bias: bool = True,
        positional_embeddings: str | None = None,
        num_positional_embeddings: int | None = None,
    ) -> None:
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.pos_embed = _position_table(dim, positional_embeddings, num_positional_embeddings)

        def attention(context_dim: int | None) -> Attention:
            return Attention(
                dim,
                cross_attention_dim=context_dim,
                heads=num_attention_heads,
                dim_head=attention_head_dim,
                bias=attention_bias,
                out_bias=attention_out_bias,
            )

        def layer_norm() -> nn.LayerNorm:
            return nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)

        self.norm1 = layer_norm()
        self.attn1 = attention(cross_attention_dim if only_cross_attention else None)
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = layer_norm()
            self.attn2 = attention(None if double_self_attention else cross_attention_dim)
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = layer_norm()
        self.ff = FeedForward(dim, activation_fn=activation_fn, inner_dim=ff_inner_dim, bias=ff_bias)

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[N, L, dim]`` with context ``[N, L_ctx, cross_attention_dim]`` → ``[N, L, dim]``."""
        return self.mlp_half(self.attention_half(hidden_states, encoder_hidden_states))

    def attention_half(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The two residual attentions (``norm1``/``attn1``, ``norm2``/``attn2``): ``[N, L, dim]`` → same.

        Split from :meth:`mlp_half` because FreeNoise runs this half on windows of the sequence and
        the MLP on the fused whole (:mod:`vidiff.layers.free_noise`).
        """
        self_context = encoder_hidden_states if self.only_cross_attention else None
        hidden_states = hidden_states + self.attn1(self._with_positions(self.norm1(hidden_states)), self_context)
        if self.attn2 is not None:
            normed = self._with_positions(self.norm2(hidden_states))
            hidden_states = hidden_states + self.attn2(normed, encoder_hidden_states)
        return hidden_states

    def mlp_half(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The residual feed-forward (``norm3``/``ff``): ``[N, L, dim]`` → same."""
        return self.ff(self.norm3(hidden_states)).add_(hidden_states)  # in place on the fresh MLP output

    def _with_positions(self, normed: torch.Tensor) -> torch.Tensor:
        return normed if self.pos_embed is None else self.pos_embed(normed)


def _position_table(
    dim: int, positional_embeddings: str | None, num_positional_embeddings: int | None
) -> SinusoidalPositionTable | None:
    if positional_embeddings is None:
        return None
    if positional_embeddings != "sinusoidal":
        raise ValueError(f"positional_embeddings must be None or 'sinusoidal', got {positional_embeddings!r}")
    if num_positional_embeddings is None or num_positional_embeddings < 1:
        raise ValueError(
            "positional_embeddings='sinusoidal' needs num_positional_embeddings (the longest sequence), "
            f"got {num_positional_embeddings!r}"
        )
    return SinusoidalPositionTable(dim, num_positional_embeddings)
