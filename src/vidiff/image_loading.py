"""Reading pictures: :func:`load_image` from a path, an ``http(s)://`` URL or a PIL image, and the
RGB conversion every image input goes through (:func:`image_as_rgb`), which scales 16-bit and float
samples where ``convert("RGB")`` would clip them.

Nothing here may hang or grow without bound: a download has a total deadline and a byte cap, an
image a pixel cap read from its header, and FIFOs or devices are refused before they are opened.
"""

from __future__ import annotations

import http.client
import io
import math
import numbers
import os
import stat
import threading
import urllib.error
import urllib.request
import warnings
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

PathLike = str | os.PathLike
_URL_PREFIXES = ("http://", "https://")

# Limits of load_image: a URL must arrive within TOTAL_TIMEOUT seconds and MAX_DOWNLOAD_BYTES bytes;
# an image may hold MAX_IMAGE_PIXELS pixels, Pillow's own refusal threshold (2 × its warning one).
TOTAL_TIMEOUT = 60.0
MAX_DOWNLOAD_BYTES = 50 * 2**20
MAX_IMAGE_PIXELS = 2 * 89_478_485
_CHUNK_BYTES = 64 * 1024
# PIL modes holding 16-bit samples (0..65535): PNG and TIFF grey images open as these.
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def load_image(
    image: PathLike | PIL.Image.Image,
    *,
    timeout: float = 10.0,
    total_timeout: float = TOTAL_TIMEOUT,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> PIL.Image.Image:
    """Load an image from a file path, an ``http(s)://`` URL or a PIL image, as an RGB image.

    The EXIF orientation tag is applied (a phone photo comes back upright). 8-bit modes are
    converted with ``Image.convert("RGB")``, as diffusers does: an alpha channel is dropped, not
    composited. 16-bit images (``I;16``, ``I``: 0..65535) are scaled to 8 bits (65535 → 255) and
    float images (``F``) are read as [0, 1] (see :func:`image_as_rgb`); diffusers clips both to 255.
    ``timeout`` (seconds) bounds each network operation of a URL download, ``total_timeout`` the
    whole download, ``max_bytes`` its size; ``max_pixels`` bounds width × height (checked from the
    header, before decoding).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file or download is not a readable image, is not a regular file (a FIFO,
            a device), is larger than ``max_bytes`` or ``max_pixels``.
        OSError: the URL could not be fetched (``TimeoutError`` when it timed out).
        TypeError: ``image`` is none of the accepted types.
    """
    for name, value in (("timeout", timeout), ("total_timeout", total_timeout), ("max_bytes", max_bytes), ("max_pixels", max_pixels)):
        _check_limit(name, value)
    if isinstance(image, PIL.Image.Image):
        opened = image
    elif isinstance(image, (str, os.PathLike)):
        location = os.fsdecode(image)
        if location.startswith(_URL_PREFIXES):
            downloaded = io.BytesIO(_download(location, timeout, total_timeout, max_bytes))
            opened = _open_image(downloaded, f"the download of {location}", max_pixels)
        else:
            _require_regular_file(location)
            opened = _open_image(location, repr(location), max_pixels)
    else:
        raise TypeError(
            "load_image: `image` must be a file path (str or os.PathLike), an http(s):// URL or a "
            f"PIL.Image.Image; got {type(image).__name__}"
        )
    return image_as_rgb(PIL.ImageOps.exif_transpose(opened), "image")


def image_as_rgb(image: PIL.Image.Image, argument: str) -> PIL.Image.Image:
    """An 8-bit RGB copy of ``image``, scaling 16-bit and float samples instead of clipping them.

    16-bit modes (``I;16*``, and ``I`` holding 0..65535) become ``round(x / 257)``; float mode ``F``
    is taken as [0, 1] → ``round(x · 255)`` (a 0..255 float image is refused: say which you mean);
    every other mode goes through ``convert("RGB")``. ``argument`` names the image in errors.
    """
    if image.mode not in _SIXTEEN_BIT_MODES and image.mode != "F":
        return image.convert("RGB")
    samples = np.asarray(image).astype(np.float64)  # [H, W]
    if image.mode == "F":
        check_unit_range(samples, argument)
        scaled = np.clip(samples, 0.0, 1.0) * 255.0
    else:
        if samples.size and (samples.min() < 0 or samples.max() > 65535):
            raise ValueError(
                f"`{argument}` is a 32-bit integer image (mode I) with values in [{samples.min():g}, "
                f"{samples.max():g}]; vidiff reads mode I as 16-bit, 0..65535"
            )
        scaled = samples / 257.0
    grey = np.round(scaled).astype(np.uint8)
    return PIL.Image.fromarray(np.stack([grey] * 3, axis=-1))  # [H, W, 3] RGB


def check_unit_range(values: np.ndarray | torch.Tensor, argument: str, margin: float = 0.05) -> None:
    """Float pixels must be finite and in [0, 1] (give or take ``margin``, a resampling overshoot).

    0..255 floats and [-1, 1] tensors are the usual mix-ups; both are refused with that hint rather
    than silently clipped to a white or washed-out image.
    """
    if values.size == 0 if isinstance(values, np.ndarray) else values.numel() == 0:
        return
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"`{argument}` contains NaN or infinity; pass finite pixel values in [0, 1]")
    if high > 1 + margin:
        hint = " (0..255 values? divide by 255)" if high <= 255 + margin else ""
        raise ValueError(f"`{argument}` float values must be in [0, 1]; got values up to {high:g}{hint}")
    if low < -margin:
        hint = " (a [-1, 1] image? use (x + 1) / 2)" if low >= -1 - margin else ""
        raise ValueError(f"`{argument}` float values must be in [0, 1]; got values down to {low:g}{hint}")


def _check_limit(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"load_image: `{name}` must be a number; got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"load_image: `{name}` must be a positive, finite number; got {value!r}")


def _require_regular_file(location: str) -> None:
    """Refuse FIFOs, sockets and devices before opening them: reading one blocks or never ends."""
    try:
        mode = os.stat(location).st_mode
    except FileNotFoundError as error:
        raise FileNotFoundError(f"load_image: no image file at {location!r}") from error
    if stat.S_ISDIR(mode):
        raise ValueError(f"load_image: {location!r} is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"load_image: {location!r} is not a regular file (a FIFO, socket or device); "
            "pass an image file, or save the stream to one first"
        )


def _open_image(source: str | io.BytesIO, description: str, max_pixels: int) -> PIL.Image.Image:
    """Open and fully decode an image, so decode errors surface here and no file stays open.

    The size is checked against ``max_pixels`` from the header, before decoding; Pillow's own
    decompression-bomb warning is silenced, since this check replaces it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(source) as opened:
                _check_pixels(opened.width, opened.height, description, max_pixels)
                opened.load()
                return opened.copy()  # outlives the closed file; keeps `info`, hence the EXIF tag
    except FileNotFoundError as error:
        raise FileNotFoundError(f"load_image: no image file at {description}") from error
    except IsADirectoryError as error:
        raise ValueError(f"load_image: {description} is a folder, not an image file") from error
    except PermissionError:
        raise
    except PIL.Image.DecompressionBombError as error:
        # Pillow's limit is lower than max_pixels (its MAX_IMAGE_PIXELS was lowered).
        raise ValueError(f"load_image: {description} has too many pixels for Pillow ({error})") from error
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as error:
        # Pillow reports unknown formats as UnidentifiedImageError and truncated data as OSError.
        raise ValueError(f"load_image: {description} is not a readable image ({error})") from error


def _check_pixels(width: int, height: int, description: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ValueError(
            f"load_image: {description} is {width}x{height} = {width * height} pixels, more than "
            f"max_pixels={max_pixels}; shrink it first, or raise `max_pixels` if it is meant"
        )


def _download(url: str, timeout: float, total_timeout: float, max_bytes: int) -> bytes:
    """The body of ``url``, in at most ``total_timeout`` seconds and ``max_bytes`` bytes.

    The fetch runs in a daemon thread so the deadline covers every phase (connecting, headers, a
    body trickling a byte at a time); past it, the thread is told to stop at its next read (at most
    ``timeout`` seconds later) and its bytes are dropped.
    """
    outcome: dict[str, Any] = {}
    cancelled = threading.Event()

    def fetch() -> None:
        try:
            outcome["body"] = _fetch(url, timeout, max_bytes, cancelled)
        except BaseException as error:  # handed to the caller's thread below
            outcome["error"] = error

    worker = threading.Thread(target=fetch, name="vidiff-load-image", daemon=True)
    worker.start()
    worker.join(total_timeout)
    if worker.is_alive():
        cancelled.set()
        raise TimeoutError(
            f"load_image: fetching {url} took longer than total_timeout={total_timeout} s; "
            "raise `total_timeout` for a slow server, or download the file first"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["body"]


def _fetch(url: str, timeout: float, max_bytes: int, cancelled: threading.Event) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "vidiff"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            if announced and announced.strip().isdigit() and int(announced) > max_bytes:
                raise ValueError(
                    f"load_image: {url} is {int(announced)} bytes, more than max_bytes={max_bytes}; "
                    "raise `max_bytes` if this image is meant"
                )
            return _read_capped(response, url, max_bytes, cancelled)
    except urllib.error.HTTPError as error:
        cause = f"HTTP {error.code} {error.reason}"
        raise OSError(f"load_image: could not fetch {url}: {cause}") from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        # A connect timeout arrives wrapped in URLError, a read timeout bare.
        cause = getattr(error, "reason", error)
        if isinstance(cause, TimeoutError) or isinstance(error, TimeoutError):
            raise TimeoutError(f"load_image: fetching {url} timed out after {timeout} s") from error
        raise OSError(f"load_image: could not fetch {url}: {cause}") from error


def _read_capped(response: Any, url: str, max_bytes: int, cancelled: threading.Event) -> bytes:
    """Read the body in chunks (``read1`` returns whatever arrived), refusing more than ``max_bytes``."""
    chunks, total = [], 0
    while not cancelled.is_set():
        chunk = response.read1(_CHUNK_BYTES)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise ValueError(
                f"load_image: {url} sent more than max_bytes={max_bytes} bytes; "
                "raise `max_bytes` if this image is meant"
            )
        chunks.append(chunk)
    return b""  # the caller gave up (total_timeout); nobody reads this
