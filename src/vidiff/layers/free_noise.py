"""FreeNoise's windowed temporal attention (Qiu et al. 2023), as diffusers 0.42.1 computes it.

With FreeNoise on, each transformer block of a motion module runs its attention half (norm1/attn1,
norm2/attn2, each with the position code 0..L-1 of its *window*) on overlapping windows of
``context_length`` frames of the ``[(B·H·W), F, C]`` frame sequences, fuses the windows' outputs
with per-frame weights, then runs its MLP half (norm3/ff) on all frames at once. So a motion module
trained on at most ``max_seq_length`` frames denoises a longer video.

The settings come from the pipeline as a :class:`FreeNoiseWindows` (``layers/`` knows no pipeline
and no ``vidiff.diffusion``: the pipeline computes the weights and hands them down).

diffusers traps reproduced here (parity means the same numbers):

- windows start at ``0, stride, 2·stride, …`` while a whole window fits; if the last one does not end
  at ``F``, one more window ``[F - L, F)`` is added, of which only the frames past the previous
  window's end are accumulated;
- for those trailing frames the weight *count* gets one single weight, ``weights[L - n]`` (``n`` the
  number of trailing frames), added to every trailing frame — diffusers indexes ``weights[:, -n]``
  where ``weights[:, -n:]`` was meant — while the values get their own per-frame weights; so these
  frames are not a normalised weighted average;
- the weights are rounded to the hidden states' dtype, then used (and counted) in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .transformer import BasicTransformerBlock


@dataclass(frozen=True)
class FreeNoiseWindows:
    """Where FreeNoise's windows lie and how their outputs are weighted.

    Attributes:
        context_length: ``L``, frames per window; at most the motion module's position table.
        context_stride: frames between the starts of consecutive windows, 1..``context_length``
            (diffusers allows more, leaving frames in no window with zeros, or crashing).
        weights: ``L`` per-frame weights of a window (FreeNoise's flat / pyramid / sawtooth numbers).
    """

    context_length: int
    context_stride: int
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("context_length", "context_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if self.context_stride > self.context_length:
            raise ValueError(
                f"`context_stride`={self.context_stride} must not exceed `context_length`={self.context_length}, "
                "or frames fall between the windows"
            )
        if len(self.weights) != self.context_length:
            raise ValueError(
                f"`weights` must hold one weight per frame of a window ({self.context_length}), got {len(self.weights)}"
            )

    def windows(self, num_frames: int) -> list[tuple[int, int]]:
        """Half-open frame ranges ``[start, stop)`` in diffusers' order, the trailing window last.

        ``num_frames=25, L=16, stride=4`` → ``[(0, 16), (4, 20), (8, 24), (9, 25)]``.
        """
        regular, trailing = self.layout(num_frames)
        return regular + [(num_frames - self.context_length, num_frames)] if trailing else regular

    def layout(self, num_frames: int) -> tuple[list[tuple[int, int]], int]:
        """(the windows that start every ``context_stride`` frames and fit, the number ``n`` of frames
        after the last of them: 0, or the ``n`` frames a trailing window ``[F - L, F)`` adds)."""
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < self.context_length:
            raise ValueError(
                f"num_frames={num_frames!r} must be an int ≥ the FreeNoise context_length={self.context_length}"
            )
        length = self.context_length
        regular = [(start, start + length) for start in range(0, num_frames - length + 1, self.context_stride)]
        return regular, num_frames - regular[-1][1]


def windowed_block(
    block: BasicTransformerBlock,
    sequences: torch.Tensor,
    context: torch.Tensor | None,
    windows: FreeNoiseWindows,
) -> torch.Tensor:
    """``block`` on ``sequences`` ``[N, F, C]`` (N = B·H·W pixels, F frames) with FreeNoise's windows.

    ``context`` (a motion module's optional cross-attention context ``[N, L_ctx, D]``) has no frame
    axis and goes whole to every window. Returns ``[N, F, C]``.
    """
    num_frames = sequences.shape[1]
    spans = windows.windows(num_frames)
    trailing = windows.layout(num_frames)[1]
    # Rounded to the states' dtype first, then float32 (diffusers' tensor arithmetic): [1, L, 1].
    weights = torch.tensor(windows.weights, dtype=sequences.dtype, device=sequences.device).float().view(1, -1, 1)
    fused = torch.zeros_like(sequences)  # Σ weight · window output, [N, F, C]
    counts = torch.zeros((1, num_frames, 1), device=sequences.device)  # Σ weight per frame, float32
    for index, (start, stop) in enumerate(spans):
        out = block.attention_half(sequences[:, start:stop], context)  # [N, L, C]
        if index == len(spans) - 1 and trailing:
            fused[:, -trailing:] += out[:, -trailing:] * weights[:, -trailing:]
            # diffusers' missing colon: one weight, weights[L - n], added to all n trailing frames
            counts[:, -trailing:] += weights[:, -trailing]
        else:
            fused[:, start:stop] += out * weights
            counts[:, start:stop] += weights
    # Every count is > 0 (stride ≤ L covers every frame), so diffusers' `where(count > 0, …)` is a plain
    # division; float32 counts promote it, then the result goes back to the states' dtype.
    fused = (fused / counts).to(sequences.dtype)
    return block.mlp_half(fused)

