"""Original ControlNet files: ``control_v11p_sd15_canny.pth`` (only the ControlNet's tensors) and the
v1.0 ``control_sd15_canny.pth`` (a whole SD 1.5 model whose ControlNet sits under ``control_model.``).

Besides the LDM encoder half (:mod:`.ldm_unet`), a ControlNet has ``zero_convs.i.0`` (diffusers'
``controlnet_down_blocks.i``), ``middle_block_out.0`` (``controlnet_mid_block``) and
``input_hint_block``: a Sequential of convolutions with activations between them, so the
convolutions sit at even indices ``0, 2, …, 2m``. The first is diffusers'
``controlnet_cond_embedding.conv_in``, the last its ``conv_out``, and the ones between are
``controlnet_cond_embedding.blocks.0 … m-2``.

In a v1.0 file everything outside ``control_model.`` (the SD UNet, VAE, text encoder it was trained
with) is dropped: the ControlNet is loaded, the base model comes from the pipeline.

What the tensors do not show — attention heads, group-norm groups, ``upcast_attention``,
``global_pool_conditions`` (``control_v11e_sd15_shuffle``) — comes from the SD 1.5 ControlNet release
config (lllyasviel/control_v11p_sd15_canny) unless ``config=`` says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .ldm_unet import RESNET_NAMES, LdmLayout, encoder_pairs
from .reading import describe_layout
from .rules import RenameTable, convert_state_dict

CONTROL_PREFIX = "control_model."

# The release config of lllyasviel/control_v11p_sd15_canny where it differs from ControlNetConfig's defaults.
RELEASE_CONFIG: dict[str, Any] = {"cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32}

_ONLY_CONTROL_MODEL = RenameTable.of(
    "ControlNet in a full SD checkpoint", [(re.escape(CONTROL_PREFIX) + r"(?P<rest>.+)", r"\g<rest>"), (r".*", None)], complete=True
)
_CONTROLNET_EXTRAS = [
    (r"zero_convs\.(?P<i>\d+)\.0\.(?P<kind>weight|bias)", r"controlnet_down_blocks.\g<i>.\g<kind>"),
    (r"middle_block_out\.0\.(?P<kind>weight|bias)", r"controlnet_mid_block.\g<kind>"),
]


def hint_pairs(keys: list[str]) -> list[tuple[str, str | None]]:
    """Rules for ``input_hint_block``'s convolutions, numbered by their Sequential indices."""
    convs = sorted({int(m.group(1)) for k in keys if (m := re.fullmatch(r"input_hint_block\.(\d+)\.weight", k))})
    if len(convs) < 2:
        return []  # the complete table below then names the hint keys it cannot place
    names = ["conv_in", *(f"blocks.{i}" for i in range(len(convs) - 2)), "conv_out"]
    return [
        (rf"input_hint_block\.{index}\.(?P<kind>weight|bias)", rf"controlnet_cond_embedding.{name}.\g<kind>")
        for index, name in zip(convs, names)
    ]


def tables(state: Mapping[str, Any], source: str) -> tuple[list[RenameTable], list[str]]:
    """The conversion tables for this file, and its keys with any ``control_model.`` prefix removed."""
    keys = list(state)
    tables: list[RenameTable] = []
    if any(k.startswith(CONTROL_PREFIX) for k in keys):
        tables.append(_ONLY_CONTROL_MODEL)
        keys = [k[len(CONTROL_PREFIX):] for k in keys if k.startswith(CONTROL_PREFIX)]
    if not any(k.startswith("input_hint_block.") for k in keys):
        raise ValueError(
            f"{source} is not an original ControlNet (no input_hint_block… or control_model.input_hint_block… "
            f"keys): {describe_layout(state)}"
        )
    layout = LdmLayout.from_keys(keys, source)
    blocks = RenameTable.of("ControlNet", [*encoder_pairs(layout), *_CONTROLNET_EXTRAS, *hint_pairs(keys)], complete=True)
    return [*tables, blocks, RESNET_NAMES], keys


def config_from_tensors(converted: Mapping[str, Any]) -> dict[str, Any]:
    """What diffusers' config keys the converted tensors fix (widths, layers, attention stages, …)."""
    widths, layers, attention = {}, {}, {}
    for key, value in converted.items():
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.conv2\.weight", key):
            stage = int(m.group(1))
            widths[stage] = int(value.shape[0])
            layers[stage] = max(layers.get(stage, 0), int(m.group(2)) + 1)
        if m := re.match(r"down_blocks\.(\d+)\.attentions\.", key):
            attention[int(m.group(1))] = True
    stages = sorted(widths)
    if not stages or stages != list(range(len(stages))):
        return {}
    derived: dict[str, Any] = {
        "block_out_channels": [widths[i] for i in stages],
        "layers_per_block": layers[0],
        "down_block_types": ["CrossAttnDownBlock2D" if attention.get(i) else "DownBlock2D" for i in stages],
        "in_channels": int(converted["conv_in.weight"].shape[1]) if "conv_in.weight" in converted else 4,
    }
    hint = sorted(
        (k for k in converted if re.fullmatch(r"controlnet_cond_embedding\.(conv_in|blocks\.\d+)\.weight", k)),
        key=lambda k: -1 if "conv_in" in k else int(k.split(".")[2]),
    )
    if hint:
        derived["conditioning_channels"] = int(converted[hint[0]].shape[1])
        # conv_in's width, then every second block (the strided ones) widens to the next entry.
        derived["conditioning_embedding_out_channels"] = [int(converted[k].shape[0]) for k in hint[0:1] + hint[2::2]]
    cross = [v for k, v in converted.items() if k.endswith("attn2.to_k.weight")]
    if cross:
        derived["cross_attention_dim"] = int(cross[0].shape[1])
    projections = [v for k, v in converted.items() if k.endswith(".proj_in.weight")]
    if projections:
        derived["use_linear_projection"] = len(projections[0].shape) == 2
    return derived


def convert(state: Mapping[str, Any], source: str, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diffusers-named tensors, ControlNet config): the release config, then what the tensors fix,
    then ``overrides``."""
    converted = convert_state_dict(state, tables(state, source)[0], source=source)
    return converted, {**RELEASE_CONFIG, **config_from_tensors(converted), **overrides}
