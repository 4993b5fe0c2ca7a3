"""Pipelines from one original checkpoint file: ``AnimateDiffPipeline.from_single_file`` and
``StableVideoDiffusionPipeline.from_single_file`` build on this.

A single SD 1.x file holds the UNet, VAE and text encoder
(:mod:`vidiff.models.stable_diffusion_single_file`), but no tokenizer and no scheduler. Those come
from, in order: the caller (``tokenizer=``, ``scheduler=``), the diffusers folder given as
``config=`` (its ``tokenizer/`` and ``scheduler/``), and finally the SD 1.5 release: the tokenizer
files of :data:`SD15_REPO` (the Hub, or its cached copy offline) and the scheduler config below, as
``AnimateDiffPipeline.from_pretrained`` of that repository would give them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from .. import loading
from ..image_processing import CLIPImageProcessor
from ..models.motion_adapter import MotionAdapter
from ..models.single_file_components import COMPONENTS, load_components
from ..schedulers import EulerDiscreteScheduler, PNDMScheduler
from ..tokenizer import CLIPTokenizer

P = TypeVar("P")

# The repository whose tokenizer an SD 1.x single file is used with (openai/clip-vit-large-patch14's).
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Its scheduler/scheduler_config.json (a PNDM scheduler).
SD15_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}


def animatediff_from_single_file(
    pipeline_class: type[P],
    path: str | os.PathLike,
    *,
    motion_adapter: MotionAdapter | None = None,
    config: Any = None,
    original_config: Any = None,
    dtype: torch.dtype | None = None,
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    local_files_only: bool | None = None,
    **components: Any,
) -> P:
    """An AnimateDiff pipeline from an original SD 1.x file plus ``motion_adapter`` (see the module docstring).

    ``config``: a diffusers SD 1.5 folder (its component configs, tokenizer and scheduler) or a dict
    ``{component: config}`` overriding the release configs; or ``original_config``, the LDM inference
    YAML (``v1-inference.yaml``, a path or a parsed dict). Components passed as keyword arguments
    (``vae=…``, ``tokenizer=…``) are used as they are. ``dtype``/``torch_dtype`` and ``device`` apply
    to the networks read from the file.
    """
    allowed = set(pipeline_class.components) - {"motion_adapter"}  # type: ignore[attr-defined]
    unknown = sorted(set(components) - allowed)
    if unknown:
        raise TypeError(f"{pipeline_class.__name__}.from_single_file got unknown argument(s) {unknown}; components are {sorted(allowed)}")
    dtype = loading.pick_dtype(dtype, torch_dtype)
    folder = Path(config).expanduser() if isinstance(config, (str, os.PathLike)) else None
    networks = load_components(
        path, config=config, original_config=original_config, dtype=dtype, device=device, skip=frozenset(components) & set(COMPONENTS)
    )
    tokenizer = components.pop("tokenizer", None) or _tokenizer(folder, local_files_only)
    scheduler = components.pop("scheduler", None) or _scheduler(pipeline_class, folder)
    return pipeline_class(  # type: ignore[call-arg]
        **networks, **components, tokenizer=tokenizer, scheduler=scheduler, motion_adapter=motion_adapter
    )


def _tokenizer(folder: Path | None, local_files_only: bool | None) -> CLIPTokenizer:
    if folder is not None and (folder / "tokenizer").is_dir():
        return CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    try:
        return CLIPTokenizer.from_pretrained(SD15_REPO, subfolder="tokenizer", local_files_only=local_files_only)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"A single-file checkpoint holds no tokenizer, and {SD15_REPO}'s could not be loaded ({error}). "
            "Pass tokenizer=CLIPTokenizer.from_pretrained(...) or config=<a diffusers SD 1.5 folder>."
        ) from error


def _scheduler(pipeline_class: Any, folder: Path | None) -> Any:
    schedulers: Mapping[str, type] = pipeline_class.components["scheduler"]
    if folder is not None and (folder / "scheduler").is_dir():
        raw = loading.Checkpoint.open(folder).read_json("scheduler/scheduler_config.json")
        name = raw.get("_class_name", "PNDMScheduler")
        if name not in schedulers:
            raise ValueError(f"{folder}/scheduler names {name!r}; {pipeline_class.__name__} takes {sorted(schedulers)}")
        return schedulers[name].from_config(raw)
    return PNDMScheduler.from_config(SD15_SCHEDULER)


# stabilityai/stable-video-diffusion-img2vid-xt's scheduler and feature-extractor configs.
SVD_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "v_prediction",
    "set_alpha_to_one": False, "sigma_max": 700.0, "sigma_min": 0.002, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "leading", "timestep_type": "continuous", "trained_betas": None, "use_karras_sigmas": True,
}
SVD_FEATURE_EXTRACTOR: dict[str, Any] = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def svd_from_single_file(
    pipeline_class: type[P],
    path: str | os.PathLike,
    *,
    config: Any = None,
    dtype: torch.dtype | None = None,
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **components: Any,
) -> P:
    """A Stable Video Diffusion pipeline from an original ``svd*.safetensors`` file.

    The UNet, temporal VAE and image encoder come from the file
    (:mod:`vidiff.models.single_file.svd`); the scheduler and feature extractor from the keywords,
    else the ``config=`` folder (a diffusers SVD folder, whose component configs are used too), else
    the SVD-XT release configs above. ``config`` may also be ``{component: config}``; e.g.
    ``{"unet": {"num_frames": 14}}`` for the 14-frame ``svd.safetensors``.
    """
    allowed = set(pipeline_class.components)  # type: ignore[attr-defined]
    unknown = sorted(set(components) - allowed)
    if unknown:
        raise TypeError(f"{pipeline_class.__name__}.from_single_file got unknown argument(s) {unknown}; components are {sorted(allowed)}")
    dtype = loading.pick_dtype(dtype, torch_dtype)
    folder = Path(config).expanduser() if isinstance(config, (str, os.PathLike)) else None
    networks = load_components(path, config=config, dtype=dtype, device=device, skip=frozenset(components), family="svd")
    if "scheduler" not in components:
        has_folder = folder is not None and (folder / "scheduler").is_dir()
        components["scheduler"] = _scheduler(pipeline_class, folder) if has_folder else EulerDiscreteScheduler.from_config(SVD_SCHEDULER)
    if "feature_extractor" not in components:
        has_folder = folder is not None and (folder / "feature_extractor").is_dir()
        components["feature_extractor"] = (
            CLIPImageProcessor.from_pretrained(folder) if has_folder else CLIPImageProcessor.from_config(SVD_FEATURE_EXTRACTOR)
        )
    return pipeline_class(**networks, **components)  # type: ignore[call-arg]
