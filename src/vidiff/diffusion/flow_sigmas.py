"""Flow-time schedules: the t ∈ [0, 1] a flow-matching sampler visits, and their shifts.

A flow model's sample is ``x = (1 − t)·x0 + t·ε``; its schedulers space t evenly and then bend the
spacing toward t = 1 (more steps at high noise, which large images and videos need):

* the constant shift s (SD3 / Wan's ``shift`` / ``flow_shift``): t ↦ s·t / (1 + (s − 1)·t);
* the resolution-dependent ("dynamic") shift by μ (Flux): t ↦ e^μ / (e^μ + (1/t − 1)) or, with the
  linear type, μ / (μ + (1/t − 1));
* ``shift_terminal`` (LTX-Video): stretch 1 − t so the last t equals the given value.

All work on numpy arrays in the precision they are given (float64 for computed schedules), in the
reference schedulers' operation order, since their float32 casts and timestep truncations only
agree to the bit that way.
"""

from __future__ import annotations

import math

import numpy as np

TIME_SHIFT_TYPES = ("exponential", "linear")


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The constant shift s·t / (1 + (s − 1)·t); s = 1 leaves t unchanged."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(sigmas: np.ndarray, mu: float, kind: str = "exponential") -> np.ndarray:
    """The dynamic shift by ``mu``: e^μ / (e^μ + (1/t − 1)) ("exponential") or μ / (μ + (1/t − 1))
    ("linear"); the reference's exponent on (1/t − 1) is 1."""
    if kind not in TIME_SHIFT_TYPES:
        raise ValueError(f"time_shift_type must be one of {list(TIME_SHIFT_TYPES)}, got {kind!r}")
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
    return mu / (mu + (1 / sigmas - 1) ** 1.0)


def stretch_to_terminal(sigmas: np.ndarray, terminal: float) -> np.ndarray:
    """``sigmas`` with 1 − t scaled so that the last t becomes ``terminal``."""
    one_minus = 1 - sigmas
    scale = one_minus[-1] / (1 - terminal)
    return 1 - (one_minus / scale)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5 on a numpy ramp (float64), as the flow schedulers build it."""
    ramp = np.linspace(0, 1, num_steps)
    max_root, min_root = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_root + ramp * (min_root - max_root)) ** rho


def exponential_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """``num_steps`` values evenly spaced in log from ``sigma_max`` to ``sigma_min`` (float64)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_steps))
