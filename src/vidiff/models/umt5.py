"""UMT5's encoder (Wan's text encoder, google/umt5-xxl): token ids in, per-token hidden states out.

Parameter names are those transformers' ``UMT5EncoderModel`` writes to disk (``shared.weight``,
``encoder.block.N.layer.0.SelfAttention.{q,k,v,o,relative_attention_bias}``,
``encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}``, the ``layer_norm`` of each sub-layer and
``encoder.final_layer_norm``), so the ``text_encoder`` folders of the Wan checkpoints load as they are.
transformers ties ``encoder.embed_tokens`` to ``shared`` and saves only ``shared.weight`` since
version 5; a file that also (or only) holds ``encoder.embed_tokens.weight`` loads as well.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from .base import PretrainedModel
from .clip_layers import check_activation
from .umt5_layers import UMT5Block, UMT5LayerFF, UMT5LayerNorm, UMT5LayerSelfAttention, relative_position_buckets

# The alias transformers ties to ``shared``; older saves (and some conversions) hold it.
TIED_EMBEDDING_KEY = "encoder.embed_tokens.weight"


@dataclasses.dataclass(frozen=True)
class UMT5Config(Config):
    """Options of a transformers ``umt5`` config; defaults are umt5-xxl as Wan 2.1/2.2 ship it.

    The activation follows ``feed_forward_proj`` as in transformers (``"gated-gelu"`` → gated
    ``gelu_new``; ``"gated-<act>"`` or ``"<act>"``); the file's ``dense_act_fn``/``is_gated_act`` are
    derived copies, kept in :attr:`extra`. Decoder options (``num_decoder_layers`` …) are kept there too.
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "d_model", "d_kv", "d_ff", "num_heads"),
        **ranges(COUNT, "num_layers"),
        **ranges(SIZE, "vocab_size", "relative_attention_num_buckets", "relative_attention_max_distance"),
    }

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1  # training only: vidiff runs the encoder in eval mode
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1

    def __post_init__(self) -> None:
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r} must be '<act>' or 'gated-<act>', "
                "e.g. 'gated-gelu' or 'relu'"
            )
        check_activation(self.activation)
        if self.relative_attention_num_buckets < 4:
            raise ValueError(f"relative_attention_num_buckets={self.relative_attention_num_buckets} must be at least 4")
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 4:
            raise ValueError(
                f"relative_attention_max_distance={self.relative_attention_max_distance} must exceed "
                f"relative_attention_num_buckets // 4 = {self.relative_attention_num_buckets // 4}"
            )

    @property
    def activation(self) -> str:
        """The ``hidden_act`` name of the feed-forward activation (transformers' ``dense_act_fn``)."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"  # what T5 v1.1 / mT5 / UMT5 were trained with
        return self.feed_forward_proj.split("-")[-1]

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    def to_diffusers(self) -> dict[str, Any]:
        """The ``config.json`` dict; names transformers' ``model_type`` so its Auto classes read it."""
        return {
            "model_type": "umt5",
            **super().to_diffusers(),
            "dense_act_fn": self.activation,
            "is_gated_act": self.is_gated_act,
        }


class UMT5Stack(nn.Module):
    """The encoder under the checkpoint name ``encoder``: ``block`` layers, then ``final_layer_norm``.

    It holds no embedding: the token table is :attr:`UMT5EncoderModel.shared` (transformers' tied
    ``encoder.embed_tokens``), looked up by the model.
    """

    def __init__(self, config: UMT5Config) -> None:
        super().__init__()
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        eps = config.layer_norm_epsilon
        self.block = nn.ModuleList(
            UMT5Block([
                UMT5LayerSelfAttention(config.d_model, config.d_kv, config.num_heads, self.num_buckets, eps),
                UMT5LayerFF(config.d_model, config.d_ff, config.activation, config.is_gated_act, eps),
            ])
            for _ in range(config.num_layers)
        )
        self.final_layer_norm = UMT5LayerNorm(config.d_model, eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings [B, L, D] and a 0/1 mask [B, L] (or None) → normed hidden states [B, L, D]."""
        mask = None
        if attention_mask is not None:
            # Additive key mask in the embeddings' dtype: 0 for tokens, the dtype's minimum for padding.
            keep = attention_mask[:, None, None, :].to(device=hidden_states.device, dtype=hidden_states.dtype)
            mask = (1.0 - keep) * torch.finfo(hidden_states.dtype).min  # [B, 1, 1, L]
        length, device = hidden_states.shape[1], hidden_states.device
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance, device)  # [L, L]
        for block in self.block:
            hidden_states = block(hidden_states, buckets, mask)
        return self.final_layer_norm(hidden_states)


def check_token_inputs(config: UMT5Config, input_ids: Any, attention_mask: Any) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument unless the ids and mask fit the model."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    integer = not (input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool)
    if not integer or input_ids.ndim != 2 or input_ids.shape[1] < 1:
        raise ValueError(
            f"input_ids must be an integer tensor [B, L] with L ≥ 1, got {input_ids.dtype} {list(input_ids.shape)}"
        )
    if input_ids.numel() and not (0 <= int(input_ids.min()) and int(input_ids.max()) < config.vocab_size):
        raise ValueError(f"input_ids must be token ids in 0..{config.vocab_size - 1} (vocab_size={config.vocab_size})")
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor or None, got {type(attention_mask).__name__}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have the shape of input_ids {list(input_ids.shape)}, got {list(attention_mask.shape)}"
        )


@dataclasses.dataclass
class UMT5EncoderOutput:
    """``last_hidden_state`` [B, L, d_model]: the encoder's output after ``final_layer_norm``."""

    last_hidden_state: torch.Tensor


class UMT5EncoderModel(PretrainedModel):
    """transformers' ``UMT5EncoderModel`` rebuilt: token ids ``[B, L]`` → hidden states ``[B, L, d_model]``.

    ``model(input_ids, attention_mask)`` returns a :class:`UMT5EncoderOutput` whose ``last_hidden_state``
    is transformers' (so ``model(ids, mask).last_hidden_state`` reads as in diffusers);
    :meth:`encode` returns the tensor itself. Padding keys (mask 0) are hidden from every query; a
    padded position's own state is computed but meaningless (Wan zeroes it). Loading with
    ``dtype=torch.float16`` keeps the feed-forward output projections (``wo``) in float32 as
    transformers does; bfloat16 casts everything. Without ``dtype`` the weights are float32 whatever
    the files store, as in a diffusers pipeline (transformers 5 alone would keep the stored dtype).
    """

    config_class = UMT5Config
    config: UMT5Config
    weights_name = "model"
    library = "transformers"
    # transformers' _keep_in_fp32_modules: asked for float16, it keeps these weights in float32
    # (T5's feed-forward output overflows float16).
    float32_in_float16: ClassVar[tuple[str, ...]] = ("DenseReluDense.wo.weight",)

    def __init__(self, config: UMT5Config) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = UMT5Stack(config)

    @classmethod
    def rename_legacy_keys(cls, state: dict[str, Any]) -> dict[str, Any]:
        """Drop the tied alias ``encoder.embed_tokens.weight``; it becomes ``shared.weight`` when that is absent."""
        if TIED_EMBEDDING_KEY not in state:
            return state
        state = dict(state)
        tied = state.pop(TIED_EMBEDDING_KEY)
        state.setdefault("shared.weight", tied)
        return state

    @classmethod
    def keeps_float32(cls, key: str, dtype: torch.dtype) -> bool:
        """In float16, the feed-forward output projections ``wo`` stay float32 (transformers' rule)."""
        return dtype == torch.float16 and key.endswith(cls.float32_in_float16)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids`` [B, L] and ``attention_mask`` [B, L] (1 = token, 0 = padding; None = all tokens)
        → ``last_hidden_state`` [B, L, d_model] in the embeddings' dtype."""
        check_token_inputs(self.config, input_ids, attention_mask)
        hidden_states = self.shared(input_ids.to(self.shared.weight.device))  # [B, L, D]; UMT5 does not scale it
        return self.encoder(hidden_states, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> UMT5EncoderOutput:
        """:meth:`encode`, wrapped as transformers returns it: ``.last_hidden_state`` [B, L, d_model]."""
        return UMT5EncoderOutput(self.encode(input_ids, attention_mask))
