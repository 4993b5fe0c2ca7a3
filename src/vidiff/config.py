"""Typed, frozen configuration objects that read and write diffusers' JSON configs.

Every model and scheduler keeps its hyper-parameters in a frozen dataclass derived from
:class:`Config`. The defaults are the released checkpoints' values; :meth:`Config.from_diffusers`
is the one place where raw JSON keys are read. Keys we do not model (``_class_name``,
``_diffusers_version``, options a class ignores) are kept aside so a load → save round trip
does not lose them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


def _freeze(value: Any) -> Any:
    # JSON lists become tuples so configs stay immutable (and hashable).
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of all typed configs; subclasses are ``@dataclasses.dataclass(frozen=True)``.

    Read access works both as attributes (``config.num_frames``) and as a mapping
    (``config["num_frames"]``), like diffusers' ``FrozenDict``.
    """

    @classmethod
    def from_diffusers(cls: type[C], raw: Mapping[str, Any] | Config, **overrides: Any) -> C:
        """Build from a diffusers/transformers JSON dict (or another config), then apply ``overrides``.

        Unknown keys in ``raw`` are kept in :attr:`extra` (and written back by :meth:`to_diffusers`);
        unknown keys in ``overrides`` are an error, since a typo there would silently do nothing.
        """
        if isinstance(raw, Config):
            raw = raw.to_diffusers()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(
                f"{cls.__name__} got unknown option(s) {unknown}; valid options: {sorted(names)}"
            )
        merged = {**dict(raw), **overrides}
        known = {k: _freeze(v) for k, v in merged.items() if k in names}
        extra = {k: v for k, v in merged.items() if k not in names}
        config = cls(**known)
        object.__setattr__(config, "_extra", extra)
        return config

    @property
    def extra(self) -> dict[str, Any]:
        """JSON keys that were read but are not options of this config."""
        return dict(getattr(self, "_extra", {}))

    def to_diffusers(self) -> dict[str, Any]:
        """The JSON-ready dict: known options plus the preserved extra keys (lists, not tuples)."""
        out = {k: v for k, v in self.extra.items() if not k.startswith("_")}
        out.update({f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self)})
        return out

    def replace(self: C, **changes: Any) -> C:
        """A copy with some options changed (unknown names are an error)."""
        return type(self).from_diffusers(self, **changes)

    # Mapping-style read access, for code written against diffusers' FrozenDict.
    def __getitem__(self, key: str) -> Any:
        if key in {f.name for f in dataclasses.fields(self)}:
            return getattr(self, key)
        extra = getattr(self, "_extra", {})
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self) -> list[str]:
        return list(self.to_diffusers())
