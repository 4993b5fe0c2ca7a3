"""From parsed flags to a complete, checked run description (before anything is loaded).

A run's settings are the flags the user typed over a ``--from-json`` sidecar's recorded arguments
over vidiff's defaults. Everything that can be checked without the model is checked here, so a
mistake costs no download and no loading time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..image_loading import load_image
from ..pipelines.frames import check_image_size
from .commands import Command, scheduler_choices
from .errors import UsageError
from .adapters import defaults as adapter_defaults
from .control_inputs import defaults as control_defaults
from .long_video import defaults as long_video_defaults
from .parser import subcommand_actions
from .wan import defaults as wan_defaults

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Settings that describe where the run's outputs go, never taken from a sidecar.
NOT_RECORDED = ("output", "overwrite", "from_json", "quiet", "progress", "debug", "command")

logger = logging.getLogger("vidiff.cli")


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
        **({"model_config": None} if command.name in ("animatediff", "svd") else {}),  # single-file --model
        "motion_adapter": command.default_motion_adapter,
        "revision": None,
        "variant": "auto",
        "offline": False,
        "scheduler": None,
        "scheduler_config": [],
        "device": "auto",
        "dtype": "auto",
        "vae_tiling": False,
        "forward_chunking": False,
        "offload": None,
        "compile": False,
        "memory": "off",
        **long_video_defaults(command),  # prompt travel, FreeNoise, context windows, FreeInit: off
        **control_defaults(command),  # video input, ControlNet, SparseCtrl: off (AnimateDiff only)
        **adapter_defaults(command),  # LoRA, IP-Adapter: none (AnimateDiff only)
        **wan_defaults(command),  # --image, --last-image: none (Wan only)
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
        # A sidecar replays generation settings only: where outputs go and whether to replace them
        # is only ever what the user types now.
        recorded = {k: v for k, v in record["arguments"].items() if k not in NOT_RECORDED}
        if "seed" not in explicit and "torch_seed" not in explicit:
            seed = record["seed"]
            recorded["seed" if seed["kind"] == "numpy" else "torch_seed"] = seed["value"]
        recorded = check_recorded(command, explicit["from_json"], recorded)
    return {**defaults(command), **recorded, **explicit}, record


def check_recorded(command: Command, path: str, recorded: dict[str, Any]) -> dict[str, Any]:
    """A sidecar's arguments through the flags' own value parsers and choices, so a hand-edited
    ``{"num_frames": "lots"}`` fails as ``--num-frames lots`` would (exit 2). Keys this vidiff has no
    flag for are dropped with a warning; ``None`` means the pipeline's default."""
    actions, checked = subcommand_actions(command.name), {}
    for key, value in recorded.items():
        action = actions.get(key)
        if action is None:
            if key not in defaults(command):  # e.g. SVD's motion_adapter: None, recorded as a default
                logger.warning("--from-json %s: ignoring %r, which this vidiff has no setting for", path, key)
        elif value is None or key == "scheduler_config":
            checked[key] = value  # checked with the scheduler (scheduler_overrides)
        elif isinstance(action, argparse._AppendAction):  # a repeatable flag (--prompt-at): a list
            if not isinstance(value, list):
                raise UsageError(f"--from-json {path!r}: argument {action.option_strings[-1]}: expected a list, got {value!r}")
            checked[key] = [_recorded_value(path, action, item) for item in value]
        else:
            checked[key] = _recorded_value(path, action, value)
    return checked


def _recorded_value(path: str, action: argparse.Action, value: Any) -> Any:
    name = action.option_strings[-1] if action.option_strings else action.metavar or action.dest
    where = f"--from-json {path!r}: argument {name}"
    if action.nargs == 0:  # a switch (--offline)
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{where}: expected a single value, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(str(value))
        except argparse.ArgumentTypeError as error:
            raise UsageError(f"{where}: {error}") from None
    elif not isinstance(value, str):
        raise UsageError(f"{where}: expected text, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{where}: invalid choice: {value!r} (choose from {', '.join(map(repr, action.choices))})")
    return value


def pick_seed(settings: dict[str, Any]) -> Seed:
    if settings.get("torch_seed") is not None:
        return Seed("torch", settings["torch_seed"])
    if settings.get("seed") is not None:
        return Seed("numpy", settings["seed"])
    return Seed("numpy", secrets.randbits(32))


def read_image(command: Command, settings: dict[str, Any]) -> PIL.Image.Image:
    """Load IMAGE now, so a wrong path or an unusable picture fails before any model is loaded."""
    text = settings.get("image")
    if text is None:
        raise UsageError(f"`vidiff {command.name}` needs IMAGE, the picture the video starts from (a file path or URL)")
    if text.startswith(("http://", "https://")):
        return _usable(text, load_image(text))  # a failed download is a runtime error (exit 1)
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
    if not path.is_file():  # reading a FIFO or a device would block, or never end
        raise UsageError(f"IMAGE {text!r} is not a regular file (a FIFO, socket or device); pass an image file")
    try:
        image = load_image(str(path))
    except (ValueError, OSError) as error:
        raise UsageError(f"IMAGE {text!r} cannot be read as an image: {error}") from None
    return _usable(text, image)


def _usable(text: str, image: PIL.Image.Image) -> PIL.Image.Image:
    """Refuse a picture no pipeline can use (a side under 8 pixels, an absurd aspect ratio)."""
    try:
        check_image_size(image.width, image.height, argument="IMAGE")
    except ValueError as error:
        raise UsageError(f"IMAGE {text!r}: {str(error).replace('`IMAGE`', 'it')}") from None
    return image


def read_prompt(command: Command, settings: dict[str, Any]) -> str:
    prompt = settings.get("prompt")
    if prompt is None or not prompt.strip():
        raise UsageError(f"`vidiff {command.name}` needs PROMPT, the text describing the video (quote it)")
    if _names_an_image_file(prompt):
        # Most likely the wrong command: the file name would be taken as the description of the video.
        hint = ("IMAGE comes first, then PROMPT" if command.takes_image
                else "to start from an image use `vidiff svd IMAGE` or `vidiff i2vgen-xl IMAGE PROMPT`")
        logger.warning("PROMPT %r is the name of an image file, used here as text; %s", prompt, hint)
    return prompt


def _names_an_image_file(text: str) -> bool:
    path = Path(text.strip()).expanduser()
    try:
        return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, or holding NUL
        return False


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, else Apple MPS, else the CPU; an explicit device must be present."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        present = ", ".join(["cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else []))
        raise UsageError(f"--device {name}: no such device here (torch {torch.__version__}); available: {present}, or auto")
    return torch.device(name)


WORKER_DEVICES = ("auto", "cpu", "cuda")


def worker_devices(choice: str) -> list[str]:
    """The devices of long-lived workers (the server's, a local batch's), one worker each: every CUDA
    GPU (``cuda:0``, ``cuda:1``…) for ``auto`` and ``cuda``, else one ``cpu`` worker."""
    if choice not in WORKER_DEVICES:
        raise UsageError(f"--device must be one of {list(WORKER_DEVICES)}, got {choice!r}")
    count = torch.cuda.device_count() if choice in ("auto", "cuda") else 0
    if choice == "cuda" and count == 0:
        raise UsageError(f"--device cuda: no CUDA GPU here (torch {torch.__version__}); use --device cpu or auto")
    return [f"cuda:{index}" for index in range(count)] or ["cpu"]


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA (what the released weights are used in), float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and name in ("fp16", "bf16"):
        # CPUs have few half-precision kernels: torch converts around most operations.
        logger.warning("--dtype %s on the CPU is slower than fp32 there (and no smaller in the end result); "
                       "it saves memory only", name)
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
