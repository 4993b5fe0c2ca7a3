"""The one base class of vidiff's networks: config in, strict checkpoint load, diffusers layout out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from .. import loading
from ..config import Config

M = TypeVar("M", bound="PretrainedModel")


class PretrainedModel(nn.Module):
    """A network built from a typed config whose parameter names are the checkpoint's names.

    Subclasses set :attr:`config_class` and :attr:`weights_name` and take the config as the only
    ``__init__`` argument. They must not register non-persistent buffers: models are built on the
    ``meta`` device and only what the checkpoint holds is materialised.
    """

    config_class: ClassVar[type[Config]]
    # File stem of the weights: diffusers models use "diffusion_pytorch_model", transformers "model".
    weights_name: ClassVar[str] = "diffusion_pytorch_model"
    # The library diffusers' model_index.json names for this class ("diffusers" or "transformers").
    library: ClassVar[str] = "diffusers"
    # Regexes of checkpoint keys that may be present but are not parameters (old buffers).
    ignored_checkpoint_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def from_config(cls: type[M], config: Mapping[str, Any] | Config, **overrides: Any) -> M:
        """Build a randomly initialised model from a diffusers/transformers config dict (or typed config)."""
        return cls(cls.config_class.from_diffusers(config, **overrides))

    @classmethod
    def from_pretrained(
        cls: type[M],
        name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        *,
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        device: torch.device | str | None = None,
    ) -> M:
        """Load a model from a local folder or Hub id in the diffusers layout.

        ``subfolder`` selects a component of a pipeline repo (e.g. ``"unet"``); ``variant="fp16"``
        picks ``*.fp16.safetensors`` (or ``*.fp16.bin``) where present, else the default weights;
        ``dtype`` (alias ``torch_dtype``) casts floating-point weights (default: float32, whatever the
        files store, as diffusers does); ``device`` places them (default: CPU). Loading is strict.
        """
        dtype = loading.pick_dtype(dtype, torch_dtype)
        checkpoint = loading.Checkpoint.open(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls.from_checkpoint(checkpoint, subfolder, dtype=dtype, variant=variant, device=device)

    @classmethod
    def from_checkpoint(
        cls: type[M],
        checkpoint: loading.Checkpoint,
        subfolder: str | None,
        *,
        dtype: torch.dtype | None = None,
        variant: str | None = None,
        device: torch.device | str | None = None,
    ) -> M:
        """Load from an opened :class:`~vidiff.loading.Checkpoint` (used by pipelines); ``dtype=None``
        means float32, as in :meth:`from_pretrained`."""
        raw = checkpoint.read_json(loading.join(subfolder, "config.json"))
        # Handles, not tensors: the strict load reads, casts and places one tensor at a time.
        state = checkpoint.open_state_dict(subfolder, variant=variant, weights_name=cls.weights_name)
        state = cls.rename_legacy_keys(state)
        source = checkpoint.weights_source(subfolder, variant=variant, weights_name=cls.weights_name)
        return cls.from_state(raw, state, source=source, dtype=dtype, device=device)

    @classmethod
    def from_state(
        cls: type[M],
        config: Any,
        state: Mapping[str, Any],
        *,
        source: str,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> M:
        """Build from ``config`` on the meta device, then load ``state`` (tensors or lazy handles, in
        this model's names) strictly into it, cast to ``dtype`` (default float32) and placed on
        ``device`` (default CPU); ``source`` names the weights in error messages. Parameters
        :meth:`keeps_float32` names stay float32 whatever ``dtype``."""
        dtype = loading.pick_dtype(dtype, None)
        with torch.device("meta"):
            model = cls.from_config(config)
        loading.load_state_dict_strict(
            model, state, dtype=dtype, device=device, ignore_unexpected=cls.ignored_checkpoint_keys, source=source,
            keep_float32=lambda key: cls.keeps_float32(key, dtype),
        )
        return model.eval()

    @classmethod
    def keeps_float32(cls, key: str, dtype: torch.dtype) -> bool:
        """Whether the parameter ``key`` stays float32 when the model loads in ``dtype`` (the reference
        keeps some layers in float32 in half precision). The default: none does."""
        return False

    @classmethod
    def rename_legacy_keys(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map names of older checkpoint layouts onto this model's names, before the strict load.

        The default returns ``state`` unchanged. A subclass whose published checkpoints used other
        names overrides this; it must leave current names as they are, so both layouts load.
        """
        return state

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        *,
        variant: str | None = None,
        max_shard_size: int | None = None,
    ) -> None:
        """Write ``config.json`` and safetensors weights in the diffusers layout into ``directory``."""
        config = {"_class_name": type(self).__name__, **self.config.to_diffusers()}
        loading.save_component(
            Path(directory),
            config,
            self.state_dict(),
            weights_name=self.weights_name,
            variant=variant,
            max_shard_size=max_shard_size,
        )

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the first floating-point parameter."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
