"""Forward chunking: run a row-independent layer on slices of its input to bound its temporaries.

Feed-forward layers widen every token 4–8× (GEGLU: 8× before the gate), and attention holds a
``[N, heads, L_q, L_k]`` score matrix on backends without a fused kernel. Both treat rows of the batch
axis (0) and of the token/query axis (1) independently, so running them on slices along either axis
and writing the pieces into one output gives the unchunked result; only the temporaries shrink.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# The axes of a token batch ``[N, L, C]`` that rows are independent along: the sequences, the tokens.
CHUNK_DIMS = (0, 1)


@dataclass(frozen=True)
class Chunking:
    """Slices of ``size`` rows along ``dim`` (0: sequences of the batch, 1: tokens / queries)."""

    size: int = 1
    dim: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"chunk_size must be a positive int (rows per slice), got {self.size!r}")
        if self.dim not in CHUNK_DIMS:
            raise ValueError(f"dim must be 0 (the batch of sequences) or 1 (tokens / queries), got {self.dim!r}")


def run_chunked(
    layer: Callable[..., torch.Tensor], chunking: Chunking | None, rows: torch.Tensor, *shared: torch.Tensor
) -> torch.Tensor:
    """``layer(rows, *shared)``, computed on slices of ``rows`` along ``chunking.dim``.

    ``rows`` is ``[N, L, C]``; ``shared`` inputs (e.g. a context ``[N, L_ctx, D]``) are sliced with the
    rows when chunking the batch axis and passed whole when chunking the token axis. The pieces are
    written into one preallocated output, so at most one slice's temporaries exist at a time.
    """
    if chunking is None or rows.shape[chunking.dim] <= chunking.size:
        return layer(rows, *shared)
    out: torch.Tensor | None = None
    for start in range(0, rows.shape[chunking.dim], chunking.size):
        stop = min(start + chunking.size, rows.shape[chunking.dim])
        piece_inputs = [rows.narrow(chunking.dim, start, stop - start)]
        if chunking.dim == 0:
            piece_inputs += [tensor.narrow(0, start, stop - start) for tensor in shared]
        else:
            piece_inputs += list(shared)
        piece = layer(*piece_inputs)
        if out is None:
            shape = list(piece.shape)
            shape[chunking.dim] = rows.shape[chunking.dim]
            out = piece.new_empty(shape)
        out.narrow(chunking.dim, start, stop - start).copy_(piece)
    return out
