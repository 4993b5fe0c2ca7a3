"""LoRA file formats → per-layer ``(down, up, alpha)``: the key tables, as data.

Formats read (one table each, below):

- **diffusers / PEFT** — ``unet.<module path>.lora_A.weight`` / ``.lora_B.weight`` (and
  ``text_encoder.…``); the older diffusers spellings ``.lora.down.weight`` / ``.lora.up.weight``,
  ``.lora_linear_layer.down/up`` and the attention-processor names ``processor.to_q_lora.down`` …
  (AnimateDiff's motion LoRAs, ``guoyww/animatediff-motion-lora-*``, are diffusers-format UNet LoRAs
  on the motion modules' ``to_q/to_k/to_v/to_out.0``, spelled ``processor.to_q_lora.down.weight``;
  the original AnimateDiff motion-LoRA ``.ckpt`` keys, ``…motion_modules.N.temporal_transformer.
  transformer_blocks.0.attention_blocks.0.processor.to_q_lora.down.weight``, are read through one
  more rename table). Scales come from the file's
  ``lora_adapter_metadata`` (PEFT's ``r``/``lora_alpha``/``alpha_pattern``/``use_rslora``), or from
  ``.alpha`` keys, or are 1 (alpha = rank), the rules diffusers 0.42.1 applies.
- **kohya / A1111** — ``lora_unet_<path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``
  and ``lora_te_…`` (``lora_te1_…``) for the text encoder. The underscored path is resolved against
  the model's own module names (``a.b_c.0`` is written ``a_b_c_0``), which is exact where a
  replace-rule list has to guess which ``_`` was a ``.``.

The result of :func:`parse_lora_state_dict` is ``{component: {module path: LoraWeights}}``; a key
that fits no table, or names no layer of the model, is a ValueError naming it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

# kohya / A1111: the key's first part (before the first ".") starts with one of these prefixes.
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
# kohya: what follows "<name>." → which factor it is.
KOHYA_SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
# diffusers / PEFT: the component a key belongs to, by its first path part.
DIFFUSERS_PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder"}
# diffusers / PEFT: key endings → factor (longest first, so ".lora_linear_layer.down.weight" wins).
DIFFUSERS_SUFFIXES = {
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".alpha": "alpha",
}
# Older diffusers attention-processor spellings → the layer path they stand for (applied in order).
DIFFUSERS_RENAMES = {
    ".processor.to_q_lora.": ".to_q.lora.", ".processor.to_k_lora.": ".to_k.lora.",
    ".processor.to_v_lora.": ".to_v.lora.", ".processor.to_out_lora.": ".to_out.0.lora.",
    ".to_q_lora.": ".to_q.lora.", ".to_k_lora.": ".to_k.lora.",
    ".to_v_lora.": ".to_v.lora.", ".to_out_lora.": ".to_out.0.lora.",
}
# The original AnimateDiff motion LoRA files (``v2_lora_ZoomIn.ckpt`` …): unprefixed UNet keys in
# AnimateDiff's own module names; these renames give the diffusers path (then DIFFUSERS_RENAMES).
ORIGINAL_MOTION_MARKER = ".temporal_transformer."
ORIGINAL_MOTION_RENAMES = {
    ".temporal_transformer.": ".", ".attention_blocks.0.": ".attn1.", ".attention_blocks.1.": ".attn2.",
}
# Keys of LoRA variants vidiff does not run; named in the error instead of being dropped silently.
UNSUPPORTED_MARKERS = {"dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", "lora_B.bias": "LoRA with bias"}


@dataclass
class LoraWeights:
    """One layer's factors: ``down`` ``[rank, in(, kh, kw)]``, ``up`` ``[out, rank(, 1, 1)]``, and
    ``alpha`` (None: not stored in the file). ``scale`` is filled by :func:`parse_lora_state_dict`."""

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    scale: float = 1.0


def lora_targets(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``model`` a LoRA may adapt (``nn.Linear``, ``nn.Conv2d``), by module path."""
    return {name: module for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))}


def is_kohya(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether every key is a kohya / A1111 key (``lora_unet_…`` / ``lora_te_…``)."""
    return bool(state_dict) and all(key.startswith(tuple(KOHYA_PREFIXES)) for key in state_dict)


def parse_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor], models: Mapping[str, nn.Module], metadata: Mapping | None = None
) -> dict[str, dict[str, LoraWeights]]:
    """Sort a LoRA file's tensors into ``{component: {module path: LoraWeights}}`` with scales.

    ``models`` maps the component names (``"unet"``, ``"text_encoder"``) to the models whose layer
    paths the keys must name. ``metadata``: the file's ``lora_adapter_metadata`` (keys
    ``"unet.r"``, ``"unet.lora_alpha"`` …), or None.
    """
    if not state_dict:
        raise ValueError("the LoRA state dict is empty")
    for key in state_dict:
        for marker, variant in UNSUPPORTED_MARKERS.items():
            if marker in key:
                raise ValueError(f"LoRA key {key!r} belongs to a {variant} file, which vidiff does not load")
    parsed = _parse_kohya(state_dict, models) if is_kohya(state_dict) else _parse_diffusers(state_dict, models)
    for component, layers in parsed.items():
        _check_complete(component, layers, lora_targets(models[component]))
        _fill_scales(layers, _component_metadata(metadata, component))
    return parsed


def _parse_kohya(state_dict: Mapping[str, torch.Tensor], models: Mapping[str, nn.Module]) -> dict:
    lookups = {component: _underscored_paths(model) for component, model in models.items()}
    parsed: dict[str, dict[str, LoraWeights]] = {}
    for key, tensor in state_dict.items():
        name, _, suffix = key.partition(".")
        prefix = next(p for p in sorted(KOHYA_PREFIXES, key=len, reverse=True) if name.startswith(p))
        component = KOHYA_PREFIXES[prefix]
        if suffix not in KOHYA_SUFFIXES:
            raise ValueError(
                f"LoRA key {key!r}: unknown kohya suffix {suffix!r}; expected one of {sorted(KOHYA_SUFFIXES)}"
            )
        if component not in models:
            raise ValueError(f"LoRA key {key!r} is for the {component}, which this pipeline does not have")
        paths = lookups[component].get(name[len(prefix):], [])
        if not paths:
            raise ValueError(f"LoRA key {key!r} matches no linear or convolution layer of the {component}")
        if len(paths) > 1:
            raise ValueError(f"LoRA key {key!r} is ambiguous: it could name any of {paths} of the {component}")
        path = paths[0]
        _store(parsed.setdefault(component, {}), path, KOHYA_SUFFIXES[suffix], tensor)
    return parsed


def _underscored_paths(model: nn.Module) -> dict[str, list[str]]:
    """kohya's spelling of each layer path (``.`` → ``_``) → the paths spelled so (two if they collide)."""
    lookup: dict[str, list[str]] = {}
    for path in lora_targets(model):
        lookup.setdefault(path.replace(".", "_"), []).append(path)
    return lookup


def _parse_diffusers(state_dict: Mapping[str, torch.Tensor], models: Mapping[str, nn.Module]) -> dict:
    targets = {component: lora_targets(model) for component, model in models.items()}
    parsed: dict[str, dict[str, LoraWeights]] = {}
    for key, tensor in state_dict.items():
        renamed_key = _original_motion_key(key)
        prefix = next((p for p in DIFFUSERS_PREFIXES if renamed_key.startswith(p)), None)
        if prefix is None:
            raise ValueError(
                f"LoRA key {key!r} starts with none of {sorted(DIFFUSERS_PREFIXES)} (diffusers/PEFT format) "
                f"nor {sorted(KOHYA_PREFIXES)} (kohya/A1111 format, every key)"
            )
        component = DIFFUSERS_PREFIXES[prefix]
        if component not in models:
            raise ValueError(f"LoRA key {key!r} is for the {component}, which this pipeline does not have")
        renamed = "." + renamed_key[len(prefix):]
        for old, new in DIFFUSERS_RENAMES.items():
            renamed = renamed.replace(old, new)
        suffix = next((s for s in DIFFUSERS_SUFFIXES if renamed.endswith(s)), None)
        if suffix is None:
            raise ValueError(f"LoRA key {key!r}: unknown suffix; expected one of {sorted(DIFFUSERS_SUFFIXES)}")
        path = renamed[1 : -len(suffix)]
        if path not in targets[component]:
            raise ValueError(f"LoRA key {key!r} matches no linear or convolution layer of the {component} ({path!r})")
        _store(parsed.setdefault(component, {}), path, DIFFUSERS_SUFFIXES[suffix], tensor)
    return parsed


def _original_motion_key(key: str) -> str:
    """An original AnimateDiff motion-LoRA key as the diffusers conversion names it (others unchanged)."""
    if ORIGINAL_MOTION_MARKER not in key or key.startswith(tuple(DIFFUSERS_PREFIXES)):
        return key
    key = "unet." + key
    for old, new in ORIGINAL_MOTION_RENAMES.items():
        key = key.replace(old, new)
    return key


def _store(layers: dict[str, LoraWeights], path: str, part: str, tensor: torch.Tensor) -> None:
    weights = layers.setdefault(path, LoraWeights())
    if part == "alpha":
        weights.alpha = float(tensor.item())
    else:
        setattr(weights, part, tensor)


def _check_complete(component: str, layers: dict[str, LoraWeights], targets: Mapping[str, nn.Module]) -> None:
    for path, weights in layers.items():
        if weights.down is None or weights.up is None:
            missing = "down (lora_A)" if weights.down is None else "up (lora_B)"
            raise ValueError(f"LoRA for {component}.{path} has no {missing} factor")
        weight = targets[path].weight  # [out, in] or [out, in, kh, kw]
        rank = weights.down.shape[0]
        # down [rank, in(, kh, kw)] has the layer's kernel; up [out, rank(, 1, 1)] is 1×1
        expected_up = (weight.shape[0], rank, *((1, 1) if weight.ndim == 4 else ()))
        if weights.down.shape[1:] != weight.shape[1:] or tuple(weights.up.shape) != expected_up:
            raise ValueError(
                f"LoRA for {component}.{path}: down {tuple(weights.down.shape)} / up {tuple(weights.up.shape)} do "
                f"not fit the layer's weight {tuple(weight.shape)}"
            )


def _component_metadata(metadata: Mapping | None, component: str) -> dict:
    if not metadata:
        return {}
    return {key[len(component) + 1 :]: value for key, value in metadata.items() if key.startswith(component + ".")}


def _fill_scales(layers: dict[str, LoraWeights], metadata: Mapping) -> None:
    """``scale = alpha / rank`` per layer (``alpha / √rank`` with rsLoRA), alpha chosen as diffusers does.

    With PEFT metadata: ``alpha_pattern`` (a suffix match on the module path) else ``lora_alpha``.
    Else with ``.alpha`` keys: the layer's own, or for a layer without one the most common alpha.
    Else alpha = rank (scale 1), the diffusers/PEFT convention of a file without alphas.
    """
    stored = [weights.alpha for weights in layers.values() if weights.alpha is not None]
    fallback = Counter(stored).most_common(1)[0][0] if stored else None
    rslora = bool(metadata.get("use_rslora", False))
    if metadata.get("use_dora"):
        raise ValueError("the LoRA metadata asks for DoRA (use_dora), which vidiff does not load")
    for path, weights in layers.items():
        rank = weights.down.shape[0]
        if "lora_alpha" in metadata:
            alpha = _pattern_value(metadata.get("alpha_pattern") or {}, path, metadata["lora_alpha"])
        elif weights.alpha is not None or fallback is not None:
            alpha = weights.alpha if weights.alpha is not None else fallback
        else:
            alpha = rank
        weights.scale = float(alpha) / (math.sqrt(rank) if rslora else rank)


def _pattern_value(patterns: Mapping[str, float], path: str, default: float) -> float:
    # PEFT's rule: a pattern key matches a module path that equals it or ends with "." + it (regex).
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return default
