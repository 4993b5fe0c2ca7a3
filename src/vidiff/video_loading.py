"""Reading videos: :func:`load_video` from a video file (mp4, webm, mov… through PyAV/FFmpeg), a gif
(through Pillow, as diffusers reads gifs), a folder of numbered frames (what ``export_to_frames``
writes) or an ``http(s)://`` URL, as a list of RGB PIL images.

As in image_loading, nothing may hang or grow without bound: a download has a deadline and a byte
cap (image_loading's fetcher), every frame a pixel cap checked before it is converted, and all kept
frames together a total pixel cap; decoding stops as soon as ``max_frames`` frames are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import av
import PIL.Image

from .image_loading import (
    MAX_IMAGE_PIXELS,
    TOTAL_TIMEOUT,
    _download,
    image_as_rgb,
    load_image,
)

PathLike = str | os.PathLike
Frames = list[PIL.Image.Image]
_URL_PREFIXES = ("http://", "https://")

# A video download may be larger than an image one (load_image allows 50 MiB).
MAX_VIDEO_DOWNLOAD_BYTES = 512 * 2**20
# All kept frames together, after resizing: 2**31 pixels are 6 GiB of RGB PIL images.
MAX_TOTAL_PIXELS = 2**31
# Files of a frame folder that are read as frames; other files (a sidecar, notes) are ignored.
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Resampling of `size`: Lanczos, the filter diffusers' image processors resize PIL images with.
RESAMPLE = PIL.Image.Resampling.LANCZOS


def load_video(
    video: PathLike,
    convert_method: Callable[[Frames], Frames] | None = None,
    *,
    max_frames: int | None = None,
    stride: int = 1,
    size: tuple[int, int] | None = None,
    return_fps: bool = False,
    timeout: float = 10.0,
    total_timeout: float = TOTAL_TIMEOUT,
    max_bytes: int = MAX_VIDEO_DOWNLOAD_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_total_pixels: int = MAX_TOTAL_PIXELS,
) -> Frames | tuple[Frames, float]:
    """Load a video as a list of RGB PIL images.

    Args:
        video: a video file (any container and codec FFmpeg decodes: mp4, webm, mov…), a gif
            (recognised by its content, read with Pillow; every frame comes back RGB), a folder of
            frames (image files, in natural order: ``frame_2`` before ``frame_10``; hidden and
            non-image files are ignored) or an ``http(s)://`` URL of a video or gif.
        convert_method: called with the final list of frames (RGB, sampled, resized); its return
            value is returned, as diffusers' ``convert_method``.
        max_frames: keep at most this many frames, the first ones after ``stride`` (``None``: all).
        stride: keep every ``stride``-th frame, starting with the first; applied before
            ``max_frames`` (stride 2, max_frames 3 keeps frames 0, 2, 4).
        size: ``(width, height)`` to resize every frame to, with Lanczos resampling.
        return_fps: also return the frame rate of the returned frames (the file's rate divided by
            ``stride``); a folder of frames has none (``ValueError``).
        timeout, total_timeout, max_bytes: limits of a URL download (seconds per network
            operation, seconds in all, bytes), as in :func:`load_image`.
        max_pixels: most pixels (width × height) of one decoded frame, checked before converting it.
        max_total_pixels: most pixels of all kept frames together, after resizing.

    Raises:
        FileNotFoundError: ``video`` does not exist.
        ValueError: ``video`` is unreadable, holds no frame, or exceeds a limit; an option is invalid.
        OSError: the URL could not be fetched (``TimeoutError`` when it timed out).
        TypeError: ``video`` is not a path or URL, or an option has the wrong type.
    """
    location = _video_text(video)
    for name, value in (("timeout", timeout), ("total_timeout", total_timeout)):
        _seconds(name, value)
    _count("max_bytes", max_bytes)
    limits = _Limits(
        max_frames=_count("max_frames", max_frames, optional=True), stride=_count("stride", stride),
        size=_size(size), max_pixels=_count("max_pixels", max_pixels),
        max_total_pixels=_count("max_total_pixels", max_total_pixels),
    )
    if location.startswith(_URL_PREFIXES):
        frames, fps = _load_url(location, limits, timeout, total_timeout, max_bytes)
    else:
        frames, fps = _load_local(location, limits)
    if convert_method is not None:
        frames = convert_method(frames)
    if not return_fps:
        return frames
    if fps is None:
        raise ValueError(f"load_video: {location!r} records no frame rate, so `return_fps=True` cannot be honoured")
    return frames, fps / limits.stride


@dataclasses.dataclass(frozen=True)
class _Limits:
    """What to keep (stride, max_frames, size (W, H)) and how much may be decoded (pixel caps)."""

    max_frames: int | None
    stride: int
    size: tuple[int, int] | None
    max_pixels: int
    max_total_pixels: int

    def last_index(self) -> float:
        """Index of the last source frame that can be kept (stride first, then max_frames)."""
        return math.inf if self.max_frames is None else (self.max_frames - 1) * self.stride

    def keep(self, source: Iterator[tuple[int, Any]], open_frame: Callable[[Any], PIL.Image.Image],
             description: str) -> Frames:
        """Open, resize and keep the frames of ``source`` (index, raw frame) that are sampled."""
        frames, total = [], 0
        for index, raw in source:
            if index > self.last_index():
                break  # nothing further can be kept: stop decoding
            if index % self.stride:
                continue
            frame = open_frame(raw)
            if self.size is not None and frame.size != self.size:
                frame = frame.resize(self.size, RESAMPLE)
            total += frame.width * frame.height
            if total > self.max_total_pixels:
                raise ValueError(
                    f"load_video: the frames kept from {description} hold more than max_total_pixels="
                    f"{self.max_total_pixels} pixels; keep fewer with `max_frames` or `stride`, or "
                    "shrink them with `size`"
                )
            frames.append(frame)
        if not frames:
            raise ValueError(f"load_video: {description} holds no frames")
        return frames

    def check_pixels(self, width: int, height: int, description: str) -> None:
        if width * height > self.max_pixels:
            raise ValueError(
                f"load_video: {description} has {width}x{height} = {width * height} pixels per frame, "
                f"more than max_pixels={self.max_pixels}; raise `max_pixels` if it is meant"
            )


# ------------------------------------------------------------------------------------ the sources


def _load_url(url: str, limits: _Limits, timeout: float, total_timeout: float,
              max_bytes: int) -> tuple[Frames, float | None]:
    """Download ``url`` (image_loading's deadline and byte cap) to a temporary file, then decode it."""
    try:
        body = _download(url, timeout, total_timeout, max_bytes)
    except (OSError, ValueError) as error:
        # image_loading's messages name load_image; say which call fetched the URL.
        raise type(error)(f"load_video: could not download `video` {url}: {error}") from error
    handle, temporary = tempfile.mkstemp(prefix="vidiff-video-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(body)
        return _load_file(temporary, limits, f"the download of {url}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def _load_local(location: str, limits: _Limits) -> tuple[Frames, float | None]:
    try:
        mode = os.stat(location).st_mode
    except FileNotFoundError as error:
        raise FileNotFoundError(f"load_video: `video` {location!r} does not exist") from error
    if stat.S_ISDIR(mode):
        return _load_folder(location, limits), None
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"load_video: `video` {location!r} is not a regular file (a FIFO, socket or device); "
            "save the stream to a file first"
        )
    return _load_file(location, limits, repr(location))


def _load_file(location: str, limits: _Limits, description: str) -> tuple[Frames, float | None]:
    with open(location, "rb") as file:
        is_gif = file.read(4) == b"GIF8"  # GIF87a / GIF89a, whatever the file is named
    if is_gif:
        return _load_gif(location, limits, description)
    return _load_av(location, limits, description)


def _load_av(location: str, limits: _Limits, description: str) -> tuple[Frames, float | None]:
    """Decode the first video stream with PyAV, converting only the sampled frames to RGB."""

    def open_frame(frame: av.VideoFrame) -> PIL.Image.Image:
        limits.check_pixels(frame.width, frame.height, description)  # a stream may change size
        image = frame.to_image()  # RGB
        # Phones store portrait video as landscape plus a display rotation; FFmpeg's command line
        # (which diffusers' imageio reader runs) applies it, so do we. Degrees counter-clockwise.
        turn = _ROTATIONS.get(frame.rotation % 360)
        return image if turn is None else image.transpose(turn)

    try:
        with av.open(location) as container:
            if not container.streams.video:
                raise ValueError(f"load_video: {description} holds no video stream")
            stream = container.streams.video[0]
            limits.check_pixels(stream.codec_context.width, stream.codec_context.height, description)
            rate = stream.average_rate or stream.guessed_rate  # a Fraction, or None
            frames = limits.keep(enumerate(container.decode(stream)), open_frame, description)
    except av.error.FFmpegError as error:
        raise ValueError(f"load_video: {description} is not a readable video ({error})") from error
    return frames, float(rate) if rate else None


# A display rotation (degrees counter-clockwise, as PyAV reports it) as a Pillow transpose.
_ROTATIONS = {
    90: PIL.Image.Transpose.ROTATE_90,
    180: PIL.Image.Transpose.ROTATE_180,
    270: PIL.Image.Transpose.ROTATE_270,
}


def _load_gif(location: str, limits: _Limits, description: str) -> tuple[Frames, float | None]:
    """Read a gif with Pillow, which composites each frame onto the previous as the file says."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(location) as gif:
                limits.check_pixels(gif.width, gif.height, description)
                duration = gif.info.get("duration")  # ms of the first frame; may be absent
                frames = limits.keep(_gif_frames(gif), lambda opened: image_as_rgb(opened, "video"),
                                     description)
    except PIL.Image.DecompressionBombError as error:  # Pillow's own cap, lowered below max_pixels
        raise ValueError(f"load_video: {description} has too many pixels for Pillow ({error})") from error
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, EOFError) as error:
        raise ValueError(f"load_video: {description} is not a readable gif ({error})") from error
    return frames, 1000.0 / duration if duration else None


def _gif_frames(gif: PIL.Image.Image) -> Iterator[tuple[int, PIL.Image.Image]]:
    index = 0
    while True:
        yield index, gif  # converted (copied) by the caller before the next seek
        index += 1
        try:
            gif.seek(index)  # frame by frame, so decoding stops once max_frames are kept
        except EOFError:
            return


def _load_folder(location: str, limits: _Limits) -> Frames:
    """Read the image files of a folder in natural order, loading only the sampled ones."""
    names = sorted(
        (name for name in os.listdir(location)
         if not name.startswith(".") and name.lower().endswith(FRAME_EXTENSIONS)
         and os.path.isfile(os.path.join(location, name))),
        key=_natural_key,
    )
    description = f"the folder {location!r}"

    def open_frame(name: str) -> PIL.Image.Image:
        try:
            return load_image(os.path.join(location, name), max_pixels=limits.max_pixels)
        except ValueError as error:
            raise ValueError(f"load_video: frame {name!r} of {description}: {error}") from error

    frames = limits.keep(enumerate(names), open_frame, f"{description} (no {'/'.join(FRAME_EXTENSIONS)} files)")
    sizes = {frame.size for frame in frames}
    if len(sizes) > 1:
        raise ValueError(
            f"load_video: the frames of {description} differ in size ({sorted(sizes)}, WxH); "
            "pass `size=(width, height)` to resize them all"
        )
    return frames


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key reading digit runs as numbers: frame_2.png < frame_10.png."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower()) for part in parts if part)


# ------------------------------------------------------------------------------------- validation


def _video_text(video: Any) -> str:
    if not isinstance(video, (str, os.PathLike)):
        raise TypeError(
            "load_video: `video` must be a path (str or os.PathLike) to a video file, a gif or a "
            f"folder of frames, or an http(s):// URL; got {type(video).__name__}"
        )
    return os.fsdecode(video)


def _count(name: str, value: Any, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"load_video: `{name}` must be a positive integer{' or None' if optional else ''}; got {value!r}")
    if value < 1:
        raise ValueError(f"load_video: `{name}` must be a positive integer; got {value!r}")
    return int(value)


def _seconds(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"load_video: `{name}` must be a number of seconds; got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"load_video: `{name}` must be a positive, finite number of seconds; got {value!r}")


def _size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"load_video: `size` must be (width, height) or None; got {size!r}")
    for value in size:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"load_video: `size` must be two positive integers (width, height); got {size!r}")
    return int(size[0]), int(size[1])
