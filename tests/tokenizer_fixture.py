"""The tiny CLIP tokenizer the tests use; it lives in :mod:`vidiff.demo.tokenizer` (the demo builds with it too)."""

from vidiff.demo.tokenizer import END_TOKEN, MERGES, START_TOKEN, byte_symbols, tiny_clip_vocab, write_tiny_clip_tokenizer

__all__ = ["END_TOKEN", "MERGES", "START_TOKEN", "byte_symbols", "tiny_clip_vocab", "write_tiny_clip_tokenizer"]
