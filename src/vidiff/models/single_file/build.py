"""Build a model from converted tensors: a config from the release defaults, the file and the caller,
then the same strict load as :meth:`~vidiff.models.base.PretrainedModel.from_checkpoint`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from ... import loading

M = TypeVar("M")

ConfigOverride = Mapping[str, Any] | str | os.PathLike | None


def read_config_override(config: ConfigOverride, argument: str = "config") -> dict[str, Any]:
    """``config=`` as a dict: ``None`` (nothing), a mapping, a ``config.json`` file, or a folder holding one."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a dict, a config.json path or a folder holding one, got {type(config).__name__}")
    path = Path(config).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{argument}={os.fspath(config)!r}: no such config.json file or folder holding one")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{argument}: {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{argument}: {path} holds a {type(data).__name__}, not a JSON object")
    return data


def build_strict(
    model_class: type[M],
    config: Mapping[str, Any],
    state: Mapping[str, Any],
    *,
    source: str,
    dtype: torch.dtype | None = None,
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> M:
    """``model_class.from_state``: built from ``config`` on the meta device, ``state`` loaded strictly
    (cast to ``dtype``/``torch_dtype``, default float32, and placed on ``device``, default CPU)."""
    dtype = loading.pick_dtype(dtype, torch_dtype)
    return model_class.from_state(config, state, source=source, dtype=dtype, device=device)  # type: ignore[attr-defined]
