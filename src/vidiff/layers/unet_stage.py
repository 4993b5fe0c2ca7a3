"""One UNet stage for every family: resnets, the family's per-layer extras, skips, resampling.

A down stage runs, for each layer, a resnet and then the extras the family supplies (image or video
transformers, temporal convolutions, motion modules), keeping every layer's output as a skip; then
an optional stride-2 conv whose output is a skip too. An up stage concatenates one skip to its input
before each resnet (deepest first) and upsamples at the end. A mid stage runs resnet, then
(extras, resnet) per layer. :func:`run_stages` drives down → mid → up and is the one place where
ControlNet-style residuals are added to the skips and to the mid stage's output.

Stages work on image batches ``[N, C, H, W]`` with ``N = B·F`` (frames of a video consecutive;
``F = 1`` for still images). A family describes its parts with :class:`ResnetPart` and
:class:`ExtraPart`; each part's modules sit under the checkpoint's attribute name (``resnets``,
``attentions``, ``motion_modules``, ``temp_convs``…), resamplers under ``downsamplers.0`` /
``upsamplers.0``, so state dicts keep diffusers' keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .chunking import Chunking, run_chunked
from .resnet import Downsample2D, Upsample2D


@dataclasses.dataclass(frozen=True)
class StageInputs:
    """What every layer of every stage may read besides the hidden states."""

    temb: torch.Tensor  # [N, D] per-image time embedding
    context: torch.Tensor | None  # [N, L, D_ctx] cross-attention context, or None
    num_frames: int  # F: N = B·F, frames of a video consecutive


LayerCall = Callable[[nn.Module, torch.Tensor, StageInputs], torch.Tensor]


def call_with_temb(module: nn.Module, hidden: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
    return module(hidden, inputs.temb)


def call_with_context(module: nn.Module, hidden: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
    return module(hidden, inputs.context)


def call_with_frames(module: nn.Module, hidden: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
    return module(hidden, inputs.num_frames)


def call_with_temb_and_frames(module: nn.Module, hidden: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
    return module(hidden, inputs.temb, inputs.num_frames)


def call_with_context_and_frames(module: nn.Module, hidden: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
    return module(hidden, inputs.context, inputs.num_frames)


# Layers called without ``num_frames`` treat every image on its own (resnets, image transformers);
# only those may run on slices of the image batch (see ``_Stage.image_chunking``).
PER_IMAGE_CALLS: tuple[LayerCall, ...] = (call_with_temb, call_with_context)


@dataclasses.dataclass(frozen=True)
class ResnetPart:
    """How a family builds (``in_channels, out_channels → module``) and calls its resnets."""

    build: Callable[[int, int], nn.Module]
    call: LayerCall = call_with_temb


@dataclasses.dataclass(frozen=True)
class ExtraPart:
    """Per-layer modules a family adds after the resnets, under their checkpoint name, in call order.

    ``build(channels, count)`` makes ``count`` modules. With ``per_resnet`` one follows every resnet
    (so a mid stage has one more); otherwise one per layer (in a mid stage: between two resnets).
    ``build=None`` marks a part this stage lacks: the attribute is None (as in diffusers' blocks).
    """

    name: str
    build: Callable[[int, int], Iterable[nn.Module]] | None
    call: LayerCall
    per_resnet: bool = False


class _Stage(nn.Module):
    """Resnets and extras, built from the parts and run in order; subclasses wire skips and resampling.

    ``image_chunking`` (None: off; a :class:`~vidiff.layers.chunking.Chunking` along dim 0) runs the
    per-image layers (:data:`PER_IMAGE_CALLS`) and the resamplers on slices of that many images of
    the ``[(B·F), C, H, W]`` batch: FreeNoise's split inference (``temporal_split_size``). Layers that
    mix frames always see the whole batch.
    """

    image_chunking: Chunking | None = None

    def _build_parts(
        self, resnet: ResnetPart, channels: list[tuple[int, int]], extras: Sequence[ExtraPart], num_layers: int
    ) -> None:
        # channels: (in, out) per resnet; the extras work at the stage's output width
        self.resnets = nn.ModuleList(resnet.build(c_in, c_out) for c_in, c_out in channels)
        self._resnet_call = resnet.call
        for extra in extras:
            count = len(channels) if extra.per_resnet else num_layers
            built = extra.build(channels[-1][1], count) if extra.build is not None else None
            setattr(self, extra.name, nn.ModuleList(built) if built is not None else None)
        present = [e for e in extras if e.build is not None]
        self._after_resnet = tuple((e.name, e.call) for e in present if e.per_resnet)
        self._per_layer = tuple((e.name, e.call) for e in present if not e.per_resnet)

    def _run(
        self, calls: tuple[tuple[str, LayerCall], ...], index: int, hidden: torch.Tensor, inputs: StageInputs
    ) -> torch.Tensor:
        for name, call in calls:
            hidden = self._call(call, getattr(self, name)[index], hidden, inputs)
        return hidden

    def _resnet(self, index: int, hidden: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
        hidden = self._call(self._resnet_call, self.resnets[index], hidden, inputs)
        return self._run(self._after_resnet, index, hidden, inputs)

    def _call(self, call: LayerCall, module: nn.Module, hidden: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
        """``call(module, hidden, inputs)``, on slices of images when ``image_chunking`` allows it."""
        if self.image_chunking is None or call not in PER_IMAGE_CALLS:
            return call(module, hidden, inputs)
        total = hidden.shape[0]

        def on_slice(images: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
            # image_index [n]: which images of the batch this slice holds, to pick their rows of the
            # per-image (N rows) or per-video (N / F rows) time embedding and context
            if image_index.shape[0] == total:
                return call(module, images, inputs)
            sliced = StageInputs(
                _rows_of(inputs.temb, image_index, total), _rows_of(inputs.context, image_index, total),
                inputs.num_frames,
            )
            return call(module, images, sliced)

        image_index = torch.arange(total, device=hidden.device)
        return run_chunked(on_slice, self.image_chunking, hidden, image_index)

    def _resample(self, sampler: nn.Module, hidden: torch.Tensor, *args: object) -> torch.Tensor:
        """A down/up sampler (per image) on ``hidden`` ``[N, C, H, W]``, sliced like the per-image layers."""
        return run_chunked(lambda images: sampler(images, *args), self.image_chunking, hidden)


class DownStage(_Stage):
    """``num_layers`` × (resnet, extras), then an optional stride-2 conv (``downsamplers.0``).

    ``skip_channels`` lists the widths of the skips ``forward`` returns, in order.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        resnet: ResnetPart,
        extras: Sequence[ExtraPart] = (),
        *,
        add_downsample: bool,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        channels = [(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        self._build_parts(resnet, channels, extras, num_layers)
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, padding=downsample_padding)]) if add_downsample else None
        )
        self.skip_channels = (out_channels,) * (num_layers + add_downsample)

    def forward(self, hidden: torch.Tensor, inputs: StageInputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``[N, C_in, H, W]`` → ``[N, C_out, H', W']`` and the skips (each layer's output, the downsampled one)."""
        skips = []
        for index in range(len(self.resnets)):
            hidden = self._run(self._per_layer, index, self._resnet(index, hidden, inputs), inputs)
            skips.append(hidden)
        if self.downsamplers is not None:
            hidden = self._resample(self.downsamplers[0], hidden)
            skips.append(hidden)
        return hidden, skips


class MidStage(_Stage):
    """A resnet, then ``num_layers`` × (extras, resnet), at the lowest resolution; keeps the width."""

    def __init__(
        self, channels: int, resnet: ResnetPart, extras: Sequence[ExtraPart] = (), *, num_layers: int = 1
    ) -> None:
        super().__init__()
        self._build_parts(resnet, [(channels, channels)] * (num_layers + 1), extras, num_layers)

    def forward(self, hidden: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
        hidden = self._resnet(0, hidden, inputs)
        for index in range(1, len(self.resnets)):
            hidden = self._resnet(index, self._run(self._per_layer, index - 1, hidden, inputs), inputs)
        return hidden


class UpStage(_Stage):
    """``num_layers`` × (concat a skip, resnet, extras), then optional ×2 upsampling (``upsamplers.0``).

    ``in_channels`` is the width of the deepest skip taken, ``prev_output_channel`` what arrives from
    the stage below. ``skip_channels`` lists the widths of the skips taken, in the order the down
    stages produced them (the last one meets the first resnet).
    """

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        num_layers: int,
        resnet: ResnetPart,
        extras: Sequence[ExtraPart] = (),
        *,
        add_upsample: bool,
    ) -> None:
        super().__init__()
        # resnet i takes what arrives (the stage below's output, then its own) ⧺ its skip: the
        # mirrored down stage's outputs, and for the last resnet that stage's input
        skips = [in_channels if i == num_layers - 1 else out_channels for i in range(num_layers)]
        arriving = [prev_output_channel] + [out_channels] * (num_layers - 1)
        self._build_parts(resnet, [(a + s, out_channels) for a, s in zip(arriving, skips)], extras, num_layers)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None
        self.skip_channels = tuple(reversed(skips))

    def forward(
        self,
        hidden: torch.Tensor,
        skips: Sequence[torch.Tensor],
        inputs: StageInputs,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``skips`` are consumed last-first; ``upsample_size`` forces the upsampled ``(H, W)``."""
        for index in range(len(self.resnets)):
            hidden = torch.cat([hidden, skips[-1 - index]], dim=1)
            hidden = self._run(self._per_layer, index, self._resnet(index, hidden, inputs), inputs)
        if self.upsamplers is not None:
            hidden = self._resample(self.upsamplers[0], hidden, upsample_size)
        return hidden


def run_stages(
    down_blocks: Sequence[DownStage],
    mid_block: MidStage | None,
    up_blocks: Sequence[UpStage],
    hidden: torch.Tensor,
    temb: torch.Tensor,
    context: torch.Tensor | None,
    num_frames: int = 1,
    *,
    down_residuals: Sequence[torch.Tensor] | None = None,
    mid_residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run a UNet's stages on ``hidden`` ``[N, C0, H, W]`` (the ``conv_in`` output) → ``[N, C0, H, W]``.

    The skips are ``hidden`` itself, then every down stage's; each up stage takes as many as it has
    resnets, deepest first. ``down_residuals`` (one per skip, same shapes) are added to the skips
    and ``mid_residual`` to the mid stage's output before the up stages run, as diffusers'
    ``down_block_additional_residuals`` / ``mid_block_additional_residual`` (ControlNet's outputs),
    in the skips' dtype; a residual may also be ``[N, C, 1, 1]``, added at every position. Wrong
    counts or shapes raise a ValueError listing the expected shapes.
    """
    inputs = StageInputs(temb, context, num_frames)
    skips = [hidden]
    for block in down_blocks:
        hidden, block_skips = block(hidden, inputs)
        skips.extend(block_skips)
    if down_residuals is not None:
        _check_residuals("down_residuals", down_residuals, skips)
        skips = [skip + residual.to(skip.dtype) for skip, residual in zip(skips, down_residuals)]
    if mid_block is not None:
        hidden = mid_block(hidden, inputs)
    if mid_residual is not None:
        if mid_block is None:
            raise ValueError("mid_residual was given, but this UNet has no mid block; pass None")
        _check_residuals("mid_residual", [mid_residual], [hidden])
        hidden = hidden + mid_residual.to(hidden.dtype)
    for block in up_blocks:
        taken = len(block.resnets)
        block_skips, skips = skips[-taken:], skips[:-taken]
        # Upsample to the next skip's size, so sides that are not multiples of 2ⁿ round-trip.
        upsample_size = tuple(skips[-1].shape[-2:]) if skips else None
        hidden = block(hidden, block_skips, inputs, upsample_size)
    return hidden


def _rows_of(tensor: torch.Tensor | None, image_index: torch.Tensor, total: int) -> torch.Tensor | None:
    """The rows of ``tensor`` (``[total, …]`` per image, or ``[total / k, …]`` shared by k consecutive
    images) that serve the images ``image_index``; None stays None."""
    if tensor is None:
        return None
    if tensor.shape[0] == total:
        return tensor.index_select(0, image_index)
    return tensor.index_select(0, image_index // (total // tensor.shape[0]))


def _check_residuals(name: str, residuals: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> None:
    expected = [tuple(t.shape) for t in targets]
    got = [tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__ for r in residuals]
    # [N, C, 1, 1]: one value per channel, broadcast over the skip (ControlNets with global_pool_conditions)
    pooled = [e[:2] + (1, 1) if len(e) == 4 else e for e in expected]
    if len(got) != len(expected) or any(g not in (e, p) for g, e, p in zip(got, expected, pooled)):
        what = f"{len(expected)} tensors shaped {expected}" if len(expected) > 1 else f"shape {expected[0]}"
        raise ValueError(f"{name} must have {what} (the UNet's), got {got if len(got) != 1 else got[0]}")
