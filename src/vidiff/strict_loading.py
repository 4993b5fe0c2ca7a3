"""Strict state-dict loading: every key of the model, nothing else, each of the right shape and kind.

Used by every network's ``from_checkpoint``. A mismatch is one ``ValueError`` that lists what is
missing, unexpected, wrongly shaped or not floating point, with a few keys quoted and the rest
counted, so a foreign or corrupt file never produces an unreadable message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class LazyTensor(Protocol):
    """A tensor not read yet (e.g. :class:`vidiff.weight_files.StoredTensor`): shape and dtype known."""

    shape: torch.Size
    dtype: torch.dtype

    def is_floating_point(self) -> bool: ...

    def load(self) -> torch.Tensor: ...


def _is_tensor(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, LazyTensor))


def check_dtype(dtype: torch.dtype | None, argument: str = "dtype") -> None:
    """``dtype`` must be None or a floating-point ``torch.dtype`` (weights are cast to it)."""
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"{argument} must be a torch.dtype such as torch.float16, got {dtype!r}")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"{argument} must be a floating-point dtype (weights are cast to it), got {dtype}")

def summarize_keys(keys: Sequence[str], limit: int = 5) -> str:
    # A corrupt or foreign file can hold thousands of keys (or absurdly long ones): quote a few, count the rest.
    shown = ", ".join(k if len(k) <= 120 else k[:119] + "…" for k in keys[:limit])
    return f"{shown} … and {len(keys) - limit} more" if len(keys) > limit else shown


def load_state_dict_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    ignore_unexpected: Sequence[str] = (),
    source: str | None = None,
    keep_float32: Callable[[str], bool] | None = None,
) -> None:
    """Load ``state`` into a model built on the ``meta`` device; every key must match exactly.

    Missing keys, unexpected keys (except those matching a regex of ``ignore_unexpected``, searched
    anywhere in the key), shape mismatches and integer tensors where the model has floating-point
    ones are reported together in one ``ValueError``, which names ``source`` (the weights file). Values may
    be tensors or :class:`LazyTensor` handles, checked by their headers and read one at a time. Tensors are
    assigned, not copied, so no second copy of the weights is allocated; floating-point tensors are cast
    to ``dtype`` if given (integer buffers keep theirs) and everything goes to ``device`` (default CPU).
    With ``dtype`` given, floating-point tensors whose key ``keep_float32`` accepts are cast to float32
    instead (layers the reference keeps in float32 in half precision).
    """
    check_dtype(dtype)
    try:
        target = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from error
    expected = model.state_dict()
    problems = _mismatches(type(model).__name__, expected, state, ignore_unexpected)
    if problems:
        raise ValueError(f"{source or 'The checkpoint'} does not match {problems}")
    placed = {}
    for key in expected:
        # One tensor at a time: a lazy one is read as stored, then cast and moved, and the stored copy
        # is dropped before the next is read (peak: the loaded model plus one tensor as stored).
        value = state[key]
        tensor = value.load() if isinstance(value, LazyTensor) else value
        cast = dtype if dtype is not None and tensor.is_floating_point() else None
        if cast is not None and keep_float32 is not None and keep_float32(key):
            cast = torch.float32
        placed[key] = tensor.to(device=target, dtype=cast)
        del tensor
    try:
        model.load_state_dict(placed, strict=True, assign=True)
    except RuntimeError as error:  # torch lists every parameter it refused: keep its first line only
        first = str(error).strip().splitlines()[-1][:300]
        raise ValueError(f"{source or 'The checkpoint'} cannot be loaded into {type(model).__name__}: {first}") from error
    left = [name for name, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(
            f"{type(model).__name__} still has tensors on the meta device after loading: {summarize_keys(left)}. "
            "Non-persistent buffers are not in checkpoints; make them persistent or compute them in forward."
        )


def _mismatches(
    model_name: str, expected: Mapping[str, torch.Tensor], state: Mapping[str, Any], ignore: Sequence[str]
) -> str:
    """One message listing every way ``state`` disagrees with the model's state dict ("" if none)."""
    patterns = [re.compile(p) for p in ignore]
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected and not any(p.search(k) for p in patterns))
    not_tensors = sorted(k for k in expected if k in state and not _is_tensor(state[k]))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and _is_tensor(state[k]) and state[k].shape != expected[k].shape
    )
    # Integer weights cannot be assigned to floating-point parameters (nor cast: they are not weights).
    not_floating = sorted(
        k for k in expected
        if k in state and _is_tensor(state[k])
        and expected[k].is_floating_point() and not state[k].is_floating_point()
    )
    dtypes = ", ".join(sorted({str(state[k].dtype).removeprefix("torch.") for k in not_floating}))
    parts = [
        f"{label} ({len(keys)}): {summarize_keys(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrongly shaped keys", shapes),
            ("values that are not tensors", not_tensors),
            (f"weights stored as {dtypes}, expected floating point", not_floating),
        )
        if keys
    ]
    if not parts:
        return ""
    return f"{model_name}: " + "; ".join(parts)

