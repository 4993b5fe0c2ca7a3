"""Prompt travel: a ``{frame_index: text}`` prompt whose text states glide from key frame to key frame.

Each key frame's prompt is encoded once (``[K, L, D]``); the states of the frames between two keys
come from an interpolation callback ``cb(start_frame, end_frame, start [1, L, D], end [1, L, D]) ->
[end_frame − start_frame + 1, L, D]`` (default: a linear blend), as diffusers does with FreeNoise.
The last key's prompt holds until the last frame. The result is per frame, ``[F, L, D]``.

vidiff also accepts a schedule without FreeNoise (diffusers raises a TypeError there): the whole
video is then denoised with per-frame text states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

# cb(start_frame, end_frame, start_tensor [1, L, D], end_tensor [1, L, D]) -> [end − start + 1, L, D]
InterpolationCallback = Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]
PromptSchedule = Mapping[int, str]


def is_schedule(prompt: Any) -> bool:
    """Whether ``prompt`` is a ``{frame_index: text}`` schedule (rather than a text or list of texts)."""
    return isinstance(prompt, Mapping)


def check_schedule(schedule: Any, num_frames: int, argument: str = "prompt") -> dict[int, str]:
    """``schedule`` sorted by frame, or a ValueError/TypeError naming ``argument`` and what is valid.

    Keys are frame indices (ints) in ``[0, num_frames)`` and must include 0 (the opening prompt);
    values are texts.
    """
    if not schedule:
        raise ValueError(f"`{argument}` is an empty dict; give at least {{0: text}}")
    for frame, text in schedule.items():
        if isinstance(frame, bool) or not isinstance(frame, int):
            raise TypeError(f"`{argument}` dict keys must be frame indices (int), got {frame!r}")
        if not isinstance(text, str):
            raise TypeError(f"`{argument}` dict values must be texts (str), got {type(text).__name__} at frame {frame}")
        if not 0 <= frame < num_frames:
            raise ValueError(
                f"`{argument}` names frame {frame}, outside the video's frames 0..{num_frames - 1} (num_frames={num_frames})"
            )
    if 0 not in schedule:
        raise ValueError(f"`{argument}` dict must start at frame 0 (the opening prompt); its first frame is {min(schedule)}")
    return dict(sorted(schedule.items()))


def lerp(start_frame: int, end_frame: int, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Linear blend from ``start`` (at ``start_frame``) to ``end`` (at ``end_frame``), both ends included:
    ``[end_frame − start_frame + 1, L, D]``; frame k gets ``(1 − a)·start + a·end``, a = k / (n − 1)."""
    count = end_frame - start_frame + 1
    return torch.cat([(1 - k / (count - 1)) * start + (k / (count - 1)) * end for k in range(count)])


def interpolate(
    keys: list[int], key_states: torch.Tensor, num_frames: int, callback: InterpolationCallback | None = None
) -> torch.Tensor:
    """Per-frame states ``[num_frames, L, D]`` from the states of sorted key frames ``[K, L, D]``.

    The last key's state is repeated to the last frame (a key there of its own). Between consecutive
    keys, ``callback`` (default :func:`lerp`) fills the span, both ends included; where spans meet,
    the later span's first value wins (it is the key's own state for a blend).
    """
    keys = list(keys)
    states = list(key_states.split(1))  # K × [1, L, D]
    if keys[-1] != num_frames - 1:
        keys.append(num_frames - 1)
        states.append(states[-1])
    out = key_states.new_zeros((num_frames, *key_states.shape[1:]))
    if len(keys) == 1:  # a one-frame video
        return out.copy_(states[0])
    callback = lerp if callback is None else callback
    for (start_frame, start), (end_frame, end) in zip(zip(keys, states), zip(keys[1:], states[1:])):
        span = callback(start_frame, end_frame, start, end)
        expected = (end_frame - start_frame + 1, *key_states.shape[1:])
        if not isinstance(span, torch.Tensor) or tuple(span.shape) != expected:
            got = list(span.shape) if isinstance(span, torch.Tensor) else type(span).__name__
            raise ValueError(
                f"prompt_interpolation_callback({start_frame}, {end_frame}, …) must return a tensor {list(expected)}, got {got}"
            )
        out[start_frame : end_frame + 1] = span
    return out
