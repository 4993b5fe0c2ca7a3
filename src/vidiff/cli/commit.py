"""Putting a run's finished outputs in place together: all of them, or none of them.

Every output (a video file, a frames folder, a sidecar) is first written complete under a hidden
temporary name beside its final one (:meth:`Staging.temporary`). :meth:`Staging.commit` then moves
them all in, with SIGINT, SIGTERM and SIGHUP held back so that a signal cannot land between two
moves; if one move fails, those already done are undone and the originals ``--overwrite`` replaced
come back. Without ``--overwrite`` each final name is *claimed* atomically (a hard link for a file,
``mkdir`` for a folder), so of two runs racing for one name the second fails with "already exists"
instead of silently replacing the first's video.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import RunError

logger = logging.getLogger("vidiff.cli")

# What export_to_frames writes (frame_0000.png…): all an overwritten frames folder may hold.
FRAME_NAME = re.compile(r"frame_\d{4,}\.png")
HELD_SIGNALS = {getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)}


def foreign_entries(folder: Path) -> list[str]:
    """Names in ``folder`` that are not vidiff's frame files (sorted)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not (FRAME_NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False)))


class Staging:
    """Temporaries for a run's outputs, moved in by :meth:`commit`; leaving the ``with`` block
    removes whatever was not moved in (after a failure or an interrupt)."""

    def __init__(self, overwrite: bool):
        self.overwrite = overwrite
        self._staged: list[tuple[Path, Path]] = []  # (temporary, final), in commit order

    def temporary(self, final: Path) -> Path:
        """A hidden unused name beside ``final``, keeping its extension for tools that look at it."""
        temporary = _sibling(final, "tmp")
        self._staged.append((temporary, final))
        return temporary

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc_info) -> None:
        with _signals_held():  # a second Ctrl-C must not leave temporaries behind
            for temporary, _ in self._staged:
                _remove(temporary)

    def commit(self) -> None:
        """Move every temporary onto its final name, or (on any failure) none of them."""
        undo: list[Callable[[], None]] = []
        backups: list[Path] = []
        with _signals_held():
            try:
                for temporary, final in self._staged:
                    undo.append(self._move_in(temporary, final, backups))
            except BaseException:
                for step in reversed(undo):
                    _best_effort(step)
                for backup in backups:
                    if os.path.lexists(backup):
                        logger.warning("could not put a replaced original back; it is kept as %s", backup)
                raise
            for backup in backups:
                _discard_backup(backup)

    def _move_in(self, temporary: Path, final: Path, backups: list[Path]) -> Callable[[], None]:
        """Move ``temporary`` to ``final``; return how to undo it."""
        try:
            if self.overwrite and os.path.lexists(final):
                return _replace(temporary, final, backups)
            _claim(temporary, final)
            return lambda: _remove(final)
        except FileExistsError:
            raise RunError(
                f"{str(final)!r} already exists (another run wrote it meanwhile?); nothing was written; pass "
                "--overwrite to replace it, or choose another --output"
            ) from None
        except OSError as error:
            raise RunError(f"cannot write {str(final)!r}: {error.strerror or error}; nothing was written") from error


def _claim(temporary: Path, final: Path) -> None:
    """Move ``temporary`` to ``final`` only if nothing is there, atomically (FileExistsError if taken)."""
    if temporary.is_dir():
        os.mkdir(final)  # the claim; rename(2) may then replace this *empty* folder
        try:
            os.rename(temporary, final)
        except BaseException:
            os.rmdir(final)
            raise
        return
    try:
        os.link(temporary, final)  # unlike rename, link never replaces an existing name
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: claim the name with O_EXCL, then fill it
        os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.replace(temporary, final)
    else:
        os.unlink(temporary)


def _replace(temporary: Path, final: Path, backups: list[Path]) -> Callable[[], None]:
    """--overwrite: keep the original as a hidden backup (deleted once every output is in), then move in."""
    backup = _sibling(final, "old")
    folder = temporary.is_dir()
    original_in_place = False
    if folder:
        os.rename(final, backup)  # a folder cannot be replaced in one step (signals are held meanwhile)
    else:
        try:
            os.link(final, backup, follow_symlinks=False)  # the original stays: os.replace below is atomic
            original_in_place = True
        except OSError:
            os.rename(final, backup)
    backups.append(backup)

    def restore() -> None:
        if original_in_place:
            os.unlink(backup)  # the move-in failed: the original never left
        else:
            if folder and os.path.lexists(final):
                _remove(final)  # the new frames folder, moved in
            os.replace(backup, final)
        backups.remove(backup)

    try:
        if folder:
            _refuse_foreign_files(backup, final)
            os.rename(temporary, final)
        else:
            os.replace(temporary, final)
    except BaseException:
        restore()
        raise
    original_in_place = False  # from now on, undoing means moving the backup back
    return restore


def _refuse_foreign_files(backup: Path, final: Path) -> None:
    """The frames folder was checked when the run was planned; refuse files that arrived since."""
    foreign = foreign_entries(backup)
    if foreign:
        raise RunError(f"--output {str(final)!r} now holds {', '.join(foreign[:3])}, which vidiff did not write; "
                       "it was left as it was, and nothing was written")


def _discard_backup(backup: Path) -> None:
    """Delete a replaced original; a frames folder loses only vidiff's frames, never anything else."""
    try:
        if backup.is_dir() and not backup.is_symlink():
            for name in os.listdir(backup):
                if FRAME_NAME.fullmatch(name):
                    os.unlink(backup / name)
            os.rmdir(backup)
        else:
            os.unlink(backup)
    except OSError as error:
        logger.warning("could not delete the replaced %s: %s", backup, error.strerror or error)


def _sibling(path: Path, role: str) -> Path:
    return path.with_name(f".{path.name}.{role}-{secrets.token_hex(4)}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _best_effort(step: Callable[[], None]) -> None:
    try:
        step()
    except OSError as error:
        logger.warning("could not undo a finished output: %s", error)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM/SIGHUP for a few renames; one that arrived is handled right after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
