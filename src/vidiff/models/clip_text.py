"""CLIP's text tower: token ids in, per-token hidden states (and a pooled sentence vector) out.

Parameter names are those of transformers' ``CLIPTextModel`` / ``CLIPTextModelWithProjection``
(``text_model.embeddings.token_embedding.weight``, ``text_model.encoder.layers.N.*``,
``text_model.final_layer_norm.*``, ``text_projection.weight``), so the ``text_encoder`` folders of
Stable Diffusion 1.5 (AnimateDiff) and I2VGen-XL load as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from .base import PretrainedModel
from .clip_layers import CLIPEncoder, check_tower_options
from .legacy_keys import clip_position_ids

# Configs written before transformers PR #24773 say eos_token_id=2; their models pool at the highest
# token id instead (CLIP's end token is the last entry of its vocabulary).
LEGACY_EOS_TOKEN_ID = 2


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(Config):
    """Options of a transformers ``clip_text_model`` config; defaults are Stable Diffusion 1.5's text
    encoder (OpenAI CLIP ViT-L/14). Keys such as ``attention_dropout`` or ``use_attention_mask`` are
    kept in :attr:`extra`."""

    int_ranges: ClassVar = {
        **ranges(WIDTH, "hidden_size", "intermediate_size", "num_attention_heads", "projection_dim"),
        **ranges(COUNT, "num_hidden_layers"),
        **ranges(SIZE, "vocab_size", "max_position_embeddings"),
    }

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    num_hidden_layers: int = 12
    max_position_embeddings: int = 77
    projection_dim: int = 768
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = LEGACY_EOS_TOKEN_ID

    def __post_init__(self) -> None:
        check_tower_options(self)
        for name in ("vocab_size", "max_position_embeddings", "num_hidden_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if isinstance(self.eos_token_id, bool) or not isinstance(self.eos_token_id, int):
            raise ValueError(f"eos_token_id must be one int token id, got {self.eos_token_id!r}")

    def to_diffusers(self) -> dict[str, Any]:
        """The ``config.json`` dict; always names transformers' ``model_type`` so its Auto classes read it."""
        return {"model_type": "clip_text_model", **super().to_diffusers()}


@dataclasses.dataclass
class CLIPTextOutput:
    """``last_hidden_state`` [N, L, D] (after the final norm) and ``pooled_output`` [N, D] (its row at
    each sequence's end token)."""

    last_hidden_state: torch.Tensor
    pooled_output: torch.Tensor


class CLIPTextEmbeddings(nn.Module):
    """Token embedding plus a learned absolute position embedding."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids`` [N, L] → [N, L, D]."""
        length = input_ids.shape[1]
        # Positions are always 0..L-1, so slicing the table replaces transformers' position_ids buffer.
        positions = self.position_embedding.weight[:length].unsqueeze(0)  # [1, L, D]
        return self.token_embedding(input_ids) + positions


def attention_mask_for_text(attention_mask: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor:
    """Boolean mask (``True`` = may attend) [N or 1, 1, L, L]: causal, and padding keys hidden.

    A query whose every allowed key is padding (left padding) gets an all-``False`` row; SDPA returns
    zeros for such rows, and no real token attends to those positions, so they stay contained.
    """
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()  # [L, L] query × key
    if attention_mask is None:
        return causal[None, None]
    keys = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # [N, 1, 1, L]
    return causal[None, None] & keys


class CLIPTextTransformer(nn.Module):
    """Embeddings → causal encoder → final norm; the module under the checkpoint name ``text_model``."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.eos_token_id = config.eos_token_id
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder.for_tower(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, num_layers: int | None = None
    ) -> torch.Tensor:
        """``input_ids`` [N, L] → the output of the first ``num_layers`` layers (all by default), normed
        by ``final_layer_norm``: [N, L, D]."""
        hidden_states = self.embeddings(input_ids)  # [N, L, D]
        mask = attention_mask_for_text(attention_mask, input_ids.shape[1], hidden_states.device)
        hidden_states = self.encoder(hidden_states, mask, num_layers=num_layers)
        return self.final_layer_norm(hidden_states)

    def pool(self, last_hidden_state: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The row of ``last_hidden_state`` [N, L, D] at each sequence's end token → [N, D]."""
        ids = input_ids.to(last_hidden_state.device)
        if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
            # Legacy configs: the end token has the highest id in the vocabulary.
            positions = ids.argmax(dim=-1)
        else:
            # The first end token (padding may reuse the same id); argmax finds the first True.
            positions = (ids == self.eos_token_id).int().argmax(dim=-1)
        rows = torch.arange(ids.shape[0], device=ids.device)
        return last_hidden_state[rows, positions]


def check_text_inputs(config: CLIPTextConfig, input_ids: Any, attention_mask: Any) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument unless the ids and mask fit the model."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.ndim != 2:
        raise ValueError(f"input_ids must be an integer tensor [N, L], got {input_ids.dtype} {list(input_ids.shape)}")
    if not 1 <= input_ids.shape[1] <= config.max_position_embeddings:
        raise ValueError(
            f"input_ids has {input_ids.shape[1]} tokens per sequence; this text encoder takes 1.."
            f"{config.max_position_embeddings} (max_position_embeddings)"
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


def layers_to_run(config: CLIPTextConfig, clip_skip: int | None) -> int:
    """How many encoder layers a ``clip_skip`` keeps: None → all; k → all but the last k."""
    if clip_skip is None:
        return config.num_hidden_layers
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int):
        raise TypeError(f"clip_skip must be None or an int, got {clip_skip!r}")
    if not 0 <= clip_skip <= config.num_hidden_layers:
        raise ValueError(
            f"clip_skip={clip_skip} must be between 0 and num_hidden_layers={config.num_hidden_layers}"
        )
    return config.num_hidden_layers - clip_skip


class _CLIPTextTowerModel(PretrainedModel):
    """What both text models share: the ``text_model`` tower, checkpoint settings and :meth:`encode`."""

    config_class = CLIPTextConfig
    config: CLIPTextConfig
    weights_name = "model"
    library = "transformers"
    # Checkpoints saved by older transformers versions (e.g. SD 1.5's) hold the position-index buffer.
    ignored_checkpoint_keys: ClassVar[tuple[str, ...]] = clip_position_ids("text_model")

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__(config)
        self.text_model = CLIPTextTransformer(config)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, clip_skip: int | None = None
    ) -> torch.Tensor:
        """Hidden states [N, L, D] for ``input_ids`` [N, L], with diffusers' ``clip_skip`` meaning.

        ``clip_skip=None`` (or 0): the last layer's output; ``k`` ≥ 1: the output ``k`` layers before
        the last (transformers' ``hidden_states[-(k + 1)]``). Either way ``final_layer_norm`` is applied.
        ``attention_mask`` [N, L] (1 = token, 0 = padding) hides padding keys; Stable Diffusion passes none.
        """
        check_text_inputs(self.config, input_ids, attention_mask)
        num_layers = layers_to_run(self.config, clip_skip)
        return self.text_model(input_ids, attention_mask, num_layers=num_layers)


class CLIPTextModel(_CLIPTextTowerModel):
    """transformers' ``CLIPTextModel`` rebuilt: token ids ``[N, L]`` → hidden states ``[N, L, D]``.

    ``forward`` gives the last hidden state (after ``final_layer_norm``), what Stable Diffusion
    conditions on; :meth:`encode` adds diffusers' ``clip_skip``; :meth:`encode_with_pooled` also
    returns the pooled end-token vector.
    """

    def encode_with_pooled(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> CLIPTextOutput:
        """The last hidden state and the pooled output (see :class:`CLIPTextOutput`)."""
        last_hidden_state = self.encode(input_ids, attention_mask)
        return CLIPTextOutput(last_hidden_state, self.text_model.pool(last_hidden_state, input_ids))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids`` [N, L] → ``last_hidden_state`` [N, L, D] (after ``final_layer_norm``)."""
        return self.encode(input_ids, attention_mask)


class CLIPTextModelWithProjection(_CLIPTextTowerModel):
    """transformers' ``CLIPTextModelWithProjection``: the text tower plus ``text_projection``.

    ``forward`` gives ``text_embeds`` [N, projection_dim] (the projected pooled output);
    :meth:`encode` gives hidden states [N, L, D] with ``clip_skip``, as :meth:`CLIPTextModel.encode`.
    """

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids`` [N, L] → ``text_embeds`` [N, projection_dim]."""
        last_hidden_state = self.encode(input_ids, attention_mask)
        return self.text_projection(self.text_model.pool(last_hidden_state, input_ids))
