"""Names older checkpoints gave today's parameters: one table per format, applied before strict loads.

Only renames and skips live here; the tensors themselves are never changed. A model says which of
its blocks a table applies to (the blocks that had the old layout), so a stray old name elsewhere
still fails the strict load, as it does in diffusers and transformers.

- diffusers before 0.14 stored the VAEs' self-attention (then ``AttentionBlock``) projections as
  ``query`` / ``key`` / ``value`` / ``proj_attn``; today's ``Attention`` calls them ``to_q`` /
  ``to_k`` / ``to_v`` / ``to_out.0`` (the ``group_norm`` kept its name). diffusers renames them only
  in the attentions built from that old block: both mid blocks of ``AutoencoderKL``, and the
  encoder's mid block of SVD's ``AutoencoderKLTemporalDecoder`` (its decoder never had one).
- transformers' CLIP towers once saved ``embeddings.position_ids`` (an ``arange`` buffer); transformers
  skips it on load, and vidiff's towers have no such buffer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

# diffusers < 0.14 VAE attention (AttentionBlock) → Attention, per projection: [C, C] weights and [C] biases.
VAE_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def clip_position_ids(tower: str) -> tuple[str, ...]:
    """Regexes of the checkpoint keys a CLIP ``tower`` ("text_model", "vision_model") may hold that
    are buffers, not weights: older transformers saved ``embeddings.position_ids`` (0..L-1)."""
    return (rf"^{re.escape(tower)}\.embeddings\.position_ids$",)


def rename_vae_attention(state: Mapping[str, torch.Tensor], blocks: Sequence[str]) -> dict[str, torch.Tensor]:
    """``state`` with the old attention names under ``blocks`` (e.g. ``"encoder.mid_block"``) renamed.

    A key ``<block>.attentions.<i>.<old>.<weight|bias>`` becomes ``<block>.attentions.<i>.<new>.<...>``
    for each ``block`` in ``blocks``; every other key is kept as it is. A checkpoint that holds both an
    old name and its new name is refused (which one is meant is unknowable).
    """
    if not blocks:
        return dict(state)
    prefixes = "|".join(re.escape(block) for block in blocks)
    olds = "|".join(re.escape(old) for old in VAE_ATTENTION_NAMES)
    pattern = re.compile(rf"^(?P<attention>(?:{prefixes})\.attentions\.\d+)\.(?P<old>{olds})\.(?P<kind>weight|bias)$")
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = pattern.match(key)
        if match is not None:
            key = f"{match['attention']}.{VAE_ATTENTION_NAMES[match['old']]}.{match['kind']}"
            if key in state:
                raise ValueError(f"checkpoint holds both {match.group(0)} and its current name {key}")
        renamed[key] = tensor
    return renamed
