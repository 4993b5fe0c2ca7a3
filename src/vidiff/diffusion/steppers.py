"""Steppers: one move of the sample from σ_i to σ_{i+1}, all with one signature.

A stepper is a pure function ``(x, denoised, step) -> StepOutput``:

* ``x``: the sample at ``step.sigma``, float32, VE space (``x = x0 + σ·ε``);
* ``denoised``: x̂0 = D(x, σ_i), already evaluated by the loop (with guidance applied);
* ``step``: a :class:`StepContext` with the whole σ schedule and index, whatever the previous step
  left in ``history``, a ``denoise`` callable for solvers that evaluate the model again, and a
  ``noise`` source for stochastic ones.

It returns the sample at ``step.sigma_next`` (float32) and the history its successor needs. The
signature is meant to carry, besides Euler:

* Euler-ancestral / DDIM with η: stochastic, draw from ``step.noise``; DDIM with η = 0 is Euler;
* Heun: a second ``step.denoise(x_next, sigma_next)`` evaluation;
* DPM-Solver++(2M): the previous x̂0 carried in ``history``;
* LCM: x̂0 re-noised to σ_{i+1} with fresh ``step.noise``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

# (x [B, C, F, H, W] float32 at σ, σ 0-dim float32) -> x̂0 float32: one more model evaluation.
Denoise = Callable[[Tensor, Tensor], Tensor]
# shape -> fresh unit Gaussian noise on the sample's device; the caller owns the RNG.
NoiseSource = Callable[[torch.Size], Tensor]


@dataclass(frozen=True)
class StepContext:
    """Everything about the current step besides the sample and its x̂0."""

    sigmas: Tensor  # [N+1] float32 on the CPU, decreasing; sigmas[-1] is the final σ
    index: int  # this step goes from sigmas[index] to sigmas[index + 1]
    history: tuple[Tensor, ...] = ()  # what the previous step returned for this one
    denoise: Denoise | None = None
    noise: NoiseSource | None = None

    @property
    def sigma(self) -> Tensor:
        """σ_i, 0-dim float32."""
        return self.sigmas[self.index]

    @property
    def sigma_next(self) -> Tensor:
        """σ_{i+1}, 0-dim float32."""
        return self.sigmas[self.index + 1]


class StepOutput(NamedTuple):
    sample: Tensor  # x at sigma_next, float32, same shape as x
    history: tuple[Tensor, ...] = ()  # handed to the next step's StepContext.history


class Stepper(Protocol):
    """The one stepper signature (see the module docstring)."""

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput: ...


def euler(x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
    """First-order step along the probability-flow ODE dx/dσ = (x − x̂0)/σ (Karras et al. 2022, Alg. 1).

    Written as slope·Δσ added to x, the order the reference Euler scheduler rounds in, so float32
    results agree bit for bit. Keeps no history.
    """
    sigma = step.sigma
    slope = (x - denoised) / sigma  # = ε̂, the noise direction
    return StepOutput(x + slope * (step.sigma_next - sigma), step.history)
