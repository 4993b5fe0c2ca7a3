"""``--model`` and ``--motion-adapter`` given as one original checkpoint file, and ``--model-config``.

A path to an existing *file* ending in ``.safetensors``, ``.ckpt``, ``.pt``, ``.pth`` or ``.bin`` is a
single file (a folder or Hub id is not):

============================  ==================================================================
flag                          what loads
============================  ==================================================================
``animatediff --model F``      ``<AnimateDiff pipeline>.from_single_file(F, motion_adapter=…, config=…)``
``svd --model F``              ``StableVideoDiffusionPipeline.from_single_file(F, config=…)``
``--motion-adapter F``         ``MotionAdapter.from_single_file(F)``
============================  ==================================================================

``--model-config FOLDER``: a diffusers pipeline folder whose component configs, tokenizer and
scheduler the single file is used with (``config=`` of ``from_single_file``); without it, the
release configs (SD 1.5, SVD-XT) apply, and AnimateDiff reads SD 1.5's tokenizer from the Hub cache.

Before loading, a ``.safetensors`` file's tensor names and shapes (its header, not its weights) are
converted to the component configs the run checks and estimates memory from; a pickle
(``.ckpt``…) would have to be read whole for that, so its checks happen while it loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..models.motion_adapter import MotionAdapterConfig
from ..models.single_file import motion_modules as original_motion_modules
from ..models.single_file.reading import read_single_file
from ..models.single_file_components import convert_components
from .commands import Command
from .errors import RunError, UsageError

SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
FAMILY = {"animatediff": "stable_diffusion", "svd": "svd"}  # commands whose --model may be a single file


def is_single_file(text: Any) -> bool:
    """Whether ``text`` names an existing checkpoint file (not a folder, not a Hub id)."""
    if not isinstance(text, str) or not text.lower().endswith(SUFFIXES):
        return False
    return Path(text).expanduser().is_file()


def add_single_file_flags(group: argparse._ArgumentGroup, command: Command) -> None:
    """``--model-config`` (into the "model and hardware" group) for commands that read single files."""
    if command.name in FAMILY:
        group.add_argument("--model-config", metavar="FOLDER", help=(
            "with a single-file --model: a diffusers pipeline folder whose component configs, tokenizer and scheduler "
            "it is used with (default: the release configs)"))


def check_flags(command: Command, settings: dict[str, Any]) -> None:
    """Refuse what cannot apply to a single-file ``--model``, from the flags alone."""
    model, config = settings.get("model"), settings.get("model_config")
    if not is_single_file(model):
        if config is not None:
            raise UsageError("--model-config needs --model to be a single checkpoint file (.safetensors, .ckpt…)")
        return
    if command.name not in FAMILY:
        raise UsageError(f"--model {model!r} is a single file; `vidiff {command.name}` reads diffusers folders or Hub ids only "
                         "(single files: `vidiff animatediff`, `vidiff svd`)")
    if settings.get("revision"):
        raise UsageError("--revision names a Hub version; it does not apply to a single-file --model")
    if settings.get("variant") not in (None, "auto", "none"):
        raise UsageError("--variant picks weight files of a diffusers folder; a single-file --model has one")
    if config is not None and not Path(config).expanduser().is_dir():
        raise UsageError(f"--model-config {config!r} is not a folder (a diffusers pipeline folder is expected)")


def check_model(command: Command, settings: dict[str, Any]) -> tuple[dict[str, tuple[type, dict[str, Any]]], bool]:
    """What ``run._check_model`` returns, for a single-file ``--model``: the networks' configs as
    converted from a ``.safetensors`` header (none for pickles), and True (AnimateDiff: a motion
    adapter must be loaded; a Stable Diffusion file holds none)."""
    model = settings["model"]
    networks: dict[str, tuple[type, dict[str, Any]]] = {}
    if model.lower().endswith(".safetensors"):
        from ..models.single_file_components import component_overrides

        try:
            family = FAMILY[command.name]
            overrides = component_overrides(settings.get("model_config"), family)
            converted = convert_components(read_single_file(model), model, family, overrides)
            networks = {name: (cls, config) for name, (cls, _, config) in converted.items()}
            for model_class, config in networks.values():
                model_class.config_class.from_diffusers(config)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise RunError(f"cannot load --model {model!r}: {error}") from None
    return networks, command.name == "animatediff"


def check_adapter(adapter: str) -> dict[str, Any] | None:
    """The motion adapter config a ``.safetensors`` ``--motion-adapter`` file converts to (None for pickles)."""
    if not adapter.lower().endswith(".safetensors"):
        return None
    try:
        _, config = original_motion_modules.convert(read_single_file(adapter), adapter, {})
        MotionAdapterConfig.from_diffusers(config)  # a value no MotionAdapter takes fails now, not while loading
        return config
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise RunError(f"cannot load --motion-adapter {adapter!r}: {error}") from None


def load_pipeline(pipeline: type, settings: dict[str, Any], dtype: Any, device: Any, extra: dict[str, Any]) -> Any:
    """``pipeline.from_single_file(--model, config=--model-config, …)`` with the loaded ``extra`` components."""
    model = settings["model"]
    options: dict[str, Any] = dict(config=settings.get("model_config"), dtype=dtype, device=device, **extra)
    if pipeline.__name__ != "StableVideoDiffusionPipeline":
        options["local_files_only"] = settings.get("offline") or None
    try:
        return pipeline.from_single_file(model, **options)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise RunError(f"cannot load --model {model!r}: {error}") from error


def stamp(settings: dict[str, Any]) -> dict[str, Any]:
    """``resolved.single_files`` of the sidecar: each single file's absolute path, size and
    modification time (nanoseconds), not its SHA-256 (hashing gigabytes takes long)."""
    out = {}
    for key in ("model", "motion_adapter"):
        value = settings.get(key)
        if is_single_file(value):
            path = Path(value).expanduser().resolve()
            out[key] = {"path": str(path), "size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
    return out
