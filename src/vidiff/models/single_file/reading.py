"""Read one original checkpoint file, and say what its keys look like when no format fits.

``.safetensors`` files are read lazily (headers now, data during the strict load). Pickles
(``.ckpt``, ``.pt``, ``.pth``, ``.bin``) go only through ``torch.load(weights_only=True)``, which
refuses any object other than tensors and plain containers, so a crafted pickle cannot run code.
Training checkpoints often wrap the weights as ``{"state_dict": {...}, "global_step": …}``: the
``state_dict`` is unwrapped (repeatedly, as Lightning nests it) and the bookkeeping dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ... import weight_files

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"

# Prefixes and keys by which the known original layouts can be recognised (for error messages):
# (description, regex searched in each key).
LAYOUT_MARKERS: tuple[tuple[str, str], ...] = (
    ("an AnimateDiff motion module (…motion_modules.N.temporal_transformer…)", r"\.temporal_transformer\."),
    ("a diffusers-layout motion adapter (…motion_modules.N.transformer_blocks…)", r"^(down|up|mid)_blocks?\..*motion_modules\.\d+\.transformer_blocks\."),
    ("an original ControlNet (input_hint_block / zero_convs)", r"^(control_model\.)?(input_hint_block|zero_convs)\."),
    ("an original Stable Diffusion / SVD UNet (model.diffusion_model.…)", r"^model\.diffusion_model\."),
    ("an original VAE (first_stage_model.…)", r"^first_stage_model\."),
    ("an original CLIP text encoder (cond_stage_model.transformer.…)", r"^cond_stage_model\.transformer\."),
    ("an original SVD image encoder (conditioner.embedders.0.open_clip.…)", r"^conditioner\.embedders\.0\.open_clip\."),
    ("a diffusers-layout UNet / ControlNet (conv_in, down_blocks.N.resnets…)", r"^down_blocks\.\d+\.resnets\."),
    ("a LoRA (lora_up / lora_down / lora_A / lora_B)", r"lora_(up|down|A|B)\b"),
)


def read_single_file(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of one checkpoint file by name: lazy handles for safetensors, tensors for pickles.

    Raises ``TypeError`` for a non-path argument, ``FileNotFoundError`` for a missing file and
    ``ValueError`` for an unknown suffix, a damaged file, or a pickle holding anything but tensors.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the single file must be a path to a .safetensors or .ckpt/.pt/.pth/.bin file, got {type(path).__name__}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"No checkpoint file at {os.fspath(path)!r}; from_single_file reads one local "
            f".safetensors or {'/'.join(PICKLE_SUFFIXES)} file"
        )
    if file.name.endswith(SAFETENSORS_SUFFIX):
        return weight_files.read_lazily(file)
    if file.name.endswith(PICKLE_SUFFIXES):
        return _read_pickle(file)
    raise ValueError(
        f"{file} has an unknown suffix; from_single_file reads .safetensors or {', '.join(PICKLE_SUFFIXES)} files"
    )


def _read_pickle(file: Path) -> dict[str, torch.Tensor]:
    loaded = weight_files.unpickle(file, "checkpoint")  # weights_only: a pickle naming code is refused
    # Lightning / LDM training checkpoints: {"state_dict": {...}, "epoch": …, "global_step": …}.
    while isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(f"{file} does not hold a state dict (a mapping of names to tensors)")
    bad = sorted(str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise ValueError(f"{file} holds entries that are not named tensors: {', '.join(bad[:5])}")
    return dict(loaded)


def describe_layout(keys: Any) -> str:
    """What the keys look like, in words: the known layouts some key matches, for error messages."""
    keys = list(keys)
    found = [description for description, marker in LAYOUT_MARKERS if any(re.search(marker, k) for k in keys)]
    sample = ", ".join(sorted(keys)[:3])
    what = "; ".join(found) if found else "no known layout"
    return f"it looks like {what} ({len(keys)} tensors, e.g. {sample})"
