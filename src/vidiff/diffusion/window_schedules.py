"""Which frames each context window holds, step by step (long videos).

A *window* is a tuple of frame indices of the latent video, in the order the network sees them.
Ordinary windows are runs ``(a, a + 1, …, a + L − 1)``; a closed-loop window may wrap past the last
frame back to frame 0 (``(F − 2, F − 1, 0, 1)``), so the video's end and start are denoised together
and the video loops without a seam.

Two schedules, after ComfyUI's context options (the anchor for behaviour; the code is vidiff's own):

- ``"static"``: the same windows at every step: length ``L``, one every ``L − overlap`` frames, the
  last one moved back to end at frame ``F`` (as :func:`~vidiff.diffusion.windows.sliding_windows`).
  Closed loop: the windows go on round the end (wrapping) until one spans the seam ``F − 1 → 0``.
- ``"uniform"``: the same stride, but the whole grid of windows is shifted by an offset that changes
  from step to step, so the seams between windows fall on different frames at each step and no
  frame is always at a window's edge. The offset of step ``s`` is ``round(F · h(s))`` with ``h`` the
  base-2 van der Corput sequence (0, ½, ¼, ¾, ⅛, …: "ordered halving"), which spreads the offsets
  evenly over the video. Without closed loop a window that would wrap is moved back inside
  ``[0, F)`` (to end at ``F``), and if that leaves the first frames uncovered, the window starting
  at frame 0 is added. Step 0 gives the static windows.

Every frame lies in at least one window; all windows have ``L`` frames; no window repeats.
"""

from __future__ import annotations

Window = tuple[int, ...]
SCHEDULES = ("uniform", "static")


def van_der_corput(index: int) -> float:
    """The base-2 radical inverse of ``index`` in [0, 1): its binary digits mirrored behind the point.

    0 → 0, 1 → 0.5, 2 → 0.25, 3 → 0.75, 4 → 0.125 …: every prefix of the sequence is spread
    evenly over [0, 1), each new point halving a largest gap.
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"van_der_corput: `index` must be an int ≥ 0, got {index!r}")
    value, unit = 0.0, 0.5
    while index:
        if index & 1:
            value += unit
        index >>= 1
        unit /= 2
    return value


def context_windows(
    num_frames: int, length: int, overlap: int, schedule: str = "uniform", step: int = 0, closed_loop: bool = False
) -> list[Window]:
    """The windows of ``length`` frames for denoising step ``step`` of a video of ``num_frames`` frames.

    ``overlap`` frames are shared by neighbouring windows (stride ``length − overlap``). A ``length``
    equal to ``num_frames`` gives the one window over all frames, in order, whatever the schedule.
    Windows are returned sorted by their first frame.
    """
    _check(num_frames, length, overlap, schedule, step)
    if closed_loop and overlap == 0 and length < num_frames:
        raise ValueError("closed_loop needs `context_overlap` ≥ 1: without overlap no window spans the seam from the last frame to the first")
    if length == num_frames:
        return [tuple(range(num_frames))]
    stride = length - overlap
    offset = round(num_frames * van_der_corput(step)) % num_frames if schedule == "uniform" else 0
    # Open windows stop once the grid reaches the end (the last one may cross it and is moved back);
    # closed-loop windows go once round the whole circle of frames.
    # ("static" is the grid at offset 0: its one crossing window moves back to F − L.)
    end = offset + num_frames - (0 if closed_loop else overlap)
    windows = [_circular(start, length, num_frames) for start in range(offset, end, stride)]
    if not closed_loop:
        windows = _unwrapped(windows, length, num_frames)
    return sorted(dict.fromkeys(windows), key=lambda window: window[0])


def _circular(start: int, length: int, num_frames: int) -> Window:
    """Frames ``start, start + 1, …`` (``length`` of them) on the circle of ``num_frames`` frames."""
    return tuple((start + k) % num_frames for k in range(length))


def _unwrapped(windows: list[Window], length: int, num_frames: int) -> list[Window]:
    """Open video: each window that wraps past the last frame moves back to end at ``num_frames``;
    the first frames it no longer covers get the window starting at frame 0, if none covers them."""
    last = tuple(range(num_frames - length, num_frames))
    moved = [last if window[-1] < window[0] else window for window in windows]
    covered = {frame for window in moved for frame in window}
    if len(covered) < num_frames:
        moved.append(tuple(range(length)))  # the frames lost are all among the first `length`
    return moved


def _check(num_frames: int, length: int, overlap: int, schedule: str, step: int) -> None:
    for name, value, minimum in (("num_frames", num_frames, 1), ("context_length", length, 1),
                                 ("context_overlap", overlap, 0), ("step", step, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{name}` must be an int ≥ {minimum}, got {value!r}")
    if overlap >= length:
        raise ValueError(f"`context_overlap` ({overlap}) must be less than `context_length` ({length})")
    if length > num_frames:
        raise ValueError(
            f"`context_length` ({length}) must not exceed the video's `num_frames` ({num_frames}) "
            "(latent frames); use a shorter context or a longer video"
        )
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}, got {schedule!r}")
