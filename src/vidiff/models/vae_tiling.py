"""Run an image-to-image network over overlapping tiles and cross-fade the seams.

The VAE's mid-block attention looks at every pixel at once, so its memory grows with the square of
the image area. Tiling runs the encoder (or decoder) on one square window at a time and stitches the
outputs: neighbouring windows overlap, and over the overlap each output tile fades linearly from its
upper / left neighbour into itself. This is the scheme of diffusers' ``AutoencoderKL.enable_tiling``,
reproduced number for number: tiles are visited row by row, each is first blended with the (already
blended) tile above, then with the (already blended) tile to its left, then cropped.

Only one row of output tiles (plus the row above it) is held besides the result, and the network
sees one window at a time, so peak activation memory is set by the tile size, not the image size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch


@dataclasses.dataclass(frozen=True)
class TileLayout:
    """How to cut a ``[N, C, H, W]`` input into windows and where output tiles meet.

    ``input_tile`` and ``output_tile`` are the side lengths (pixels) of one window before and after
    the network (for the encoder: image pixels → latent pixels; for the decoder the reverse).
    ``overlap_factor`` is the fraction of a window shared with its neighbour.
    """

    input_tile: int
    output_tile: int
    overlap_factor: float

    def __post_init__(self) -> None:
        for name in ("input_tile", "output_tile"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tile sizes must be positive ints, got {name}={value!r}")
        if not 0.0 <= self.overlap_factor < 1.0:
            raise ValueError(f"tile_overlap_factor must be in [0, 1), got {self.overlap_factor!r}")
        if self.stride < 1:
            raise ValueError(
                f"tile_overlap_factor={self.overlap_factor} leaves no step between windows of "
                f"{self.input_tile} pixels; use a smaller overlap or larger tiles"
            )

    @property
    def stride(self) -> int:
        """Input pixels from one window's start to the next one's."""
        return int(self.input_tile * (1 - self.overlap_factor))

    @property
    def blend_extent(self) -> int:
        """Output rows / columns over which a tile fades in from its neighbour."""
        return int(self.output_tile * self.overlap_factor)

    @property
    def keep(self) -> int:
        """Output rows / columns each tile contributes (its top-left corner, seams already faded)."""
        return self.output_tile - self.blend_extent


def _fade_in_(previous: torch.Tensor, current: torch.Tensor, extent: int, dim: int) -> None:
    """In place: the first ``extent`` slices of ``current`` along ``dim`` ramp from ``previous``'s last ones.

    Slice ``k`` becomes ``previous[-extent + k]·(1 − k/extent) + current[k]·(k/extent)``.
    """
    extent = min(previous.shape[dim], current.shape[dim], extent)
    if extent <= 0:
        return
    # Weights in float64, then rounded once to the tile's dtype (as Python-float scalars would be).
    ramp = torch.arange(extent, dtype=torch.float64, device=current.device) / extent
    shape = [1] * current.ndim
    shape[dim] = extent
    weight_current = ramp.view(shape).to(current.dtype)
    weight_previous = (1 - ramp).view(shape).to(current.dtype)
    head = current.narrow(dim, 0, extent)
    tail = previous.narrow(dim, previous.shape[dim] - extent, extent)
    head.copy_(tail * weight_previous + head * weight_current)


def map_tiles(
    network: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, layout: TileLayout
) -> torch.Tensor:
    """``network`` applied window by window over ``inputs`` ``[N, C, H, W]``, seams cross-faded.

    Windows start every ``layout.stride`` pixels (the last ones may be cut short by the border);
    each output tile contributes its top-left ``layout.keep`` × ``layout.keep`` block.
    """
    height, width = inputs.shape[-2:]
    tile = layout.input_tile
    finished_rows: list[torch.Tensor] = []
    above: list[torch.Tensor] | None = None  # the previous row's blended, uncropped output tiles
    for top in range(0, height, layout.stride):
        row: list[torch.Tensor] = []
        for column, left in enumerate(range(0, width, layout.stride)):
            out = network(inputs[:, :, top : top + tile, left : left + tile])  # [N, C', ≤T', ≤T']
            if above is not None:
                _fade_in_(above[column], out, layout.blend_extent, dim=2)
            if row:
                _fade_in_(row[-1], out, layout.blend_extent, dim=3)
            row.append(out)
        finished_rows.append(torch.cat([out[:, :, : layout.keep, : layout.keep] for out in row], dim=3))
        above = row
    return torch.cat(finished_rows, dim=2)
