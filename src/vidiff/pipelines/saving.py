"""Writing a pipeline checkpoint folder so that a failure leaves nothing half-written."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path


def write_atomically(directory: str | os.PathLike, write: Callable[[Path], None], owner: str) -> None:
    """Have ``write(staging)`` create a whole checkpoint folder in a hidden sibling of ``directory``,
    then move it into place.

    A failure leaves nothing half-written: a new folder does not appear (nor do parents made for
    it), an existing one keeps its contents. Into an existing folder, each entry the checkpoint has
    replaces the one of the same name (subfolders swapped whole, ``model_index.json`` last); other
    files stay. ``owner`` names the caller in the error for a file in the way.
    """
    target = Path(os.path.abspath(directory))
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{owner}: {str(directory)!r} is a file; pass a folder (new or existing)")
    made = _make_folders(target.parent)
    staging = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    try:
        write(staging)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        raise


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones made, outermost first."""
    missing = [f for f in (folder, *folder.parents) if not f.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename a complete checkpoint folder onto ``target``; into an existing folder, entry by entry
    (each component subfolder swapped whole, model_index.json last)."""
    if not target.exists():
        os.rename(staging, target)
        return
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == "model_index.json"):
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            old = target / f".{entry.name}.old-{secrets.token_hex(4)}"
            os.rename(destination, old)
            os.rename(entry, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(entry, destination)
    staging.rmdir()
