"""The original (LDM ``first_stage_model``) KL-VAE layout → diffusers' ``AutoencoderKL`` names.

LDM: ``encoder.down.{i}.block.{j}`` (resnets), ``encoder.down.{i}.downsample.conv``,
``encoder.mid.block_1 / attn_1 / block_2``, ``encoder.norm_out``; the decoder counts its ``up.{i}``
stages from the *bottom* (``up.{n-1}`` runs first), diffusers' ``up_blocks.{k}`` from the top, so
``up.{i}`` is ``up_blocks.{n-1-i}``. Resnets differ only in ``nin_shortcut`` (``conv_shortcut``).
The mid attention stores ``q/k/v/proj_out`` as 1×1 convolutions ``[C, C, 1, 1]``; diffusers'
``to_q/to_k/to_v/to_out.0`` are linear ``[C, C]`` (same numbers: :func:`.rules.conv1x1_to_linear`).
SVD's temporal decoder shares the encoder half and most of this table (see :mod:`.svd`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .rules import RenameTable, conv1x1_to_linear

_KIND = r"(?P<kind>weight|bias)"

MID_BLOCK_PAIRS = [
    (rf"(?P<side>encoder|decoder)\.mid\.block_1\.(?P<rest>.+)", r"\g<side>.mid_block.resnets.0.\g<rest>"),
    (rf"(?P<side>encoder|decoder)\.mid\.block_2\.(?P<rest>.+)", r"\g<side>.mid_block.resnets.1.\g<rest>"),
    (rf"(?P<side>encoder|decoder)\.mid\.attn_1\.norm\.{_KIND}", r"\g<side>.mid_block.attentions.0.group_norm.\g<kind>"),
    (rf"(?P<side>encoder|decoder)\.mid\.attn_1\.(?P<p>q|k|v)\.{_KIND}", r"\g<side>.mid_block.attentions.0.to_\g<p>.\g<kind>"),
    (rf"(?P<side>encoder|decoder)\.mid\.attn_1\.proj_out\.{_KIND}", r"\g<side>.mid_block.attentions.0.to_out.0.\g<kind>"),
]
STEM_PAIRS = [
    (rf"(?P<side>encoder|decoder)\.norm_out\.{_KIND}", r"\g<side>.conv_norm_out.\g<kind>"),
    (rf"(?P<name>(?:encoder|decoder)\.conv_(?:in|out)\.{_KIND})", r"\g<name>"),
    (rf"(?P<name>(?:post_)?quant_conv\.{_KIND})", r"\g<name>"),
]
ENCODER_PAIRS = [
    (r"encoder\.down\.(?P<i>\d+)\.block\.(?P<j>\d+)\.(?P<rest>.+)", r"encoder.down_blocks.\g<i>.resnets.\g<j>.\g<rest>"),
    (rf"encoder\.down\.(?P<i>\d+)\.downsample\.conv\.{_KIND}", r"encoder.down_blocks.\g<i>.downsamplers.0.conv.\g<kind>"),
]
RESNET_NAMES = RenameTable.of(
    "LDM VAE resnet", [(rf"(?P<block>.+\.resnets\.\d+)\.nin_shortcut\.{_KIND}", r"\g<block>.conv_shortcut.\g<kind>")]
)
# The mid attentions' projections: 1×1 convolutions in LDM, linear layers in diffusers.
TRANSFORMS = [(r".*\.mid_block\.attentions\.0\.to_(?:q|k|v|out\.0)\.weight", conv1x1_to_linear)]


def decoder_pairs(keys: Iterable[str]) -> list[tuple[str, str | None]]:
    """Rules for the decoder's stages, numbered bottom-up in LDM and top-down in diffusers."""
    stages = {int(m.group(1)) for k in keys if (m := re.match(r"decoder\.up\.(\d+)\.", k))}
    count = max(stages) + 1 if stages else 0
    pairs = []
    for i in range(count):
        pairs.append((rf"decoder\.up\.{i}\.block\.(?P<j>\d+)\.(?P<rest>.+)", rf"decoder.up_blocks.{count - 1 - i}.resnets.\g<j>.\g<rest>"))
        pairs.append((rf"decoder\.up\.{i}\.upsample\.conv\.{_KIND}", rf"decoder.up_blocks.{count - 1 - i}.upsamplers.0.conv.\g<kind>"))
    return pairs


def vae_table(keys: Iterable[str], extra_pairs: Iterable[tuple[str, str | None]] = ()) -> RenameTable:
    """The complete block table for these (prefix-free) VAE keys; ``extra_pairs`` (a variant's own
    tensors, e.g. SVD's ``decoder.conv_out.time_mix_conv``) are tried first."""
    keys = list(keys)
    pairs = [*extra_pairs, *STEM_PAIRS, *MID_BLOCK_PAIRS, *ENCODER_PAIRS, *decoder_pairs(keys)]
    return RenameTable.of("LDM VAE", pairs, complete=True)


def encoder_config(converted: Mapping[str, Any]) -> dict[str, Any]:
    """The config keys a VAE's diffusers-named encoder tensors fix (SD's and SVD's VAE alike): stage
    widths, resnets per stage, down-block types, image channels in and out."""
    stages = sorted({int(m.group(1)) for k in converted if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    layers = {int(m.group(1)) for k in converted if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))}
    return {
        "block_out_channels": [int(converted[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in stages],
        "layers_per_block": len(layers),
        "down_block_types": ["DownEncoderBlock2D"] * len(stages),
        "in_channels": int(converted["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(converted["decoder.conv_out.weight"].shape[0]),
    }
