"""User videos as pipeline inputs: frames → ``[B, 3, F, H, W]`` float32 in [0, 1] at the output size.

A video is a list of frames (PIL images, as :func:`vidiff.load_video` returns), a numpy array
``[F, H, W, 3]`` or a tensor ``[F, 3, H, W]`` in [0, 1]; several videos are a list of such videos or
one array ``[B, F, H, W, 3]`` / tensor ``[B, F, 3, H, W]``. Frames are resized as diffusers'
``VideoProcessor`` does: PIL frames by PIL's Lanczos filter, arrays and tensors by nearest-neighbour
interpolation (see :func:`vidiff.pipelines.frames.resize_images`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch

from . import frames as frames_io


def is_frame(value: Any) -> bool:
    """Whether ``value`` is one image (PIL, ``[H, W, 3]`` array or ``[3, H, W]`` tensor)."""
    if isinstance(value, PIL.Image.Image):
        return True
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 3


def split_videos(video: Any, argument: str) -> list[Any]:
    """The user's ``video`` argument as a list of videos, each a list of frames or a 4-D array/tensor."""
    if isinstance(video, (np.ndarray, torch.Tensor)):
        if video.ndim == 4:
            return [video]
        if video.ndim == 5:
            return list(video)
        raise ValueError(
            f"`{argument}` as an array must be one video [F, H, W, 3] (numpy) / [F, 3, H, W] (torch) or a batch "
            f"[B, F, …] of them, got {video.ndim} dimensions {tuple(video.shape)}"
        )
    if isinstance(video, (list, tuple)) and video:
        if all(is_frame(frame) for frame in video):
            return [list(video)]
        if all(isinstance(v, (list, tuple, np.ndarray, torch.Tensor)) and not is_frame(v) for v in video):
            return list(video)
    raise TypeError(
        f"`{argument}` must be a video (a non-empty list of frames: PIL images, [H, W, 3] arrays or [3, H, W] "
        f"tensors; or a [F, H, W, 3] array / [F, 3, H, W] tensor) or a list of such videos; got "
        f"{type(video).__name__}{'' if not isinstance(video, (list, tuple)) else f' of {len(video)} item(s)'}"
    )


def video_frames(video: Any, height: int, width: int, argument: str) -> torch.Tensor:
    """One video → ``[F, 3, height, width]`` float32 in [0, 1]."""
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError(f"`{argument}` holds an empty video; give it at least one frame")
        if all(isinstance(frame, PIL.Image.Image) for frame in video):
            pixels, pils = frames_io.images_to_tensor(list(video))
        else:
            pixels = torch.cat([frames_io.images_to_tensor(frame)[0] for frame in video])
            pils = None
    else:
        pixels, pils = frames_io.images_to_tensor(video)
        if pixels.shape[0] == 0:
            raise ValueError(f"`{argument}` holds an empty video (0 frames); give it at least one frame")
    return frames_io.resize_images(pixels, pils, height, width)


def videos_to_tensor(video: Any, height: int, width: int, argument: str = "video") -> torch.Tensor:
    """The user's ``video`` argument → ``[B, 3, F, height, width]`` float32 in [0, 1] (see the module
    docstring for the accepted forms); every video must have the same number of frames."""
    videos = [video_frames(one, height, width, argument) for one in split_videos(video, argument)]
    counts = sorted({len(one) for one in videos})
    if len(counts) > 1:
        raise ValueError(f"`{argument}` holds videos of different lengths {[len(v) for v in videos]}; give them equal frame counts")
    return torch.stack(videos).permute(0, 2, 1, 3, 4)  # [B, F, 3, H, W] → [B, 3, F, H, W]
