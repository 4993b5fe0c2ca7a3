"""Wrappers around the network, and the first of them: running it on windows of frames.

The loop calls ``network(x_in, timestep, inputs)`` with ``x_in`` ``[B', C, F, H, W]`` (``B'`` is
the batch, doubled for classifier-free guidance) and per-video ``inputs`` (``[B', …]`` each). A
pipeline declares which inputs have a frame axis, and where (its ``frame_axes``); a *network
wrapper* ``(network, frame_axes) -> network`` may then change how the network sees the frames
without the loop or the family knowing. Context windows (long videos), FreeNoise and ControlNet
residuals are meant to be such wrappers.

:class:`FrameWindows` calls the network once per window ``[a, b)`` of frames, on that slice of the
latents and of every frame-indexed input (inputs without a frame axis go whole), and writes each
window's output back into its frames, averaging where windows overlap. :class:`ContextWindows` is
the long-video wrapper the pipelines' ``enable_context_windows`` installs: windows of a fixed length
chosen per step by a schedule (:mod:`.window_schedules`), possibly wrapping round the end of the
video (closed loop), fused with per-position weights (:func:`window_weights`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .loop import Network
from .window_schedules import SCHEDULES, Window, context_windows

# Input name → the axis that indexes frames in that input (e.g. ``{"image_latents": 2}`` for
# ``[B, C, F, h, w]``). Inputs not listed have no frame axis.
FrameAxes = Mapping[str, int]
# What a pipeline's ``network_wrapper`` is: it gets the network and the inputs' frame axes,
# and returns a network with the loop's signature.
NetworkWrapper = Callable[[Network, FrameAxes], Network]
# The frame axis of the latents (and of the network's output) in vidiff's layout [B, C, F, H, W].
LATENT_FRAME_AXIS = 2


@dataclass(frozen=True)
class FrameWindows:
    """A :data:`NetworkWrapper` that runs the network on windows of frames and averages the overlaps.

    ``windows`` are half-open frame ranges ``(start, stop)``; together they must cover every frame
    of the video the loop denoises (checked on each call, when the frame count is known). Every
    window's output counts with weight 1 in each of its frames (uniform weights), so frames inside
    one window only get exactly that window's output, and a single window ``(0, F)`` is the
    unwrapped network, bit for bit.

    Usage: ``pipe.network_wrapper = FrameWindows([(0, 16), (8, 24), (16, 32)])``.
    """

    windows: tuple[tuple[int, int], ...]

    def __init__(self, windows: Sequence[tuple[int, int]]) -> None:
        pairs = tuple(_as_window(window) for window in windows)
        if not pairs:
            raise ValueError("FrameWindows needs at least one window (start, stop)")
        object.__setattr__(self, "windows", pairs)

    def __call__(self, network: Network, frame_axes: FrameAxes) -> Network:
        axes = dict(frame_axes)

        def windowed(x: Tensor, timestep: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
            num_frames = x.shape[LATENT_FRAME_AXIS]
            self.check(num_frames)
            _check_frame_inputs(inputs, axes, num_frames)
            total = counts = out = None
            for start, stop in self.windows:
                window_inputs = {
                    name: value.narrow(axes[name], start, stop - start) if name in axes else value
                    for name, value in inputs.items()
                }
                out = network(x.narrow(LATENT_FRAME_AXIS, start, stop - start), timestep, window_inputs)
                if total is None:
                    total, counts = _zero_sums(out, num_frames)
                total[:, :, start:stop] += out.to(total.dtype)  # [B', C, b − a, H, W] into its frames
                counts[start:stop] += 1
            # every count ≥ 1 (checked above); a frame in one window only is that window's output
            # exactly: 0 + y, then y / 1, then the cast back to the output's dtype
            return (total / counts.view(1, 1, -1, 1, 1)).to(out.dtype)

        return windowed

    def check(self, num_frames: int) -> None:
        """Raise ValueError unless the windows lie within ``[0, num_frames)`` and cover every frame."""
        past = [w for w in self.windows if w[1] > num_frames]
        if past:
            raise ValueError(f"FrameWindows: window(s) {past} run past the video's {num_frames} frames (valid stops ≤ {num_frames})")
        covered = set()
        for start, stop in self.windows:
            covered.update(range(start, stop))
        missing = sorted(set(range(num_frames)) - covered)
        if missing:
            raise ValueError(
                f"FrameWindows: frames {missing} of {num_frames} are in no window {list(self.windows)}; "
                "the windows must cover every frame"
            )


WEIGHTINGS = ("flat", "pyramid", "delayed_reverse_sawtooth")


def window_weights(length: int, scheme: str = "pyramid") -> list[float]:
    """Per-frame weights of one window of ``length`` frames, for fusing overlapping windows.

    ``"flat"``: all 1. ``"pyramid"``: rising 1, 2, … to the middle and falling back (5 → [1, 2, 3, 2, 1],
    4 → [1, 2, 2, 1]). ``"delayed_reverse_sawtooth"`` (FreeNoise's): 0.01 for the first half, then
    falling from the middle (4 → [0.01, 2, 2, 1]). The numbers are FreeNoise's (diffusers 0.42.1), so
    its windows fuse identically:

    - even ``length`` = 2m: pyramid ``1..m, m..1``; sawtooth ``0.01 × (m − 1), m, m..1``;
    - odd ``length`` = 2m − 1: pyramid ``1..m−1, m, m−1..1``; sawtooth ``0.01 × m, m..1`` — that is
      ``length + 1`` weights, one more than frames (diffusers' own slip: a FreeNoise window of odd
      length then fails to broadcast; callers refuse odd lengths for this scheme).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"window_weights: `length` must be a positive int, got {length!r}")
    if scheme == "flat":
        return [1.0] * length
    if scheme == "pyramid":
        if length % 2 == 0:
            rise = [float(w) for w in range(1, length // 2 + 1)]
            return rise + rise[::-1]
        mid = (length + 1) // 2
        rise = [float(w) for w in range(1, mid)]
        return rise + [float(mid)] + rise[::-1]
    if scheme == "delayed_reverse_sawtooth":
        if length % 2 == 0:
            mid = length // 2
            return [0.01] * (mid - 1) + [float(mid)] + [float(w) for w in range(mid, 0, -1)]
        mid = (length + 1) // 2
        return [0.01] * mid + [float(w) for w in range(mid, 0, -1)]
    raise ValueError(f"window weighting must be one of {list(WEIGHTINGS)}, got {scheme!r}")


def sliding_windows(num_frames: int, length: int, stride: int) -> list[tuple[int, int]]:
    """Windows of ``length`` frames every ``stride`` frames, the last one ending at ``num_frames``.

    ``sliding_windows(10, 4, 3)`` → ``[(0, 4), (3, 7), (6, 10)]``; a ``length`` ≥ ``num_frames``
    gives the single window ``[(0, num_frames)]``; ``stride == length`` tiles without overlap
    (except for a last window moved back to end at ``num_frames``).
    """
    for name, value in (("num_frames", num_frames), ("length", length), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"sliding_windows: `{name}` must be a positive int, got {value!r}")
    if stride > length:
        raise ValueError(f"sliding_windows: `stride` ({stride}) must not exceed `length` ({length}), or frames are skipped")
    if length >= num_frames:
        return [(0, num_frames)]
    starts = [*range(0, num_frames - length, stride), num_frames - length]
    return [(start, start + length) for start in starts]


FUSES = ("pyramid", "flat")


@dataclass(frozen=True)
class ContextWindows:
    """A :data:`NetworkWrapper` for long videos: the network runs on overlapping windows of
    ``context_length`` frames, chosen per step by ``schedule``, and the outputs are fused per frame.

    Windows come from :func:`~vidiff.diffusion.window_schedules.context_windows` (``"uniform"``:
    windows shift from step to step so seams move; ``"static"``: fixed; ``closed_loop``: windows
    wrap from the last frame to frame 0, for looping videos). A window's frames are a slice of the
    latents and of every frame-indexed input (a gather when it wraps). In each frame the outputs of
    the windows holding it are averaged with weights by position in the window (``fuse``:
    ``"pyramid"`` 1, 2, … up to the middle and back, favouring window centres; ``"flat"``: equal),
    normalised per frame, in float32. A frame in one window only is that window's output exactly, so
    ``context_length == num_frames`` is the unwrapped network bit for bit.

    The wrapper the pipeline builds for one denoising run counts its calls: call ``k`` uses the
    windows of step ``k`` (a stepper that calls the network twice per step, like Heun, advances the
    schedule on each call). Each network call processes exactly one window, so activation memory
    follows ``context_length``, not the video. ``context_length`` counts latent frames.
    """

    context_length: int = 16
    context_overlap: int = 4
    schedule: str = "uniform"
    closed_loop: bool = False
    fuse: str = "pyramid"

    def __post_init__(self) -> None:
        for name in ("context_length", "context_overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{name}` must be an int, got {value!r}")
        if self.context_length < 1:
            raise ValueError(f"`context_length` must be ≥ 1 frame, got {self.context_length}")
        if not 0 <= self.context_overlap < self.context_length:
            raise ValueError(
                f"`context_overlap` must be in [0, context_length) = [0, {self.context_length}), got {self.context_overlap}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.fuse not in FUSES:
            raise ValueError(f"`fuse` must be one of {list(FUSES)}, got {self.fuse!r}")
        if not isinstance(self.closed_loop, bool):
            raise TypeError(f"`closed_loop` must be True or False, got {self.closed_loop!r}")
        if self.closed_loop and self.context_overlap == 0:
            raise ValueError("closed_loop needs `context_overlap` ≥ 1: without overlap no window spans the seam from the last frame to the first")

    def windows(self, num_frames: int, step: int = 0) -> list[Window]:
        """The windows (tuples of frame indices) of denoising step ``step`` for ``num_frames`` latent frames."""
        return context_windows(num_frames, self.context_length, self.context_overlap, self.schedule, step, self.closed_loop)

    def check(self, num_frames: int) -> None:
        """Raise ValueError naming ``context_length`` and ``num_frames`` if a window would not fit the video."""
        if self.context_length > num_frames:
            raise ValueError(
                f"`context_length` ({self.context_length}) is longer than the video: `num_frames` is {num_frames} "
                "(latent frames); use a context_length ≤ num_frames, or disable_context_windows()"
            )

    def __call__(self, network: Network, frame_axes: FrameAxes) -> Network:
        axes = dict(frame_axes)
        calls = itertools.count()  # one wrapper per denoising run: call k is step k

        def windowed(x: Tensor, timestep: Tensor, inputs: Mapping[str, Tensor]) -> Tensor:
            num_frames = x.shape[LATENT_FRAME_AXIS]
            self.check(num_frames)
            _check_frame_inputs(inputs, axes, num_frames, "ContextWindows")
            windows = self.windows(num_frames, next(calls))
            weights = [window_weights(len(window), self.fuse) for window in windows]
            return fuse_windows(network, x, timestep, inputs, axes, windows, weights)

        return windowed


def fuse_windows(
    network: Network,
    x: Tensor,
    timestep: Tensor,
    inputs: Mapping[str, Tensor],
    axes: Mapping[str, int],
    windows: Sequence[Window],
    weights: Sequence[Sequence[float]],
) -> Tensor:
    """Run ``network`` once per window (frame-index tuples) and average its outputs per frame.

    ``weights[i][k]`` weighs frame ``windows[i][k]``; per frame the weights are normalised to sum
    to 1 before use (so one window's frame gets weight exactly 1.0 and its output unchanged). The
    sums are kept in at least float32, ``[B', C, F, H, W]``; the result has the outputs' dtype.
    """
    num_frames = x.shape[LATENT_FRAME_AXIS]
    totals = [0.0] * num_frames  # float64 per-frame weight sums
    for window, window_weight in zip(windows, weights, strict=True):
        for frame, weight in zip(window, window_weight, strict=True):
            totals[frame] += weight
    missing = [frame for frame, total in enumerate(totals) if total <= 0]
    if missing:
        raise ValueError(f"frames {missing} of {num_frames} get no positive weight from any context window")
    fused = out = None
    for window, window_weight in zip(windows, weights):
        window_inputs = {name: _frames_of(value, axes[name], window) if name in axes else value for name, value in inputs.items()}
        out = network(_frames_of(x, LATENT_FRAME_AXIS, window), timestep, window_inputs)  # [B', C, L, H, W]
        if fused is None:
            fused, _ = _zero_sums(out, num_frames)
        share = torch.tensor([w / totals[f] for f, w in zip(window, window_weight)], dtype=fused.dtype, device=fused.device)
        _add_frames(fused, window, out.to(fused.dtype) * share.view(1, 1, -1, 1, 1))
    return fused.to(out.dtype)


def _frames_of(value: Tensor, axis: int, window: Window) -> Tensor:
    """The frames ``window`` of ``value`` along ``axis``: a view for a run of frames, a gather when it wraps."""
    if window[-1] - window[0] + 1 == len(window):
        return value.narrow(axis, window[0], len(window))
    return value.index_select(axis, torch.tensor(window, device=value.device))


def _add_frames(total: Tensor, window: Window, values: Tensor) -> None:
    """``total[:, :, window] += values`` in place (frames of one window are distinct)."""
    if window[-1] - window[0] + 1 == len(window):
        total.narrow(LATENT_FRAME_AXIS, window[0], len(window)).add_(values)
    else:
        total.index_add_(LATENT_FRAME_AXIS, torch.tensor(window, device=total.device), values)


def _as_window(window: object) -> tuple[int, int]:
    """A ``(start, stop)`` pair of ints with ``0 ≤ start < stop``, or a ValueError naming it."""
    try:
        start, stop = window  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"FrameWindows: each window must be a pair (start, stop), got {window!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (start, stop)) or not 0 <= start < stop:
        raise ValueError(f"FrameWindows: window {window!r} must be ints with 0 ≤ start < stop (half-open frames [start, stop))")
    return start, stop


def _zero_sums(out: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
    """Zeroed sums for the windows' outputs, ``[B', C, F, H, W]``, and their per-frame counts ``[F]``:
    in at least float32, so fp16 outputs average without extra rounding."""
    dtype = torch.promote_types(out.dtype, torch.float32)
    total = out.new_zeros((*out.shape[:2], num_frames, *out.shape[3:]), dtype=dtype)
    return total, torch.zeros(num_frames, dtype=dtype, device=out.device)


def _check_frame_inputs(inputs: Mapping[str, Tensor], axes: Mapping[str, int], num_frames: int, who: str = "FrameWindows") -> None:
    """Every declared frame-indexed input that the call has must hold ``num_frames`` frames on its axis.

    A declared input may be absent from a call (e.g. AnimateDiff's per-frame text states exist only
    with prompt travel); absent ones are simply not sliced.
    """
    for name, axis in axes.items():
        if name not in inputs:
            continue
        value = inputs[name]
        if not -value.ndim <= axis < value.ndim or value.shape[axis] != num_frames:
            raise ValueError(
                f"{who}: input {name!r} {list(value.shape)} must have the latents' {num_frames} frames on its "
                f"declared frame axis {axis}"
            )
