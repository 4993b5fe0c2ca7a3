"""Uploaded images: size-limited, decoded before they are kept, saved under names the server picks."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import PIL
import PIL.Image

from .requests import JobRefused

# The picture formats a job may upload (what PIL decodes and vidiff's image loading reads).
IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff"}
UPLOAD_FIELDS = ("image", "last_image")


def check_size(field: str, size: int, limit_bytes: int) -> None:
    if size > limit_bytes:
        raise JobRefused(
            f"the uploaded {field!r} is {size / 2**20:.1f} MiB; this server takes at most "
            f"{limit_bytes / 2**20:g} MiB per upload (vidiff serve --max-upload-mb)", field, status=413,
        )


def save_image(field: str, data: bytes, folder: Path) -> Path:
    """Decode ``data`` fully (so a truncated or disguised file is refused now, not in a worker) and
    save it as ``<folder>/<field>.<ext>``; returns the path."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)  # a pixel bomb is refused
            with PIL.Image.open(io.BytesIO(data)) as picture:
                kind = picture.format
                picture.load()
    except PIL.UnidentifiedImageError:
        raise JobRefused(f"the uploaded {field!r} is not an image (its content is no picture format PIL reads)", field) from None
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError) as error:
        raise JobRefused(f"the uploaded {field!r} is not a readable image ({error})", field) from None
    if kind not in IMAGE_FORMATS:
        raise JobRefused(
            f"the uploaded {field!r} is a {kind} picture; upload one of {sorted(IMAGE_FORMATS)}", field
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{field}.{IMAGE_FORMATS[kind]}"
    temporary = path.with_name(path.name + ".partial")
    temporary.write_bytes(data)
    temporary.replace(path)
    return path
