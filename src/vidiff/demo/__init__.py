"""Fixtures for ``vidiff demo`` (and the tests): tiny random checkpoints and a tiny CLIP tokenizer.

Not part of the core library: only the command line (:mod:`vidiff.cli`) imports this package, and
nothing in layers/, models/, diffusion/, pipelines/ or the leaf modules may depend on it.

- :mod:`vidiff.demo.checkpoints`: builds and caches the demo checkpoints in the diffusers layout.
- :mod:`vidiff.demo.tokenizer`: writes a tiny byte-level BPE CLIP tokenizer folder.
"""
