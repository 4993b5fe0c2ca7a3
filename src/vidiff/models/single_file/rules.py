"""Table-driven key conversion: ordered ``(regex, replacement)`` rules, one table per format.

A :class:`RenameTable` is a tuple of :class:`Rule`\\ s. Each key of a checkpoint is matched against
the rules in order; the first rule whose pattern matches the *whole* key rewrites it (``re`` group
references such as ``\\g<block>`` in the replacement), or drops it when the replacement is ``None``
(tensors the target layout does not store). Tables are applied one after another, so a format can be
written as a few short tables (block prefixes, then names inside a block) instead of one long one.

A table marked ``complete`` must match every key: a key that no rule matches is an error naming it,
so an unknown tensor is never dropped silently. A table that is not complete leaves unmatched keys
as they are.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ...strict_loading import summarize_keys


@dataclasses.dataclass(frozen=True)
class Rule:
    """Rename keys that fully match ``pattern`` to ``replacement`` (``None``: drop the tensor)."""

    pattern: str
    replacement: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def apply(self, key: str) -> tuple[bool, str | None]:
        """(matched, new key or None when dropped)."""
        match = self._regex.fullmatch(key)  # type: ignore[attr-defined]
        if match is None:
            return False, key
        return True, None if self.replacement is None else match.expand(self.replacement)


@dataclasses.dataclass(frozen=True)
class RenameTable:
    """An ordered list of rules; ``complete`` tables must match every key (see the module docstring)."""

    name: str
    rules: tuple[Rule, ...]
    complete: bool = False

    @classmethod
    def of(cls, name: str, pairs: Sequence[tuple[str, str | None]], complete: bool = False) -> RenameTable:
        """Build from ``(pattern, replacement)`` pairs."""
        return cls(name, tuple(Rule(p, r) for p, r in pairs), complete)

    def rename(self, key: str) -> tuple[bool, str | None]:
        for rule in self.rules:
            matched, new = rule.apply(key)
            if matched:
                return True, new
        return False, key


# A transform changes a tensor's layout, not its values (conv 1×1 ↔ linear): it takes a tensor or a lazy
# handle and returns one with the new shape (see :class:`Reshaped`).
Transform = Callable[[Any], Any]


def convert_state_dict(
    state: Mapping[str, Any],
    tables: Sequence[RenameTable],
    *,
    source: str,
    transforms: Sequence[tuple[str, Transform]] = (),
) -> dict[str, Any]:
    """Rename every key of ``state`` through ``tables`` (in order), then apply ``transforms``.

    ``transforms`` are ``(regex on the converted key, function)`` pairs; the first whose regex fully
    matches a key changes that tensor. Two source keys that end up under one name, or keys that a
    complete table does not know, are a ``ValueError`` naming ``source`` and the keys.
    """
    keys = {key: key for key in state}  # source key -> current name (None: dropped)
    for table in tables:
        unknown = []
        for original, current in keys.items():
            if current is None:
                continue
            matched, new = table.rename(current)
            if not matched and table.complete:
                unknown.append(original)
            keys[original] = new
        if unknown:
            raise ValueError(
                f"{source}: {len(unknown)} key(s) match no rule of the {table.name} conversion table: "
                f"{summarize_keys(sorted(unknown))}"
            )
    converted: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for original, new in keys.items():
        if new is None:
            continue
        if new in converted:
            raise ValueError(f"{source}: {origin[new]} and {original} both convert to {new}")
        converted[new], origin[new] = state[original], original
    compiled = [(re.compile(pattern), function) for pattern, function in transforms]
    for key, value in converted.items():
        for regex, function in compiled:
            if regex.fullmatch(key):
                converted[key] = function(value)
                break
    return converted


class Reshaped:
    """A tensor (or lazy handle) seen with another shape of the same number of elements.

    Keeps the strict load's one-tensor-at-a-time reading: the data is read only in :meth:`load`.
    """

    def __init__(self, value: Any, shape: tuple[int, ...]) -> None:
        self._value, self.shape, self.dtype = value, torch.Size(shape), value.dtype

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def load(self) -> Any:
        tensor = self._value.load() if hasattr(self._value, "load") else self._value
        return tensor.reshape(self.shape)


def conv1x1_to_linear(value: Any) -> Any:
    """``[out, in, 1, 1]`` (a 1×1 convolution) → ``[out, in]`` (the same map as a linear layer)."""
    shape = tuple(value.shape)
    if len(shape) == 4 and shape[2:] == (1, 1):
        return Reshaped(value, shape[:2])
    return value


class Transposed(Reshaped):
    """A 2-D tensor (or lazy handle) seen transposed: open_clip's ``proj`` ``[D, P]`` is used as ``x @ proj``,
    transformers' ``visual_projection.weight`` ``[P, D]`` as ``x @ weight.T``."""

    def __init__(self, value: Any) -> None:
        super().__init__(value, tuple(reversed(tuple(value.shape))))

    def load(self) -> Any:
        tensor = self._value.load() if hasattr(self._value, "load") else self._value
        return tensor.t().contiguous()


class Chunk(Reshaped):
    """Part ``index`` of ``parts`` equal slices along dim 0 of a tensor (or lazy handle)."""

    def __init__(self, value: Any, index: int, parts: int) -> None:
        shape = tuple(value.shape)
        if shape[0] % parts:
            raise ValueError(f"cannot split a tensor of shape {shape} into {parts} equal parts along dim 0")
        super().__init__(value, (shape[0] // parts, *shape[1:]))
        self._index, self._parts = index, parts

    def load(self) -> Any:
        tensor = self._value.load() if hasattr(self._value, "load") else self._value
        return tensor.chunk(self._parts, dim=0)[self._index].contiguous()


def split_fused(converted: Mapping[str, Any], fused: str, names: Sequence[str]) -> dict[str, Any]:
    """Split every tensor whose key fully matches ``fused`` (with groups ``head`` and ``kind``) into
    ``len(names)`` equal parts along dim 0, stored as ``<head>.<name>.<kind>`` (e.g. a fused
    ``in_proj`` ``[3D, D]`` into ``q_proj``, ``k_proj``, ``v_proj``, in that order)."""
    regex = re.compile(fused)
    out: dict[str, Any] = {}
    for key, value in converted.items():
        match = regex.fullmatch(key)
        if match is None:
            out[key] = value
            continue
        for index, name in enumerate(names):
            out[f"{match['head']}.{name}.{match['kind']}"] = Chunk(value, index, len(names))
    return out
