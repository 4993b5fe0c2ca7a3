"""The networks of an original single-file pipeline checkpoint, one family at a time.

- ``"stable_diffusion"``: UNet, VAE and text encoder of an SD 1.x file (for
  ``AnimateDiffPipeline.from_single_file``; tables in :mod:`vidiff.models.single_file.stable_diffusion`);
- ``"svd"``: UNet, temporal VAE and image encoder of an SVD / SVD-XT file (for
  ``StableVideoDiffusionPipeline.from_single_file``; tables in :mod:`vidiff.models.single_file.svd`).

Each component's config is, in order of precedence: the caller's override, what the tensors fix,
the release config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .base import PretrainedModel
from .clip_text import CLIPTextModel
from .single_file import read_single_file
from .single_file import stable_diffusion as original_sd
from .single_file import svd as original_svd
from .single_file.build import build_strict, read_config_override
from .single_file.ldm_yaml import read_original_config, sd_overrides
from .clip_vision import CLIPVisionModelWithProjection
from .unet_2d import UNet2DConditionModel
from .unet_svd import UNetSpatioTemporalConditionModel
from .vae_kl import AutoencoderKL
from .vae_temporal import AutoencoderKLTemporalDecoder

# family → (split the file into components, {component: (class, converter, release config)})
FAMILIES: dict[str, tuple[Any, dict[str, tuple[Any, Any, dict[str, Any]]]]] = {
    "stable_diffusion": (original_sd.split, {
        "unet": (UNet2DConditionModel, original_sd.convert_unet, original_sd.UNET_RELEASE),
        "vae": (AutoencoderKL, original_sd.convert_vae, original_sd.VAE_RELEASE),
        "text_encoder": (CLIPTextModel, original_sd.convert_text_encoder, original_sd.TEXT_RELEASE),
    }),
    "svd": (original_svd.split, {
        "unet": (UNetSpatioTemporalConditionModel, original_svd.convert_unet, original_svd.UNET_RELEASE),
        "vae": (AutoencoderKLTemporalDecoder, original_svd.convert_vae, original_svd.VAE_RELEASE),
        "image_encoder": (CLIPVisionModelWithProjection, original_svd.convert_image_encoder, original_svd.IMAGE_ENCODER_RELEASE),
    }),
}
COMPONENTS = FAMILIES["stable_diffusion"][1]


def component_overrides(config: Any, family: str = "stable_diffusion") -> dict[str, dict[str, Any]]:
    """``config=`` of a pipeline's ``from_single_file``: ``None``, a diffusers pipeline folder (its
    component folders' ``config.json`` files), or ``{component: dict}``."""
    components = FAMILIES[family][1]
    if config is None:
        return {}
    if isinstance(config, Mapping):
        unknown = sorted(set(config) - set(components))
        if unknown:
            raise ValueError(f"config has unknown components {unknown}; valid: {sorted(components)}")
        return {name: read_config_override(value, f"config[{name!r}]") for name, value in config.items()}
    if not isinstance(config, (str, os.PathLike)) or not Path(config).expanduser().is_dir():
        raise ValueError(
            f"config must be a diffusers pipeline folder (with {', '.join(components)} config.json files) or a "
            f"dict {{component: config}}, got {config!r}"
        )
    folder = Path(config).expanduser()
    return {name: read_config_override(folder / name, f"config ({folder / name})") for name in components}


def load_components(
    path: str | os.PathLike,
    *,
    config: Any = None,
    original_config: Any = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    skip: frozenset[str] = frozenset(),
    family: str = "stable_diffusion",
) -> dict[str, PretrainedModel]:
    """The networks of one original file of ``family`` (see the module docstring), each loaded
    strictly (components named in ``skip`` are neither converted nor built; the caller has its own).

    ``config`` (see :func:`component_overrides`) or ``original_config`` (an LDM inference YAML, path
    or parsed dict: :mod:`~vidiff.models.single_file.ldm_yaml`) override the release configs and
    what the tensors show; giving both is an error, as in diffusers (``original_config`` is read for
    Stable Diffusion files only).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    source = os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)
    if config is not None and original_config is not None:
        raise ValueError("pass config or original_config, not both")
    overrides = component_overrides(config, family)
    if original_config is not None:
        if family != "stable_diffusion":
            raise ValueError(f"original_config is read for Stable Diffusion files only, not {family!r}; use config=")
        overrides = sd_overrides(read_original_config(original_config))
    models = {}
    for name, (model_class, converted, merged) in convert_components(read_single_file(path), source, family, overrides, skip).items():
        models[name] = build_strict(model_class, merged, converted, source=f"{source} ({name})", dtype=dtype, device=device)
    return models


def convert_components(
    state: Mapping[str, Any],
    source: str,
    family: str,
    overrides: Mapping[str, Mapping[str, Any]],
    skip: frozenset[str] = frozenset(),
) -> dict[str, tuple[type, dict[str, Any], dict[str, Any]]]:
    """``{component: (class, diffusers-named tensors, config)}`` for a file's tensors, nothing built:
    each config is the release config, then what the tensors fix, then ``overrides[component]``."""
    split, components = FAMILIES[family]
    parts = split(state, source)
    out = {}
    for name, (model_class, convert, release) in components.items():
        if name in skip:
            continue
        converted, derived = convert(parts[name], f"{source} ({name})")
        out[name] = (model_class, converted, {**release, **derived, **overrides.get(name, {})})
    return out
