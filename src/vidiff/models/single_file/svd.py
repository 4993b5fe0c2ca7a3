"""Original Stable Video Diffusion files (``svd.safetensors``, ``svd_xt.safetensors``, ``svd_xt_1_1``).

A Stability ``generative-models`` checkpoint holds, under these prefixes:

- ``model.diffusion_model.``: the video UNet in LDM block numbering (:mod:`.ldm_unet`). Each resnet
  is a spatial LDM resnet plus ``time_stack`` (a temporal resnet, diffusers'
  ``temporal_res_block``) and ``time_mixer.mix_factor``; the spatial resnet becomes
  ``spatial_res_block``. In each spatial transformer ``time_stack.N`` are the temporal blocks
  (``temporal_transformer_blocks.N``) and ``time_pos_embed.0/2`` its frame-index MLP
  (``linear_1/2``). ``label_emb.0.0/0.2`` embed the added conditions (``add_embedding.linear_1/2``).
- ``first_stage_model.decoder.``: the temporal VAE decoder — LDM decoder names, where each resnet
  has ``time_stack`` (temporal resnet, no time embedding) and a bare ``mix_factor``, and
  ``conv_out.time_mix_conv`` is diffusers' ``decoder.time_conv_out``.
- ``conditioner.embedders.3.encoder.``: the VAE encoder and ``quant_conv`` that encode the
  conditioning frame (diffusers reads the encoder from here; files without it use
  ``first_stage_model.encoder``/``quant_conv``). The other copy is dropped.
- ``conditioner.embedders.0.open_clip.model.visual.``: the OpenCLIP ViT-H/14 image tower, in
  open_clip's names; the fused attention ``in_proj`` is split into ``q/k/v_proj`` and ``proj``
  (``[D, P]``, used as ``x @ proj``) is transposed into ``visual_projection.weight``.

The non-visual OpenCLIP tensors, ``denoiser.*`` and ``model_ema.*`` are dropped; any other key is an
error naming it. Not shown by any tensor, and taken from the SVD-XT release configs unless
overridden: attention heads (64 channels each), ``num_frames`` (25; the 14-frame ``svd.safetensors``
wants ``config={"unet": {"num_frames": 14}}``), the VAE's ``scaling_factor`` and ``force_upcast``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import ldm_vae
from .ldm_unet import RESNET_LEAVES, LdmLayout, decoder_pairs, encoder_pairs
from .reading import describe_layout
from .rules import RenameTable, Transposed, convert_state_dict, split_fused

_K = r"(?P<kind>weight|bias)"

# stabilityai/stable-video-diffusion-img2vid-xt configs where they differ from (or are not fixed by) the tensors.
UNET_RELEASE: dict[str, Any] = {"num_attention_heads": [5, 10, 20, 20], "num_frames": 25, "sample_size": 96}
VAE_RELEASE: dict[str, Any] = {"scaling_factor": 0.18215, "force_upcast": True, "sample_size": 768}
IMAGE_ENCODER_RELEASE: dict[str, Any] = {"num_attention_heads": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-5}
HEAD_CHANNELS = 64  # SVD's UNet attention: every head is 64 channels wide


def component_table(keys: list[str]) -> RenameTable:
    """Tag each key with its component (``unet/``, ``vae/``, ``image_encoder/``) or drop it."""
    cond_encoder = any(k.startswith("conditioner.embedders.3.encoder.encoder.") for k in keys)
    encoder_from = r"conditioner\.embedders\.3\.encoder\." if cond_encoder else r"first_stage_model\."
    return RenameTable.of(
        "SVD components",
        [
            (r"model\.diffusion_model\.(?P<rest>.+)", r"unet/\g<rest>"),
            (r"conditioner\.embedders\.0\.open_clip\.model\.visual\.(?P<rest>.+)", r"image_encoder/\g<rest>"),
            (r"first_stage_model\.(?P<rest>decoder\..+)", r"vae/\g<rest>"),
            (encoder_from + r"(?P<rest>(?:encoder|quant_conv)\..+)", r"vae/\g<rest>"),
            # The other copies, OpenCLIP's text-side leftovers and training state.
            (r"conditioner\.embedders\.0\.open_clip\..+|conditioner\.embedders\.3\.encoder\..+", None),
            (r"first_stage_model\..+|denoiser\..+|model_ema\..+", None),
        ],
        complete=True,
    )


def split(state: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """The file's tensors per component, prefixes removed (see the module docstring)."""
    if not any(k.startswith("conditioner.embedders.0.open_clip.") for k in state):
        raise ValueError(f"{source} is not an original Stable Video Diffusion checkpoint: {describe_layout(state)}")
    tagged = convert_state_dict(state, [component_table(list(state))], source=source)
    parts: dict[str, dict[str, Any]] = {"unet": {}, "vae": {}, "image_encoder": {}}
    for key, value in tagged.items():
        name, _, rest = key.partition("/")
        parts[name][rest] = value
    return parts


# The added conditions' embedding (fps, motion bucket, noise augmentation), outside the numbered blocks.
LABEL_EMBEDDING_PAIRS: list[tuple[str, str | None]] = [
    (rf"label_emb\.0\.0\.{_K}", r"add_embedding.linear_1.\g<kind>"),
    (rf"label_emb\.0\.2\.{_K}", r"add_embedding.linear_2.\g<kind>"),
]


def _video_resnet_pairs(prefix: str, leaves: tuple[tuple[str, str], ...], mixer: str) -> list[tuple[str, str | None]]:
    """Inside video resnets under ``prefix``: spatial leaves, ``time_stack`` leaves and the mix factor."""
    block = rf"(?P<block>{prefix}.*\.resnets\.\d+)"
    pairs: list[tuple[str, str | None]] = [(rf"{block}\.{re.escape(mixer)}", r"\g<block>.time_mixer.mix_factor")]
    for old, new in leaves:
        pairs.append((rf"{block}\.time_stack\.{re.escape(old)}\.{_K}", rf"\g<block>.temporal_res_block.{new}.\g<kind>"))
        pairs.append((rf"{block}\.{re.escape(old)}\.{_K}", rf"\g<block>.spatial_res_block.{new}.\g<kind>"))
    return pairs


UNET_INNER = RenameTable.of(
    "SVD UNet blocks",
    [
        *_video_resnet_pairs("", RESNET_LEAVES, "time_mixer.mix_factor"),
        (r"(?P<a>.+\.attentions\.\d+)\.time_stack\.(?P<rest>.+)", r"\g<a>.temporal_transformer_blocks.\g<rest>"),
        (rf"(?P<a>.+\.attentions\.\d+)\.time_pos_embed\.0\.{_K}", r"\g<a>.time_pos_embed.linear_1.\g<kind>"),
        (rf"(?P<a>.+\.attentions\.\d+)\.time_pos_embed\.2\.{_K}", r"\g<a>.time_pos_embed.linear_2.\g<kind>"),
    ],
)
# The VAE decoder's video resnets: LDM VAE leaf names (temporal ones in openaimodel's Sequential indices).
_VAE_SPATIAL = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"), ("nin_shortcut", "conv_shortcut"))
_VAE_TEMPORAL = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"))
VAE_DECODER_INNER = RenameTable.of(
    "SVD VAE decoder resnets",
    [
        (rf"(?P<block>decoder\..*\.resnets\.\d+)\.mix_factor", r"\g<block>.time_mixer.mix_factor"),
        *[(rf"(?P<block>decoder\..*\.resnets\.\d+)\.time_stack\.{re.escape(o)}\.{_K}", rf"\g<block>.temporal_res_block.{n}.\g<kind>") for o, n in _VAE_TEMPORAL],
        *[(rf"(?P<block>decoder\..*\.resnets\.\d+)\.{re.escape(o)}\.{_K}", rf"\g<block>.spatial_res_block.{n}.\g<kind>") for o, n in _VAE_SPATIAL],
    ],
)
IMAGE_ENCODER = RenameTable.of(
    "OpenCLIP vision tower",
    [
        (r"class_embedding", r"vision_model.embeddings.class_embedding"),
        (r"positional_embedding", r"vision_model.embeddings.position_embedding.weight"),
        (r"conv1\.weight", r"vision_model.embeddings.patch_embedding.weight"),
        (rf"ln_pre\.{_K}", r"vision_model.pre_layrnorm.\g<kind>"),  # sic: transformers' name
        (rf"ln_post\.{_K}", r"vision_model.post_layernorm.\g<kind>"),
        (r"proj", r"visual_projection.weight"),
        (rf"transformer\.resblocks\.(?P<n>\d+)\.ln_1\.{_K}", r"vision_model.encoder.layers.\g<n>.layer_norm1.\g<kind>"),
        (rf"transformer\.resblocks\.(?P<n>\d+)\.ln_2\.{_K}", r"vision_model.encoder.layers.\g<n>.layer_norm2.\g<kind>"),
        (r"transformer\.resblocks\.(?P<n>\d+)\.attn\.in_proj_(?P<kind>weight|bias)", r"vision_model.encoder.layers.\g<n>.self_attn.in_proj.\g<kind>"),
        (rf"transformer\.resblocks\.(?P<n>\d+)\.attn\.out_proj\.{_K}", r"vision_model.encoder.layers.\g<n>.self_attn.out_proj.\g<kind>"),
        (rf"transformer\.resblocks\.(?P<n>\d+)\.mlp\.c_fc\.{_K}", r"vision_model.encoder.layers.\g<n>.mlp.fc1.\g<kind>"),
        (rf"transformer\.resblocks\.(?P<n>\d+)\.mlp\.c_proj\.{_K}", r"vision_model.encoder.layers.\g<n>.mlp.fc2.\g<kind>"),
    ],
    complete=True,
)


def convert_unet(state: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diffusers-named tensors, config keys they fix) for the video UNet's prefix-free LDM keys."""
    layout = LdmLayout.from_keys(state, source)
    blocks = RenameTable.of("SVD UNet", [*encoder_pairs(layout), *decoder_pairs(layout), *LABEL_EMBEDDING_PAIRS], complete=True)
    converted = convert_state_dict(state, [blocks, UNET_INNER], source=source)
    widths = [int(converted[f"down_blocks.{i}.resnets.0.spatial_res_block.conv2.weight"].shape[0]) for i in range(layout.stages)]
    cross = [v for k, v in converted.items() if k.endswith("attn2.to_k.weight")]
    derived: dict[str, Any] = {
        "block_out_channels": widths,
        "layers_per_block": layout.layers_per_block,
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in layout.attention],
        "up_block_types": ["CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in reversed(layout.attention)],
        "in_channels": int(converted["conv_in.weight"].shape[1]),
        "out_channels": int(converted["conv_out.weight"].shape[0]),
        "num_attention_heads": [max(1, w // HEAD_CHANNELS) for w in widths],
    }
    if cross:
        derived["cross_attention_dim"] = int(cross[0].shape[1])
    if "add_embedding.linear_1.weight" in converted:
        # The added conditions (fps, motion bucket, noise augmentation) are 3 sinusoidal embeddings.
        width = int(converted["add_embedding.linear_1.weight"].shape[1])
        derived.update(projection_class_embeddings_input_dim=width, addition_time_embed_dim=width // 3)
    return converted, derived


def convert_vae(state: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diffusers-named tensors, config keys they fix) for the temporal VAE's prefix-free keys."""
    extra = [(rf"decoder\.conv_out\.time_mix_conv\.{_K}", r"decoder.time_conv_out.\g<kind>")]
    table = ldm_vae.vae_table(state, extra_pairs=extra)
    converted = convert_state_dict(
        state, [table, VAE_DECODER_INNER, ldm_vae.RESNET_NAMES], source=source, transforms=ldm_vae.TRANSFORMS
    )
    derived = ldm_vae.encoder_config(converted)
    derived["latent_channels"] = int(converted["decoder.conv_in.weight"].shape[1])
    return converted, derived


def convert_image_encoder(state: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(transformers-named tensors, config keys they fix) for the OpenCLIP visual tower's keys."""
    converted = convert_state_dict(state, [IMAGE_ENCODER], source=source, transforms=[(r"visual_projection\.weight", Transposed)])
    converted = split_fused(converted, r"(?P<head>.+\.self_attn)\.in_proj\.(?P<kind>weight|bias)", ("q_proj", "k_proj", "v_proj"))
    patch = converted.get("vision_model.embeddings.patch_embedding.weight")
    positions = converted.get("vision_model.embeddings.position_embedding.weight")
    fc1 = converted.get("vision_model.encoder.layers.0.mlp.fc1.weight")
    projection = converted.get("visual_projection.weight")
    if patch is None or positions is None or fc1 is None or projection is None:
        return converted, {}  # the strict load names what is missing
    side = round((int(positions.shape[0]) - 1) ** 0.5)  # a class token plus side² patches
    layers = {int(m.group(1)) for k in converted if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
    derived = {
        "hidden_size": int(patch.shape[0]), "num_channels": int(patch.shape[1]), "patch_size": int(patch.shape[2]),
        "image_size": side * int(patch.shape[2]), "intermediate_size": int(fc1.shape[0]),
        "num_hidden_layers": len(layers), "projection_dim": int(projection.shape[0]),
    }
    return converted, derived
