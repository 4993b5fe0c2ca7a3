"""AnimateDiff's original motion-module files (``mm_sd_v15.ckpt``, ``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt``).

The AnimateDiff repository stores each motion module as
``<stage>.motion_modules.<j>.temporal_transformer.<…>`` with ``attention_blocks.0/1`` (the two
temporal self-attentions), ``norms.0/1``, ``ff_norm`` and a ``pos_encoder.pe`` table in *each*
attention block. diffusers' ``MotionAdapter`` (and vidiff's) drops the ``temporal_transformer``
level, names them ``attn1/attn2``, ``norm1/norm2/norm3`` and keeps one ``pos_embed.pe`` per
transformer block. Both position tables of a block hold the same sinusoid; the first is kept.

Versions, told apart by their tensors (as diffusers does):

- v1 (``mm_sd_v15``): no mid-block motion module, position table of 24 frames;
- v2 (``mm_sd_v15_v2``): a mid-block motion module, 32 frames;
- v3 (``v3_sd15_mm``): no mid-block motion module, 32 frames.

What no tensor reveals (attention heads, group-norm groups) comes from the release config (8 heads,
32 groups in every release) unless ``config=`` says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .reading import describe_layout
from .rules import RenameTable, convert_state_dict

_MODULE = r"(?P<module>(?:down_blocks|up_blocks|mid_block)(?:\.\d+)?\.motion_modules\.\d+)"
_BLOCK = _MODULE + r"\.temporal_transformer\.transformer_blocks\.(?P<block>\d+)"

# Whole-key rules: original name → diffusers name (None: not stored by diffusers' layout).
ORIGINAL_TO_DIFFUSERS = RenameTable.of(
    "AnimateDiff motion module",
    [
        (_MODULE + r"\.temporal_transformer\.(?P<rest>(?:norm|proj_in|proj_out)\.(?:weight|bias))", r"\g<module>.\g<rest>"),
        (_BLOCK + r"\.attention_blocks\.0\.pos_encoder\.pe", r"\g<module>.transformer_blocks.\g<block>.pos_embed.pe"),
        (_BLOCK + r"\.attention_blocks\.1\.pos_encoder\.pe", None),  # the same table again
        (_BLOCK + r"\.attention_blocks\.0\.(?P<rest>to_(?:q|k|v|out\.0)\.(?:weight|bias))", r"\g<module>.transformer_blocks.\g<block>.attn1.\g<rest>"),
        (_BLOCK + r"\.attention_blocks\.1\.(?P<rest>to_(?:q|k|v|out\.0)\.(?:weight|bias))", r"\g<module>.transformer_blocks.\g<block>.attn2.\g<rest>"),
        (_BLOCK + r"\.norms\.0\.(?P<kind>weight|bias)", r"\g<module>.transformer_blocks.\g<block>.norm1.\g<kind>"),
        (_BLOCK + r"\.norms\.1\.(?P<kind>weight|bias)", r"\g<module>.transformer_blocks.\g<block>.norm2.\g<kind>"),
        (_BLOCK + r"\.ff_norm\.(?P<kind>weight|bias)", r"\g<module>.transformer_blocks.\g<block>.norm3.\g<kind>"),
        (_BLOCK + r"\.(?P<rest>ff\.net\.(?:0\.proj|2)\.(?:weight|bias))", r"\g<module>.transformer_blocks.\g<block>.\g<rest>"),
    ],
    complete=True,
)
# A motion adapter already saved in diffusers' names as one file: kept as it is (the strict load checks it).
DIFFUSERS_LAYOUT = RenameTable.of("diffusers motion adapter", [(r".*", r"\g<0>")], complete=True)

# Release configs of guoyww/animatediff-motion-adapter-v1-5{,-2,-3} where they differ from the class defaults.
RELEASE_CONFIGS: dict[str, dict[str, Any]] = {
    "v1": {"use_motion_mid_block": False, "motion_max_seq_length": 24},
    "v2": {"use_motion_mid_block": True, "motion_max_seq_length": 32},
    "v3": {"use_motion_mid_block": False, "motion_max_seq_length": 32},
}

_ORIGINAL_MARKER = re.compile(r"^down_blocks\.0\.motion_modules\.0\.temporal_transformer\.")
_DIFFUSERS_MARKER = re.compile(r"^down_blocks\.0\.motion_modules\.0\.transformer_blocks\.")


def detect_layout(keys: Any, source: str) -> RenameTable:
    """The conversion table for these keys: the original AnimateDiff names or diffusers' own."""
    keys = list(keys)
    if any(_ORIGINAL_MARKER.match(k) for k in keys):
        return ORIGINAL_TO_DIFFUSERS
    if any(_DIFFUSERS_MARKER.match(k) for k in keys):
        return DIFFUSERS_LAYOUT
    raise ValueError(
        f"{source} is not an AnimateDiff motion module (no down_blocks.0.motion_modules.0.temporal_transformer… "
        f"keys): {describe_layout(keys)}"
    )


def detect_version(converted: Mapping[str, Any]) -> str:
    """"v1", "v2" or "v3" from the converted tensors (mid block present; position-table length)."""
    if any(k.startswith("mid_block.motion_modules.") for k in converted):
        return "v2"
    tables = [v for k, v in converted.items() if k.endswith(".pos_embed.pe")]
    return "v1" if tables and tables[0].shape[1] == 24 else "v3"


def config_from_tensors(converted: Mapping[str, Any]) -> dict[str, Any]:
    """The structure the tensors fix: stage widths, modules per stage, layers per module, mid block, frames."""
    stages: dict[int, dict[int, set[int]]] = {}
    pattern = re.compile(r"down_blocks\.(\d+)\.motion_modules\.(\d+)\.transformer_blocks\.(\d+)\.")
    widths: dict[int, int] = {}
    for key, value in converted.items():
        match = pattern.match(key)
        if match:
            stage, module, layer = map(int, match.groups())
            stages.setdefault(stage, {}).setdefault(module, set()).add(layer)
        norm = re.fullmatch(r"down_blocks\.(\d+)\.motion_modules\.0\.norm\.weight", key)
        if norm:
            widths[int(norm.group(1))] = int(value.shape[0])
    if not stages or sorted(widths) != list(range(len(widths))):
        return {}  # the strict load will say what is missing
    order = sorted(stages)
    tables = [v for k, v in converted.items() if k.endswith(".pos_embed.pe")]
    derived: dict[str, Any] = {
        "block_out_channels": [widths[i] for i in order],
        "motion_layers_per_block": _one_if_same([len(stages[i]) for i in order]),
        "motion_transformer_layers_per_block": _one_if_same(
            [max(len(layers) for layers in stages[i].values()) for i in order]
        ),
        "use_motion_mid_block": any(k.startswith("mid_block.") for k in converted),
    }
    if tables:
        derived["motion_max_seq_length"] = int(tables[0].shape[1])
    return derived


def _one_if_same(values: list[int]) -> int | list[int]:
    """One int when every stage has the same count (how the release configs write it), else the list."""
    return values[0] if len(set(values)) == 1 else values


def convert(state: Mapping[str, Any], source: str, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diffusers-named tensors, MotionAdapter config): the release config of the detected version,
    then what the tensors fix, then ``overrides``."""
    converted = convert_state_dict(state, [detect_layout(state, source)], source=source)
    config = {**RELEASE_CONFIGS[detect_version(converted)], **config_from_tensors(converted), **overrides}
    return converted, config
