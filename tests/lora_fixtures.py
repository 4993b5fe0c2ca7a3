"""LoRA files for the tests: random factors on a diffusers model's layers, in the diffusers/PEFT,
older diffusers (motion LoRA) and kohya/A1111 layouts.

The kohya writer is the inverse of the documented mapping (``unet.<path>.lora_A.weight`` →
``lora_unet_<path with _>.lora_down.weight``, ``lora_B`` → ``lora_up``, alpha as ``<name>.alpha``).
"""

from __future__ import annotations

import torch
from torch import nn

# Layers of the tiny AnimateDiff UNet a LoRA targets, as module-path endings: attention (image and
# motion modules), feed-forward, the transformer's proj_in, a resnet's conv1 (Conv2d) and time_emb_proj.
SD_TARGETS = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_k", "ff.net.0.proj", "ff.net.2",
    "attentions.0.proj_in", "resnets.0.conv1", "resnets.1.time_emb_proj",
)
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.fc1")
MOTION_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")


def layer_paths(model: nn.Module, endings: tuple[str, ...], motion: bool | None = None) -> list[str]:
    """Module paths of ``model``'s Linear/Conv2d layers ending in one of ``endings``;
    ``motion``: only motion-module layers (True), none of them (False) or both (None)."""
    paths = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or not name.endswith(endings):
            continue
        if motion is not None and ("motion_modules" in name) != motion:
            continue
        paths.append(name)
    return paths


def random_lora(model: nn.Module, prefix: str, paths: list[str], rank: int, seed: int, size: float = 0.3) -> dict:
    """Diffusers/PEFT-format ``{prefix.<path>.lora_A.weight, .lora_B.weight}`` with random factors."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for path in paths:
        weight = model.get_submodule(path).weight  # [out, in] or [out, in, kh, kw]
        down_shape = (rank, *weight.shape[1:])
        up_shape = (weight.shape[0], rank) + ((1, 1) if weight.ndim == 4 else ())
        state[f"{prefix}.{path}.lora_A.weight"] = torch.randn(down_shape, generator=generator) * size
        state[f"{prefix}.{path}.lora_B.weight"] = torch.randn(up_shape, generator=generator) * size
    return state


def to_old_diffusers(state: dict) -> dict:
    """The same LoRA in the older diffusers spelling AnimateDiff motion LoRAs use (``.lora.down.weight``)."""
    return {
        key.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight"): value
        for key, value in state.items()
    }


def to_motion_lora_repo(state: dict) -> dict:
    """The spelling of the Hub's ``guoyww/animatediff-motion-lora-*`` files (diffusers' conversion
    script's output): ``unet.<path to attnN>.processor.to_q_lora.down.weight`` …"""
    converted = {}
    for key, value in state.items():
        path, _, factor = key.rpartition(".lora_")
        attention, _, projection = path.rpartition(".")
        if projection == "0":  # to_out.0
            attention, projection = attention.rpartition(".")[0], "to_out"
        direction = "down" if factor.startswith("A") else "up"
        converted[f"{attention}.processor.{projection}_lora.{direction}.weight"] = value
    return converted


def to_original_motion_lora(state: dict) -> dict:
    """The original AnimateDiff motion-LoRA checkpoint keys (no ``unet.`` prefix, AnimateDiff's names)."""
    return {
        key.removeprefix("unet.").replace(".transformer_blocks.", ".temporal_transformer.transformer_blocks.")
        .replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1."): value
        for key, value in to_motion_lora_repo(state).items()
    }


KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def to_kohya(state: dict, alpha: float | None = None) -> dict:
    """The same LoRA in kohya/A1111 keys; with ``alpha``, each layer gets ``<name>.alpha`` = alpha
    (then the effective scale is alpha / rank, so pass alpha = rank for the same numbers)."""
    kohya = {}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        path, _, factor = rest.rpartition(".lora_")
        name = KOHYA_PREFIX[component] + path.replace(".", "_")
        kohya[f"{name}.lora_{'down' if factor.startswith('A') else 'up'}.weight"] = value
        if alpha is not None:
            kohya[f"{name}.alpha"] = torch.tensor(float(alpha))
    return kohya
