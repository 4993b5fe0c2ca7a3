"""Multi-head attention on PyTorch's fused SDPA kernel, and the transformer feed-forward.

Parameter names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``, ``group_norm``, ``net.0.proj``,
``net.2``) are those of the published diffusers checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .chunking import Chunking, run_chunked
from .frames import images_to_tokens, tokens_to_images
from .ip_attention import IPAdapterBranch


class Attention(nn.Module):
    """Self- or cross-attention over token sequences ``[N, L, query_dim]``.

    ``cross_attention_dim`` sets the width of the context the keys/values come from (default: the
    query width, i.e. self-attention). ``norm_num_groups`` adds a GroupNorm before the
    projections and ``residual_connection`` adds the input back after them — the VAE mid-block
    form, which also accepts image input ``[N, C, H, W]`` and returns that shape.
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        bias: bool = False,
        out_bias: bool = True,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        residual_connection: bool = False,
        rescale_output_factor: float = 1.0,
    ) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.residual_connection = residual_connection
        self.rescale_output_factor = rescale_output_factor
        self.group_norm = (
            nn.GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups is not None else None
        )
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        # A list for the checkpoint's "to_out.0" name; the dropout that followed it is inference-inert.
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=out_bias)])
        # Set by forward chunking (vidiff.layers.chunking); None runs every query at once.
        self.chunking: Chunking | None = None
        # An IP-Adapter's image branch (vidiff.layers.ip_attention), set on cross-attentions by
        # load_ip_adapter; None (and a branch without image tokens) leaves this layer's math unchanged.
        self.ip_adapter: IPAdapterBranch | None = None

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``hidden_states`` ``[N, L, C]`` (or ``[N, C, H, W]``), context ``[N, L_ctx, D]`` → input's shape."""
        if hidden_states.ndim == 4:
            return self._forward_image(hidden_states, encoder_hidden_states)
        residual = hidden_states
        if self.group_norm is not None:
            hidden_states = self.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        out = self._attend(hidden_states, encoder_hidden_states)
        return self._finish(out, residual)

    def _forward_image(self, images: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        height, width = images.shape[-2:]
        normed = self.group_norm(images) if self.group_norm is not None else images
        out = self._attend(images_to_tokens(normed), context)  # [N, H·W, C]
        out = tokens_to_images(out, height, width)
        return self._finish(out, images)

    def _finish(self, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.residual_connection:
            # residual first: the sum takes its (contiguous NCHW) layout, not the token view's.
            out = residual + out
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out

    def _attend(self, tokens: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        # tokens [N, L, C_q]; context [N_ctx, L_ctx, D] or None (self-attention). N_ctx may divide N:
        # each context row then serves N / N_ctx consecutive token rows (a video's context shared by
        # its frames), and its keys/values are projected once instead of once per frame.
        if context is not None and self.ip_adapter is not None and self.ip_adapter.attached:
            return self._attend_with_images(tokens, context)
        source = tokens if context is None else context
        repeats = _rows_per_context(tokens, source)
        if source.shape[1] == 1:
            # A single key: the softmax weight is exactly 1, so every query receives the value
            # itself. Skipping q/k and the kernel is exact (SVD's image-embedding cross-attention).
            value = self.to_out[0](self.to_v(source))  # [N_ctx, 1, C_q]
            value = value.repeat_interleave(repeats, dim=0) if repeats > 1 else value
            return value.expand(tokens.shape[0], tokens.shape[1], value.shape[-1])
        if repeats == 1 and (self.chunking is None or self.chunking.dim == 0):
            return run_chunked(self._attend_rows, self.chunking, tokens, source)
        # Keys/values once, repeated to the token rows (copies of [N, heads, L_ctx, dim_head], no
        # matmul); then whole rows or query slices against them.
        key = self._split_heads(self.to_k(source))
        value = self._split_heads(self.to_v(source))
        if repeats > 1:
            key, value = key.repeat_interleave(repeats, dim=0), value.repeat_interleave(repeats, dim=0)
        return run_chunked(self._attend_projected, self.chunking, tokens, key, value)

    def _attend_rows(self, tokens: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        key = self._split_heads(self.to_k(source))
        value = self._split_heads(self.to_v(source))
        return self._attend_projected(tokens, key, value)

    def _attend_projected(self, tokens: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        # tokens [N, L, C_q]; key/value [N, heads, L_ctx, dim_head] → [N, L, C_q]
        count, length, _ = tokens.shape
        query = self._split_heads(self.to_q(tokens))
        out = F.scaled_dot_product_attention(query, key, value)  # [N, heads, L, dim_head]
        out = out.transpose(1, 2).reshape(count, length, -1)
        return self.to_out[0](out)

    def _attend_with_images(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # context [N_ctx, L_text + ΣT_i, D]: text states, then each IP-Adapter's image tokens. The
        # queries attend to the text and to each image group separately (IP-Adapter's decoupled
        # cross-attention); adapters at scale 0 are skipped, as diffusers skips them.
        branch = self.ip_adapter
        text, groups = branch.split(context)
        repeats = _rows_per_context(tokens, text)

        def keys_values(source: torch.Tensor, to_k: nn.Module, to_v: nn.Module) -> list[torch.Tensor]:
            key, value = self._split_heads(to_k(source)), self._split_heads(to_v(source))
            if repeats > 1:  # a video's context serves its frames' rows
                key, value = key.repeat_interleave(repeats, dim=0), value.repeat_interleave(repeats, dim=0)
            return [key, value]

        projected = keys_values(text, self.to_k, self.to_v)
        scales = []
        for group, to_k, to_v, scale in zip(groups, branch.to_k_ip, branch.to_v_ip, branch.scales):
            if scale != 0:
                projected += keys_values(group, to_k, to_v)
                scales.append(scale)

        def attend(rows: torch.Tensor, *keys_and_values: torch.Tensor) -> torch.Tensor:
            # rows [n, L, C_q]; keys/values [n, heads, L_k, dim_head], text first → [n, L, C_q]
            count, length, _ = rows.shape
            query = self._split_heads(self.to_q(rows))
            out = F.scaled_dot_product_attention(query, keys_and_values[0], keys_and_values[1])
            for index, scale in enumerate(scales):
                key, value = keys_and_values[2 + 2 * index], keys_and_values[3 + 2 * index]
                out = out + scale * F.scaled_dot_product_attention(query, key, value)
            return self.to_out[0](out.transpose(1, 2).reshape(count, length, -1))

        return run_chunked(attend, self.chunking, tokens, *projected)

    def _split_heads(self, projected: torch.Tensor) -> torch.Tensor:
        # [N, L, heads·dim_head] → [N, heads, L, dim_head] (a view; SDPA accepts the strides)
        count, length, width = projected.shape
        return projected.view(count, length, self.heads, width // self.heads).transpose(1, 2)


def _rows_per_context(tokens: torch.Tensor, source: torch.Tensor) -> int:
    """How many token rows share each context row: ``N / N_ctx`` (1 for self-attention)."""
    if source is tokens or source.shape[0] == tokens.shape[0]:
        return 1
    if source.shape[0] == 0 or tokens.shape[0] % source.shape[0]:
        raise ValueError(
            f"the context's batch ({source.shape[0]}) must equal or divide the tokens' batch ({tokens.shape[0]})"
        )
    return tokens.shape[0] // source.shape[0]


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, half of it gates the other half."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return value * F.gelu(gate)


class GELU(nn.Module):
    """A projection followed by GELU (``approximate="tanh"`` for the tanh form)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states), approximate=self.approximate)


class FeedForward(nn.Module):
    """Transformer MLP: activation projection ``net.0`` then output projection ``net.2``.

    ``activation_fn`` is ``"geglu"`` (SD/SVD), ``"gelu"`` or ``"gelu-approximate"``.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        mult: int = 4,
        activation_fn: str = "geglu",
        inner_dim: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        inner_dim = inner_dim if inner_dim is not None else int(dim * mult)
        if activation_fn == "geglu":
            activation: nn.Module = GEGLU(dim, inner_dim, bias=bias)
        elif activation_fn == "gelu":
            activation = GELU(dim, inner_dim, bias=bias)
        elif activation_fn == "gelu-approximate":
            activation = GELU(dim, inner_dim, approximate="tanh", bias=bias)
        else:
            raise ValueError(
                f"activation_fn must be 'geglu', 'gelu' or 'gelu-approximate', got {activation_fn!r}"
            )
        # Index 1 held a dropout in training; Identity keeps the output projection at "net.2".
        self.net = nn.ModuleList(
            [activation, nn.Identity(), nn.Linear(inner_dim, dim_out or dim, bias=bias)]
        )
        # Set by forward chunking (vidiff.layers.chunking); None runs every token at once.
        self.chunking: Chunking | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return run_chunked(self._project, self.chunking, hidden_states)

    def _project(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](hidden_states))
