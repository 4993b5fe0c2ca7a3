"""From parsed flags to a complete, checked run description (before anything is loaded).

A run's settings are the flags the user typed over a ``--from-json`` sidecar's recorded arguments
over vidiff's defaults. Everything that can be checked without the model is checked here, so a
mistake costs no download and no loading time.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..media import load_image
from .commands import Command, scheduler_choices
from .errors import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Settings that describe where the run's outputs go, never taken from a sidecar.
NOT_RECORDED = ("output", "overwrite", "from_json", "quiet", "progress", "debug", "command")


@dataclasses.dataclass(frozen=True)
class Seed:
    kind: str  # "numpy" (PCG64) or "torch" (CPU torch.Generator)
    value: int

    def generator(self) -> np.random.Generator | torch.Generator:
        if self.kind == "torch":
            return torch.Generator("cpu").manual_seed(self.value)
        return np.random.Generator(np.random.PCG64(self.value))


def defaults(command: Command) -> dict[str, Any]:
    """What a run uses for every setting the user does not give (pipeline arguments excluded: those
    default inside the pipeline)."""
    return {
        "model": command.default_model,
        "motion_adapter": command.default_motion_adapter,
        "revision": None,
        "variant": "auto",
        "offline": False,
        "scheduler": None,
        "scheduler_config": [],
        "device": "auto",
        "dtype": "auto",
    }


def read_sidecar(path: str, command: Command) -> dict[str, Any]:
    """A sidecar's whole record, checked to be one of ``command``'s."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        recorded_command, seed = record["command"], record["seed"]
        if not isinstance(record["arguments"], dict) or seed["kind"] not in ("numpy", "torch") or not isinstance(seed["value"], int):
            raise ValueError("its arguments or seed are malformed")
    except FileNotFoundError:
        raise UsageError(f"--from-json {path!r} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"--from-json {path!r} is not a vidiff sidecar ({type(error).__name__}: {error})") from None
    if recorded_command != command.name:
        raise UsageError(f"--from-json {path!r} records a `vidiff {recorded_command}` run; run it with `vidiff {recorded_command} --from-json ...`")
    return record


def merge(command: Command, explicit: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Settings: defaults ← a ``--from-json`` sidecar's arguments and seed ← the flags typed now.
    Also returns the sidecar's record (None without ``--from-json``)."""
    record = read_sidecar(explicit["from_json"], command) if "from_json" in explicit else None
    recorded = {}
    if record is not None:
        recorded = dict(record["arguments"])
        if "seed" not in explicit and "torch_seed" not in explicit:
            seed = record["seed"]
            recorded["seed" if seed["kind"] == "numpy" else "torch_seed"] = seed["value"]
    return {**defaults(command), **recorded, **explicit}, record


def pick_seed(settings: dict[str, Any]) -> Seed:
    if settings.get("torch_seed") is not None:
        return Seed("torch", settings["torch_seed"])
    if settings.get("seed") is not None:
        return Seed("numpy", settings["seed"])
    return Seed("numpy", secrets.randbits(32))


def read_image(command: Command, settings: dict[str, Any]) -> PIL.Image.Image:
    """Load IMAGE now, so a wrong path fails before any model is loaded."""
    text = settings.get("image")
    if text is None:
        raise UsageError(f"`vidiff {command.name}` needs IMAGE, the picture the video starts from (a file path or URL)")
    if text.startswith(("http://", "https://")):
        return load_image(text)  # a failed download is a runtime error (exit 1)
    path = Path(text).expanduser()
    if not path.exists():
        if " " in text.strip() or path.suffix.lower() not in IMAGE_SUFFIXES:
            hint = (
                "the arguments are IMAGE then PROMPT" if command.takes_prompt
                else f"`vidiff {command.name}` makes a video from an image and takes no prompt; "
                "for text to video use `vidiff animatediff PROMPT`"
            )
            raise UsageError(f"IMAGE {text!r} is not an image file; {hint}")
        raise UsageError(f"IMAGE {text!r} does not exist")
    if path.is_dir():
        raise UsageError(f"IMAGE {text!r} is a folder; pass an image file (png, jpg, webp…)")
    try:
        return load_image(str(path))
    except (ValueError, OSError) as error:
        raise UsageError(f"IMAGE {text!r} cannot be read as an image: {error}") from None


def read_prompt(command: Command, settings: dict[str, Any]) -> str:
    prompt = settings.get("prompt")
    if prompt is None or not prompt.strip():
        raise UsageError(f"`vidiff {command.name}` needs PROMPT, the text describing the video (quote it)")
    return prompt


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, else Apple MPS, else the CPU; an explicit device must be present."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        present = ", ".join(["cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else []))
        raise UsageError(f"--device {name}: no such device here (torch {torch.__version__}); available: {present}, or auto")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA (what the released weights are used in), float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def pick_variant(name: str | None, dtype: torch.dtype) -> str | None:
    """``auto``: the ``fp16`` weight files for half-precision runs (a checkpoint without them falls
    back to its full files, with a warning); ``none``: always the full files."""
    if name in (None, "none"):
        return None
    if name == "auto":
        return "fp16" if dtype in (torch.float16, torch.bfloat16) else None
    return name


def scheduler_overrides(command: Command, settings: dict[str, Any]) -> dict[str, Any]:
    """``--scheduler-config KEY=VALUE`` items as a dict, checked against the scheduler's options
    (the one ``--scheduler`` names, else the pipeline's usual one)."""
    items = settings.get("scheduler_config") or {}
    overrides = dict(items) if isinstance(items, dict) else dict(_key_value(item) for item in items)
    if not overrides:
        return {}
    choices = scheduler_choices(command)
    cls = choices[settings["scheduler"]] if settings.get("scheduler") else next(iter(command.scheduler_classes.values()))
    try:
        cls.from_config({}, **overrides)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--scheduler-config for {cls.__name__}: {error}") from None
    return overrides


def _key_value(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--scheduler-config {item!r}: expected KEY=VALUE, e.g. timestep_spacing=trailing")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    return key.strip(), value
