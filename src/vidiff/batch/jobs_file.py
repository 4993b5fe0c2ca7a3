"""Reading a batch file: one job per line (JSON Lines), every job checked before anything runs.

Each non-blank line is a job in the schema of :mod:`vidiff.cli.jobs` (``{"pipeline": "wan",
"prompt": "a cat", "num_frames": 9, "outputs": ["mp4", "gif"]}``), plus an optional ``"name"``
that names its files (default ``<line number:04d>-<pipeline>``, e.g. ``0003-wan``). A job writes
``<out>/<name>.mp4`` / ``.gif`` / ``<name>/`` (PNG frames) for its formats, each with the CLI's
``<path>.json`` sidecar; several videos per job get the CLI's numbered names (``<name>-1.mp4``).

A bad line is a :class:`JobsFileError` naming the file, the line number and the field, with the
message the command line gives for the same flag.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from ..cli.commands import Command
from ..cli.errors import UsageError
from ..cli.jobs import JobError, parse_job

# A name becomes a file name in --out: letters, digits, '-' and '_' only (no dots, no separators,
# nothing hidden), so it can neither leave the folder nor be taken for an extension.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
SUFFIXES = {"mp4": ".mp4", "gif": ".gif", "frames": ""}  # "frames": a folder of PNGs


class JobsFileError(UsageError):
    """The batch file is unusable (exit status 2): nothing was run."""


@dataclasses.dataclass(frozen=True)
class BatchJob:
    """One line of the batch file: its number (1-based), the name of its outputs and the job itself."""

    line: int
    name: str
    job: dict[str, Any]
    formats: tuple[str, ...] = ("mp4",)  # the job's "outputs", checked
    videos: int = 1  # videos the job makes (its num_videos_per_prompt)

    @property
    def pipeline(self) -> str:
        return self.job["pipeline"]

    @property
    def model(self) -> str:
        return str(self.job.get("model") or "")  # "" = the pipeline's default model

    def parsed(self) -> tuple[Command, dict[str, Any], list[str]]:
        """(command, typed flag values, formats), as :func:`vidiff.cli.jobs.parse_job` checks them."""
        return parse_job(self.job)

    def output_arguments(self, out: Path) -> list[str]:
        """The ``--output`` values of this job: one per format, named after the job, under ``out``."""
        return [str(out / (self.name + SUFFIXES[fmt])) for fmt in self.formats]

    def expected_paths(self, out: Path) -> list[Path]:
        """Every file or folder a finished run of this job leaves in ``out`` (outputs and sidecars).

        Mirrors the CLI's naming (:func:`vidiff.cli.outputs.plan_outputs`): several videos per job
        are numbered ``<name>-1.mp4``, ``<name>-2.mp4``…"""
        paths = []
        for text in self.output_arguments(out):
            base = Path(text)
            for index in range(self.videos):
                path = base if self.videos == 1 else base.with_name(f"{base.stem}-{index + 1}{base.suffix}")
                paths += [path, path.with_name(path.name + ".json")]
        return paths


def read_jobs(path: str | os.PathLike) -> list[BatchJob]:
    """Every job of the JSONL file at ``path``, each validated with the command line's parser.

    Raises :class:`JobsFileError` for a missing or empty file, a line that is not a JSON object, a
    job the CLI would refuse (the message names the line and the field), a bad or repeated
    ``name``, or two jobs whose outputs would share a file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobsFileError(f"JOBS {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise JobsFileError(f"JOBS {str(path)!r} cannot be read as UTF-8 text: {error}") from None
    jobs = [_read_line(path, number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not jobs:
        raise JobsFileError(f"JOBS {str(path)!r} holds no jobs (expected one JSON object per line)")
    _check_unique(path, jobs)
    return jobs


def _read_line(path: Path, number: int, line: str) -> BatchJob:
    where = f"{path}: line {number}"
    try:
        job = json.loads(line)
    except json.JSONDecodeError as error:
        raise JobsFileError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(job, dict):
        raise JobsFileError(f"{where}: a job must be a JSON object, got {type(job).__name__}")
    name = job.get("name", None)
    if name is None:
        name = f"{number:04d}-{job.get('pipeline')}"
    elif not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise JobsFileError(
            f"{where}: field 'name' must be 1–100 letters, digits, '-' or '_' (starting with a letter or digit), "
            f"got {name!r}"
        )
    try:
        command, explicit, formats = parse_job(job)
    except JobError as error:
        # Point at the field unless the message already names it ("job field 'outputs' …").
        named = error.field is None or f"'{error.field}'" in str(error)
        raise JobsFileError(f"{where}{'' if named else f' (field {error.field!r})'}: {error}") from None
    videos = explicit.get("num_videos_per_prompt") or command.default("num_videos_per_prompt") or 1
    return BatchJob(number, name, job, tuple(formats), videos)


def _check_unique(path: Path, jobs: list[BatchJob]) -> None:
    """Refuse two jobs with one name, or whose outputs would land on the same file (names compared
    case-insensitively: some file systems are)."""
    names: dict[str, BatchJob] = {}
    outputs: dict[str, BatchJob] = {}
    for job in jobs:
        other = names.setdefault(job.name.lower(), job)
        if other is not job:
            raise JobsFileError(
                f"{path}: line {job.line} repeats the name {other.name!r} (line {other.line}); give each job its own 'name'"
            )
        for expected in job.expected_paths(Path(".")):
            other = outputs.setdefault(str(expected).lower(), job)
            if other is not job:
                raise JobsFileError(
                    f"{path}: line {job.line} repeats the output {str(expected)!r} of {other.name!r} (line {other.line}); "
                    "give each job its own 'name'"
                )
