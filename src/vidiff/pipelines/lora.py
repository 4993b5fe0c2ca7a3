"""LoRA on a pipeline's UNet (motion modules included) and text encoder, with diffusers' method names.

``load_lora_weights`` reads a diffusers/PEFT, older-diffusers, AnimateDiff motion-LoRA or kohya/A1111
file (see :mod:`vidiff.models.lora_formats`), ``set_adapters`` picks the active adapters and their
weights, ``fuse_lora`` / ``unfuse_lora`` merge them into the weights and back (bit-exactly),
``unload_lora_weights`` removes them all. The layer mechanics live in :mod:`vidiff.models.lora_adapters`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import loading, weight_files
from ..models import lora_adapters
from ..models.lora_formats import parse_lora_state_dict

# diffusers' default LoRA file name, and the safetensors metadata key of PEFT's adapter config.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"


class LoraLoaderMixin:
    """LoRA methods for pipelines with ``unet`` and ``text_encoder`` components (diffusers' names)."""

    lora_components: tuple[str, ...] = ("unet", "text_encoder")

    # ------------------------------------------------------------------ loading
    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor],
        adapter_name: str | None = None,
        *,
        weight_name: str | None = None,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
    ) -> None:
        """Load a LoRA into the UNet and/or text encoder as adapter ``adapter_name``.

        Args:
            pretrained_model_name_or_path_or_dict: a ``.safetensors`` (or ``.bin``/``.pt``/``.ckpt``,
                read with ``torch.load(weights_only=True)``) file, a folder or Hub id holding one
                (``weight_name``; default ``pytorch_lora_weights.safetensors`` or the folder's only
                ``.safetensors`` file), or a state dict. Formats: diffusers/PEFT, older diffusers
                (``lora.down``/``lora.up``, AnimateDiff motion LoRAs), kohya/A1111.
            adapter_name: the adapter's name (default ``default_<n>``, n = adapters loaded so far).
                Loading makes it the only active adapter of the components it touches (diffusers).
            subfolder, revision, cache_dir, local_files_only: where to find the file (Hub options).

        Raises ValueError for a key that fits no format or names no layer (the key is named), an
        adapter name already in use, or CPU offload being on.
        """
        self._check_lora_editable("load_lora_weights")
        state_dict, metadata = read_lora_file(
            pretrained_model_name_or_path_or_dict, weight_name=weight_name, subfolder=subfolder, revision=revision,
            cache_dir=cache_dir, local_files_only=local_files_only,
        )
        models = self._lora_models()
        existing = self._adapter_names()
        name = adapter_name if adapter_name is not None else f"default_{len(existing)}"
        if not isinstance(name, str) or not name:
            raise TypeError(f"adapter_name must be a non-empty str, got {adapter_name!r}")
        if name in existing:
            raise ValueError(f"adapter_name {name!r} is already loaded; pick another name or delete_adapters({name!r})")
        parsed = parse_lora_state_dict(state_dict, models, metadata)
        for component, layers in parsed.items():
            lora_adapters.attach_adapter(models[component], name, layers)
            lora_adapters.set_active(models[component], {name: 1.0})

    # ------------------------------------------------------------------ choosing adapters
    def set_adapters(
        self, adapter_names: str | Sequence[str], adapter_weights: float | Sequence[float] | None = None
    ) -> None:
        """Make exactly ``adapter_names`` active, with ``adapter_weights`` (one per name, one for
        all, or None for 1.0); each weight multiplies its adapter's delta (alpha / rank scaling kept)."""
        names = self._known_adapters(adapter_names)
        weights = _adapter_weights(names, adapter_weights)
        for model in self._lora_models().values():
            lora_adapters.set_active(model, dict(zip(names, weights)))

    def get_active_adapters(self) -> list[str]:
        """The names of the adapters that run, in load order."""
        names: dict[str, None] = {}
        for model in self._lora_models().values():
            names.update(dict.fromkeys(lora_adapters.active_adapters(model)))
        return list(names)

    def get_list_adapters(self) -> dict[str, list[str]]:
        """``{component: [adapter names]}`` for each component that holds adapters."""
        listing = {name: lora_adapters.adapter_names(model) for name, model in self._lora_models().items()}
        return {name: adapters for name, adapters in listing.items() if adapters}

    def disable_lora(self) -> None:
        """Run without any unfused adapter (the active set is kept for :meth:`enable_lora`)."""
        for model in self._lora_models().values():
            lora_adapters.set_enabled(model, False)

    def enable_lora(self) -> None:
        """Undo :meth:`disable_lora`."""
        for model in self._lora_models().values():
            lora_adapters.set_enabled(model, True)

    # ------------------------------------------------------------------ fusing and removing
    def fuse_lora(
        self,
        components: Sequence[str] = ("unet", "text_encoder"),
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: Sequence[str] | None = None,
    ) -> None:
        """Merge the active adapters (or ``adapter_names``) into the weights of ``components``, each
        delta times its set_adapters weight and ``lora_scale``. The pre-fusion weights are kept, so
        :meth:`unfuse_lora` restores them bit for bit. ``safe_fusing``: refuse a fusion that
        produces NaN or infinite weights (the weights are restored first)."""
        self._check_lora_editable("fuse_lora")
        models = self._lora_models(components)
        names = None if adapter_names is None else self._known_adapters(adapter_names)
        fused = [component for component, model in models.items() if lora_adapters.is_fused(model)]
        if fused:
            raise ValueError(f"the LoRAs of {fused} are already fused; call unfuse_lora() first")
        for component, model in models.items():
            lora_adapters.fuse(model, float(lora_scale), names)  # keeps each layer's pre-fusion weight
            if safe_fusing and not all(torch.isfinite(p).all() for p in model.parameters()):
                lora_adapters.unfuse(model)
                raise ValueError(f"fusing the LoRAs into the {component} gave NaN or infinite weights; not fused")

    def unfuse_lora(self, components: Sequence[str] = ("unet", "text_encoder")) -> None:
        """Restore the exact weights from before :meth:`fuse_lora` (no-op where nothing is fused)."""
        self._check_lora_editable("unfuse_lora")
        for model in self._lora_models(components).values():
            lora_adapters.unfuse(model)

    def delete_adapters(self, adapter_names: str | Sequence[str]) -> None:
        """Remove the named adapters (an unknown name is a ValueError)."""
        self._check_lora_editable("delete_adapters")
        names = self._known_adapters(adapter_names)
        fused = [c for c, model in self._lora_models().items() if set(names) & set(lora_adapters.fused_adapters(model))]
        if fused:
            raise ValueError(f"adapters {names} are fused into the {fused}; call unfuse_lora() before deleting them")
        for model in self._lora_models().values():
            for name in names:
                lora_adapters.delete_adapter(model, name)

    def unload_lora_weights(self) -> None:
        """Remove every adapter. Unfused adapters leave the networks bit-identical to before loading;
        fused ones stay merged into the weights, as in diffusers (``fuse_lora(); unload_lora_weights()``
        bakes a LoRA in) — call :meth:`unfuse_lora` first to drop them."""
        self._check_lora_editable("unload_lora_weights")
        for model in self._lora_models().values():
            lora_adapters.remove_all(model, keep_fused=True)

    # ------------------------------------------------------------------ call-time scale
    @contextmanager
    def _lora_scale(self, cross_attention_kwargs: Mapping[str, Any] | None) -> Iterator[None]:
        """Apply ``cross_attention_kwargs={"scale": s}`` to every unfused adapter for one call (the
        text encoder and the UNet, as diffusers 0.42.1's AnimateDiff does)."""
        if cross_attention_kwargs is None:
            yield
            return
        if not isinstance(cross_attention_kwargs, Mapping):
            raise TypeError(f"cross_attention_kwargs must be a dict, got {type(cross_attention_kwargs).__name__}")
        extra = sorted(set(cross_attention_kwargs) - {"scale"})
        if extra:
            raise ValueError(f"cross_attention_kwargs supports only 'scale' (the LoRA scale), got {extra}")
        scale = float(cross_attention_kwargs.get("scale", 1.0))
        models = self._lora_models()
        for model in models.values():
            lora_adapters.set_runtime_scale(model, scale)
        try:
            yield
        finally:
            for model in models.values():
                lora_adapters.set_runtime_scale(model, 1.0)

    # ------------------------------------------------------------------ helpers
    def _lora_models(self, components: Sequence[str] | None = None) -> dict[str, nn.Module]:
        if components is None:
            components = self.lora_components
        elif isinstance(components, str):
            components = [components]
        unknown = [name for name in components if name not in self.lora_components]
        if unknown:
            raise ValueError(f"components {unknown} cannot hold LoRAs; choose from {list(self.lora_components)}")
        return {name: model for name in components if isinstance(model := getattr(self, name, None), nn.Module)}

    def _adapter_names(self) -> list[str]:
        names: dict[str, None] = {}
        for model in self._lora_models().values():
            names.update(dict.fromkeys(lora_adapters.adapter_names(model)))
        return list(names)

    def _known_adapters(self, adapter_names: str | Sequence[str]) -> list[str]:
        """``adapter_names`` as a list; ValueError naming any that is not loaded."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        known = self._adapter_names()
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"adapter_names {unknown} are not loaded; loaded adapters: {known}")
        return names

    def _check_lora_editable(self, method: str) -> None:
        offloader = getattr(self, "_offloader", None)
        if offloader is not None:
            raise ValueError(
                f"{method}() is refused while {offloader.mode} CPU offload is on (offload keeps its own copies of the "
                "weights); call pipe.disable_offload() first, then enable offload again"
            )


def _adapter_weights(names: list[str], adapter_weights: float | Sequence[float] | None) -> list[float]:
    if adapter_weights is None:
        return [1.0] * len(names)
    if isinstance(adapter_weights, (int, float)):
        return [float(adapter_weights)] * len(names)
    if isinstance(adapter_weights, Mapping):
        raise TypeError(
            "adapter_weights must be a number or a list of numbers; per-block weight dicts are not supported"
        )
    weights = [float(weight) for weight in adapter_weights]
    if len(weights) != len(names):
        raise ValueError(
            f"adapter_weights has {len(weights)} entries for {len(names)} adapter_names; give one per name"
        )
    return weights


def read_lora_file(
    source: str | os.PathLike | Mapping[str, torch.Tensor], *, weight_name: str | None = None,
    subfolder: str | None = None, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, PEFT metadata or None) of a LoRA given as a dict, a file, a folder or a Hub id."""
    if isinstance(source, Mapping):
        return dict(source), None
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a LoRA file, folder, Hub id or state dict, got {type(source).__name__}")
    path = Path(source).expanduser()
    if not path.is_file():
        checkpoint = loading.Checkpoint.open(
            source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        name = weight_name or _guess_weight_name(checkpoint, subfolder)
        path = checkpoint.local_path(loading.join(subfolder, name))
    elif weight_name is not None or subfolder is not None:
        raise ValueError(f"{path} is a file; weight_name and subfolder apply only to a folder or Hub id")
    return weight_files.read(path), _read_metadata(path)


def _guess_weight_name(checkpoint: loading.Checkpoint, subfolder: str | None) -> str:
    if checkpoint.has_file(loading.join(subfolder, LORA_WEIGHT_NAME)):
        return LORA_WEIGHT_NAME
    # diffusers' guess: the folder's only .safetensors file (a motion LoRA repo holds
    # diffusion_pytorch_model.safetensors). Checkpoint lists files only through its file source.
    names = checkpoint._files.names_in(subfolder)
    candidates = [name for name in names if name.endswith(".safetensors")]
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(
        f"cannot tell which file of {checkpoint} is the LoRA ({candidates or names}); pass weight_name="
    )


def _read_metadata(path: Path) -> dict | None:
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else None
