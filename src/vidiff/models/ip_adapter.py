"""IP-Adapter (Ye et al. 2023) for Stable-Diffusion-family UNets: image projections and UNet wiring.

An IP-Adapter turns a CLIP image encoding into a few *image tokens* of the UNet's text width and
lets every spatial cross-attention attend to them next to the text (decoupled cross-attention,
:mod:`vidiff.layers.ip_attention`). Two projections exist for SD 1.5:

- ``ip-adapter_sd15``: :class:`ImageProjection`, the CLIP image embedding ``[N, 1024]`` → a linear
  layer → LayerNorm → 4 tokens ``[N, 4, 768]``;
- ``ip-adapter-plus_sd15``: :class:`IPAdapterPlusImageProjection`, a perceiver resampler: 16 learned
  queries attend to the CLIP tower's penultimate hidden states ``[N, 257, 1280]`` → ``[N, 16, 768]``.

Module names are diffusers' (``image_embeds``, ``norm``, ``layers.i.ln0``, ``layers.i.attn.to_q`` …),
so a UNet carrying an adapter has diffusers' ``encoder_hid_proj.image_projection_layers.k`` paths; the
original file layout is converted by :mod:`vidiff.models.ip_adapter_keys`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers.attention import Attention, FeedForward
from ..layers.ip_attention import IPAdapterBranch

# The resampler's attention head width, fixed in the IP-Adapter code (heads = to_q rows / 64).
RESAMPLER_HEAD_DIM = 64


class ImageProjection(nn.Module):
    """``ip-adapter_sd15``'s projection: image embeds ``[N, image_embed_dim]`` → ``[N, T, cross_attention_dim]``."""

    def __init__(self, image_embed_dim: int, cross_attention_dim: int, num_image_text_embeds: int = 4) -> None:
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        projected = self.image_embeds(image_embeds.to(self.image_embeds.weight.dtype))  # [N, T·C]
        return self.norm(projected.reshape(image_embeds.shape[0], self.num_image_text_embeds, -1))


class IPAdapterPlusImageProjectionBlock(nn.Module):
    """One resampler layer: the queries attend to [image features; queries], then a residual MLP."""

    def __init__(self, dim: int, heads: int, ff_inner_dim: int) -> None:
        super().__init__()
        self.ln0 = nn.LayerNorm(dim)  # on the image features
        self.ln1 = nn.LayerNorm(dim)  # on the queries
        self.attn = Attention(dim, heads=heads, dim_head=RESAMPLER_HEAD_DIM, out_bias=False)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim), FeedForward(dim, activation_fn="gelu", inner_dim=ff_inner_dim, bias=False)
        )

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``features`` ``[N, L, dim]``, ``latents`` (queries) ``[N, Q, dim]`` → ``[N, Q, dim]``."""
        queries = self.ln1(latents)
        context = torch.cat([self.ln0(features), queries], dim=-2)  # keys see the image and the queries
        latents = self.attn(queries, context) + latents
        return self.ff(latents) + latents


class IPAdapterPlusImageProjection(nn.Module):
    """``ip-adapter-plus``'s perceiver resampler: hidden states ``[N, L, embed_dims]`` → ``[N, Q, output_dims]``.

    ``num_queries`` learned queries (``latents``) of width ``hidden_dims`` go through ``depth`` blocks
    of ``heads`` × 64-wide attention and an MLP of width ``ff_inner_dim`` (4 × ``hidden_dims``).
    """

    def __init__(
        self, embed_dims: int, output_dims: int, hidden_dims: int, depth: int, heads: int, num_queries: int,
        ff_inner_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, hidden_dims) / hidden_dims**0.5)
        self.proj_in = nn.Linear(embed_dims, hidden_dims)
        self.proj_out = nn.Linear(hidden_dims, output_dims)
        self.norm_out = nn.LayerNorm(output_dims)
        inner = ff_inner_dim if ff_inner_dim is not None else 4 * hidden_dims
        self.layers = nn.ModuleList([IPAdapterPlusImageProjectionBlock(hidden_dims, heads, inner) for _ in range(depth)])

    @property
    def num_image_text_embeds(self) -> int:
        return self.latents.shape[1]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(hidden_states.to(self.proj_in.weight.dtype))  # [N, L, hidden_dims]
        latents = self.latents.expand(hidden_states.shape[0], -1, -1)  # [N, Q, hidden_dims]
        for block in self.layers:
            latents = block(features, latents)
        return self.norm_out(self.proj_out(latents))


class MultiIPAdapterImageProjection(nn.Module):
    """The projections of every loaded adapter (diffusers' ``unet.encoder_hid_proj``).

    ``forward`` takes one tensor per adapter, ``[B, n, D]`` (image embeds) or ``[B, n, L, D]`` (hidden
    states) for ``n`` images per video, and returns ``[B, n, T, C]`` each.
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.image_projection_layers = nn.ModuleList(layers)

    @property
    def num_ip_adapters(self) -> int:
        return len(self.image_projection_layers)

    def forward(self, image_embeds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(image_embeds) != self.num_ip_adapters:
            raise ValueError(
                f"got image embeddings for {len(image_embeds)} IP-Adapter(s); {self.num_ip_adapters} are loaded"
            )
        projected = []
        for embeds, layer in zip(image_embeds, self.image_projection_layers):
            batch, count = embeds.shape[:2]
            tokens = layer(embeds.flatten(0, 1))  # [(B·n), T, C]
            projected.append(tokens.reshape(batch, count, *tokens.shape[1:]))
        return projected


def cross_attention_layers(unet: nn.Module) -> list[tuple[str, Attention]]:
    """The UNet's image cross-attentions in the IP-Adapter files' order: down, up, then mid stage.

    The original files number the layers 1, 3, 5 … in diffusers' ``UNet2DConditionModel`` module order
    (down blocks, up blocks, mid block), whatever order a vidiff UNet registers its stages in. Motion
    modules' attentions (self-attention over frames) take no image tokens.
    """
    found = [
        (name, module) for name, module in unet.named_modules()
        if name.endswith(".attn2") and ".attentions." in name and isinstance(module, Attention)
    ]
    stage_order = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}
    return sorted(found, key=lambda item: stage_order.get(item[0].split(".")[0], 3))  # stable within a stage


def ip_adapter_branches(unet: nn.Module) -> list[IPAdapterBranch]:
    """Every IP-Adapter branch installed on the UNet's cross-attentions."""
    return [attention.ip_adapter for _, attention in cross_attention_layers(unet) if attention.ip_adapter is not None]


def attach_image_tokens(
    unet: nn.Module, context: torch.Tensor, image_embeds: Sequence[torch.Tensor], batch: int, num_frames: int
) -> torch.Tensor:
    """Project ``image_embeds`` with ``unet.encoder_hid_proj`` and append the tokens to ``context``.

    ``context`` is ``[B, L, D]`` (per video) or ``[(B·F), L, D]`` (per frame); each adapter's embeds are
    ``[B, n, …]``. Returns ``[rows, L + Σ n·T_i, D]`` and tells every branch its group sizes (until
    :func:`detach_image_tokens`).
    """
    if len(image_embeds) == 0 or any(not isinstance(e, torch.Tensor) or e.shape[0] != batch for e in image_embeds):
        shapes = [list(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__ for e in image_embeds]
        raise ValueError(f"image_embeds must be one tensor [B={batch}, n, …] per IP-Adapter, got {shapes}")
    groups = [tokens.flatten(1, 2).to(context.dtype) for tokens in unet.encoder_hid_proj(image_embeds)]  # [B, n·T, C]
    if context.shape[0] != batch:  # per-frame context: frames of a video consecutive
        groups = [tokens.repeat_interleave(context.shape[0] // batch, dim=0) for tokens in groups]
    counts = [tokens.shape[1] for tokens in groups]
    for branch in ip_adapter_branches(unet):
        branch.set_token_counts(counts)
    return torch.cat([context, *groups], dim=1)


def detach_image_tokens(unet: nn.Module) -> None:
    """Forget the group sizes set by :func:`attach_image_tokens` (the UNet's context is text again)."""
    for branch in ip_adapter_branches(unet):
        branch.set_token_counts(())
