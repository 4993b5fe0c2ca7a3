"""Text conditioning shared by the text-to-video pipelines: prompts → CLIP hidden states.

The contract is that of diffusers' Stable Diffusion ``encode_prompt``: pad every prompt to the
tokenizer's ``model_max_length`` (77 for CLIP), truncate longer ones with a warning naming the dropped
text, pass the attention mask only to text encoders whose config sets ``use_attention_mask``, and
take diffusers' ``clip_skip`` (hidden state k layers before the last, then the final norm). An empty
or missing negative prompt encodes ``""``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # only for annotations: importing the tokenizer module loads transformers
    from ..models.clip_text import CLIPTextModel
    from ..tokenizer import CLIPTokenizer

logger = logging.getLogger(__name__)

PromptInput = str | Sequence[str]


def _is_prompt_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)


def as_prompt_list(prompt: PromptInput, argument: str = "prompt") -> list[str]:
    """``prompt`` as a non-empty list of strings (one string → a list of one)."""
    if isinstance(prompt, str):
        return [prompt]
    if not _is_prompt_list(prompt):
        raise TypeError(f"`{argument}` must be a str or a list of str, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError(f"`{argument}` is an empty list; give at least one prompt")
    return list(prompt)


def _check_embeds(name: str, embeds: Any) -> None:
    if not isinstance(embeds, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor [N, L, D], got {type(embeds).__name__}")
    if embeds.ndim != 3:
        raise ValueError(f"`{name}` must have shape [N, L, D] (text-encoder hidden states), got {list(embeds.shape)}")


def check_prompt_arguments(
    prompt: PromptInput | None,
    prompt_embeds: torch.Tensor | None,
    negative_prompt: PromptInput | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
) -> None:
    """Validate a pipeline's text arguments before any work is done.

    Exactly one of ``prompt`` / ``prompt_embeds``; at most one of ``negative_prompt`` /
    ``negative_prompt_embeds``; embeddings are [N, L, D] tensors, and when both embeddings are given
    their shapes agree. Raises ``ValueError``/``TypeError`` naming the arguments.
    """
    if (prompt is None) == (prompt_embeds is None):
        given = "both" if prompt is not None else "neither"
        raise ValueError(f"Pass exactly one of `prompt` and `prompt_embeds`; got {given}")
    if prompt is not None:
        as_prompt_list(prompt)
    else:
        _check_embeds("prompt_embeds", prompt_embeds)
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("Pass at most one of `negative_prompt` and `negative_prompt_embeds`, not both")
    if negative_prompt is not None:
        as_prompt_list(negative_prompt, "negative_prompt")
    if negative_prompt_embeds is not None:
        _check_embeds("negative_prompt_embeds", negative_prompt_embeds)
        if prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError(
                f"`prompt_embeds` {list(prompt_embeds.shape)} and `negative_prompt_embeds` "
                f"{list(negative_prompt_embeds.shape)} must have the same shape"
            )


def negative_prompt_list(
    negative_prompt: PromptInput | None, batch_size: int, prompt: PromptInput | None = None
) -> list[str]:
    """The ``batch_size`` texts of the unconditional branch, one per prompt.

    ``None`` → ``""`` for every prompt; a string → that string for every prompt; a list must have
    ``batch_size`` entries. As in diffusers, a ``negative_prompt`` whose kind (one string or a list)
    differs from ``prompt``'s is a ``TypeError``.
    """
    if negative_prompt is None:
        return [""] * batch_size
    if prompt is not None and isinstance(prompt, str) != isinstance(negative_prompt, str):
        raise TypeError(
            f"`negative_prompt` must be of the same type as `prompt` (both a str or both a list of str), "
            f"got {type(negative_prompt).__name__} and {type(prompt).__name__}"
        )
    negatives = as_prompt_list(negative_prompt, "negative_prompt")
    if isinstance(negative_prompt, str):
        return negatives * batch_size
    if len(negatives) != batch_size:
        raise ValueError(
            f"`negative_prompt` has {len(negatives)} entries but there are {batch_size} prompts; "
            "give one negative prompt per prompt, or a single string"
        )
    return negatives


def _shortened(text: str, limit: int = 200) -> str:
    # A pasted essay as the prompt must not make the warning thousands of characters long.
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def _warn_if_truncated(tokenizer: CLIPTokenizer, prompts: list[str], max_length: int, argument: str) -> None:
    """Log the text that truncation to ``max_length`` tokens drops from each too-long prompt."""
    full_ids = tokenizer(prompts, padding=False, truncation=False).input_ids  # one list per prompt
    dropped = [
        # Truncation keeps max_length - 1 tokens and the end token; the rest, minus the end token, is lost.
        _shortened(tokenizer.decode(ids[max_length - 1 : -1]))
        for ids in full_ids
        if len(ids) > max_length
    ]
    if dropped:
        logger.warning(
            "The following part of your `%s` was truncated because CLIP can only handle sequences up to "
            "%d tokens: %s",
            argument,
            max_length,
            dropped,
        )


def _uses_attention_mask(text_encoder: CLIPTextModel) -> bool:
    # Not a transformers CLIPTextConfig option: a few checkpoints add it to config.json, where our
    # typed config keeps it among the extra keys (diffusers checks for the attribute the same way).
    return bool(text_encoder.config.get("use_attention_mask", False))


def encode_prompts(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    prompts: PromptInput,
    *,
    clip_skip: int | None = None,
    device: torch.device | str | None = None,
    max_length: int | None = None,
    argument: str = "prompt",
) -> torch.Tensor:
    """Encode ``prompts`` into text-encoder hidden states [N, L, D], in the text encoder's dtype.

    Every prompt is padded or truncated to ``max_length`` tokens (default: the tokenizer's
    ``model_max_length``); truncation logs a warning naming the dropped text (``argument`` names the
    pipeline argument in it). ``clip_skip`` follows diffusers (see :meth:`CLIPTextModel.encode`).
    ``device`` defaults to the text encoder's.
    """
    prompts = as_prompt_list(prompts, argument)
    max_length = tokenizer.model_max_length if max_length is None else max_length
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2 (start and end tokens), got {max_length!r}")
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    _warn_if_truncated(tokenizer, prompts, max_length, argument)
    device = text_encoder.device if device is None else torch.device(device)
    input_ids = tokens.input_ids.to(device)  # [N, max_length]
    mask = tokens.attention_mask.to(device) if _uses_attention_mask(text_encoder) else None
    hidden_states = text_encoder.encode(input_ids, mask, clip_skip=clip_skip)  # [N, max_length, D]
    return hidden_states.to(dtype=text_encoder.dtype)
