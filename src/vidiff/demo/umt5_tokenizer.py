"""A tiny UMT5 tokenizer in the real on-disk layout, for tests and demos that cannot download google's.

The Wan checkpoints' ``tokenizer`` folder holds a SentencePiece Unigram model of 256 000 pieces as
``tokenizer.json`` (plus ``spiece.model``), ``tokenizer_config.json`` (``tokenizer_class``
``T5Tokenizer``, 300 ``<extra_id_N>`` sentinels stored last, in reverse order) and
``special_tokens_map.json``. This one has the same files and layout (``<pad>`` = 0, ``</s>`` = 1,
``<unk>`` = 2 — the id transformers 5's ``T5Tokenizer`` gives unknown pieces — then pieces, then the
sentinels) but a few hundred pieces: every printable ASCII character, with and without the word-start
marker ``▁``, and some whole words, so prompts become several ids each and a text encoder built with
``vocab_size = len(vocabulary)`` stays tiny. Built with the ``tokenizers`` library only, no transformers.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
WORD_START = "▁"  # SentencePiece's marker of a piece that begins a word
NUM_SENTINELS = 4  # the real files have 300 (extra_ids)
# The real tokenizer_config.json's "no limit" (transformers' VERY_LARGE_INTEGER): nothing is cut unless asked.
REAL_MODEL_MAX_LENGTH = 1000000000000000019884624838656
# Whole words, so the usual demo prompts are not split into single characters.
WORDS = (
    "the", "cat", "dog", "walks", "on", "grass", "realistic", "blurry", "static", "turns", "its", "head",
    "in", "of", "and", "with", "astronaut", "riding", "horse", "space", "rocket", "flying", "sun", "sea",
    "video", "low", "quality", "sky",
)


def tiny_umt5_pieces() -> list[tuple[str, float]]:
    """(piece, log-probability) in id order: specials, ``▁``, ``▁``+character, character, words, sentinels.

    Scores make whole words (−4) win over spelling them out (each character ≤ −6), and a word-start
    character over ``▁`` plus the character, so segmentation never depends on ties.
    """
    characters = [c for c in string.printable if not c.isspace()]
    pieces = [(PAD, 0.0), (EOS, 0.0), (UNK, 0.0), (WORD_START, -9.0)]
    pieces += [(WORD_START + c, -6.0 - index / 1000) for index, c in enumerate(characters)]
    pieces += [(c, -7.0 - index / 1000) for index, c in enumerate(characters)]
    pieces += [(WORD_START + word, -4.0) for word in WORDS]
    pieces += [(f"<extra_id_{n}>", 0.0) for n in reversed(range(NUM_SENTINELS))]
    if len({piece for piece, _ in pieces}) != len(pieces):
        raise AssertionError("the tiny vocabulary repeats a piece; fix WORDS")
    return pieces


def _backend(pieces: list[tuple[str, float]]) -> Tokenizer:
    # The pipeline transformers' T5Tokenizer rebuilds around the vocabulary: split on whitespace, mark
    # word starts with "▁", append "</s>"; so raw `tokenizers` and transformers agree on the ids.
    tokenizer = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True),
    ])
    tokenizer.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", EOS], pair=["$A", EOS, "$B", EOS], special_tokens=[(EOS, 1)]
    )
    return tokenizer


def write_tiny_umt5_tokenizer(folder: str | os.PathLike) -> int:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``folder``; return the
    vocabulary size (a text encoder's ``vocab_size`` must be at least that).

    ``transformers.T5TokenizerFast.from_pretrained(folder)`` and ``AutoTokenizer`` load the result.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = tiny_umt5_pieces()
    backend = _backend(pieces)
    sentinels = [f"<extra_id_{n}>" for n in range(NUM_SENTINELS)]
    first_sentinel = len(pieces) - NUM_SENTINELS
    sentinel_ids = {first_sentinel + i: f"<extra_id_{NUM_SENTINELS - 1 - i}>" for i in range(NUM_SENTINELS)}
    specials = {0: PAD, 1: EOS, 2: UNK, **sentinel_ids}
    backend.add_special_tokens([specials[i] for i in sorted(specials)])
    backend.save(str(folder / "tokenizer.json"))
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    added = {str(index): {"content": text, **flags} for index, text in sorted(specials.items())}
    config = {
        "added_tokens_decoder": added,
        "additional_special_tokens": sentinels,
        "clean_up_tokenization_spaces": True,
        "eos_token": EOS,
        "extra_ids": NUM_SENTINELS,
        "model_max_length": REAL_MODEL_MAX_LENGTH,
        "pad_token": PAD,
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
        "unk_token": UNK,
    }
    special_map = {"additional_special_tokens": sentinels, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2), encoding="utf-8")
    return len(pieces)
