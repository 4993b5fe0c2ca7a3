"""How Wan's VAE walks a video: chunks in time, tiles in space, patches for Wan 2.2.

The encoder sees chunks of ``1, 4, 4, …`` frames, the decoder one latent frame at a time, each
pass with a fresh :class:`~vidiff.layers.causal_conv.FeatureCache` (so the result equals a
one-shot pass and activations hold one chunk). This is diffusers' schedule, which is also its
numerical contract: the first chunk is special in several layers (temporal resamplers pass it
through, Wan 2.2's shortcuts keep one frame of it).

Tiling cuts the spatial plane into overlapping windows, runs a whole streamed pass per window and
cross-fades the seams exactly as diffusers' ``AutoencoderKLWan.tiled_encode`` / ``tiled_decode``
do: windows every ``stride`` pixels, each output tile keeps its top-left ``stride`` block after
fading in from the (already faded) tile above and the one to its left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..layers.causal_conv import FeatureCache
from .vae_tiling import _fade_in_

ENCODER_CHUNK = 4  # frames per encoder call after the first frame (diffusers' constant)


def patchify(video: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, F, H, W]`` → ``[B, C·p², F, H/p, W/p]``; channel ``c·p² + j·p + i`` holds row offset ``i``,
    column offset ``j`` of a ``p × p`` patch (column-major within the patch, as Wan 2.2 was trained)."""
    if patch_size == 1:
        return video
    batch, channels, frames, height, width = video.shape
    p = patch_size
    patches = video.view(batch, channels, frames, height // p, p, width // p, p)
    patches = patches.permute(0, 1, 6, 4, 2, 3, 5)  # [B, C, p (column), p (row), F, H/p, W/p]
    return patches.reshape(batch, channels * p * p, frames, height // p, width // p)


def unpatchify(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``[B, C·p², F, h, w]`` → ``[B, C, F, h·p, w·p]``."""
    if patch_size == 1:
        return patches
    batch, channels_p2, frames, height, width = patches.shape
    p = patch_size
    video = patches.view(batch, channels_p2 // (p * p), p, p, frames, height, width)
    video = video.permute(0, 1, 4, 5, 3, 6, 2)  # [B, C, F, h, p (row), w, p (column)]
    return video.reshape(batch, channels_p2 // (p * p), frames, height * p, width * p)


def encoder_chunks(num_frames: int) -> list[slice]:
    """Frame ranges of the encoder calls: ``[0:1]``, then ``[1:5]``, ``[5:9]``, …

    Frames after the last whole chunk (when ``num_frames`` is not ``4k + 1``) are not encoded, as in
    diffusers.
    """
    whole = (num_frames - 1) // ENCODER_CHUNK
    return [slice(0, 1)] + [slice(1 + ENCODER_CHUNK * i, 1 + ENCODER_CHUNK * (i + 1)) for i in range(whole)]


def stream_encode(
    encoder: nn.Module, video: torch.Tensor, each_chunk: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Encoder input ``[B, C_in, F, H, W]`` → encoder output ``[B, 2z, f, h, w]``, chunk by chunk.

    ``each_chunk`` (e.g. the quant conv) runs on every chunk's output. diffusers runs the quant conv
    per chunk when tiling and on the whole output otherwise: the same values, but half-precision
    kernels round differently by shape, so callers follow it.
    """
    cache = FeatureCache()
    outputs = []
    for chunk in encoder_chunks(video.shape[2]):
        output = encoder(video[:, :, chunk], cache)
        outputs.append(output if each_chunk is None else each_chunk(output))
    return torch.cat(outputs, dim=2)


def stream_decode(
    decoder: nn.Module,
    post_quant_conv: nn.Module,
    latents: torch.Tensor,
    tick: Callable[[], None],
    per_frame: bool = False,
) -> torch.Tensor:
    """Latents ``[B, z, f, h, w]`` → decoder output ``[B, C_out, 1 + t·(f − 1), H, W]``, one latent frame
    per decoder call (``tick`` after each).

    The post-quant conv runs on all latents at once, or frame by frame with ``per_frame`` (what
    diffusers does when tiling; see :func:`stream_encode` for why that matters).
    """
    cache = FeatureCache()
    if not per_frame:
        latents = post_quant_conv(latents)
    frames = []
    for index in range(latents.shape[2]):
        latent = latents[:, :, index : index + 1]
        frames.append(decoder(post_quant_conv(latent) if per_frame else latent, cache))
        tick()
    return torch.cat(frames, dim=2)


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Overlapping windows over the last two axes of ``[B, C, F, H, W]``; pairs are (height, width).

    ``window`` and ``step`` are in input pixels; ``keep`` (the block each output tile contributes)
    and ``fade`` (rows / columns cross-faded from the neighbour) in output pixels.
    """

    window: tuple[int, int]
    step: tuple[int, int]
    keep: tuple[int, int]
    fade: tuple[int, int]

    def count(self, height: int, width: int) -> int:
        """How many windows cover an input of ``height × width``."""
        return len(range(0, height, self.step[0])) * len(range(0, width, self.step[1]))

    def map(self, network: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """``network`` window by window, row by row, seams faded; the result is uncropped."""
        height, width = inputs.shape[-2:]
        (window_h, window_w), (step_h, step_w), (keep_h, keep_w) = self.window, self.step, self.keep
        finished_rows: list[torch.Tensor] = []
        above: list[torch.Tensor] | None = None  # previous row's faded, uncropped output tiles
        for top in range(0, height, step_h):
            row: list[torch.Tensor] = []
            for column, left in enumerate(range(0, width, step_w)):
                out = network(inputs[..., top : top + window_h, left : left + window_w])
                if above is not None:
                    _fade_in_(above[column], out, self.fade[0], dim=out.ndim - 2)
                if row:
                    _fade_in_(row[-1], out, self.fade[1], dim=out.ndim - 1)
                row.append(out)
            finished_rows.append(torch.cat([out[..., :keep_h, :keep_w] for out in row], dim=-1))
            above = row
        return torch.cat(finished_rows, dim=-2)


def encode_grid(window: Sequence[int], stride: Sequence[int], ratio: int) -> TileGrid:
    """Tiles of diffusers' tiled encode; ``window`` / ``stride`` in encoder-input pixels (after patchifying),
    ``ratio`` encoder-input pixels per latent pixel."""
    keep = tuple(s // ratio for s in stride)
    fade = tuple(w // ratio - k for w, k in zip(window, keep))
    return TileGrid(tuple(window), tuple(stride), keep, fade)


def decode_grid(window: Sequence[int], stride: Sequence[int], scale: int, patch_size: int) -> TileGrid:
    """Tiles of diffusers' tiled decode; ``window`` / ``stride`` in video pixels, ``scale`` video pixels per
    latent pixel, outputs in decoder-output pixels (video pixels / ``patch_size``)."""
    keep = tuple(s // patch_size for s in stride)
    fade = tuple(w // patch_size - k for w, k in zip(window, keep))
    return TileGrid(tuple(w // scale for w in window), tuple(s // scale for s in stride), keep, fade)


def ticker(
    progress: Callable[[Sequence[int]], Iterable[int]] | None, total: int
) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(tick, finish)`` driving ``progress`` (e.g. tqdm) over ``range(total)`` decoder calls."""
    if progress is None:
        return (lambda: None), (lambda: None)
    steps: Iterator[int] = iter(progress(range(total)))
    return (lambda: next(steps, None)), (lambda: list(steps))
