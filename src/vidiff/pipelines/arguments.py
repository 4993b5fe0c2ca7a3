"""Validation of the call arguments pipelines share, with errors that name the argument."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch


def check_size(height: Any, width: Any, multiple: int) -> None:
    """``height`` and ``width`` must be positive multiples of ``multiple`` (the VAE's scale factor)."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % multiple:
            raise ValueError(f"`{name}` must be a positive multiple of {multiple}, got {value!r}")


def check_counts(**counts: Any) -> None:
    """Every keyword must be an integer ≥ 1 (frames, steps, videos, chunk sizes)."""
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be an integer ≥ 1, got {value!r}")


def check_number(name: str, value: Any, minimum: float | None = None) -> None:
    """``value`` must be a finite real number (not a bool), and at least ``minimum`` when given.

    NaN or infinity would only surface as an all-NaN video after the whole run.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be ≥ {minimum}, got {value!r}")


def check_finite(name: str, values: Any) -> None:
    """A tensor or sequence of numbers (``sigmas``, ``latents``) must hold no NaN or infinity."""
    try:
        tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return  # not numbers at all: the code that uses them says what it needs
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"`{name}` contains NaN or infinity; every value must be finite")


def check_callback_inputs(tensor_inputs: Sequence[str], allowed: Sequence[str]) -> None:
    bad = sorted(set(tensor_inputs) - set(allowed))
    if bad:
        raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name {list(allowed)}, got {bad}")


def given_latents(latents: Any, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The caller's initial ``latents``, checked against the expected ``[B, C, F, H/8, W/8]`` shape."""
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"`latents` must be a torch.Tensor [B, C, F, H/8, W/8], got {type(latents).__name__}")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"`latents` must have shape [B, C, F, H/8, W/8] = {list(shape)}, got {list(latents.shape)}")
    check_finite("latents", latents)
    return latents.to(device=device, dtype=dtype)


def latents_callback(pipe: Any, callback: Callable | None, tensor_inputs: Sequence[str]):
    """Adapt diffusers' ``callback_on_step_end(pipe, step, timestep, tensors) -> dict`` to the loop's
    ``on_step``: the callback sees the latents and may return replacement ``"latents"``."""
    if callback is None:
        return None

    def on_step(index: int, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor | None:
        outputs = callback(pipe, index, timestep, {name: latents for name in tensor_inputs}) or {}
        return outputs.get("latents")

    return on_step
