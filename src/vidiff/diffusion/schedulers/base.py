"""What every public scheduler shares: its typed config, loading and saving, and the step output.

A public scheduler is a typed config plus methods that map it onto :mod:`vidiff.diffusion`'s
functions. Its JSON is diffusers' ``scheduler_config.json``, so checkpoints load unchanged and what
vidiff saves loads in diffusers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

from torch import Tensor

from ... import loading
from ...config import Config

S = TypeVar("S", bound="Scheduler")

CONFIG_NAME = "scheduler_config.json"


def check_choice(owner: str, option: str, value: Any, valid: Iterable[Any]) -> None:
    """ValueError naming ``owner.option`` and the valid values unless ``value`` is one of them."""
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"{owner}: {option} must be one of {list(valid)}, got {value!r}")


class SchedulerStepOutput(NamedTuple):
    """What ``step`` returns: the sample at the next σ, and the x̂0 it was computed from."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


class Scheduler:
    """Base of the public schedulers: a typed, frozen ``config`` and its diffusers-format IO.

    Subclasses set :attr:`config_class` and build their tables in ``__init__`` after calling
    ``super().__init__``.
    """

    config_class: ClassVar[type[Config]]
    # Written into model_index.json by pipelines: the library whose class name this mirrors.
    library: ClassVar[str] = "diffusers"

    def __init__(self, config: Config | Mapping[str, Any] | None = None, **options: Any) -> None:
        """Build from a config (typed or a diffusers dict) and/or keyword options; options win."""
        self.config = self.config_class.from_diffusers({} if config is None else config, **options)

    @classmethod
    def from_config(cls: type[S], config: Config | Mapping[str, Any], **overrides: Any) -> S:
        """From a diffusers config dict or any typed config (e.g. another scheduler's ``.config``).

        Options this scheduler does not have are kept aside and written back on save; unknown
        names in ``overrides`` are a TypeError.
        """
        if not isinstance(config, (Config, Mapping)):
            raise TypeError(f"config must be a mapping or a vidiff Config, got {type(config).__name__}")
        return cls(config, **overrides)

    @classmethod
    def from_pretrained(
        cls: type[S],
        name_or_path: str | os.PathLike,
        subfolder: str | None = "scheduler",
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        **overrides: Any,
    ) -> S:
        """Read ``<subfolder>/scheduler_config.json`` from a checkpoint folder or Hub id.

        ``subfolder=None`` reads it from the root (a folder that is itself a scheduler folder).
        """
        checkpoint = loading.Checkpoint.open(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls.from_checkpoint(checkpoint, subfolder, **overrides)

    @classmethod
    def from_checkpoint(cls: type[S], checkpoint: loading.Checkpoint, subfolder: str | None, **overrides: Any) -> S:
        """From an opened :class:`~vidiff.loading.Checkpoint` (used by pipelines)."""
        return cls(checkpoint.read_json(loading.join(subfolder, CONFIG_NAME)), **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``directory/scheduler_config.json`` (created if needed), readable by diffusers too."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        raw = {"_class_name": type(self).__name__, **self.config.to_diffusers()}
        loading.write_json(directory / CONFIG_NAME, raw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"
