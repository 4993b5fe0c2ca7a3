"""Wan's text conditioning: cleaned prompts → UMT5 states, cut to each prompt's tokens and zero-padded.

What the Wan pipelines do to a prompt, in order (diffusers 0.42.1's ``WanPipeline`` does the same, so the
same text gives the same states):

1. clean it: ``ftfy.fix_text`` (mojibake, odd quotes), ``html.unescape`` twice, strip, then every run of
   whitespace becomes one space;
2. tokenise to exactly ``max_sequence_length`` ids (padded, truncated with a warning, ``</s>`` appended);
3. run UMT5 with the attention mask, keep each prompt's first ``n`` states (n = its real tokens,
   ``</s>`` included) and set the rest to zeros.

The zeros are not masked out later: the transformer's text projection turns them into its bias, and the
cross-attention attends to them, so ``max_sequence_length`` (512 by default) changes the video.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Sequence

import ftfy
import torch

from ..models.umt5 import UMT5EncoderModel
from ..tokenizer import T5TokenizerFast

logger = logging.getLogger(__name__)

# What the Wan pipelines pad every prompt to (the models were trained with 512 text tokens).
DEFAULT_MAX_SEQUENCE_LENGTH = 512


def clean_prompt(text: str) -> str:
    """``text`` as the Wan pipelines feed it to the tokenizer (see the module docstring, step 1)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def encode_wan_prompts(
    tokenizer: T5TokenizerFast,
    text_encoder: UMT5EncoderModel,
    prompts: Sequence[str],
    max_sequence_length: int,
    device: torch.device,
    argument: str = "prompt",
) -> torch.Tensor:
    """UMT5 states ``[N, max_sequence_length, d_model]`` of ``prompts``, each cut to its own tokens and
    zero-padded (module docstring, steps 2–3), in the text encoder's dtype on ``device``."""
    cleaned = [clean_prompt(text) for text in prompts]
    tokens = tokenizer(
        cleaned, padding="max_length", max_length=max_sequence_length, truncation=True,
        add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
    )
    ids, mask = tokens["input_ids"], tokens["attention_mask"]  # [N, L] each
    _warn_if_truncated(tokenizer, cleaned, max_sequence_length, argument)
    lengths = mask.gt(0).sum(dim=1)  # [N] real tokens per prompt
    encoder_device = next(text_encoder.parameters()).device
    states = text_encoder(ids.to(encoder_device), mask.to(encoder_device)).last_hidden_state
    states = states.to(device)  # [N, L, D]
    keep = torch.arange(states.shape[1], device=device)[None, :] < lengths.to(device)[:, None]  # [N, L]
    return torch.where(keep[..., None], states, torch.zeros((), dtype=states.dtype, device=device))


def _warn_if_truncated(tokenizer: T5TokenizerFast, prompts: list[str], max_length: int, argument: str) -> None:
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    cut = [i for i, length in enumerate(lengths) if length > max_length]
    if cut:
        logger.warning(
            "`%s` %s longer than max_sequence_length=%d tokens and was truncated (entries %s)",
            argument, "is" if len(prompts) == 1 else "has entries", max_length, cut,
        )


def check_max_sequence_length(value: object) -> int:
    """``max_sequence_length`` must be an integer ≥ 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`max_sequence_length` must be an integer ≥ 1 (Wan's default: 512), got {value!r}")
    return value
