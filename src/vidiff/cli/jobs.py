"""The one job schema: what the server's API, the batch file and the CLI's sidecar all describe.

A job is a flat JSON object::

    {"pipeline": "svd", "image": "rocket.png", "num_frames": 14, "seed": 3, "outputs": ["mp4"]}

* ``pipeline``: a ``vidiff`` command (``svd``, ``i2vgen-xl``, ``animatediff``, ``wan``);
* every other key is the name of one of that command's flags as the sidecar records it (the
  argparse ``dest``: ``num_frames`` for ``--num-frames``, ``image`` and ``prompt`` for the
  positional arguments, ``scheduler_config`` as a list of ``KEY=VALUE`` or an object);
* ``outputs``: the formats to write, ``"mp4"`` (default), ``"gif"`` and/or ``"frames"`` — never
  paths: the server and the batch runner name the files themselves.

Validation is the command line's own: the job becomes an argument list and goes through
``vidiff``'s parser, so a bad value gets exactly the message the flag gets (``argument
--num-frames: expected an integer ≥ 1 (frames), got 0``), as a :class:`UsageError`. A CLI sidecar
is turned into a job by :func:`job_from_sidecar`, so any CLI run can be queued as it was made.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from typing import Any

from .commands import COMMANDS, Command
from .errors import UsageError
from .parser import build_parser

FORMATS = ("mp4", "gif", "frames")
# How an on/off field may be spelled in a form (multipart fields are text).
BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False, "on": True, "off": False}
# Flags a job may not set: where outputs go is the runner's business, and message flags are the CLI's.
NOT_JOB_FIELDS = frozenset({"output", "overwrite", "from_json", "quiet", "progress", "debug", "command", "help"})


class JobError(UsageError):
    """A job the command line refuses; ``field`` is the job field the message is about (None: the
    job as a whole), for callers that point at it (the server's JSON errors, batch-file lines)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return {name: sub for name, sub in action.choices.items() if name in COMMANDS}


def job_fields(pipeline: str) -> dict[str, argparse.Action]:
    """The fields a job for ``pipeline`` may set, with the parser action each one feeds."""
    subparser = _subparsers()[pipeline]
    return {a.dest: a for a in subparser._actions if a.dest not in NOT_JOB_FIELDS}  # noqa: SLF001


def _pipeline(job: Mapping[str, Any]) -> str:
    if not isinstance(job, Mapping):
        raise JobError(f"a job must be a JSON object, got {type(job).__name__}")
    name = job.get("pipeline")
    if name not in COMMANDS:
        raise JobError(f"job field 'pipeline' must be one of {sorted(COMMANDS)}, got {name!r}", "pipeline")
    return name


def check_outputs(job: Mapping[str, Any]) -> list[str]:
    """The job's ``outputs`` formats (default ``["mp4"]``), checked."""
    formats = job.get("outputs", ["mp4"])
    if isinstance(formats, str):
        formats = [formats]
    if not isinstance(formats, list) or not formats or any(f not in FORMATS for f in formats):
        raise JobError(f"job field 'outputs' must be a non-empty list of {list(FORMATS)}, got {job.get('outputs')!r}", "outputs")
    if len(set(formats)) != len(formats):
        raise JobError(f"job field 'outputs' lists a format twice: {formats}", "outputs")
    return list(formats)


def _option_values(field: str, action: argparse.Action, value: Any) -> list[str]:
    """The command-line words for one job field (an empty list when it is off)."""
    option = action.option_strings[-1] if action.option_strings else None
    if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
        value = BOOLEAN_WORDS.get(value.lower(), value) if isinstance(value, str) else value  # form fields
        if not isinstance(value, bool):
            raise JobError(f"job field {field!r} ({option}) must be true or false, got {value!r}", field)
        return [option] if value else []
    if value is None:
        return []
    if isinstance(value, bool):
        raise JobError(f"job field {field!r} ({option or field}) takes a value, not {value!r}", field)
    if isinstance(value, Mapping):  # scheduler_config recorded as an object
        value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
    values = value if isinstance(value, list) else [value]
    if len(values) > 1 and not isinstance(action, argparse._AppendAction):  # noqa: SLF001
        raise JobError(f"job field {field!r} ({option or field}) takes one value, got a list", field)
    words: list[str] = []
    for item in values:
        if isinstance(item, (dict, list)):
            raise JobError(f"job field {field!r} ({option or field}) got a nested {type(item).__name__}", field)
        text = item if isinstance(item, str) else json.dumps(item)
        words += [text] if option is None else [option, text]
    return words


def job_argv(job: Mapping[str, Any]) -> list[str]:
    """The ``vidiff`` argument list that makes ``job`` (positional IMAGE / PROMPT first)."""
    pipeline = _pipeline(job)
    fields = job_fields(pipeline)
    unknown = sorted(set(job) - set(fields) - {"pipeline", "outputs", "name"})
    if unknown:
        raise JobError(
            f"unknown job field(s) {unknown} for pipeline {pipeline!r}; valid: {sorted(fields)} plus 'outputs'", unknown[0]
        )
    positional: list[str] = []
    options: list[str] = []
    for field, action in fields.items():
        if field not in job:
            continue
        words = _option_values(field, action, job[field])
        (options if action.option_strings else positional).extend(words)
    return [pipeline, *positional, *options]


def parse_job(job: Mapping[str, Any]) -> tuple[Command, dict[str, Any], list[str]]:
    """Validate ``job`` exactly as the command line would: (command, typed flag values, formats).

    Raises :class:`JobError` with the flag's own message and the field. Paths in the job (image,
    model…) are taken as given: the caller decides which it trusts.
    """
    pipeline = _pipeline(job)
    formats = check_outputs(job)
    try:
        explicit = vars(build_parser().parse_args(job_argv(job)))
    except JobError:
        raise
    except UsageError as error:  # argparse's message: "argument --num-frames: …"
        raise JobError(str(error), _field_named(pipeline, str(error))) from None
    name = explicit.pop("command")
    return COMMANDS[name], explicit, formats


def _field_named(pipeline: str, message: str) -> str | None:
    """The job field whose flag (or positional IMAGE / PROMPT) a parser message starts with."""
    match = re.search(r"argument (--[a-z0-9-]+|[A-Z_]+)", message)
    if match is None:
        return None
    for field, action in job_fields(pipeline).items():
        if match.group(1) in action.option_strings or match.group(1) == action.metavar:
            return field
    return None


def job_from_sidecar(record: Mapping[str, Any]) -> dict[str, Any]:
    """The job a CLI sidecar (``<output>.json``) describes: its command, arguments and seed."""
    if not isinstance(record, Mapping) or "command" not in record or "arguments" not in record:
        raise UsageError("not a vidiff sidecar: expected an object with 'command' and 'arguments'")
    name = record["command"]
    if name not in COMMANDS:
        raise UsageError(f"the sidecar's command {name!r} is not one of {sorted(COMMANDS)}")
    fields = job_fields(name)
    job: dict[str, Any] = {"pipeline": name}
    job.update({k: v for k, v in record["arguments"].items() if k in fields and v is not None})
    seed = record.get("seed") or {}
    if seed.get("kind") in ("numpy", "torch"):
        job["seed" if seed["kind"] == "numpy" else "torch_seed"] = seed["value"]
    output = record.get("output") or {}
    if output.get("format") in FORMATS:
        job["outputs"] = [output["format"]]
    return job
