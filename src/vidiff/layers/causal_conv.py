"""Causal 3-D convolution over video ``[B, C, F, H, W]``, run whole or streamed chunk by chunk.

A causal convolution pads time on the left only, so output frame ``t`` sees input frames ≤ ``t``.
That lets a causal video VAE (Wan's) encode or decode a long video a few frames at a time: each
layer keeps the last input frames it saw (its *history*) in a :class:`FeatureCache`, and the next
chunk is convolved with that history in front instead of zero padding. The streamed result equals
running the whole sequence at once (up to float rounding), while activations only ever hold one
chunk.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FeatureCache:
    """What each layer of one streaming pass remembers of the chunks it has seen.

    One cache belongs to one pass over one video batch (one spatial tile): start a new one for the
    next pass. Layers are the keys; a layer that was called but keeps nothing is still *seen*,
    which is how a layer tells the first chunk from the later ones.
    """

    def __init__(self) -> None:
        self._memory: dict[int, torch.Tensor | None] = {}

    def seen(self, layer: nn.Module) -> bool:
        """Whether ``layer`` has processed a chunk of this pass already."""
        return id(layer) in self._memory

    def recall(self, layer: nn.Module) -> torch.Tensor | None:
        """What ``layer`` remembered last (None before its first chunk)."""
        return self._memory.get(id(layer))

    def remember(self, layer: nn.Module, frames: torch.Tensor | None) -> None:
        """Store ``frames`` for ``layer``'s next chunk (and mark the layer as seen)."""
        self._memory[id(layer)] = frames


def last_frames(history: torch.Tensor | None, chunk: torch.Tensor, count: int) -> torch.Tensor | None:
    """The last ``count`` frames of ``history`` followed by ``chunk`` (``[B, C, ≤count, H, W]``, a copy).

    Fewer frames come back when the stream is shorter than ``count`` so far; None for ``count`` 0.
    """
    if count == 0:
        return None
    if chunk.shape[2] < count and history is not None:
        chunk = torch.cat([history[:, :, chunk.shape[2] - count :], chunk], dim=2)
    return chunk[:, :, -count:].clone()  # a copy: a view would keep the whole chunk alive


class CausalConv3d(nn.Conv3d):
    """``nn.Conv3d`` padded causally in time: ``2·padding_t`` frames on the left, none on the right.

    Spatial padding is symmetric zero padding, as in ``nn.Conv3d``. Parameter names are
    ``nn.Conv3d``'s (``weight`` ``[out, in, kt, kh, kw]``, ``bias``).

    ``forward(x)`` pads with zero frames; ``forward(x, cache)`` streams: the left padding is the
    last ``2·padding_t`` input frames of the previous chunks (zeros where the stream is shorter),
    and this chunk's tail is remembered for the next call.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        time_pad, height_pad, width_pad = self.padding
        self.history_frames = 2 * time_pad  # input frames before t that output frame t sees
        self.spatial_padding = (width_pad, width_pad, height_pad, height_pad)
        self.padding = (0, 0, 0)  # padding is done by hand in forward

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """``[B, in, F, H, W]`` → ``[B, out, F', H', W']`` (F' = F for stride 1)."""
        history = None
        if cache is not None and self.history_frames:
            history = cache.recall(self)
            cache.remember(self, last_frames(history, x, self.history_frames))
        return self.convolve(x, history)

    def convolve(self, x: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """Convolve ``x`` with ``history`` (≤ ``history_frames`` frames, or None) as its left context."""
        missing = self.history_frames
        if history is not None:
            x = torch.cat([history.to(x.device), x], dim=2)
            missing -= history.shape[2]
        x = F.pad(x, (*self.spatial_padding, missing, 0))
        return super().forward(x)
