"""Steppers on the VP sample ``x = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε``: DDIM and LCM.

Both follow the one stepper signature of :mod:`vidiff.diffusion.steppers`; the plan that uses
them has a ``"vp"`` parameterization and an exact float32 ᾱ table (``step.alpha_cumprod`` is ᾱ_i,
the level the network was told). Each stepper carries the ᾱ it lands on per step: for DDIM that
is ᾱ at ``t − T // N``, which is not always the next plan point (linspace and trailing spacings
round), and the reference steps to it all the same.

Arithmetic follows the reference DDIM / LCM steps operation by operation on float32 tensors, so
results agree to the bit in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .parameterization import Prediction, noise_from_denoised, vp_noise
from .steppers import StepContext, StepOutput

# x̂0 [B, ...] → x̂0 limited to a valid range (clipping or dynamic thresholding).
SampleLimit = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------- x̂0 limits
@dataclass(frozen=True)
class ClipSample:
    """x̂0 clamped to [−sample_range, sample_range] (pixel-space models; off for latent ones)."""

    sample_range: float

    def __call__(self, denoised: Tensor) -> Tensor:
        return denoised.clamp(-self.sample_range, self.sample_range)


@dataclass(frozen=True)
class DynamicThreshold:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3), per batch item.

    s = the ``ratio`` quantile of |x̂0| over all of an item's values, clamped to [1, max_value];
    x̂0 is clamped to [−s, s] and divided by s. Computed in float32 (quantile needs it) and cast back.
    """

    ratio: float
    max_value: float

    def __call__(self, denoised: Tensor) -> Tensor:
        dtype = denoised.dtype
        flat = denoised.flatten(1)  # [B, C·F·H·W]
        if dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        bound = torch.quantile(flat.abs(), self.ratio, dim=1).clamp(min=1, max=self.max_value)[:, None]  # [B, 1]
        return (flat.clamp(-bound, bound) / bound).reshape(denoised.shape).to(dtype)


def sample_limit(
    *,
    clip_sample: bool,
    clip_sample_range: float,
    thresholding: bool,
    dynamic_thresholding_ratio: float,
    sample_max_value: float,
) -> SampleLimit | None:
    """The x̂0 limit a DDIM / LCM config asks for: thresholding wins over clipping; None for neither."""
    if thresholding:
        return DynamicThreshold(dynamic_thresholding_ratio, sample_max_value)
    if clip_sample:
        return ClipSample(clip_sample_range)
    return None


def _limited(limit: SampleLimit | None, denoised: Tensor) -> Tensor:
    return denoised if limit is None else limit(denoised)


# ---------------------------------------------------------------------------- DDIM
def ddim_variance(alpha_cumprod: Tensor, alpha_cumprod_prev: Tensor) -> Tensor:
    """σ_t² of DDIM at η = 1: (1−ᾱ_prev)/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_prev) (Song et al. 2021, eq. 16)."""
    return ((1 - alpha_cumprod_prev) / (1 - alpha_cumprod)) * (1 - alpha_cumprod / alpha_cumprod_prev)


@dataclass(frozen=True, eq=False)
class DDIMStepper:
    """DDIM (Song et al. 2021, eq. 12): x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 − ᾱ_prev − s²)·ε̂ + s·z.

    s = η·sqrt(ddim_variance); z is one ``step.noise(x.shape)`` draw, taken only when η > 0 and
    after the deterministic part (the reference's order). ε̂ comes from the raw network output
    (``step.output``) per prediction type, so the step stays finite at ᾱ = 0 for v-prediction; with
    ``use_clipped_model_output`` it is re-derived from the limited x̂0 instead.
    """

    spaces: ClassVar[frozenset[str]] = frozenset({"vp"})

    prediction: Prediction
    alphas_cumprod_prev: Tensor  # [N] float32: the ᾱ step i lands on
    eta: float = 0.0
    limit: SampleLimit | None = None
    use_clipped_model_output: bool = False

    def __post_init__(self) -> None:
        if not self.eta >= 0:
            raise ValueError(f"eta must be ≥ 0 (0 = deterministic DDIM, 1 = DDPM-like), got {self.eta!r}")

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
        if step.output is None:
            raise ValueError("the DDIM stepper needs the raw network output on StepContext.output")
        if self.eta > 0 and step.noise is None:
            raise ValueError("DDIM with eta > 0 draws fresh noise every step: pass `noise` to the sampling loop")
        alpha, alpha_prev = step.alpha_cumprod, self.alphas_cumprod_prev[step.index]
        noise_estimate = vp_noise(self.prediction, step.output, x, alpha)  # ε̂, before any limit
        denoised = _limited(self.limit, denoised)
        std = self.eta * ddim_variance(alpha, alpha_prev) ** 0.5
        if self.use_clipped_model_output:
            noise_estimate = noise_from_denoised(denoised, x, alpha)
        direction = (1 - alpha_prev - std**2) ** 0.5 * noise_estimate
        moved = alpha_prev**0.5 * denoised + direction
        if self.eta > 0:
            moved = moved + std * step.noise(x.shape)
        return StepOutput(moved, step.history)


# ---------------------------------------------------------------------------- LCM
SIGMA_DATA = 0.5  # consistency models' data scale (Song et al. 2023), as used by LCM


def lcm_boundary_scalings(timesteps: Tensor, timestep_scaling: float) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) of the consistency-model boundary condition at each timestep. float32 [N] each.

    With τ = t·timestep_scaling: c_skip = σ_d² / (τ² + σ_d²), c_out = τ / sqrt(τ² + σ_d²), so that
    c_skip → 1, c_out → 0 as t → 0 (Luo et al. 2023, eq. 7 discretized). float32, as the reference
    computes from a tensor timestep.
    """
    scaled = timesteps.to(torch.float32) * timestep_scaling
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


@dataclass(frozen=True, eq=False)
class LCMStepper:
    """Latent consistency sampling (Luo et al. 2023, Alg. 3): denoise in one jump, then re-noise.

    x̂0' = c_out·x̂0 + c_skip·x (the consistency function); steps ``index < num_renoised`` return
    sqrt(ᾱ_next)·x̂0' + sqrt(1 − ᾱ_next)·z with one fresh ``step.noise(x.shape)`` draw, the rest
    return x̂0' itself (normally only the last step, whose output is the clean sample).
    """

    spaces: ClassVar[frozenset[str]] = frozenset({"vp"})

    c_skip: Tensor  # [N] float32
    c_out: Tensor  # [N] float32
    alphas_cumprod_next: Tensor  # [N] float32: the ᾱ step i re-noises to
    num_renoised: int  # how many leading steps re-noise
    limit: SampleLimit | None = None

    def consistent(self, x: Tensor, denoised: Tensor, index: int) -> Tensor:
        """x̂0' = c_out·limit(x̂0) + c_skip·x at step ``index`` (float32, x's shape)."""
        return self.c_out[index] * _limited(self.limit, denoised) + self.c_skip[index] * x

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
        index = step.index
        consistent = self.consistent(x, denoised, index)
        if index >= self.num_renoised:
            return StepOutput(consistent, step.history)
        if step.noise is None:
            raise ValueError("LCM draws fresh noise on every step but the last: pass `noise` to the sampling loop")
        noise = step.noise(x.shape)
        alpha_next = self.alphas_cumprod_next[index]
        return StepOutput(alpha_next.sqrt() * consistent + (1 - alpha_next).sqrt() * noise, step.history)

