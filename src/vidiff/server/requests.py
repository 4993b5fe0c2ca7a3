"""A submitted job checked for the server: the CLI's validation plus what a server must refuse.

The job schema and its messages are the command line's (:mod:`vidiff.cli.jobs`). On top of it a
server never lets a client name a file on its machine: images and videos must be http(s) URLs or
uploads, models must be Hub ids or names from the ``--model`` table, outputs are named by the
server, and the device is the worker's. Each refusal is a :class:`JobRefused` naming the field.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..cli.commands import COMMANDS
from ..cli.jobs import JobError, parse_job

# Fields that read a picture or a video: a URL or an upload, never a path on the server.
MEDIA_FIELDS = ("image", "last_image", "video", "control_video", "ip_adapter_image")
# "FRAME:PATH" fields: the part after the frame index is media.
FRAME_MEDIA_FIELDS = ("control_image",)
# Fields that name weights: a Hub id or a name from the server's model table.
MODEL_FIELDS = ("model", "motion_adapter", "controlnet", "sparsectrl", "lora", "ip_adapter", "model_config")
# The server writes one mp4 and/or gif per job; frame folders are the CLI's.
SERVER_FORMATS = ("mp4", "gif")
# owner/name on the Hugging Face Hub (optionally a file inside, for single-file weights and LoRAs).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-][A-Za-z0-9_./-]*)?$")
_LORA_SCALE = re.compile(r":-?[0-9.]+$")


class JobRefused(Exception):
    """A request the server will not queue: the HTTP status, a one-line message, the job field."""

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.message, self.field, self.status = message, field, status


def check_job(job: Any, models: Mapping[str, str], uploads: Mapping[str, Path]) -> tuple[dict, dict, list[str], int]:
    """(job as shown, job as run, formats, steps) for a submitted ``job`` (uploads: field → saved file).

    Raises :class:`JobRefused` (422) with the CLI's message where the CLI has one."""
    if not isinstance(job, Mapping):
        raise JobRefused(f"a job must be a JSON object, got {type(job).__name__}")
    pipeline = job.get("pipeline")
    shown = dict(job)
    run_job = dict(job)
    try:
        if pipeline not in COMMANDS:
            parse_job(job)  # the schema's own message for a missing or unknown pipeline
        _check_server_rules(run_job, pipeline, models)
        for field, path in uploads.items():
            if field in job:
                raise JobRefused(f"job field {field!r} is given twice: as text and as an uploaded file", field)
            shown[field] = f"upload:{path.name}"
            run_job[field] = str(path)
        if run_job.get("seed") is None and run_job.get("torch_seed") is None:
            # Picked now and stored, so a job re-queued after a restart makes the same video.
            shown["seed"] = run_job["seed"] = secrets.randbits(32)
        command, explicit, formats = parse_job(run_job)
    except JobError as error:
        raise JobRefused(str(error), error.field) from None
    for field, value in explicit.items():  # form fields are text: show "14" as the number 14
        if isinstance(shown.get(field), str) and isinstance(value, (int, float)) and field not in uploads:
            shown[field] = run_job[field] = value
    steps = explicit.get("num_inference_steps") or command.default("num_inference_steps") or 0
    return shown, run_job, formats, steps


def _check_server_rules(job: dict[str, Any], pipeline: str, models: Mapping[str, str]) -> None:
    """Refuse what a server must not run; replace model table names by their paths (in ``job``)."""
    formats = job.get("outputs", ["mp4"])
    formats = [formats] if isinstance(formats, str) else formats
    if isinstance(formats, list) and any(f not in SERVER_FORMATS for f in formats if isinstance(f, str)):
        raise JobRefused(f"job field 'outputs': the server writes {list(SERVER_FORMATS)}, got {formats!r}", "outputs")
    for field in ("device", "dtype"):
        if job.get(field) not in (None, "auto"):
            raise JobRefused(f"job field {field!r} is the server's choice (each worker owns one device); leave it out", field)
        job.pop(field, None)
    videos = job.get("num_videos_per_prompt")
    if videos not in (None, 1, "1"):
        raise JobRefused("job field 'num_videos_per_prompt': the server makes one video per job; submit several jobs", "num_videos_per_prompt")
    for field in MEDIA_FIELDS + FRAME_MEDIA_FIELDS:
        for value in _values(job.get(field)):
            media = value.split(":", 1)[1] if field in FRAME_MEDIA_FIELDS and ":" in value else value
            if not media.startswith(("http://", "https://")):
                raise JobRefused(
                    f"job field {field!r} must be an http(s) URL or an uploaded file; the server does not read "
                    f"its own files (got {value!r})", field,
                )
    for field in MODEL_FIELDS:
        if field in job:
            job[field] = _model_source(field, job[field], models)


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]


def _model_source(field: str, value: Any, models: Mapping[str, str]) -> Any:
    """A model table name → its path or id; a Hub id as it is; anything else refused."""
    if isinstance(value, list):
        return [_model_source(field, item, models) for item in value]
    if not isinstance(value, str):
        return value  # the CLI's parser says what is wrong with it
    if value in models:
        return models[value]
    scale = _LORA_SCALE.search(value) if field == "lora" else None
    name = value[: scale.start()] if scale else value
    if name in models:
        return models[name] + (scale.group(0) if scale else "")
    looks_local = name.startswith(("/", ".", "~")) or "\\" in name or ".." in name or Path(name).exists()
    if looks_local or not _HUB_ID.match(name):
        known = ", ".join(sorted(models)) or "none (start the server with --model NAME=PATH_OR_ID)"
        raise JobRefused(
            f"job field {field!r}: {value!r} is neither a Hub id (owner/name) nor a model of this server "
            f"({known}); local paths must be given to the server with --model NAME=PATH", field,
        )
    return value
