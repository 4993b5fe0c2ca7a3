"""Steppers: one move of the sample from σ_i to σ_{i+1}, all with one signature.

A stepper is a pure function ``(x, denoised, step) -> StepOutput``:

* ``x``: the sample at ``step.sigma``, float32, in the plan's space: VE (``x = x0 + σ·ε``) for
  Euler-type steppers, VP (``x = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε``, with the plan's exact ᾱ table in
  ``step.alphas_cumprod``) for DDIM and LCM (:mod:`vidiff.diffusion.steppers_vp`);
* ``denoised``: x̂0 = D(x, σ_i), already evaluated by the loop (with guidance applied);
* ``step``: a :class:`StepContext` with the whole σ schedule and index, whatever the previous step
  left in ``history``, a ``denoise`` callable for solvers that evaluate the model again, a
  ``noise`` source for stochastic ones, and the raw (guided) network ``output`` x̂0 came from.

It returns the sample at ``step.sigma_next`` (float32) and the history its successor needs. The
signature is meant to carry, besides Euler:

* Euler-ancestral / DDIM with η: stochastic, draw from ``step.noise``; DDIM with η = 0 is Euler;
* Heun: a second ``step.denoise(x_next, sigma_next)`` evaluation;
* DPM-Solver++(2M): the previous x̂0 carried in ``history``;
* LCM: x̂0 re-noised to σ_{i+1} with fresh ``step.noise``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

# (x [B, C, F, H, W] float32 at σ, σ 0-dim float32) -> x̂0 float32: one more model evaluation.
Denoise = Callable[[Tensor, Tensor], Tensor]
# (shape, dtype=None) -> fresh unit Gaussian noise on the sample's device; the caller owns the RNG.
# ``dtype`` is the precision the reference draws in when it is not the sample's (DPM-Solver's SDE
# variants draw float32 noise for float16 latents, and a float16 draw gives other numbers).
NoiseSource = Callable[..., Tensor]


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
    """The one stepper signature (see the module docstring)."""

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput: ...


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


def generator_noise(
    generator: torch.Generator | Sequence[torch.Generator] | None, device: torch.device, dtype: torch.dtype
) -> NoiseSource:
    """A :data:`NoiseSource` drawing from a torch generator the way diffusers' schedulers do.

    For ``scheduler.step(..., generator=...)``: a CPU generator draws on the CPU and the noise
    moves to ``device``; a list of several holds one generator per batch item, each drawing its
    own ``[1, ...]`` slice in batch order (a list of one is that one generator); ``None`` uses
    torch's global RNG.
    """
    if isinstance(generator, Sequence) and len(generator) == 1:
        generator = generator[0]
    default_dtype = dtype

    def draw(shape: torch.Size, source: torch.Generator | None) -> Tensor:
        draw_device = device if source is None or source.device.type == device.type else source.device
        return torch.randn(shape, generator=source, device=draw_device, dtype=dtype).to(device)

    def noise(shape: torch.Size, dtype: torch.dtype | None = None) -> Tensor:
        if dtype is not None and dtype != default_dtype:
            return generator_noise(generator, device, dtype)(shape)
        if isinstance(generator, Sequence):
            if len(generator) != shape[0]:
                raise ValueError(f"`generator` lists {len(generator)} generators for a batch of {shape[0]}")
            return torch.cat([draw(torch.Size((1, *shape[1:])), source) for source in generator])
        return draw(torch.Size(shape), generator)

    return noise


def given_noise(variance_noise: Tensor) -> NoiseSource:
    """A noise source that hands out the caller's own draw (diffusers' ``variance_noise``)."""

    def noise(shape: torch.Size, dtype: torch.dtype | None = None) -> Tensor:
        if variance_noise.shape != shape:
            raise ValueError(f"variance_noise must have the sample's shape {list(shape)}, got {list(variance_noise.shape)}")
        return variance_noise if dtype is None else variance_noise.to(dtype)

    return noise
