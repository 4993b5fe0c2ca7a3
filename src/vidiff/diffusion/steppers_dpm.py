"""DPM-Solver multistep steppers (Lu et al. 2022, "DPM-Solver" and "DPM-Solver++") on the VP sample.

The sample is ``x = α·x0 + σ_VP·ε`` with, for a plan point of VE noise level σ, α = 1/sqrt(σ² + 1)
and σ_VP = σ·α; the solvers step in λ = log(α/σ_VP) (= −log σ), h = λ_{i+1} − λ_i. The same
update written on the VE sample (k-diffusion's DPM-Solver++(2M)) is algebraically identical, but
the VP form lets the loop's output be the reference's sample even when the last σ is not 0
(``final_sigmas_type="sigma_min"``).

Each step turns the raw (guided) network output into the quantity the algorithm integrates (x̂0
for the "++" data-prediction algorithms, ε̂ for the noise-prediction ones) with the reference's
own formulas, keeps the last ``solver_order − 1`` of them in ``history``, and forms

    x_{i+1} = a·x_i + Σ_k b_k·D_k (+ c·z for the SDE variants, z one fresh draw per step)

where D_0 is the newest output and D_1, D_2 its divided differences in λ. The coefficients are
computed on 0-dim float32 tensors in the reference's operation order, and the terms are summed
in its order, so float32 results agree to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .parameterization import Prediction
from .steppers import StepContext, StepOutput
from .steppers_vp import SampleLimit

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")


class NoiseLevel(NamedTuple):
    """One plan point in VP terms (0-dim float32 each)."""

    alpha: Tensor  # α = 1/sqrt(σ² + 1), the signal scale
    sigma: Tensor  # σ_VP = σ·α, the noise scale
    log_snr: Tensor  # λ = log α − log σ_VP (half the log signal-to-noise ratio)


def noise_level(sigma: Tensor) -> NoiseLevel:
    """α, σ_VP and λ of the VE noise level ``sigma`` (0-dim float32; σ = 0 gives λ = +∞)."""
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    sigma_vp = sigma * alpha
    return NoiseLevel(alpha, sigma_vp, torch.log(alpha) - torch.log(sigma_vp))


class Update(NamedTuple):
    """x_next = sample·x + Σ_k data[k]·D_k + noise·z, summed in this order."""

    sample: Tensor
    data: tuple[Tensor, ...]
    noise: Tensor | None = None


@dataclass(frozen=True, eq=False)
class DPMSolverStepper:
    """One DPM-Solver step of the order the reference would take at this step.

    ``order`` is the most the solver uses (``solver_order``); fewer previous outputs than that
    (the first steps) or the ``lower_order_final`` / ``euler_at_final`` rules near the end take a
    lower order, exactly as the reference decides. The SDE algorithms draw one
    ``step.noise(x.shape, torch.float32)`` per step, on every step: the reference draws float32
    noise whatever the latents' dtype.

    Needs the raw network output (``step.output``); the loop's generic ``denoised`` is not used,
    since the reference forms x̂0 from α, σ_VP rather than from the ᾱ of a VP plan.
    """

    spaces: ClassVar[frozenset[str]] = frozenset({"vp"})

    prediction: Prediction
    algorithm: str = "dpmsolver++"  # one of ALGORITHMS
    order: int = 2
    solver_type: str = "midpoint"  # one of SOLVER_TYPES
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigma_is_zero: bool = True  # final_sigmas_type == "zero": the last step is first order
    limit: SampleLimit | None = None  # dynamic thresholding of x̂0, or None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm_type must be one of {list(ALGORITHMS)}, got {self.algorithm!r}")
        if self.solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {list(SOLVER_TYPES)}, got {self.solver_type!r}")
        if self.order not in (1, 2, 3) or (self.order == 3 and self.algorithm == "sde-dpmsolver"):
            raise ValueError(
                f"solver_order must be 1, 2 or 3 (1 or 2 for sde-dpmsolver), got {self.order!r} for {self.algorithm}"
            )

    @property
    def predicts_data(self) -> bool:
        """True for the "++" algorithms, which integrate x̂0 rather than ε̂."""
        return self.algorithm.endswith("++")

    @property
    def stochastic(self) -> bool:
        return self.algorithm.startswith("sde-")

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
        if step.output is None:
            raise ValueError("DPM-Solver needs the raw network output on StepContext.output")
        if self.stochastic and step.noise is None:
            raise ValueError(f"{self.algorithm} draws fresh noise every step: pass `noise` to the sampling loop")
        # The reference converts with the sample still in the network's dtype.
        converted = self.convert(step.output, x.to(step.output.dtype), step.sigma)
        outputs = (*step.history, converted)  # oldest first, the newest last
        order = self.order_at(step.index, len(step.sigmas) - 1, len(step.history))
        noise = step.noise(x.shape, torch.float32) if self.stochastic else None
        levels = [noise_level(step.sigmas[step.index + 1 - k]) for k in range(order + 1)]  # [t, s0, s1, …]
        update, data = self._update(order, levels, outputs)
        moved = update.sample * x
        for coefficient, term in zip(update.data, data):
            moved = moved + coefficient * term
        if noise is not None:
            moved = moved + update.noise * noise
        return StepOutput(moved, outputs[-(self.order - 1) :] if self.order > 1 else ())

    def order_at(self, index: int, num_steps: int, num_previous: int) -> int:
        """The order the reference uses at step ``index`` of ``num_steps`` with ``num_previous`` outputs kept."""
        short_run = self.lower_order_final and num_steps < 15  # few steps: end on lower orders for stability
        last = index == num_steps - 1 and (self.euler_at_final or short_run or self.final_sigma_is_zero)
        second_last = index == num_steps - 2 and short_run
        if self.order == 1 or num_previous < 1 or last:
            return 1
        if self.order == 2 or num_previous < 2 or second_last:
            return 2
        return 3

    def convert(self, output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """The raw network output as x̂0 ("++" algorithms) or ε̂ (the others), thresholded if asked."""
        level = noise_level(sigma)
        alpha, sigma_vp = level.alpha, level.sigma
        if self.predicts_data:
            if self.prediction == "epsilon":
                denoised = (x - sigma_vp * output) / alpha
            elif self.prediction == "v_prediction":
                denoised = alpha * x - sigma_vp * output
            else:
                denoised = output
            return denoised if self.limit is None else self.limit(denoised)
        if self.prediction == "epsilon":
            noise = output
        elif self.prediction == "v_prediction":
            noise = alpha * output + sigma_vp * x
        else:
            noise = (x - alpha * output) / sigma_vp
        if self.limit is None:
            return noise
        # Threshold the x̂0 this ε̂ implies, then return the ε̂ of the thresholded x̂0.
        limited = self.limit((x - sigma_vp * noise) / alpha)
        return (x - alpha * limited) / sigma_vp

    def _update(
        self, order: int, levels: list[NoiseLevel], outputs: tuple[Tensor, ...]
    ) -> tuple[Update, list[Tensor]]:
        """(coefficients, [D_0, D_1, …]) of an ``order`` step; ``levels`` = [t, s0, s1, s2][: order + 1]."""
        target, current = levels[0], levels[1]
        h = target.log_snr - current.log_snr
        if order == 1:
            return first_order(self.algorithm, target, current, h), [outputs[-1]]
        newest, previous = outputs[-1], outputs[-2]
        r0 = (current.log_snr - levels[2].log_snr) / h
        slope = (1.0 / r0) * (newest - previous)
        if order == 2:
            return second_order(self.algorithm, self.solver_type, target, current, h), [newest, slope]
        r1 = (levels[2].log_snr - levels[3].log_snr) / h
        older_slope = (1.0 / r1) * (previous - outputs[-3])
        first_difference = slope + (r0 / (r0 + r1)) * (slope - older_slope)
        second_difference = (1.0 / (r0 + r1)) * (slope - older_slope)
        update = third_order(self.algorithm, target, current, h)
        return update, [newest, first_difference, second_difference]


# ---------------------------------------------------------------------------- coefficients
# t: the level stepped to, s: the current one, h = λ_t − λ_s > 0. Signs are folded into the
# coefficients (x − c·D equals x + (−c)·D to the bit).
def first_order(algorithm: str, t: NoiseLevel, s: NoiseLevel, h: Tensor) -> Update:
    """DPM-Solver-1 (= DDIM in λ): Lu et al. 2022b, eq. 8 (data) / 2022a, eq. 3.7 (noise)."""
    if algorithm == "dpmsolver++":
        return Update(t.sigma / s.sigma, (-(t.alpha * (torch.exp(-h) - 1.0)),))
    if algorithm == "dpmsolver":
        return Update(t.alpha / s.alpha, (-(t.sigma * (torch.exp(h) - 1.0)),))
    if algorithm == "sde-dpmsolver++":
        return Update(
            t.sigma / s.sigma * torch.exp(-h),
            (t.alpha * (1 - torch.exp(-2.0 * h)),),
            t.sigma * torch.sqrt(1.0 - torch.exp(-2 * h)),
        )
    return Update(
        t.alpha / s.alpha,
        (-(2.0 * (t.sigma * (torch.exp(h) - 1.0))),),
        t.sigma * torch.sqrt(torch.exp(2 * h) - 1.0),
    )


def second_order(algorithm: str, solver_type: str, t: NoiseLevel, s: NoiseLevel, h: Tensor) -> Update:
    """Multistep second order: D_1 weighted by ½ of D_0's weight (midpoint) or by its exact φ₂ (heun)."""
    midpoint = solver_type == "midpoint"
    if algorithm == "dpmsolver++":
        weight = t.alpha * (torch.exp(-h) - 1.0)
        slope_weight = -(0.5 * weight) if midpoint else t.alpha * ((torch.exp(-h) - 1.0) / h + 1.0)
        return Update(t.sigma / s.sigma, (-weight, slope_weight))
    if algorithm == "dpmsolver":
        weight = t.sigma * (torch.exp(h) - 1.0)
        slope_weight = 0.5 * weight if midpoint else t.sigma * ((torch.exp(h) - 1.0) / h - 1.0)
        return Update(t.alpha / s.alpha, (-weight, -slope_weight))
    if algorithm == "sde-dpmsolver++":
        weight = t.alpha * (1 - torch.exp(-2.0 * h))
        slope_weight = 0.5 * weight if midpoint else t.alpha * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)
        noise = t.sigma * torch.sqrt(1.0 - torch.exp(-2 * h))
        return Update(t.sigma / s.sigma * torch.exp(-h), (weight, slope_weight), noise)
    weight = t.sigma * (torch.exp(h) - 1.0)
    slope_weight = weight if midpoint else 2.0 * (t.sigma * ((torch.exp(h) - 1.0) / h - 1.0))
    noise = t.sigma * torch.sqrt(torch.exp(2 * h) - 1.0)
    return Update(t.alpha / s.alpha, (-(2.0 * weight), -slope_weight), noise)


def third_order(algorithm: str, t: NoiseLevel, s: NoiseLevel, h: Tensor) -> Update:
    """Multistep third order (Lu et al. 2022a, Alg. 3 / 2022b); no SDE form for "sde-dpmsolver"."""
    if algorithm == "dpmsolver++":
        decay = torch.exp(-h) - 1.0
        return Update(
            t.sigma / s.sigma,
            (
                -(t.alpha * decay),
                t.alpha * (decay / h + 1.0),
                -(t.alpha * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)),
            ),
        )
    if algorithm == "dpmsolver":
        growth = torch.exp(h) - 1.0
        return Update(
            t.alpha / s.alpha,
            (
                -(t.sigma * growth),
                -(t.sigma * (growth / h - 1.0)),
                -(t.sigma * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5)),
            ),
        )
    decay = 1.0 - torch.exp(-2.0 * h)
    return Update(
        t.sigma / s.sigma * torch.exp(-h),
        (
            t.alpha * decay,
            t.alpha * (decay / (-2.0 * h) + 1.0),
            t.alpha * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5),
        ),
        t.sigma * torch.sqrt(1.0 - torch.exp(-2 * h)),
    )
