"""Original Stable Diffusion 1.x checkpoints (``v1-5-pruned-emaonly.safetensors``, A1111/Civitai fine-tunes).

One file holds three networks under three prefixes: ``model.diffusion_model.`` (the UNet, LDM
layout: :mod:`.ldm_unet`), ``first_stage_model.`` (the VAE: :mod:`.ldm_vae`) and
``cond_stage_model.transformer.`` (the CLIP ViT-L/14 text tower in transformers' own names, with
``text_model.`` missing in older files). Training bookkeeping — the DDPM schedule buffers
(``betas``, ``alphas_cumprod`` …), ``model_ema.*`` and ``logvar`` — is dropped by name; any other
key is an error naming it.

Configs: what the tensors fix (widths, layers, attention stages, cross-attention width, text-tower
size) is read from them; the rest is the SD 1.5 release config (runwayml/stable-diffusion-v1-5),
held below as data, unless the caller overrides it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import ldm_vae
from .ldm_unet import RESNET_NAMES, LdmLayout, decoder_pairs, encoder_pairs
from .reading import describe_layout
from .rules import RenameTable, convert_state_dict

UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_PREFIX}
# Keys of a training checkpoint that are no network's weights.
BOOKKEEPING = (
    r"betas|alphas_cumprod(?:_prev)?|sqrt_\w+|log_one_minus_alphas_cumprod|posterior_\w+|logvar|model_ema\..+"
)

# runwayml/stable-diffusion-v1-5 configs where they differ from (or are not fixed by) the tensors.
UNET_RELEASE: dict[str, Any] = {
    "attention_head_dim": 8, "norm_num_groups": 32, "cross_attention_dim": 768, "sample_size": 64,
}
VAE_RELEASE: dict[str, Any] = {"norm_num_groups": 32, "scaling_factor": 0.18215, "sample_size": 512}
TEXT_RELEASE: dict[str, Any] = {
    "num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0,
    "eos_token_id": 2, "pad_token_id": 1, "projection_dim": 768,
}

TEXT_TABLE = RenameTable.of(
    "SD CLIP text encoder",
    [(r"text_model\.(?P<rest>.+)", r"text_model.\g<rest>"), (r"(?P<rest>(?:embeddings|encoder|final_layer_norm)\..+)", r"text_model.\g<rest>")],
    complete=True,
)


def split(state: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """The file's tensors per component, prefixes removed; bookkeeping dropped, anything else an error."""
    parts: dict[str, dict[str, Any]] = {name: {} for name in PREFIXES}
    stray = []
    for key, value in state.items():
        name = next((n for n, p in PREFIXES.items() if key.startswith(p)), None)
        if name is not None:
            parts[name][key[len(PREFIXES[name]):]] = value
        elif not re.fullmatch(BOOKKEEPING, key):
            stray.append(key)
    missing = [PREFIXES[n] for n, part in parts.items() if not part]
    if missing:
        raise ValueError(
            f"{source} is not an original Stable Diffusion checkpoint (no {', '.join(missing)}… keys): {describe_layout(state)}"
        )
    if stray:
        raise ValueError(f"{source}: {len(stray)} key(s) belong to no Stable Diffusion component: {', '.join(sorted(stray)[:5])}")
    return parts


def convert_unet(state: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diffusers-named tensors, config keys they fix) for the UNet's prefix-free LDM keys."""
    layout = LdmLayout.from_keys(state, source)
    table = RenameTable.of("SD UNet", [*encoder_pairs(layout), *decoder_pairs(layout)], complete=True)
    converted = convert_state_dict(state, [table, RESNET_NAMES], source=source)
    derived: dict[str, Any] = {
        "block_out_channels": [int(converted[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in range(layout.stages)],
        "layers_per_block": layout.layers_per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in layout.attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(layout.attention)],
        "in_channels": int(converted["conv_in.weight"].shape[1]),
        "out_channels": int(converted["conv_out.weight"].shape[0]),
    }
    derived.update(attention_config(converted))
    return converted, derived


def attention_config(converted: Mapping[str, Any]) -> dict[str, Any]:
    """Cross-attention width and projection kind, read off the first spatial transformer."""
    cross = [v for k, v in converted.items() if k.endswith("attn2.to_k.weight")]
    projections = [v for k, v in converted.items() if k.endswith(".proj_in.weight")]
    derived: dict[str, Any] = {}
    if cross:
        derived["cross_attention_dim"] = int(cross[0].shape[1])
    if projections:
        derived["use_linear_projection"] = len(projections[0].shape) == 2
    return derived


def convert_vae(state: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diffusers-named tensors, config keys they fix) for the VAE's prefix-free LDM keys."""
    converted = convert_state_dict(
        state, [ldm_vae.vae_table(state), ldm_vae.RESNET_NAMES], source=source, transforms=ldm_vae.TRANSFORMS
    )
    derived = ldm_vae.encoder_config(converted)
    derived["up_block_types"] = ["UpDecoderBlock2D"] * len(derived["block_out_channels"])
    derived["latent_channels"] = int(converted["post_quant_conv.weight"].shape[0])
    return converted, derived


def convert_text_encoder(state: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(transformers-named tensors, config keys they fix) for the text tower's prefix-free keys."""
    converted = convert_state_dict(state, [TEXT_TABLE], source=source)
    tokens = converted.get("text_model.embeddings.token_embedding.weight")
    positions = converted.get("text_model.embeddings.position_embedding.weight")
    fc1 = converted.get("text_model.encoder.layers.0.mlp.fc1.weight")
    if tokens is None or positions is None or fc1 is None:
        return converted, {}  # the strict load names what is missing
    layers = {int(m.group(1)) for k in converted if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))}
    derived = {
        "vocab_size": int(tokens.shape[0]), "hidden_size": int(tokens.shape[1]),
        "max_position_embeddings": int(positions.shape[0]), "intermediate_size": int(fc1.shape[0]),
        "num_hidden_layers": len(layers),
    }
    return converted, derived
