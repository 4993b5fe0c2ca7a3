"""The parts of Wan's video diffusion transformer: attention, the block, the condition embeddings.

Attribute names are those of diffusers' Wan checkpoints (``attn1``, ``attn2.add_k_proj``,
``condition_embedder.time_embedder.linear_1``, ``scale_shift_table`` …) so they load unchanged.
Where a computation runs in float32 whatever the weights' dtype, the comment says so: those
upcasts are part of the numbers the released checkpoints give.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..layers.attention import FeedForward
from ..layers.chunking import Chunking, run_chunked
from ..layers.embeddings import TimestepEmbedding, sinusoidal_embedding
from ..layers.normalization import Float32LayerNorm
from ..layers.rotary import apply_rotary_pairs

# Wan's text context is always padded to 512 UMT5 tokens; in a transformer with an image branch the
# tokens before those 512 are the image tokens (the reference code hard-codes this length too).
TEXT_CONTEXT_TOKENS = 512


class WanAttention(nn.Module):
    """Multi-head attention with RMS-normalised queries and keys (over all heads at once).

    Self-attention (``context=None``) rotates queries and keys by ``rotary`` (cos, sin tables
    ``[L, head_dim/2]``). Cross-attention attends to ``context`` ``[N, L_ctx, dim]``; with
    ``added_kv_proj_dim`` (Wan 2.1 I2V) the first ``L_ctx − 512`` context tokens are image tokens,
    attended separately through ``add_k_proj``/``add_v_proj`` and added to the text result.
    """

    def __init__(self, dim: int, heads: int, eps: float, added_kv_proj_dim: int | None = None) -> None:
        super().__init__()
        inner_dim = (dim // heads) * heads
        self.heads = heads
        self.to_q = nn.Linear(dim, inner_dim)
        self.to_k = nn.Linear(dim, inner_dim)
        self.to_v = nn.Linear(dim, inner_dim)
        # A list for the checkpoint's "to_out.0" name; the dropout after it is inference-inert.
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, dim)])
        self.norm_q = nn.RMSNorm(inner_dim, eps=eps)
        self.norm_k = nn.RMSNorm(inner_dim, eps=eps)
        self.add_k_proj = self.add_v_proj = self.norm_added_k = None
        if added_kv_proj_dim is not None:
            self.add_k_proj = nn.Linear(added_kv_proj_dim, inner_dim)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, inner_dim)
            self.norm_added_k = nn.RMSNorm(inner_dim, eps=eps)
        # Set by forward chunking (vidiff.layers.chunking): slices of the batch (dim 0) or of the
        # queries (dim 1); None runs every query at once.
        self.chunking: Chunking | None = None

    def forward(
        self,
        states: torch.Tensor,
        context: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``states`` ``[N, L, dim]``, ``context`` ``[N, L_ctx, dim]`` or None → ``[N, L, dim]``."""
        image_context = None
        if context is None:
            context = states
        elif self.add_k_proj is not None:
            # Python slicing as the reference: a context shorter than 512 tokens splits from the end.
            split = context.shape[1] - TEXT_CONTEXT_TOKENS
            image_context, context = context[:, :split], context[:, split:]
        query = self._heads(self.norm_q(self.to_q(states)))  # [N, L, heads, head_dim]
        key = self._heads(self.norm_k(self.to_k(context)))
        value = self._heads(self.to_v(context))
        if rotary is not None:
            query, key = apply_rotary_pairs(query, *rotary), apply_rotary_pairs(key, *rotary)
        keys_values = [key, value]
        if image_context is not None:
            keys_values += [
                self._heads(self.norm_added_k(self.add_k_proj(image_context))),
                self._heads(self.add_v_proj(image_context)),
            ]
        return run_chunked(self._attend, self.chunking, query, *keys_values)

    def _heads(self, projected: torch.Tensor) -> torch.Tensor:
        return projected.unflatten(2, (self.heads, -1))  # [N, L, heads·head_dim] → [N, L, heads, head_dim]

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *image: torch.Tensor) -> torch.Tensor:
        # [n, l, heads, head_dim] queries against [n, L_k, heads, head_dim] keys/values → [n, l, dim]
        def sdpa(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k, v = (t.transpose(1, 2) for t in (query, k, v))
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2).type_as(query)

        out = sdpa(key, value)
        if image:
            out = out + sdpa(*image)
        return self.to_out[0](out)


class WanTransformerBlock(nn.Module):
    """Self-attention with RoPE, text (and image) cross-attention, a GELU-tanh MLP; adaLN-modulated.

    ``scale_shift_table`` ``[1, 6, dim]`` plus the timestep projection gives, in float32, the shift,
    scale and gate of the self-attention and of the MLP; cross-attention is not modulated.
    """

    def __init__(
        self, dim: int, ffn_dim: int, heads: int, cross_attn_norm: bool, eps: float, added_kv_proj_dim: int | None
    ) -> None:
        super().__init__()
        self.norm1 = Float32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, heads, eps)
        self.attn2 = WanAttention(dim, heads, eps, added_kv_proj_dim)
        self.norm2 = Float32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else None
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = Float32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        states: torch.Tensor,
        context: torch.Tensor,
        time_projection: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """``states`` ``[B, L, dim]``; ``time_projection`` ``[B, 6, dim]`` (one timestep per video) or
        ``[B, L, 6, dim]`` (one per token) → ``[B, L, dim]`` in the states' dtype."""
        shift, scale, gate, mlp_shift, mlp_scale, mlp_gate = modulation(self.scale_shift_table, time_projection)
        dtype = states.dtype
        normed = (self.norm1(states.float()) * (1 + scale) + shift).to(dtype)
        states = (states.float() + self.attn1(normed, None, rotary) * gate).to(dtype)
        normed = self.norm2(states.float()).to(dtype) if self.norm2 is not None else states
        states = states + self.attn2(normed, context)
        normed = (self.norm3(states.float()) * (1 + mlp_scale) + mlp_shift).to(dtype)
        return (states.float() + self.ffn(normed).float() * mlp_gate).to(dtype)


def modulation(table: torch.Tensor, projection: torch.Tensor, upcast: bool = True) -> tuple[torch.Tensor, ...]:
    """The adaLN terms: ``table`` ``[1, k, dim]`` plus ``projection`` ``[B, k, dim]`` → k tensors
    ``[B, 1, dim]``, or plus ``[B, L, k, dim]`` (per-token timesteps) → k tensors ``[B, L, dim]``.

    ``upcast`` adds the projection in float32 (the blocks do; the output head adds it as it is)."""
    projection = projection.float() if upcast else projection
    if projection.ndim == 4:
        return (table.unsqueeze(0) + projection).unbind(2)
    return (table + projection).chunk(table.shape[1], dim=1)


class WanTextProjection(nn.Module):
    """Text states ``[B, L, text_dim]`` → ``[B, L, dim]``: Linear, GELU (tanh form), Linear."""

    def __init__(self, text_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(text_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(text), approximate="tanh"))


class WanImageEmbedding(nn.Module):
    """CLIP image states ``[B, T, image_dim]`` → image tokens ``[B, T, dim]`` (float32 LayerNorms
    around a GELU MLP). With ``pos_embed_seq_len`` (Wan 2.1 FLF2V) consecutive pairs of images (first
    and last frame) are joined into one sequence ``[B/2, 2T, image_dim]`` plus a learned position table;
    states already joined per video (``[B, pos_embed_seq_len, image_dim]``) are taken as they are."""

    def __init__(self, image_dim: int, dim: int, pos_embed_seq_len: int | None) -> None:
        super().__init__()
        self.norm1 = Float32LayerNorm(image_dim)
        self.ff = FeedForward(image_dim, dim, mult=1, activation_fn="gelu")
        self.norm2 = Float32LayerNorm(dim)
        self.pos_embed = None
        if pos_embed_seq_len is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, pos_embed_seq_len, image_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            _, tokens, width = image.shape
            if tokens == self.pos_embed.shape[1]:  # already one [first ‖ last] sequence per video
                return self.norm2(self.ff(self.norm1(image + self.pos_embed)))
            if image.shape[0] % 2 or 2 * tokens != self.pos_embed.shape[1]:
                raise ValueError(
                    f"encoder_hidden_states_image of shape {tuple(image.shape)} cannot be paired into sequences of "
                    f"pos_embed_seq_len={self.pos_embed.shape[1]} tokens: pass first and last images in pairs "
                    f"of {self.pos_embed.shape[1] // 2} tokens each"
                )
            image = image.reshape(-1, 2 * tokens, width) + self.pos_embed
        return self.norm2(self.ff(self.norm1(image)))


class WanConditionEmbedder(nn.Module):
    """Timesteps, text states and image states → what the blocks consume.

    Timesteps ``[N]`` become a sinusoid (float32), then the MLP ``time_embedder`` (in its weights'
    dtype) gives ``temb`` ``[N, dim]`` in the text's dtype, and ``time_proj`` the six modulation
    vectors per block ``[N, 6·dim]``. With per-token timesteps, ``N = B·L`` is unflattened to ``[B, L]``.
    """

    def __init__(
        self, dim: int, freq_dim: int, text_dim: int, image_dim: int | None, pos_embed_seq_len: int | None
    ) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = TimestepEmbedding(freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = WanTextProjection(text_dim, dim)
        self.image_embedder = None
        if image_dim is not None:
            self.image_embedder = WanImageEmbedding(image_dim, dim, pos_embed_seq_len)

    def forward(
        self,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        image: torch.Tensor | None,
        tokens_per_timestep_row: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """→ ``temb`` ``[B(, L), dim]``, time projection ``[B(, L), 6·dim]``, text ``[B, L_text, dim]``, image."""
        sinusoid = sinusoidal_embedding(timesteps, self.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        if tokens_per_timestep_row is not None:
            sinusoid = sinusoid.unflatten(0, (-1, tokens_per_timestep_row))  # [B, L, freq_dim]
        sinusoid = sinusoid.to(self.time_embedder.linear_1.weight.dtype)
        temb = self.time_embedder(sinusoid).to(text.dtype)
        time_projection = self.time_proj(F.silu(temb))
        text = self.text_embedder(text)
        if image is not None:
            image = self.image_embedder(image)
        return temb, time_projection, text, image
