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
import numbers
from collections.abc import Callable

import torch

DEFAULT_OVERLAP = 0.25  # fraction of a tile shared with each neighbour (diffusers' value)


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



@dataclasses.dataclass(frozen=True)
class AlignedTileLayout(TileLayout):
    """A :class:`TileLayout` whose seams line up for every tile size and overlap.

    diffusers' layout rounds the input step (``stride``) and the output fade (``blend_extent``)
    separately, so output tiles sit where their inputs were cut only when ``stride · scale`` happens
    to equal ``output_tile − blend_extent`` (true for its default sizes; not, e.g., for a 6-latent
    tile at overlap 0.25, where it shifts content and grows the image). Here the steps are given in
    whole pixels on both sides (``output_step = input_step · scale``), each tile keeps exactly one
    output step, and the whole true overlap (``output_tile − output_step``) is cross-faded.
    """

    input_step: int = 1
    output_step: int = 1

    @classmethod
    def for_scale(cls, latent_tile: int, overlap_factor: float, scale: int, decode: bool) -> AlignedTileLayout:
        """The decode (latent → image) or encode (image → latent) layout of a VAE with ``scale``
        image pixels per latent pixel, ``latent_tile`` latent pixels per tile side."""
        latent_step = max(int(latent_tile * (1 - overlap_factor)), 1)
        latent = (latent_tile, latent_step)
        image = (latent_tile * scale, latent_step * scale)
        (tile_in, step_in), (tile_out, step_out) = (latent, image) if decode else (image, latent)
        return cls(tile_in, tile_out, overlap_factor, input_step=step_in, output_step=step_out)

    @property
    def stride(self) -> int:
        return self.input_step

    @property
    def blend_extent(self) -> int:
        return self.output_tile - self.output_step

    @property
    def keep(self) -> int:
        return self.output_step


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



def _check_tile_side(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (pixels), got {value!r}")


def resolve_tile_options(
    default_sample_tile: int,
    downsample_factor: int,
    tile_sample_min_size: int | None,
    tile_overlap_factor: float,
    tile_latent_min_size: int | None,
) -> tuple[int, float, int]:
    """The options of a VAE's ``enable_tiling``, checked: ``(sample_tile, overlap, latent_tile)``.

    ``tile_sample_min_size`` (image pixels) defaults to ``default_sample_tile``; ``tile_latent_min_size``
    (latent pixels) to the image tile divided by ``downsample_factor``. The overlap must be a real
    number in [0, 1) that leaves a step of at least one pixel between windows both ways (encode cuts
    image windows, decode latent windows). Errors name the argument and what would be valid, and
    come when tiling is switched on rather than at the first large input.
    """
    sample_tile = default_sample_tile if tile_sample_min_size is None else tile_sample_min_size
    _check_tile_side("tile_sample_min_size", sample_tile)
    latent_tile = int(sample_tile / downsample_factor) if tile_latent_min_size is None else tile_latent_min_size
    _check_tile_side("tile_latent_min_size", latent_tile)
    if isinstance(tile_overlap_factor, bool) or not isinstance(tile_overlap_factor, numbers.Real):
        raise TypeError(f"tile_overlap_factor must be a float in [0, 1), got {tile_overlap_factor!r}")
    overlap = float(tile_overlap_factor)
    TileLayout(sample_tile, latent_tile, overlap)
    TileLayout(latent_tile, sample_tile, overlap)
    return sample_tile, overlap, latent_tile
