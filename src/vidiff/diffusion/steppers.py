"""Steppers: one move of the sample from σ_i to σ_{i+1}, all with one signature.

A stepper is a pure function ``(x, denoised, step) -> StepOutput``:

* ``x``: the sample at ``step.sigma``, float32, in the plan's space: VE (``x = x0 + σ·ε``) for
  Euler-type steppers, VP (``x = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε``, with the plan's exact ᾱ table in
  ``step.alphas_cumprod``) for DDIM, LCM and PLMS (:mod:`vidiff.diffusion.steppers_vp`), flow
  (``x = (1 − t)·x0 + t·ε``, σ = t) for flow matching (:mod:`~vidiff.diffusion.steppers_flow`,
  :mod:`~vidiff.diffusion.steppers_unipc`). Each stepper declares its ``spaces``;
  :func:`~vidiff.diffusion.plan.plan_in_space` runs a VE one on the VP sample and back;
* ``denoised``: x̂0 = D(x, σ_i), already evaluated by the loop (with guidance applied);
* ``step``: a :class:`StepContext` with the whole σ schedule and index, whatever the previous step
  left in ``history``, a ``denoise`` callable for solvers that evaluate the model again, a
  ``noise`` source for stochastic ones, and the raw (guided) network ``output`` x̂0 came from.

It returns the sample at ``step.sigma_next`` (float32) and the history its successor needs. The
signature is meant to carry, besides Euler:

* Euler-ancestral / DDIM with η: stochastic, draw from ``step.noise``; DDIM with η = 0 is Euler;
* Heun: a second ``step.denoise(x_next, sigma_next)`` evaluation;
* DPM-Solver++(2M): the previous x̂0 carried in ``history``;
* LCM: x̂0 re-noised to σ_{i+1} with fresh ``step.noise``;
* PLMS: the earlier raw outputs (and the first step's start sample) carried in ``history``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

from torch import Tensor

from .noise import NoiseSource

# (x [B, C, F, H, W] float32 at σ, σ 0-dim float32) -> x̂0 float32: one more model evaluation.
Denoise = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StepContext:
    """Everything about the current step besides the sample and its x̂0."""

    sigmas: Tensor  # [N+1] float32 on the CPU, decreasing; sigmas[-1] is the final σ
    index: int  # this step goes from sigmas[index] to sigmas[index + 1]
    history: tuple[Tensor, ...] = ()  # what the previous step returned for this one
    denoise: Denoise | None = None
    noise: NoiseSource | None = None
    # VP plans: ᾱ at every plan point, [N+1] float32 on the CPU (alphas_cumprod[-1] the final one).
    alphas_cumprod: Tensor | None = None
    # The guided network output x̂0 was formed from (ε, v or x0), in the network's dtype.
    output: Tensor | None = None

    @property
    def sigma(self) -> Tensor:
        """σ_i, 0-dim float32."""
        return self.sigmas[self.index]

    @property
    def sigma_next(self) -> Tensor:
        """σ_{i+1}, 0-dim float32."""
        return self.sigmas[self.index + 1]

    @property
    def alpha_cumprod(self) -> Tensor:
        """ᾱ_i of a VP plan, 0-dim float32 (a ValueError for a plan without an ᾱ table)."""
        if self.alphas_cumprod is None:
            raise ValueError("this stepper works in VP space and needs a plan with an alphas_cumprod table")
        return self.alphas_cumprod[self.index]


class StepOutput(NamedTuple):
    sample: Tensor  # x at sigma_next, float32, same shape as x
    history: tuple[Tensor, ...] = ()  # handed to the next step's StepContext.history


class Stepper(Protocol):
    """The one stepper signature (see the module docstring).

    ``spaces`` names the sample spaces the stepper's formulas are written for (``"ve"``,
    ``"vp"``); a :class:`~vidiff.diffusion.loop.SamplingPlan` refuses any other pairing.
    """

    spaces: frozenset[str]

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput: ...


F = TypeVar("F", bound=Callable[..., StepOutput])


def supports(*spaces: str) -> Callable[[F], F]:
    """Decorator declaring the sample spaces a stepper function works in (its ``spaces``)."""

    def declare(function: F) -> F:
        function.spaces = frozenset(spaces)  # type: ignore[attr-defined]
        return function

    return declare


@supports("ve")
def euler(x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
    """First-order step along the probability-flow ODE dx/dσ = (x − x̂0)/σ (Karras et al. 2022, Alg. 1).

    Written as slope·Δσ added to x, the order the reference Euler scheduler rounds in, so float32
    results agree bit for bit. Keeps no history.
    """
    return StepOutput(_euler_move(x, denoised, step.sigma, step.sigma_next), step.history)


def _euler_move(x: Tensor, denoised: Tensor, sigma: Tensor, target: Tensor) -> Tensor:
    """x moved along its ODE tangent from σ to ``target`` (0-dim σ), rounded as slope·Δσ + x."""
    slope = (x - denoised) / sigma  # = ε̂, the noise direction
    return x + slope * (target - sigma)


@supports("ve")
def euler_ancestral(x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
    """Ancestral Euler: a deterministic step down to σ_down, then fresh noise of scale σ_up.

    σ_up² + σ_down² = σ_{i+1}², with σ_up the part of the DDPM posterior's variance that is
    re-drawn (Karras et al. 2022 / k-diffusion's ``get_ancestral_step`` at η = 1). One
    ``step.noise(x.shape)`` draw per step, every step (also the last, where σ_up = 0), as the
    reference scheduler draws; the draw keeps the noise source's dtype until it meets x, again
    as the reference rounds.
    """
    if step.noise is None:
        raise ValueError("euler_ancestral draws fresh noise every step: pass `noise` to the sampling loop")
    sigma, sigma_next = step.sigma, step.sigma_next
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    moved = _euler_move(x, denoised, sigma, sigma_down)
    return StepOutput(moved + step.noise(x.shape) * sigma_up, step.history)
