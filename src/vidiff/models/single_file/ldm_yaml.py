"""``original_config=``: the LDM inference YAML (``v1-inference.yaml``) as diffusers config overrides.

Only the keys that decide shapes or numbers are read; their meaning (from the LDM/SD code):

- ``model.params.unet_config.params``: ``model_channels`` × ``channel_mult`` are the stage widths,
  ``attention_resolutions`` the downsampling factors (1, 2, 4 …) whose stages have spatial
  transformers, ``num_res_blocks`` the layers per stage, ``num_heads`` (or ``num_head_channels``,
  the width of one head) the attention heads, ``context_dim`` the text width, ``transformer_depth``,
  ``use_linear_in_transformer``, ``in_channels``/``out_channels``;
- ``model.params.first_stage_config.params.ddconfig``: ``ch`` × ``ch_mult``, ``num_res_blocks``,
  ``z_channels``, ``in_channels``, ``out_ch``, ``resolution``; ``model.params.scale_factor`` is the
  VAE's latent scaling factor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def read_original_config(original_config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A parsed YAML dict, or the path of a YAML file (read with ``yaml.safe_load``: data only)."""
    if isinstance(original_config, Mapping):
        return dict(original_config)
    if not isinstance(original_config, (str, os.PathLike)):
        raise TypeError(f"original_config must be a dict or the path of an LDM .yaml file, got {type(original_config).__name__}")
    path = Path(original_config).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"original_config={os.fspath(original_config)!r}: no such YAML file")
    import yaml  # PyYAML comes with huggingface_hub

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"original_config: {path} does not hold a YAML mapping")
    return data


def _params(data: Mapping[str, Any], *path: str) -> dict[str, Any]:
    node: Any = data
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            return {}
    return dict(node) if isinstance(node, Mapping) else {}


def sd_overrides(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"unet": {...}, "vae": {...}}``: diffusers config keys stated by an SD 1.x/2.x inference YAML."""
    if "model" not in data:
        raise ValueError("original_config has no 'model' section; expected an LDM inference YAML such as v1-inference.yaml")
    unet = _params(data, "model", "params", "unet_config", "params")
    ddconfig = _params(data, "model", "params", "first_stage_config", "params", "ddconfig")
    out: dict[str, dict[str, Any]] = {"unet": {}, "vae": {}}
    if unet:
        widths = [unet["model_channels"] * m for m in unet.get("channel_mult", (1, 2, 4, 4))]
        attention = set(unet.get("attention_resolutions", ()))
        cross = [2**i in attention for i in range(len(widths))]
        heads = unet.get("num_heads", 8)
        if unet.get("num_head_channels", -1) not in (-1, None):
            heads = [w // unet["num_head_channels"] for w in widths]
        out["unet"] = {
            "block_out_channels": widths, "layers_per_block": unet.get("num_res_blocks", 2),
            "down_block_types": ["CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cross],
            "up_block_types": ["CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(cross)],
            "attention_head_dim": heads, "cross_attention_dim": unet.get("context_dim", 768),
            "transformer_layers_per_block": unet.get("transformer_depth", 1),
            "use_linear_projection": bool(unet.get("use_linear_in_transformer", False)),
            "in_channels": unet.get("in_channels", 4), "out_channels": unet.get("out_channels", 4),
        }
    if ddconfig:
        widths = [ddconfig["ch"] * m for m in ddconfig.get("ch_mult", (1, 2, 4, 4))]
        out["vae"] = {
            "block_out_channels": widths, "layers_per_block": ddconfig.get("num_res_blocks", 2),
            "latent_channels": ddconfig.get("z_channels", 4), "in_channels": ddconfig.get("in_channels", 3),
            "out_channels": ddconfig.get("out_ch", 3), "sample_size": ddconfig.get("resolution", 256),
        }
    scale = _params(data, "model", "params").get("scale_factor")
    if scale is not None:
        out["vae"]["scaling_factor"] = scale
    return out
