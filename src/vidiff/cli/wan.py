"""What ``vidiff wan`` adds to a run: ``--image`` / ``--last-image``, the pipeline they choose, and
the checks that only make sense for Wan.

``vidiff wan PROMPT`` runs :class:`~vidiff.pipelines.wan.WanPipeline`; with ``--image`` it runs
:class:`~vidiff.pipelines.wan_i2v.WanImageToVideoPipeline` (Wan 2.1 I2V, Wan 2.2 TI2V and I2V A14B),
optionally ending on ``--last-image``. Every mistake that can be seen before loading is refused
here with a :class:`UsageError` naming the flag (exit 2).

Wan's context windows (``--context-length N``) count *latent* frames: the causal VAE packs 4 video
frames into one (81 frames → 21 latent frames), and the windows slide over the transformer's input.

Switching a released checkpoint's flow UniPC to ``--scheduler flow-euler`` carries its
``flow_shift`` over as the Euler scheduler's ``shift`` (unless ``--scheduler-config shift=…`` is
given), and a flow-Euler checkpoint switched to ``unipc`` keeps flow prediction and its shift.
diffusers' ``FlowMatchEulerDiscreteScheduler.from_config(unipc_config)`` drops the shift (the key
names differ) and samples with shift 1.0; the command line deliberately does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import PIL.Image

from .. import loading
from ..image_loading import load_image
from ..pipelines.frames import check_image_size
from ..pipelines.wan_i2v import WanImageToVideoPipeline
from ..schedulers import FlowMatchEulerDiscreteConfig, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from .commands import Command
from .errors import UsageError

logger = logging.getLogger("vidiff.cli")

NAME = "wan"
TEMPORAL_FACTOR = 4  # video frames per latent frame of Wan's causal VAE (after the first)
IMAGES = (("image", "--image"), ("last_image", "--last-image"))


def add_wan_flags(sub: argparse.ArgumentParser, command: Command) -> None:
    """``--image`` and ``--last-image`` (``vidiff wan`` only)."""
    if command.name != NAME:
        return
    group = sub.add_argument_group("image to video (Wan 2.1 I2V, Wan 2.2 TI2V / I2V A14B checkpoints)")
    group.add_argument("--image", metavar="PATH_OR_URL",
                       help="the first frame: runs WanImageToVideoPipeline (resized to --width × --height)")
    group.add_argument("--last-image", metavar="PATH_OR_URL",
                       help="the last frame as well (needs --image; not for Wan 2.2 TI2V)")


def defaults(command: Command) -> dict[str, Any]:
    """The image settings of a run that gives none (recorded in sidecars as None)."""
    return {"image": None, "last_image": None} if command.name == NAME else {}


def prepare(command: Command, settings: Mapping[str, Any]) -> tuple[Command, dict[str, PIL.Image.Image]]:
    """The command the run really is (Wan with ``--image``: the image-to-video pipeline) and the
    images it passes to the pipeline, read now; other commands are returned unchanged."""
    if command.name != NAME:
        return command, {}
    if settings.get("last_image") is not None and settings.get("image") is None:
        raise UsageError("--last-image needs --image: the video runs from --image to --last-image")
    if settings.get("free_init") is not None:
        raise UsageError("--free-init does not apply to `vidiff wan`: FreeInit re-noises with a VE/VP schedule, "
                         "and Wan samples with flow matching")
    _check_window(command, settings)
    images = {key: read_image(settings[key], flag) for key, flag in IMAGES if settings.get(key) is not None}
    if images:
        command = dataclasses.replace(command, pipeline=WanImageToVideoPipeline)
    return command, images


def _check_window(command: Command, settings: Mapping[str, Any]) -> None:
    """``--context-length`` counts latent frames: at most (num_frames − 1) // 4 + 1 of them."""
    length = settings.get("context_length")
    if length is None:
        return
    frames = settings.get("num_frames") or command.default("num_frames")
    latent = (frames - 1) // TEMPORAL_FACTOR + 1
    if length > latent:
        raise UsageError(
            f"--context-length {length}: Wan's windows count latent frames (4 video frames each), and "
            f"--num-frames {frames} makes {latent}; give --context-length {latent} or less"
        )


def read_image(text: str, flag: str) -> PIL.Image.Image:
    """Load ``--image``/``--last-image`` now, so a wrong path fails before any model loads."""
    url = text.startswith(("http://", "https://"))  # a failed download is a runtime error (exit 1)
    if not url:
        path = Path(text).expanduser()
        if not path.exists():
            raise UsageError(f"{flag} {text!r} does not exist")
        if not path.is_file():  # a folder, or a FIFO or device that would block
            raise UsageError(f"{flag} {text!r} is not a regular file; pass an image file (png, jpg, webp…)")
        text = str(path)
    try:
        image = load_image(text)
    except (ValueError, OSError) as error:
        raise UsageError(f"{flag} {text!r} cannot be read as an image: {error}") from None
    try:
        check_image_size(image.width, image.height, argument=flag)
    except ValueError as error:
        raise UsageError(f"{flag} {text!r}: {error}") from None
    return image


def check_networks(command: Command, settings: Mapping[str, Any], networks: Mapping[str, tuple[type, Mapping[str, Any]]]) -> None:
    """What the checkpoint's configs (read before any weights) say about the flags: an image-to-video
    transformer needs ``--image``; ``--guidance-scale-2`` needs a second expert."""
    if command.name != NAME:
        return
    model = settings["model"]
    transformer = (networks.get("transformer") or networks.get("transformer_2") or (None, {}))[1]
    z_dim = (networks.get("vae") or (None, {}))[1].get("z_dim")
    in_channels = transformer.get("in_channels")
    if settings.get("image") is None and z_dim is not None and in_channels is not None and in_channels > z_dim:
        raise UsageError(
            f"--model {model!r} is an image-to-video checkpoint (its transformer takes {in_channels} channels, "
            f"the video latents {z_dim}): give the first frame with --image"
        )
    if settings.get("image") is not None and in_channels is not None and in_channels == z_dim and not _expands_timesteps(settings):
        raise UsageError(
            f"--image: --model {model!r} is a text-to-video checkpoint (no image channels, no expand_timesteps); "
            "drop --image, or use an image-to-video checkpoint such as Wan-AI/Wan2.2-TI2V-5B-Diffusers"
        )
    if settings.get("guidance_scale_2") is not None and "transformer_2" not in networks:
        raise UsageError(
            f"--guidance-scale-2 is the low-noise expert's weight, and --model {model!r} has one transformer; "
            "it needs a two-expert checkpoint (Wan 2.2 A14B)"
        )


def _expands_timesteps(settings: Mapping[str, Any]) -> bool:
    """``expand_timesteps`` of the checkpoint's model_index.json (Wan 2.2 TI2V takes an image through
    it); True when it cannot be read, leaving the decision to the pipeline."""
    try:
        checkpoint = loading.Checkpoint.open(
            settings["model"], revision=settings.get("revision"), local_files_only=settings.get("offline") or None
        )
        return bool(checkpoint.read_json("model_index.json").get("expand_timesteps", False))
    except (OSError, ValueError):
        return True


def dtype_name(command: Command, name: str, device: Any) -> str:
    """``--dtype auto`` for Wan on CUDA is bf16 (the precision Wan is trained and usually run in);
    everything else is :func:`settings.pick_dtype`'s."""
    if command.name == NAME and name == "auto" and getattr(device, "type", None) == "cuda":
        return "bf16"
    return name


def variant_name(command: Command, name: str | None) -> str | None:
    """``--variant auto`` for Wan is ``none``: no Wan repository ships fp16/bf16 weight files, so
    asking for them would only warn on every half-precision run; everything else is unchanged."""
    return "none" if command.name == NAME and name == "auto" else name


def scheduler_options(cls: type, current: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Options to pass when ``--scheduler`` switches to ``cls`` from the ``current`` config, beyond
    ``overrides``, so that the switch keeps flow matching and its shift (see the module docstring):
    a flow UniPC's ``flow_shift`` becomes flow-Euler's ``shift``, and back."""
    if cls is FlowMatchEulerDiscreteScheduler and getattr(current, "use_flow_sigmas", False) and "shift" not in overrides:
        logger.info("--scheduler flow-euler: using the checkpoint's flow_shift %s as its shift", current.flow_shift)
        return {"shift": current.flow_shift}
    if cls is UniPCMultistepScheduler and isinstance(current, FlowMatchEulerDiscreteConfig):
        carried = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": current.shift}
        return {key: value for key, value in carried.items() if key not in overrides}
    return {}


def record_images(arguments: dict[str, Any], resolved: dict[str, Any]) -> None:
    """Sidecar: the image paths made absolute (replayable from any folder) and their SHA-256."""
    for key, _ in IMAGES:
        value = arguments.get(key)
        if isinstance(value, str) and Path(value).expanduser().is_file():
            path = Path(value).expanduser().resolve()
            arguments[key] = str(path)
            resolved[f"{key}_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()


def warn_if_images_changed(settings: Mapping[str, Any], recorded: Mapping[str, Any] | None) -> None:
    """With ``--from-json``: say so when an image file is no longer the one the recorded run used."""
    if recorded is None:
        return
    for key, flag in IMAGES:
        expected = recorded.get("resolved", {}).get(f"{key}_sha256")
        value = settings.get(key)
        path = Path(value).expanduser() if isinstance(value, str) else None
        if expected and path is not None and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            logger.warning("%s %s is not the file the recorded run used (its SHA-256 differs): the video will differ", flag, value)
