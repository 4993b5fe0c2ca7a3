"""Reading IP-Adapter files (the original ``ip-adapter_sd15.safetensors`` / ``.bin`` layout) into a UNet.

An original file holds two state dicts: ``image_proj`` (the projection, in the IP-Adapter repo's
names) and ``ip_adapter`` (``"{k}.to_k_ip.weight"`` / ``"{k}.to_v_ip.weight"`` for the UNet's k-th
attention processor, odd k = the cross-attentions, in :func:`~vidiff.models.ip_adapter.cross_attention_layers`
order). A ``.safetensors`` file stores them flat as ``image_proj.…`` / ``ip_adapter.…``; a ``.bin``
pickle nests them (read with ``torch.load(weights_only=True)`` only).

The renames from the original projection names to vidiff's (= diffusers') are the tables below,
one per projection kind; loads are strict, so an unknown, missing or misshapen key is an error naming it.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .. import weight_files
from ..layers.ip_attention import IPAdapterBranch
from .ip_adapter import (
    RESAMPLER_HEAD_DIM,
    ImageProjection,
    IPAdapterPlusImageProjection,
    MultiIPAdapterImageProjection,
    cross_attention_layers,
)

IPAdapterStateDict = dict[str, dict[str, torch.Tensor]]

# ip-adapter_sd15: the linear layer is "proj" in the original code.
BASE_RENAMES: tuple[tuple[str, str], ...] = ((r"^proj\.", "image_embeds."), (r"^norm\.", "norm."))
# ip-adapter-plus: the original Resampler's [attention, MLP] pairs per layer. (to_kv is split in two.)
PLUS_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^layers\.(\d+)\.0\.norm1\.", r"layers.\1.ln0."),
    (r"^layers\.(\d+)\.0\.norm2\.", r"layers.\1.ln1."),
    (r"^layers\.(\d+)\.0\.to_q\.", r"layers.\1.attn.to_q."),
    (r"^layers\.(\d+)\.0\.to_out\.", r"layers.\1.attn.to_out.0."),
    (r"^layers\.(\d+)\.1\.0\.", r"layers.\1.ff.0."),
    (r"^layers\.(\d+)\.1\.1\.", r"layers.\1.ff.1.net.0.proj."),
    (r"^layers\.(\d+)\.1\.3\.", r"layers.\1.ff.1.net.2."),
    (r"^(latents|proj_in\.|proj_out\.|norm_out\.)", r"\1"),
)
_KV = re.compile(r"^layers\.(\d+)\.0\.to_kv\.weight$")


def read_ip_adapter_file(path: Path) -> IPAdapterStateDict:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from an original IP-Adapter file."""
    if path.suffix == ".safetensors":
        flat = weight_files.read(path)
        nested: IPAdapterStateDict = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            part, _, rest = key.partition(".")
            if part not in nested or not rest:
                raise ValueError(f"{path}: key {key!r} is neither image_proj.… nor ip_adapter.…; not an IP-Adapter file")
            nested[part][rest] = value
        return check_state_dict(nested, str(path))
    try:  # weights_only: plain tensors and dicts only, never code a pickle names
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"Refusing to load {path}: it holds objects other than tensors, and vidiff only unpickles plain "
            f"tensors (torch.load(weights_only=True)) because a pickle can run code ({str(error)[:160]})"
        ) from error
    return check_state_dict(loaded, str(path))


def check_state_dict(state_dict: object, where: str) -> IPAdapterStateDict:
    """Check the two-part layout; returns it with plain dicts."""
    if not isinstance(state_dict, Mapping) or set(state_dict) != {"image_proj", "ip_adapter"}:
        keys = sorted(map(str, state_dict)) if isinstance(state_dict, Mapping) else type(state_dict).__name__
        raise ValueError(f"{where}: an IP-Adapter holds exactly 'image_proj' and 'ip_adapter' state dicts, got {keys}")
    out: IPAdapterStateDict = {}
    for part in ("image_proj", "ip_adapter"):
        tensors = state_dict[part]
        if not isinstance(tensors, Mapping) or not tensors or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise ValueError(f"{where}: {part!r} must be a non-empty mapping of names to tensors")
        out[part] = dict(tensors)
    return out


def image_projection_from_original(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build and strictly load the projection an original ``image_proj`` state dict describes."""
    if "proj.weight" in state_dict:  # ip-adapter_sd15: Linear(D_img, 4·C) + LayerNorm(C)
        width = state_dict["norm.weight"].shape[0] if "norm.weight" in state_dict else None
        if width is None or state_dict["proj.weight"].shape[0] % width:
            raise ValueError("image_proj has proj.weight but no matching norm.weight; not an ip-adapter_sd15 projection")
        module: nn.Module = ImageProjection(
            state_dict["proj.weight"].shape[1], width, state_dict["proj.weight"].shape[0] // width
        )
        renamed = _renamed(state_dict, BASE_RENAMES)
    elif "latents" in state_dict and "proj_in.weight" in state_dict:  # ip-adapter-plus: the Resampler
        depth = len({key.split(".")[1] for key in state_dict if key.startswith("layers.")})
        module = IPAdapterPlusImageProjection(
            embed_dims=state_dict["proj_in.weight"].shape[1], output_dims=state_dict["proj_out.weight"].shape[0],
            hidden_dims=state_dict["latents"].shape[2], depth=depth,
            heads=max(1, state_dict["layers.0.0.to_q.weight"].shape[0] // RESAMPLER_HEAD_DIM),
            num_queries=state_dict["latents"].shape[1], ff_inner_dim=state_dict["layers.0.1.1.weight"].shape[0],
        )
        renamed = _renamed({k: v for k, v in state_dict.items() if not _KV.match(k)}, PLUS_RENAMES)
        for key, value in state_dict.items():
            match = _KV.match(key)
            if match:  # one [2·inner, dim] matrix: keys then values
                key_weight, value_weight = value.chunk(2, dim=0)
                renamed[f"layers.{match.group(1)}.attn.to_k.weight"] = key_weight
                renamed[f"layers.{match.group(1)}.attn.to_v.weight"] = value_weight
    else:
        raise ValueError(
            "image_proj is neither ip-adapter_sd15's (proj.weight, norm.*) nor ip-adapter-plus' (latents, proj_in.*, "
            f"layers.*) projection; vidiff reads those two. Keys found: {sorted(state_dict)[:8]}"
        )
    _load_strict(module, renamed, "image_proj")
    return module


def _renamed(state_dict: Mapping[str, torch.Tensor], renames: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            new_key, hits = re.subn(pattern, replacement, key)
            if hits:
                out[new_key] = value
                break
        else:
            raise ValueError(f"image_proj key {key!r} matches no layer of the IP-Adapter projection")
    return out


def _load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    for key, value in state_dict.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{where}: {key} has shape {list(value.shape)}, the layer expects {list(expected[key].shape)}")
    module.load_state_dict(dict(state_dict))


def install_ip_adapters(unet: nn.Module, state_dicts: Sequence[IPAdapterStateDict]) -> None:
    """Give the UNet ``encoder_hid_proj`` (one projection per adapter) and an image branch on every
    image cross-attention, replacing adapters loaded before; weights in the UNet's dtype and device."""
    layers = cross_attention_layers(unet)
    if not layers:
        raise ValueError("this UNet has no image cross-attention layers to attach an IP-Adapter to")
    projections = [image_projection_from_original(sd["image_proj"]) for sd in state_dicts]
    branches = [_branch_for(attention, 2 * index + 1, state_dicts) for index, (_, attention) in enumerate(layers)]
    expected = {f"{2 * index + 1}.{name}.weight" for index in range(len(layers)) for name in ("to_k_ip", "to_v_ip")}
    for number, state_dict in enumerate(state_dicts):
        unexpected = sorted(set(state_dict["ip_adapter"]) - expected)
        if unexpected:
            raise ValueError(
                f"IP-Adapter {number}: ip_adapter keys {unexpected[:8]} match no cross-attention of this UNet "
                f"(it has {len(layers)}: keys 1.… to {2 * len(layers) - 1}.…)"
            )
    parameter = next(unet.parameters())
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(projections).to(parameter.device, parameter.dtype)
    for (_, attention), branch in zip(layers, branches):
        attention.ip_adapter = branch.to(parameter.device, parameter.dtype)


def _branch_for(attention: nn.Module, number: int, state_dicts: Sequence[IPAdapterStateDict]) -> IPAdapterBranch:
    branch = IPAdapterBranch(attention.to_k.in_features, attention.to_k.out_features, len(state_dicts))
    weights = {}
    for index, state_dict in enumerate(state_dicts):
        for name in ("to_k_ip", "to_v_ip"):
            key = f"{number}.{name}.weight"
            if key not in state_dict["ip_adapter"]:
                raise ValueError(f"IP-Adapter {index}: ip_adapter has no {key!r} for cross-attention number {number}")
            weights[f"{name}.{index}.weight"] = state_dict["ip_adapter"][key]
    _load_strict(branch, weights, f"ip_adapter layer {number}")
    return branch


def remove_ip_adapters(unet: nn.Module) -> None:
    """Drop every image branch and ``encoder_hid_proj``: the UNet computes exactly what it did before."""
    for _, attention in cross_attention_layers(unet):
        attention.ip_adapter = None
    unet.encoder_hid_proj = None
