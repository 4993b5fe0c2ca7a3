"""Control frames for ControlNets made from a video: :func:`canny_frames` (OpenCV's Canny edges).

Other control signals (depth, pose, scribbles) are the user's own images; canny is the common case
that needs nothing beyond OpenCV.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import PIL.Image

from .media import VideoFrames, frames_as_uint8


def canny_frames(
    video: VideoFrames, low_threshold: float = 100, high_threshold: float = 200
) -> list[PIL.Image.Image]:
    """Canny edge maps of every frame, as 3-channel RGB PIL images (white edges on black).

    Each frame (uint8 RGB ``[H, W, 3]``) goes to ``cv2.Canny(frame, low_threshold,
    high_threshold)``, whose ``[H, W]`` map of 0/255 is repeated on three channels, the control
    images diffusers' ControlNet documentation makes for ``lllyasviel/sd-controlnet-canny``.

    Args:
        video: one video in any form ``export_to_video`` accepts: a list of PIL images (e.g. from
            :func:`load_video`), ``[H, W, 3]`` arrays or tensors, or an ``[F, H, W, 3]`` array.
        low_threshold, high_threshold: hysteresis thresholds on the gradient magnitude, with
            ``0 <= low_threshold <= high_threshold``: a pixel above ``high_threshold`` starts an
            edge, one above ``low_threshold`` continues it.

    Raises:
        ValueError / TypeError: an invalid threshold or video (naming the argument).
        ImportError: OpenCV (``opencv-python-headless``) is not installed.
    """
    low = _threshold("low_threshold", low_threshold)
    high = _threshold("high_threshold", high_threshold)
    if low > high:
        raise ValueError(
            f"canny_frames: `low_threshold` ({low_threshold}) must not exceed `high_threshold` "
            f"({high_threshold})"
        )
    frames = frames_as_uint8(video, "video")
    cv2 = _opencv()
    edges = []
    for frame in frames:
        edge = cv2.Canny(np.ascontiguousarray(frame), low, high)  # [H, W] uint8, 0 or 255
        edges.append(PIL.Image.fromarray(np.repeat(edge[:, :, None], 3, axis=2)))  # [H, W, 3] RGB
    return edges


def _threshold(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"canny_frames: `{name}` must be a number; got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"canny_frames: `{name}` must be a finite number >= 0; got {value!r}")
    return float(value)


def _opencv() -> Any:
    # Imported on first use: OpenCV takes a noticeable time to import, and only this needs it.
    try:
        import cv2
    except ImportError as error:
        raise ImportError(
            "canny_frames needs OpenCV: pip install opencv-python-headless"
        ) from error
    return cv2
