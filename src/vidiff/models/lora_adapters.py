"""Attach, switch, fuse and remove LoRA adapters on one model (a UNet, a text encoder).

A layer that receives its first adapter is swapped, in its parent module, for the LoRA form from
:mod:`vidiff.layers.lora` that shares its parameters; removing its last adapter swaps a plain
``nn.Linear`` / ``nn.Conv2d`` on the same parameters back. The model's ``state_dict`` keys and
values never change while adapters are unfused. The pipeline-level API is
:class:`vidiff.pipelines.lora.LoraLoaderMixin`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from ..layers.lora import LoraConv2d, LoraLinear, wrap_layer
from .lora_formats import LoraWeights

LORA_LAYERS = (LoraLinear, LoraConv2d)


def lora_layers(model: nn.Module) -> dict[str, LoraLinear | LoraConv2d]:
    """The layers of ``model`` that carry adapters, by module path."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LORA_LAYERS)}


def adapter_names(model: nn.Module) -> list[str]:
    """Every adapter name present in ``model``, in load order."""
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def active_adapters(model: nn.Module) -> list[str]:
    """The adapters that take part in ``model``'s forward, in load order."""
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(name for name in layer.adapters if name in layer.active))
    return list(names)


def attach_adapter(model: nn.Module, name: str, layers: Mapping[str, LoraWeights]) -> None:
    """Add adapter ``name`` to the layers at the given module paths (each becomes a LoRA layer)."""
    for path, weights in layers.items():
        layer = _swap(model, path, wrap_layer(model.get_submodule(path)))
        layer.add_adapter(name, weights.down, weights.up, weights.scale)


def set_active(model: nn.Module, weights: Mapping[str, float]) -> None:
    """Make exactly ``weights``' adapters active, each with its weight (an empty map: none)."""
    for layer in lora_layers(model).values():
        layer.set_active(weights)


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every unfused adapter of ``model`` off (False) or back on, keeping the active set."""
    for layer in lora_layers(model).values():
        layer.enabled = bool(enabled)


def set_runtime_scale(model: nn.Module, scale: float) -> None:
    """Multiply every unfused adapter's contribution by ``scale`` (1.0: as loaded)."""
    for layer in lora_layers(model).values():
        layer.runtime_scale = float(scale)


def fuse(model: nn.Module, scale: float, names: Iterable[str] | None) -> None:
    """Merge the active adapters (or ``names``) into the weights, times ``scale``."""
    chosen = None if names is None else list(names)
    for layer in lora_layers(model).values():
        layer.fuse(scale, chosen)


def unfuse(model: nn.Module) -> None:
    """Restore every fused layer's exact pre-fusion weight."""
    for layer in lora_layers(model).values():
        layer.unfuse()


def fused_adapters(model: nn.Module) -> list[str]:
    """The adapters merged into ``model``'s weights (by :func:`fuse`)."""
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.fused_adapters))
    return list(names)


def is_fused(model: nn.Module) -> bool:
    return any(layer.unfused_weight is not None for layer in lora_layers(model).values())


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; layers left without adapters become plain layers again."""
    for path, layer in lora_layers(model).items():
        layer.delete_adapter(name)
        if not layer.adapters:
            _swap(model, path, _plain(layer))


def remove_all(model: nn.Module, keep_fused: bool = False) -> None:
    """Remove every adapter: ``model`` is plain layers again. Fused adapters are unfused first
    (weights bit-identical to before loading), or with ``keep_fused`` stay merged in the weights."""
    for layer in lora_layers(model).values():
        if keep_fused:
            layer.unfused_weight, layer.fused_adapters = None, ()
        else:
            layer.unfuse()
    for path, layer in lora_layers(model).items():
        _swap(model, path, _plain(layer))


def _plain(layer: LoraLinear | LoraConv2d) -> nn.Module:
    return layer.unwrap()


def _swap(model: nn.Module, path: str, layer: nn.Module):
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if parent._modules[child] is not layer:
        parent._modules[child] = layer
    return layer
