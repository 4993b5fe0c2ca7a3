"""Where a run's videos go: checking ``--output`` paths before any work, then writing them safely.

An output is a ``.mp4``, a ``.gif`` or a folder of numbered PNG frames (a path without extension).
Several videos get numbered names (``clip-1.mp4``, ``clip-2.mp4``). Beside each output goes a
``<output>.json`` sidecar describing the run. Nothing existing is replaced without ``--overwrite``;
with it, only a file of the same kind or a frames folder holding nothing but vidiff's frames, never
a device or a file where a folder goes. Outputs appear all together, each complete, or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from ..media import export_to_frames, export_to_gif, export_to_video
from . import commit
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
    """The output's kind, from its name: an existing file or device is never taken for a folder."""
    path = Path(text)
    if text.endswith(("/", os.sep)) or not path.suffix:
        return "frames"
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        if path.is_dir():
            return "frames"  # an existing folder whose name has a dot
        raise UsageError(
            f"--output {text!r}: unknown extension {path.suffix!r}; use .mp4, .gif, or a folder name "
            "without extension for PNG frames"
        )
    return kind


def _numbered(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}-{index + 1}{path.suffix}")


def plan_outputs(outputs: list[str], videos: int, overwrite: bool) -> list[Target]:
    """The targets for ``videos`` videos in each requested format; raises :class:`UsageError` for
    an unknown extension, a missing parent folder, an existing path of another kind (a file where a
    frames folder goes, a device…), or an existing output (without ``overwrite``; with it, a frames
    folder holding anything vidiff did not write)."""
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
        for existing, kind in ((target.path, target.kind), (target.sidecar, "json")):
            if os.path.lexists(existing):
                _check_replaceable(existing, kind, target, overwrite)
    return targets


def _check_replaceable(path: Path, kind: str, target: Target, overwrite: bool) -> None:
    """``path`` exists: refuse it unless it is what this output would write, and --overwrite says so."""
    what = "--output" if kind != "json" else f"the sidecar of --output {str(target.path)!r},"
    try:
        mode = os.stat(path).st_mode  # through symbolic links: what a write would reach
    except OSError:
        mode = 0  # a broken link
    if kind == "frames" and stat.S_ISREG(mode):
        raise UsageError(
            f"--output {str(path)!r} is a file, but a name without extension means a folder of PNG frames; "
            "give the video a name ending in .mp4 or .gif, or choose another --output"
        )
    if kind != "frames" and stat.S_ISDIR(mode):
        raise UsageError(f"{what} {str(path)!r} is a folder; give a file name ending in .mp4 or .gif, or move the folder")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UsageError(
            f"{what} {str(path)!r} is not a regular file or folder (a device, a pipe, a socket or a broken link); "
            "vidiff writes only files and folders: choose another --output"
        )
    if not overwrite:
        raise UsageError(f"{str(path)!r} already exists; pass --overwrite to replace it, or choose another --output")
    foreign = commit.foreign_entries(path) if kind == "frames" else []
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UsageError(
            f"--output {str(path)!r} holds {shown}, which vidiff did not write; --overwrite replaces only a folder "
            "of vidiff's frame_NNNN.png files: move the rest away, or choose another --output"
        )


def write_outputs(targets: list[Target], frames: np.ndarray, fps: float, sidecars: list[dict[str, Any]], overwrite: bool) -> None:
    """Write every target (video ``target.video_index`` of ``frames`` [B, F, H, W, 3] in [0, 1]) and
    its sidecar record, or none of them: all are written to temporaries first, then moved in together
    (see :mod:`vidiff.cli.commit`)."""
    with commit.Staging(overwrite) as staging:
        for target, record in zip(targets, sidecars, strict=True):
            _write_video(target.kind, staging.temporary(target.path), frames[target.video_index], fps)
            text = json.dumps(record, indent=2, sort_keys=True) + "\n"  # before the file: a bad record writes nothing
            staging.temporary(target.sidecar).write_text(text, encoding="utf-8")
        staging.commit()


def _write_video(kind: str, path: Path, frames: np.ndarray, fps: float) -> None:
    if kind == "mp4":
        export_to_video(frames, path, fps=fps)
    elif kind == "gif":
        export_to_gif(frames, path, fps=fps)
    else:
        export_to_frames(frames, path)
