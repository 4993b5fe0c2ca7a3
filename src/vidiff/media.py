"""Media IO: mp4, gif and png out; images and videos in (read by image_loading and video_loading,
re-exported here).

All exporters accept the same video forms and turn them into ``uint8`` ``[H, W, 3]`` RGB arrays
with :func:`frames_as_uint8`. Files are written atomically: the encoder writes a hidden temporary
file beside the target, renamed onto it only once complete, so a failure never leaves a
half-written file nor harms an existing one. PyAV (FFmpeg) encodes mp4 and gif; Pillow reads
images, quantizes gif palettes and writes png.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np
import PIL.Image
import torch

# Images are read by image_loading (deadlines, caps, 16-bit scaling); re-exported here.
from .image_loading import MAX_IMAGE_PIXELS, check_unit_range, image_as_rgb, load_image  # noqa: F401

# Videos are read by video_loading (files, gifs, frame folders, URLs; sampling, caps); re-exported here.
from .video_loading import load_video  # noqa: F401

PathLike = str | os.PathLike
# A video: a sequence of frames (PIL images, [H, W, 3] arrays or tensors), an array or tensor
# [F, H, W, 3], or a batch holding exactly one such video ([1, F, H, W, 3], [frames]).
VideoFrames = Any

_VIDEO_FORMS = (
    "a list of PIL images or [H, W, 3] arrays/tensors, an array or tensor [F, H, W, 3] "
    "(uint8 in [0, 255] or float in [0, 1]), or a batch holding one such video"
)


# ------------------------------------------------------------------------- frames to uint8 arrays


def frames_as_uint8(video_frames: VideoFrames, argument: str = "video_frames") -> list[np.ndarray]:
    """Turn any accepted video form into a list of ``uint8`` ``[H, W, 3]`` RGB arrays.

    Floats are taken as [0, 1]: values outside are clipped, then scaled by 255 and rounded to the
    nearest integer (as diffusers does when it makes PIL images). PIL images of any mode are
    converted to RGB. A batch of exactly one video is unwrapped; more than one is an error.
    ``argument`` names the caller's parameter in error messages.
    """
    video = _one_video(video_frames, argument)
    frames = [_frame_as_uint8(frame, index, argument) for index, frame in enumerate(video)]
    if not frames:
        raise ValueError(f"`{argument}` holds no frames; pass at least one")
    height, width = frames[0].shape[:2]
    for index, frame in enumerate(frames):
        if frame.shape[:2] != (height, width):
            raise ValueError(
                f"all frames of `{argument}` must have the same size; frame 0 is {width}x{height} "
                f"(WxH) but frame {index} is {frame.shape[1]}x{frame.shape[0]}"
            )
    return frames


def _one_video(video_frames: VideoFrames, argument: str) -> Sequence[Any]:
    """Return the frames of the single video in ``video_frames``, unwrapping a batch of one."""
    if isinstance(video_frames, torch.Tensor):
        video_frames = _tensor_as_numpy(video_frames)
    if isinstance(video_frames, np.ndarray):
        if video_frames.ndim == 5:
            return _one_video(_only_video(video_frames, argument), argument)
        if video_frames.ndim != 4:
            raise ValueError(
                f"`{argument}` as an array must be [F, H, W, 3] frames or a batch [1, F, H, W, 3]; "
                f"got shape {tuple(video_frames.shape)} (for a single image use array[None])"
            )
        return list(video_frames)
    if isinstance(video_frames, (list, tuple)):
        if any(_is_video(item) for item in video_frames):
            return _one_video(_only_video(video_frames, argument), argument)
        return video_frames
    raise TypeError(f"`{argument}` must be {_VIDEO_FORMS}; got {type(video_frames).__name__}")


def _is_video(item: Any) -> bool:
    # A whole video inside a list means the list is a batch of videos (diffusers' `.frames`).
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item.ndim == 4
    return isinstance(item, (list, tuple))


def _only_video(batch: Sequence[Any], argument: str) -> Any:
    if len(batch) != 1:
        raise ValueError(
            f"`{argument}` is a batch of {len(batch)} videos; pass one video, e.g. `frames[0]`"
        )
    return batch[0]


def _tensor_as_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    # numpy has no bfloat16; float32 holds every half-precision value exactly.
    return (tensor.float() if tensor.is_floating_point() else tensor).numpy()


def _frame_as_uint8(frame: Any, index: int, argument: str) -> np.ndarray:
    if isinstance(frame, PIL.Image.Image):
        return np.asarray(frame.convert("RGB"))
    if isinstance(frame, torch.Tensor):
        frame = _tensor_as_numpy(frame)
    if not isinstance(frame, np.ndarray):
        raise TypeError(
            f"frame {index} of `{argument}` is a {type(frame).__name__}; "
            f"`{argument}` must be {_VIDEO_FORMS}"
        )
    if frame.ndim != 3 or frame.shape[-1] != 3:
        channels_first = frame.ndim == 3 and frame.shape[0] == 3
        hint = " (channels first? move the channel axis last)" if channels_first else ""
        raise ValueError(
            f"frame {index} of `{argument}` must be [H, W, 3] RGB; "
            f"got shape {tuple(frame.shape)}{hint}"
        )
    if frame.dtype == np.uint8:
        return frame
    if not np.issubdtype(frame.dtype, np.floating):
        raise TypeError(
            f"frame {index} of `{argument}` has dtype {frame.dtype}; "
            "use uint8 in [0, 255] or float in [0, 1]"
        )
    if not np.isfinite(frame).all():
        raise ValueError(
            f"frame {index} of `{argument}` contains NaN or infinity "
            "(a float16 VAE overflow? decode in float32)"
        )
    return np.round(np.clip(frame, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------- exporting


def export_to_video(
    video_frames: VideoFrames,
    output_video_path: PathLike | None = None,
    fps: int | float = 10,
    *,
    quality: float | None = 5.0,
    crf: int | None = None,
) -> str:
    """Write an H.264 (libx264, yuv420p) mp4 and return its path.

    Args:
        video_frames: one video in any form :func:`frames_as_uint8` accepts (floats in [0, 1] are
            clipped). yuv420p needs even sizes, so an odd width or height is padded by repeating the
            last pixel column or row once.
        output_video_path: target file; its folder must exist. ``None`` writes a new temporary
            ``.mp4`` file. The file is always an mp4, whatever the extension.
        fps: frames per second, stored as an exact fraction (7 reads back as 7, 29.97 as 2997/100).
        quality: 0 (worst) to 10 (best), imageio's scale used by diffusers: CRF =
            ``int((1 - quality / 10) * 51)``, so the default 5 gives CRF 25; ``None`` keeps x264's
            default (23).
        crf: x264 constant rate factor, 0 (lossless yuv420p) to 51 (worst); overrides ``quality``.
    """
    frames = [_pad_to_even(frame) for frame in frames_as_uint8(video_frames, "video_frames")]
    rate = _frame_rate(fps, "export_to_video")
    codec_options = _x264_options(quality, crf)
    target, made_here = _output_path(output_video_path, ".mp4", "output_video_path")
    height, width = frames[0].shape[:2]
    with _atomic_write(target, discard_target_on_failure=made_here) as temporary:
        # faststart puts the index first, so browsers can play while downloading.
        mp4_options = {"movflags": "+faststart"}
        with av.open(temporary, mode="w", format="mp4", options=mp4_options) as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # x264's output depends on its thread count, which by default follows the CPUs this
            # process may use (1.5 per CPU); a fixed count makes the same frames the same file on
            # any machine, under any CPU affinity (x264 is deterministic for a given count).
            stream.options = {**codec_options, "threads": str(X264_THREADS)}
            _encode(container, stream, (_rgb_frame(frame) for frame in frames))
    return target


def export_to_gif(
    image: VideoFrames, output_gif_path: PathLike | None = None, fps: int | float = 10
) -> str:
    """Write a looping (``loop=0``) gif and return its path.

    ``image`` takes the same video forms as :func:`export_to_video`. Each frame gets its own
    adaptive palette of up to 256 colours (Pillow's quantizer, as Pillow's own gif writer uses).
    GIF stores delays in centiseconds: each frame lasts 1000/fps ms rounded to 10 ms, with the
    rounding carried over so the animation keeps the requested rate (fps 7 → 140, 150, 140 ms…).
    Every frame is kept, identical consecutive ones included; Pillow's gif writer would merge those
    into one longer frame, which is why FFmpeg's gif encoder (through PyAV) writes the file.
    """
    frames = frames_as_uint8(image, "image")
    rate = _frame_rate(fps, "export_to_gif")
    if rate > 100:
        raise ValueError(
            "export_to_gif: GIF delays are whole centiseconds, so `fps` must be at most 100; "
            f"got {fps}"
        )
    target, made_here = _output_path(output_gif_path, ".gif", "output_gif_path")
    height, width = frames[0].shape[:2]
    # The muxer times each frame by the next one's start; the last has none, so give it its own.
    options = {"loop": "0", "final_delay": str(_last_gif_delay(len(frames), rate))}
    with _atomic_write(target, discard_target_on_failure=made_here) as temporary:
        with av.open(temporary, mode="w", format="gif", options=options) as container:
            stream = container.add_stream("gif", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "pal8"
            _encode(container, stream, (_palette_frame(frame) for frame in frames))
    return target


def export_to_frames(frames: VideoFrames, folder: PathLike) -> list[str]:
    """Write frames as ``frame_0000.png``, ``frame_0001.png``… in ``folder``; return the paths.

    ``folder`` is created if missing (its parent must exist). Each png is written atomically;
    a failure part-way keeps the frames already written.
    """
    arrays = frames_as_uint8(frames, "frames")
    location = _path_text(folder, "folder")
    if not os.path.isdir(location):
        _require_parent_folder(location, "folder")
        os.mkdir(location)
    paths = []
    for index, array in enumerate(arrays):
        target = os.path.join(location, f"frame_{index:04d}.png")
        with _atomic_write(target) as temporary:
            PIL.Image.fromarray(array).save(temporary, format="PNG")
        paths.append(target)
    return paths


# ------------------------------------------------------------------------------ encoding helpers


def _frame_rate(fps: int | float, caller: str) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise TypeError(f"{caller}: `fps` must be a number; got {type(fps).__name__}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"{caller}: `fps` must be a positive, finite number; got {fps}")
    # A denominator up to 1001 keeps NTSC rates (30000/1001) exact and turns 7.0 into 7/1.
    return Fraction(fps).limit_denominator(1001)


X264_THREADS = 8  # fixed, for byte-reproducible mp4s (see export_to_video); x264 caps it for small frames


def _x264_options(quality: float | None, crf: int | None) -> dict[str, str]:
    if crf is not None:
        if isinstance(crf, bool) or not isinstance(crf, numbers.Integral) or not 0 <= crf <= 51:
            raise ValueError(f"export_to_video: `crf` must be an integer from 0 to 51; got {crf!r}")
        return {"crf": str(crf)}
    if quality is None:
        return {}
    if isinstance(quality, bool) or not isinstance(quality, numbers.Real) or not 0 <= quality <= 10:
        raise ValueError(
            f"export_to_video: `quality` must be a number from 0 to 10 (or None); got {quality!r}"
        )
    # imageio-ffmpeg's mapping, so diffusers' `quality` values give the same files' quality.
    return {"crf": str(int((1 - quality / 10) * 51))}


def _last_gif_delay(frame_count: int, rate: Fraction) -> int:
    """Centiseconds for the last gif frame, so the whole animation lasts frame_count / rate."""
    # Frame starts in centiseconds, rounded half up as FFmpeg rescales timestamps.
    starts = [math.floor(100 * n / rate + Fraction(1, 2)) for n in (frame_count - 1, frame_count)]
    return starts[1] - starts[0]


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    # yuv420p stores chroma at half resolution in both axes, so H and W must be even.
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _rgb_frame(frame: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")


def _palette_frame(frame: np.ndarray) -> av.VideoFrame:
    """Quantize an RGB frame to at most 256 colours, as a pal8 frame for the gif encoder."""
    quantized = PIL.Image.fromarray(frame).convert("P", palette=PIL.Image.Palette.ADAPTIVE)
    colours = np.asarray(quantized.getpalette("RGB"), dtype=np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), dtype=np.uint8)  # [256, ARGB], the layout PyAV's pal8 expects
    palette[:, 0] = 255
    palette[: len(colours), 1:] = colours
    return av.VideoFrame.from_ndarray((np.asarray(quantized), palette), format="pal8")


def _encode(container: Any, stream: Any, frames: Iterable[av.VideoFrame]) -> None:
    """Encode frames at one tick of the stream's rate each, then flush the encoder."""
    for index, frame in enumerate(frames):
        frame.pts = index  # in units of 1/fps: the stream's time base is 1/rate
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


# ------------------------------------------------------------------------------------ file writing


def _output_path(path: PathLike | None, suffix: str, argument: str) -> tuple[str, bool]:
    """Check an output path, or create a new empty temporary file when it is None.

    Returns the path as str and whether this call created the file (so a failed write removes it).
    """
    if path is None:
        handle, created = tempfile.mkstemp(suffix=suffix, prefix="vidiff-")
        os.close(handle)
        return created, True
    location = _path_text(path, argument)
    if os.path.isdir(location):
        raise ValueError(f"`{argument}` {location!r} is a folder; pass a file path inside it")
    _require_parent_folder(location, argument)
    return location, False


def _path_text(path: PathLike, argument: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{argument}` must be a str or os.PathLike; got {type(path).__name__}")
    return os.fsdecode(path)


def _require_parent_folder(location: str, argument: str) -> None:
    parent = os.path.dirname(os.path.abspath(location))
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"the folder of `{argument}` {location!r} does not exist: {parent!r}; create it first"
        )


@contextlib.contextmanager
def _atomic_write(target: str, discard_target_on_failure: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only if the block succeeds.

    The temporary name keeps the target's extension (``.clip.mp4.tmp-1a2b3c4d.mp4``) so tools that
    look at extensions still recognise it. On any exception it is deleted and ``target`` is left
    as it was, or removed when ``discard_target_on_failure`` (an empty placeholder made for it).
    """
    folder, name = os.path.split(target)
    extension = os.path.splitext(name)[1]
    temporary = os.path.join(folder, f".{name}.tmp-{secrets.token_hex(4)}{extension}")
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        leftovers = [temporary, target] if discard_target_on_failure else [temporary]
        for leftover in leftovers:
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
        raise
