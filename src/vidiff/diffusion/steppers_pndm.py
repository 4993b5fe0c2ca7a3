"""PNDM's steppers (Liu et al. 2022) on the VP sample, on the raw network output: PLMS, with the
reference's two warm-ups (a repeated evaluation, or four Runge–Kutta blocks).

Arithmetic follows the reference PNDM scheduler operation by operation (coefficients, sums and
the transfer φ), so float32 results agree to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .parameterization import Prediction
from .steppers import StepContext, StepOutput

# Network evaluations of the Runge–Kutta warm-up: three blocks of four (Liu et al. 2022, Alg. 1).
RUNGE_KUTTA_EVALUATIONS = 12
def _plms_combination(outputs: tuple[Tensor, ...]) -> Tensor:
    """Adams–Bashforth combination of the newest ≤ 4 raw outputs (oldest first), the reference's
    coefficients and operation order (Liu et al. 2022, eq. 12)."""
    if len(outputs) == 1:
        return outputs[-1]
    if len(outputs) == 2:
        return (3 * outputs[-1] - outputs[-2]) / 2
    if len(outputs) == 3:
        return (23 * outputs[-1] - 16 * outputs[-2] + 5 * outputs[-3]) / 12
    return (1 / 24) * (55 * outputs[-1] - 59 * outputs[-2] + 37 * outputs[-3] - 9 * outputs[-4])


def pndm_transfer(sample: Tensor, output: Tensor, alpha: Tensor, alpha_prev: Tensor, prediction: Prediction) -> Tensor:
    """PNDM's transfer φ (Liu et al. 2022, eq. 9): the sample at ᾱ moved to ᾱ_prev along ε̂.

    A v-prediction ``output`` becomes ε̂ = sqrt(ᾱ)·v + sqrt(1−ᾱ)·x with the step's own start
    sample. Operands and order follow the reference, so float32 results agree to the bit.
    """
    beta, beta_prev = 1 - alpha, 1 - alpha_prev
    if prediction == "v_prediction":
        output = (alpha**0.5) * output + (beta**0.5) * sample
    sample_coeff = (alpha_prev / alpha) ** 0.5
    denominator = alpha * beta_prev ** (0.5) + (alpha * beta * alpha_prev) ** (0.5)
    return sample_coeff * sample - (alpha_prev - alpha) * output / denominator


@dataclass(frozen=True, eq=False)
class PLMSStepper:
    """Pseudo linear multistep (PNDM; Liu et al. 2022), on the raw output.

    Warm-up without ``runge_kutta`` (``skip_prk_steps``): N steps have N + 1 network evaluations.
    Step 0 moves x with the first output e₀ and keeps (x, e₀); step 1 evaluates again one level
    lower and restarts from the kept x with (e₀ + e₁)/2 (e₁ is not kept). With ``runge_kutta``:
    the first :data:`RUNGE_KUTTA_EVALUATIONS` evaluations are three RK4 blocks
    (:func:`_runge_kutta_stage`), N + 9 evaluations in all. Later steps combine the newest ≤ 4
    kept outputs (:func:`_plms_combination`), kept oldest first in ``step.history``. Each step's
    start and landing ᾱ are the reference's (t and t − T//N, which need not be plan points), held
    in ``alphas_from`` / ``alphas_to``.
    """

    spaces: ClassVar[frozenset[str]] = frozenset({"vp"})

    prediction: Prediction  # "epsilon" or "v_prediction"
    alphas_from: Tensor  # [M] float32: ᾱ each step's formula starts from
    alphas_to: Tensor  # [M] float32: ᾱ each step lands on
    runge_kutta: bool = False  # the RK4 warm-up (skip_prk_steps=False) instead of the repeated step

    def __post_init__(self) -> None:
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"PLMS steps ε or v predictions, got prediction_type={self.prediction!r}")

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
        if step.output is None:
            raise ValueError("the PNDM stepper needs the raw network output on StepContext.output")
        index, output = step.index, step.output
        if self.runge_kutta and index < RUNGE_KUTTA_EVALUATIONS:
            start, combined, history = _runge_kutta_stage(x, output, index, step.history)
        elif not self.runge_kutta and index == 0:
            start, combined, history = x, output, (x, output)
        elif not self.runge_kutta and index == 1:
            start, first = step.history
            combined, history = (output + first) / 2, (first,)
        else:
            history = (*step.history[-3:], output)
            start, combined = x, _plms_combination(history)
        moved = pndm_transfer(start, combined, self.alphas_from[index], self.alphas_to[index], self.prediction)
        return StepOutput(moved, history)


def _runge_kutta_stage(
    x: Tensor, output: Tensor, index: int, history: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """(start sample, output to transfer with, history) of Runge–Kutta evaluation ``index``.

    Each block of four starts from its first sample x_s: stages 1–3 transfer x_s with their own
    output (to the midpoint, again to the midpoint, to the end), stage 4 with the RK4 mean
    e₁/6 + e₂/3 + e₃/3 + e₄/6. History inside a block: (x_s, running sum, *kept outputs); between
    blocks only the kept outputs (each block's first), which PLMS continues from.
    """
    stage = index % 4
    if stage == 0:
        return x, output, (x, 1 / 6 * output, *history, output)
    start, running, *kept = history
    if stage == 3:
        return start, running + 1 / 6 * output, tuple(kept)
    return start, output, (start, running + 1 / 3 * output, *kept)
