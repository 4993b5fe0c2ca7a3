"""Tokenizers as pipeline components: transformers' tokenizers, loaded the vidiff way.

This is the only vidiff module that imports transformers: tokenization (CLIP's byte-level BPE, the
T5 family's SentencePiece Unigram, text normalisation, special tokens) is delegated to
``transformers.CLIPTokenizer`` and ``transformers.T5TokenizerFast`` rather than rewritten, so prompts
become exactly the ids the checkpoints were trained with. What vidiff adds is loading through
:class:`vidiff.loading.Checkpoint` (local folders, the Hub cache, offline mode) and saving in a
layout both old and new transformers versions read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from . import loading

if TYPE_CHECKING:  # imported on first use: `import vidiff` (and the CLI) start faster without it
    import transformers

# Files of a ``tokenizer`` folder that configure the tokenizer (besides the vocabulary itself).
SETTINGS_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
# The vocabulary, in the slow tokenizers' two files or in the tokenizers library's single file.
VOCAB_FILES = ("vocab.json", "merges.txt")
TOKENIZER_JSON = "tokenizer.json"


def _files_to_fetch(checkpoint: loading.Checkpoint, subfolder: str | None) -> list[str]:
    """Relative paths of the tokenizer files to read: vocab.json + merges.txt when both exist (the
    original CLIP files), else tokenizer.json; plus whichever settings files exist."""
    present = [name for name in SETTINGS_FILES if checkpoint.has_file(loading.join(subfolder, name))]
    if all(checkpoint.has_file(loading.join(subfolder, name)) for name in VOCAB_FILES):
        vocabulary = list(VOCAB_FILES)
    elif checkpoint.has_file(loading.join(subfolder, TOKENIZER_JSON)):
        vocabulary = [TOKENIZER_JSON]
    else:
        raise FileNotFoundError(
            f"{checkpoint.name} has no CLIP tokenizer in {subfolder or 'its root'!r}: expected "
            f"{' + '.join(VOCAB_FILES)} or {TOKENIZER_JSON} there (with tokenizer_config.json)"
        )
    return [loading.join(subfolder, name) for name in vocabulary + present]


T = TypeVar("T", bound="_TransformersTokenizer")


class _TransformersTokenizer:
    """What the tokenizer components share: a wrapped transformers tokenizer and its calling API.

    Calling it, :meth:`decode` and :meth:`batch_decode` take transformers' arguments and return what
    transformers returns (``__call__`` gives a ``BatchEncoding`` with ``input_ids`` and
    ``attention_mask``). The wrapped object is :attr:`tokenizer`, for code that needs transformers' own.
    """

    # The library a pipeline's model_index.json names for this component.
    library: ClassVar[str] = "transformers"
    # The transformers class a subclass wraps, named in error messages.
    wrapped_name: ClassVar[str] = "transformers.CLIPTokenizer"

    def __init__(self, tokenizer: transformers.PreTrainedTokenizerBase) -> None:
        import transformers

        if not isinstance(tokenizer, transformers.PreTrainedTokenizerBase):
            raise TypeError(
                f"tokenizer must be a transformers tokenizer such as {self.wrapped_name}, "
                f"got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={len(self.tokenizer)}, model_max_length={self.model_max_length})"

    @classmethod
    def from_pretrained(
        cls: type[T],
        name_or_path: str | os.PathLike,
        subfolder: str | None = "tokenizer",
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
    ) -> T:
        """Load the tokenizer in ``subfolder`` (default ``"tokenizer"``) of a local folder or Hub id;
        pass ``subfolder=None`` for a folder that holds the tokenizer files itself."""
        checkpoint = loading.Checkpoint.open(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls.from_checkpoint(checkpoint, subfolder)

    @classmethod
    def from_checkpoint(cls: type[T], checkpoint: loading.Checkpoint, subfolder: str | None) -> T:
        raise NotImplementedError

    @property
    def model_max_length(self) -> int:
        """Tokens per sequence the text encoder takes, special tokens included (77 for CLIP)."""
        return self.tokenizer.model_max_length

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def __len__(self) -> int:
        """Vocabulary size, added tokens included."""
        return len(self.tokenizer)

    def __call__(self, text: str | Sequence[str], **kwargs: Any) -> transformers.BatchEncoding:
        """Tokenize ``text`` (one string or a list); keyword arguments are transformers' (``padding``,
        ``max_length``, ``truncation``, ``return_tensors`` ...)."""
        if not isinstance(text, str) and not (
            isinstance(text, Sequence) and all(isinstance(item, str) for item in text)
        ):
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
        return self.tokenizer(text if isinstance(text, str) else list(text), **kwargs)

    def decode(self, token_ids: Any, **kwargs: Any) -> str:
        """Token ids of one sequence back to text (transformers' ``decode``)."""
        return self.tokenizer.decode(token_ids, **kwargs)

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        """Token ids of several sequences back to texts (transformers' ``batch_decode``)."""
        return self.tokenizer.batch_decode(sequences, **kwargs)


def _load_gathered(checkpoint: loading.Checkpoint, relpaths: list[str], tokenizer_class: type, what: str) -> Any:
    """``tokenizer_class.from_pretrained`` on exactly ``relpaths`` of ``checkpoint``, copied into a private
    folder so transformers reads those files and never the network; a failure names the files."""
    local = [checkpoint.local_path(relpath) for relpath in relpaths]
    with tempfile.TemporaryDirectory(prefix="vidiff-tokenizer-") as folder:
        for path in local:
            shutil.copyfile(path, Path(folder) / path.name)
        try:
            return tokenizer_class.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, ImportError) as error:
            raise ValueError(
                f"The tokenizer files {relpaths} of {checkpoint.name} could not be read as {what}: {error}"
            ) from error


class CLIPTokenizer(_TransformersTokenizer):
    """A pipeline component wrapping ``transformers.CLIPTokenizer`` (see :class:`_TransformersTokenizer`
    for calling it)."""

    @classmethod
    def from_checkpoint(cls, checkpoint: loading.Checkpoint, subfolder: str | None) -> CLIPTokenizer:
        """Load from an opened :class:`~vidiff.loading.Checkpoint` (used by pipelines).

        Only the tokenizer files that exist are fetched (see :func:`_files_to_fetch`); they are
        gathered in a private folder so transformers reads exactly those and never the network.
        """
        import transformers

        relpaths = _files_to_fetch(checkpoint, subfolder)
        return cls(_load_gathered(checkpoint, relpaths, transformers.CLIPTokenizer, "a CLIP tokenizer"))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer into ``directory``: tokenizer.json and tokenizer_config.json (what
        transformers 5 writes) plus vocab.json and merges.txt, which older transformers versions need."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.tokenizer.backend_tokenizer.model.save(str(directory))



# The T5 family's vocabulary: the tokenizers library's file, or the SentencePiece model it was made from.
SENTENCEPIECE_MODEL = "spiece.model"


def _t5_files_to_fetch(checkpoint: loading.Checkpoint, subfolder: str | None) -> list[str]:
    """Relative paths of a T5 tokenizer's files: tokenizer.json (else spiece.model) plus the settings
    files that exist. Only one vocabulary file is fetched: umt5's are 16 MB and 4.5 MB."""
    present = [name for name in SETTINGS_FILES if checkpoint.has_file(loading.join(subfolder, name))]
    for vocabulary in (TOKENIZER_JSON, SENTENCEPIECE_MODEL):
        if checkpoint.has_file(loading.join(subfolder, vocabulary)):
            return [loading.join(subfolder, name) for name in [vocabulary, *present]]
    raise FileNotFoundError(
        f"{checkpoint.name} has no T5 tokenizer in {subfolder or 'its root'!r}: expected {TOKENIZER_JSON} "
        f"or {SENTENCEPIECE_MODEL} there (with tokenizer_config.json)"
    )


class T5TokenizerFast(_TransformersTokenizer):
    """A pipeline component wrapping ``transformers.T5TokenizerFast``: the UMT5 tokenizer of the Wan
    checkpoints (their ``model_index.json`` names this class).

    Wan tokenizes as ``tokenizer(prompts, padding="max_length", max_length=L, truncation=True,
    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")``: each prompt becomes its
    pieces, then ``</s>`` (id 1), then ``<pad>`` (id 0) up to ``L``, with ``attention_mask`` 1 on the
    pieces and ``</s>``. There is no start token. See :class:`_TransformersTokenizer` for the calling API.
    """

    wrapped_name: ClassVar[str] = "transformers.T5TokenizerFast"

    @classmethod
    def from_checkpoint(cls, checkpoint: loading.Checkpoint, subfolder: str | None) -> T5TokenizerFast:
        """Load from an opened :class:`~vidiff.loading.Checkpoint` (used by pipelines): tokenizer.json,
        or spiece.model when that is the only vocabulary (transformers then needs ``sentencepiece``)."""
        import transformers

        relpaths = _t5_files_to_fetch(checkpoint, subfolder)
        return cls(_load_gathered(checkpoint, relpaths, transformers.T5TokenizerFast, "a T5 tokenizer"))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write what transformers writes (tokenizer.json and tokenizer_config.json) into ``directory``;
        ``transformers.T5TokenizerFast`` and ``AutoTokenizer`` read it back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)


# transformers 5 names the same class T5Tokenizer (and keeps T5TokenizerFast as an alias); so does vidiff.
# Either way a saved model_index.json names "T5TokenizerFast", as the Wan repositories do.
T5Tokenizer = T5TokenizerFast
