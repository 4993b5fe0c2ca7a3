"""The original (LDM / ``openaimodel.py``) UNet layout, shared by SD 1.5 UNets and ControlNets.

LDM numbers its blocks flat: ``input_blocks.0`` is ``conv_in``; then, for down stage ``i`` and layer
``j`` (``L`` = layers per stage), ``input_blocks.{1 + i·(L+1) + j}`` holds a resnet (``.0``) and,
in attention stages, a spatial transformer (``.1``); ``input_blocks.{1 + i·(L+1) + L}.0.op`` is the
stage's downsampler (all stages but the last). ``middle_block.0/1/2`` are resnet, transformer,
resnet. ``output_blocks.{u·(L+1) + j}`` are up stage ``u``'s ``L + 1`` layers, the last one ending in
the upsampler (``.1.conv`` or, after a transformer, ``.2.conv``). diffusers nests the same modules
as ``down_blocks.i.resnets.j`` etc.; inside a block only the resnets' names differ
(:data:`RESNET_NAMES`), the transformers' are the same.

The block tables are generated from a :class:`LdmLayout` read off the keys, so they hold exact block
numbers and nothing is guessed per key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from .rules import RenameTable

_KIND = r"(?P<rest>.+)"

# Inside a resnet: LDM's Sequential indices → diffusers' names (weights and biases alike).
RESNET_LEAVES = (
    ("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut"),
)
RESNET_NAMES = RenameTable.of(
    "LDM resnet",
    [
        (rf"(?P<block>.+\.resnets\.\d+)\.{re.escape(old)}\.(?P<kind>weight|bias)", rf"\g<block>.{new}.\g<kind>")
        for old, new in RESNET_LEAVES
    ],
)

# Keys outside the numbered blocks.
STEM_PAIRS = [
    (r"time_embed\.0\.(?P<kind>weight|bias)", r"time_embedding.linear_1.\g<kind>"),
    (r"time_embed\.2\.(?P<kind>weight|bias)", r"time_embedding.linear_2.\g<kind>"),
    (r"input_blocks\.0\.0\.(?P<kind>weight|bias)", r"conv_in.\g<kind>"),
]
OUT_PAIRS = [
    (r"out\.0\.(?P<kind>weight|bias)", r"conv_norm_out.\g<kind>"),
    (r"out\.2\.(?P<kind>weight|bias)", r"conv_out.\g<kind>"),
]


@dataclasses.dataclass(frozen=True)
class LdmLayout:
    """How many down stages, layers per stage, and which stages have spatial transformers."""

    stages: int
    layers_per_block: int
    attention: tuple[bool, ...]

    @classmethod
    def from_keys(cls, keys: Iterable[str], source: str) -> LdmLayout:
        """Read the layout off LDM keys (``input_blocks.N…`` with the prefix already removed)."""
        keys = list(keys)
        blocks = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))}
        downs = sorted({int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k))})
        if not blocks:
            raise ValueError(f"{source}: no input_blocks.N… keys, so this is not an LDM UNet or ControlNet")
        layers = downs[0] - 1 if downs else max(blocks)
        stages = len(downs) + 1
        if layers < 1 or sorted(blocks) != list(range(stages * (layers + 1))) or any(
            d != 1 + i * (layers + 1) + layers for i, d in enumerate(downs)
        ):
            raise ValueError(
                f"{source}: input_blocks {sorted(blocks)} with downsamplers at {downs} do not form an LDM UNet "
                "(stages of L resnets, each but the last followed by a downsampler)"
            )
        attention = tuple(
            any(k.startswith(f"input_blocks.{1 + i * (layers + 1)}.1.") for k in keys) for i in range(stages)
        )
        return cls(stages, layers, attention)

    def first_block(self, stage: int) -> int:
        """``input_blocks`` index of down stage ``stage``'s first layer."""
        return 1 + stage * (self.layers_per_block + 1)


def encoder_pairs(layout: LdmLayout) -> list[tuple[str, str | None]]:
    """Rules for the stem, the down stages and the mid block (LDM block → diffusers block)."""
    pairs = list(STEM_PAIRS)
    for stage in range(layout.stages):
        for layer in range(layout.layers_per_block):
            n = layout.first_block(stage) + layer
            pairs.append((rf"input_blocks\.{n}\.0\.{_KIND}", rf"down_blocks.{stage}.resnets.{layer}.\g<rest>"))
            if layout.attention[stage]:
                pairs.append((rf"input_blocks\.{n}\.1\.{_KIND}", rf"down_blocks.{stage}.attentions.{layer}.\g<rest>"))
        if stage < layout.stages - 1:
            n = layout.first_block(stage) + layout.layers_per_block
            pairs.append((rf"input_blocks\.{n}\.0\.op\.(?P<kind>weight|bias)", rf"down_blocks.{stage}.downsamplers.0.conv.\g<kind>"))
    pairs += [
        (rf"middle_block\.0\.{_KIND}", r"mid_block.resnets.0.\g<rest>"),
        (rf"middle_block\.1\.{_KIND}", r"mid_block.attentions.0.\g<rest>"),
        (rf"middle_block\.2\.{_KIND}", r"mid_block.resnets.1.\g<rest>"),
    ]
    return pairs


def decoder_pairs(layout: LdmLayout) -> list[tuple[str, str | None]]:
    """Rules for the up stages and the output head; up stage ``u`` mirrors down stage ``stages-1-u``."""
    pairs = []
    per_stage = layout.layers_per_block + 1
    for up in range(layout.stages):
        attention = layout.attention[layout.stages - 1 - up]
        for layer in range(per_stage):
            n = up * per_stage + layer
            pairs.append((rf"output_blocks\.{n}\.0\.{_KIND}", rf"up_blocks.{up}.resnets.{layer}.\g<rest>"))
            if attention:
                pairs.append((rf"output_blocks\.{n}\.1\.{_KIND}", rf"up_blocks.{up}.attentions.{layer}.\g<rest>"))
        if up < layout.stages - 1:
            n, slot = up * per_stage + layout.layers_per_block, 2 if attention else 1
            pairs.append((rf"output_blocks\.{n}\.{slot}\.conv\.(?P<kind>weight|bias)", rf"up_blocks.{up}.upsamplers.0.conv.\g<kind>"))
    return pairs + OUT_PAIRS
