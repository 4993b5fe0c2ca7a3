"""Tiny random IP-Adapters in the original h94/IP-Adapter file layout, plus a tiny CLIP vision tower.

``write_tiny_ip_adapter(root, unet)`` writes ``root/models/ip-adapter_sd15.safetensors`` and
``root/models/ip-adapter-plus_sd15.safetensors`` (flat ``image_proj.…`` / ``ip_adapter.…`` keys,
as the published files and diffusers' ``load_ip_adapter`` have them) and ``root/models/image_encoder``
(a transformers ``CLIPVisionModelWithProjection``), sized for the tiny AnimateDiff UNet of
``tests/animatediff_checkpoint.py``. Weights are seeded random numbers at scales that keep the
activations in a normal range; the projection names are the original IP-Adapter code's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers import perturb_

VISION = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8,
    projection_dim=24,
)
PLUS_HIDDEN = 64  # the resampler's width: one 64-wide head, as heads = to_q rows / 64
PLUS_QUERIES = 5
PLUS_DEPTH = 4  # diffusers builds the resampler with its default depth of 4 (as released)
BASE_FILE = "ip-adapter_sd15.safetensors"
PLUS_FILE = "ip-adapter-plus_sd15.safetensors"


def _random(generator: torch.Generator, *shape: int, scale: float = 0.2, around: float = 0.0) -> torch.Tensor:
    return around + scale * torch.randn(shape, generator=generator)


def _layer_norm(generator, prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": _random(generator, width, scale=0.1, around=1.0), f"{prefix}.bias": _random(generator, width, scale=0.1)}


def cross_attention_widths(unet) -> list[int]:
    """Output widths of the diffusers UNet's cross-attentions in its attn_processors order (key 1, 3, …)."""
    names = [name[: -len(".processor")] for name in unet.attn_processors if name.endswith("attn2.processor") and "motion" not in name]
    return [unet.get_submodule(name).to_k.out_features for name in names]


def ip_adapter_layers(generator, unet, context_dim: int) -> dict[str, torch.Tensor]:
    """``{"1.to_k_ip.weight": …}``: one key/value pair per cross-attention, odd numbers."""
    out = {}
    for index, width in enumerate(cross_attention_widths(unet)):
        for name in ("to_k_ip", "to_v_ip"):
            out[f"{2 * index + 1}.{name}.weight"] = _random(generator, width, context_dim, scale=0.1)
    return out


def base_projection(generator, image_dim: int, context_dim: int, tokens: int = 4) -> dict[str, torch.Tensor]:
    return {
        "proj.weight": _random(generator, tokens * context_dim, image_dim, scale=0.3),
        "proj.bias": _random(generator, tokens * context_dim, scale=0.1),
        **_layer_norm(generator, "norm", context_dim),
    }


def plus_projection(generator, embed_dim: int, context_dim: int) -> dict[str, torch.Tensor]:
    """The original Resampler's names: layers.i.0 = attention (norm1 image, norm2 queries, to_kv fused),
    layers.i.1 = [LayerNorm, Linear, GELU, Linear]."""
    width = PLUS_HIDDEN
    out = {
        "latents": _random(generator, 1, PLUS_QUERIES, width, scale=width**-0.5),
        "proj_in.weight": _random(generator, width, embed_dim, scale=0.2), "proj_in.bias": _random(generator, width, scale=0.1),
        "proj_out.weight": _random(generator, context_dim, width, scale=0.2),
        "proj_out.bias": _random(generator, context_dim, scale=0.1),
        **_layer_norm(generator, "norm_out", context_dim),
    }
    for layer in range(PLUS_DEPTH):
        prefix = f"layers.{layer}"
        out.update(_layer_norm(generator, f"{prefix}.0.norm1", width))
        out.update(_layer_norm(generator, f"{prefix}.0.norm2", width))
        out[f"{prefix}.0.to_q.weight"] = _random(generator, width, width, scale=0.15)
        out[f"{prefix}.0.to_kv.weight"] = _random(generator, 2 * width, width, scale=0.15)
        out[f"{prefix}.0.to_out.weight"] = _random(generator, width, width, scale=0.15)
        out.update(_layer_norm(generator, f"{prefix}.1.0", width))
        out[f"{prefix}.1.1.weight"] = _random(generator, 4 * width, width, scale=0.1)
        out[f"{prefix}.1.3.weight"] = _random(generator, width, 4 * width, scale=0.1)
    return out


def write_tiny_ip_adapter(root: Path, unet, seed: int = 0) -> Path:
    """Write the two adapter files and the image encoder under ``root/models``; returns ``root``."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    models = root / "models"
    torch.manual_seed(seed)
    encoder = perturb_(CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)), seed=seed + 1).eval()
    encoder.save_pretrained(models / "image_encoder")
    context_dim = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(seed + 2)
    files = {
        BASE_FILE: {"image_proj": base_projection(generator, VISION["projection_dim"], context_dim)},
        PLUS_FILE: {"image_proj": plus_projection(generator, VISION["hidden_size"], context_dim)},
    }
    for name, parts in files.items():
        parts["ip_adapter"] = ip_adapter_layers(generator, unet, context_dim)
        flat = {f"{part}.{key}": value.contiguous() for part, tensors in parts.items() for key, value in tensors.items()}
        save_file(flat, models / name)
    return root
