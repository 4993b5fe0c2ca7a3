"""Typed, frozen configuration objects that read and write diffusers' JSON configs.

Every model and scheduler keeps its hyper-parameters in a frozen dataclass derived from
:class:`Config`. The defaults are the released checkpoints' values; :meth:`Config.from_diffusers`
is the one place where raw JSON keys are read. Keys we do not model (``_class_name``,
``_diffusers_version``, options a class ignores) are kept aside so a load → save round trip
does not lose them.

Values are checked there before a config is built: against the dataclass field's type (an int
where ``int`` is declared; an int is fine where ``float`` is), then against the class's
:attr:`Config.int_ranges`, then by the class's own ``__post_init__``. Every failure is a
:class:`ConfigError` naming the key, the value and what is valid, and the file when the dict was
read from one (a :class:`RawConfig`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, Union

C = TypeVar("C", bound="Config")

# Upper bounds of integer options. No released network comes near them; a larger value is a typo
# or a corrupt file, and building it would exhaust memory or time (models are built layer by layer).
MAX_WIDTH = 65536  # channels, hidden sizes, head counts and widths, embedding dims
MAX_COUNT = 1024  # layers per stage, blocks, transformer depth
MAX_SIZE = 1 << 20  # spatial sizes, sequence lengths, frame counts, vocabularies
_QUOTE_LIMIT = 80  # characters of a bad value quoted in a message


class ConfigError(ValueError):
    """A config value of the wrong type or out of range. The message names the key, the value and
    what would be valid, prefixed by the file (``source``) it was read from, when known."""

    def __init__(self, message: str, source: str | None = None) -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source


class RawConfig(dict):
    """A config's JSON object as read from a file, remembering that file (``source``) so that
    :meth:`Config.from_diffusers` can name it in errors. Otherwise a plain ``dict``."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        super().__init__(data)
        self.source = source


def ranges(bounds: tuple[int, int], *names: str) -> dict[str, tuple[int, int]]:
    """``{name: bounds}`` for each name: a building block of :attr:`Config.int_ranges`."""
    return {name: bounds for name in names}


WIDTH = (1, MAX_WIDTH)
COUNT = (1, MAX_COUNT)
SIZE = (1, MAX_SIZE)


def _freeze(value: Any) -> Any:
    # JSON lists become tuples so configs stay immutable (and hashable); so do arrays and tensors
    # passed as options (``trained_betas=np.array(...)``), through their ``tolist``.
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
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

    # Inclusive (low, high) bounds of integer options, applied to every int in the value (each entry
    # of a per-stage tuple too); subclasses list theirs, e.g. ``ranges(WIDTH, "in_channels", ...)``.
    int_ranges: ClassVar[Mapping[str, tuple[int, int]]] = {}

    @classmethod
    def from_diffusers(cls: type[C], raw: Mapping[str, Any] | Config, **overrides: Any) -> C:
        """Build from a diffusers/transformers JSON dict (or another config), then apply ``overrides``.

        Unknown keys in ``raw`` are kept in :attr:`extra` (and written back by :meth:`to_diffusers`);
        unknown keys in ``overrides`` are an error, since a typo there would silently do nothing.
        A value of the wrong type or out of range is a :class:`ConfigError`.
        """
        source = raw.source if isinstance(raw, RawConfig) else None
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
        for name, value in known.items():
            problem = cls._value_problem(name, value)
            if problem:
                # an override came from the caller, not from the file
                raise ConfigError(problem, None if name in overrides else source)
        try:
            config = cls(**known)
        except ConfigError:
            raise
        except (ValueError, ZeroDivisionError) as error:  # __post_init__'s checks across options
            raise ConfigError(str(error), source) from error
        object.__setattr__(config, "_extra", extra)
        return config

    @classmethod
    def _value_problem(cls, name: str, value: Any) -> str:
        """What is wrong with ``value`` for option ``name`` ("" if nothing): type, then range."""
        hint = _field_types(cls)[name]
        if not _matches(value, hint):
            return f"{name}={_quote(value)} is not valid: expected {_describe(hint)}"
        if not all(math.isfinite(v) or _infinite_default(cls, name) and not math.isnan(v) for v in _floats_in(value)):
            # NaN is never a setting; infinity only where the option's own default is infinite
            # (e.g. DPM-Solver's lambda_min_clipped = -inf, "no clipping").
            return f"{name}={_quote(value)} is not valid: expected a finite number"
        if name in cls.int_ranges:
            low, high = cls.int_ranges[name]
            outside = [v for v in _ints_in(value) if not low <= v <= high]
            if outside:
                return (
                    f"{name}={_quote(value)} is out of range: "
                    f"{'it' if isinstance(value, int) else 'every integer in it'} must be in {low}..{high}"
                )
        return ""

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


# ---------------------------------------------------------------- checking values against field types
@functools.cache
def _field_types(cls: type[Config]) -> dict[str, Any]:
    # The annotations are strings (``from __future__ import annotations``); resolve them once.
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a frozen JSON value fits a field type (bools are not ints; ints are floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (None, type(None)):
        return value is None
    if _is_union(hint):
        return any(_matches(value, arm) for arm in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is tuple or origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(map(_matches, value, args)))
    if hint is dict or origin is dict:
        return isinstance(value, Mapping)
    if isinstance(hint, type) and hint is not object:
        return isinstance(value, hint)
    return True  # a type this checker does not model: left to the class's own checks


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings"), type(None): ("null", "nulls"), dict: ("a JSON object", "JSON objects")}


def _describe(hint: Any, plural: bool = False) -> str:
    """``int | tuple[int, ...]`` → "an integer or a list of integers"."""
    if _is_union(hint):
        words = " or ".join(dict.fromkeys(_describe(arm, plural) for arm in typing.get_args(hint)))
        return f"({words})" if plural and " or " in words else words
    args = typing.get_args(hint)
    if hint is tuple or typing.get_origin(hint) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{'lists' if plural else 'a list'} of {_describe(args[0], plural=True)}"
        if args:
            return f"{'lists' if plural else 'a list'} of {len(args)} {_describe(args[0], plural=True)}"
        return "lists" if plural else "a list"
    base = typing.get_origin(hint) or hint
    return _NAMES.get(base, (getattr(base, "__name__", str(base)),) * 2)[plural]


def _ints_in(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, tuple):
        return [i for v in value for i in _ints_in(v)]
    return []


def _floats_in(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, tuple):
        return [f for v in value for f in _floats_in(v)]
    return []


def _infinite_default(cls: type[Config], name: str) -> bool:
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    return isinstance(default, float) and math.isinf(default)


def _quote(value: Any) -> str:
    """The value as JSON, cut to a readable length (a corrupt file may hold a huge one)."""
    try:
        text = json.dumps(_thaw(value))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 1] + "…"
