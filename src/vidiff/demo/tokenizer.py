"""A tiny CLIP tokenizer in the real on-disk layout, for tests and demos that cannot download openai's.

The real CLIP vocabulary is byte-level BPE: 256 byte symbols, the same 256 with the end-of-word
marker ``</w>``, 48 894 merge results and the two special tokens. This one keeps the 512 byte symbols
and the specials but only a few dozen merges, so common English words still split into several tokens
and every string can be encoded (any byte has a symbol), while a text encoder built with
``vocab_size = len(vocab)`` stays tiny.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"

# Each merge joins two symbols that exist by the time it is applied; "x</w>" symbols end a word.
MERGES = (
    "t h", "th e</w>", "a n", "an d</w>", "i n", "in g</w>", "e r", "o n", "r e", "a t",
    "o u", "e n", "s t", "a r", "o r", "i s</w>", "o f</w>", "t o</w>", "e d</w>",
    "c a", "ca t</w>", "d o", "do g</w>", "r o", "ro c", "roc k", "rock e", "rocke t</w>",
    "s p", "sp a", "spa c", "spac e</w>", "l i", "li g", "lig h", "ligh t</w>", "s u", "su n</w>",
    "f l", "fl y", "fly ing</w>",
)


def byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255, in byte order.

    Bytes that are printable Latin-1 characters stand for themselves; the others (control
    characters, space, soft hyphen ...) are shifted to code points 256 and up, in order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept = set(printable)
    shifted = iter(range(256, 512))
    return [chr(byte) if byte in kept else chr(next(shifted)) for byte in range(256)]


def tiny_clip_vocab() -> dict[str, int]:
    """token → id, laid out like CLIP's: bytes, bytes + ``</w>``, merge results, then the specials."""
    symbols = byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(merge.split(" ")) for merge in MERGES]
    tokens += [START_TOKEN, END_TOKEN]
    if len(set(tokens)) != len(tokens):
        raise AssertionError("the tiny vocabulary repeats a token; fix MERGES")
    return {token: index for index, token in enumerate(tokens)}


def write_tiny_clip_tokenizer(folder: str | os.PathLike) -> None:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into ``folder``.

    ``transformers.CLIPTokenizer.from_pretrained(folder)`` loads the result; ``model_max_length`` is
    77 and the pad token is ``<|endoftext|>``, as in Stable Diffusion 1.5's ``tokenizer`` folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tiny_clip_vocab(), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    specials = {
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": END_TOKEN,
    }
    config = {
        **specials,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
