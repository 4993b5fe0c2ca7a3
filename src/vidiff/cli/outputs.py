"""Where a run's videos go: checking ``--output`` paths before any work, then writing them safely.

An output is a ``.mp4``, a ``.gif`` or a folder of numbered PNG frames (a path without extension).
Several videos get numbered names (``clip-1.mp4``, ``clip-2.mp4``). Beside each output goes a
``<output>.json`` sidecar describing the run. Nothing existing is replaced without ``--overwrite``,
and every file appears only once complete (media writes through a temporary file; a frames folder is
filled under a temporary name and renamed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..media import export_to_frames, export_to_gif, export_to_video
from .errors import UsageError

FILE_KINDS = {".mp4": "mp4", ".gif": "gif"}


@dataclasses.dataclass(frozen=True)
class Target:
    """One file (or frames folder) to write: ``video_index`` of the batch, in format ``kind``."""

    path: Path
    kind: str  # "mp4", "gif" or "frames"
    video_index: int

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")


def _kind(text: str) -> str:
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir() or not path.suffix:
        return "frames"
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(
            f"--output {text!r}: unknown extension {path.suffix!r}; use .mp4, .gif, or a folder name "
            "without extension for PNG frames"
        )
    return kind


def _numbered(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}-{index + 1}{path.suffix}")


def plan_outputs(outputs: list[str], videos: int, overwrite: bool) -> list[Target]:
    """The targets for ``videos`` videos in each requested format; raises :class:`UsageError` for
    an unknown extension, a missing parent folder or (without ``overwrite``) an existing output."""
    targets = []
    for text in outputs:
        kind = _kind(text)
        path = Path(text.rstrip("/" + os.sep) or text)
        parent = path.absolute().parent
        if not parent.is_dir():
            raise UsageError(f"--output {text!r}: the folder {str(parent)!r} does not exist; create it first")
        for index in range(videos):
            target = path if videos == 1 else _numbered(path, index)
            targets.append(Target(target, kind, index))
    seen = [t.path.absolute() for t in targets]
    if len(set(seen)) != len(seen):
        raise UsageError(f"--output names the same path twice: {[str(t.path) for t in targets]}")
    for target in targets:
        if target.kind != "frames" and target.path.is_dir():
            raise UsageError(f"--output {str(target.path)!r} is a folder; give a file name ending in .mp4 or .gif")
        for existing in (target.path, target.sidecar):
            if existing.exists() and not overwrite:
                raise UsageError(f"{str(existing)!r} already exists; pass --overwrite to replace it, or choose another --output")
    return targets


def write_video(target: Target, frames: np.ndarray, fps: float) -> None:
    """Write one video ``frames`` [F, H, W, 3] in [0, 1] as ``target`` says."""
    if target.kind == "mp4":
        export_to_video(frames, target.path, fps=fps)
    elif target.kind == "gif":
        export_to_gif(frames, target.path, fps=fps)
    else:
        _write_frames_folder(target.path, frames)


def _write_frames_folder(folder: Path, frames: np.ndarray) -> None:
    # Fill a hidden sibling folder, then swap it in: the target never holds a partial set.
    temporary = folder.with_name(f".{folder.name}.tmp-{secrets.token_hex(4)}")
    try:
        export_to_frames(frames, temporary)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{secrets.token_hex(4)}")
            os.replace(folder, old)
            shutil.rmtree(old)
        os.replace(temporary, folder)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def write_sidecar(target: Target, record: dict[str, Any]) -> None:
    """Write ``record`` as ``target``'s ``.json`` sidecar, atomically."""
    path = target.sidecar
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
