"""UniPC multistep steps (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework").

The sample is ``x = α·x0 + σ_s·ε``. Flow form (every Wan checkpoint's: ``use_flow_sigmas``,
``flow_prediction``): α = 1 − t, σ_s = t for the plan's flow time t. VP form (DDPM-trained ε / v
networks): α = 1/sqrt(σ² + 1), σ_s = σ·α for the plan's VE noise level σ, on the VP sample.

Each step (plan index i, from t_i to t_{i+1}):

1. the raw network output becomes the data prediction m_i = x̂0 (``predict_x0``; the noise
   prediction for ``predict_x0=False``), from the uncorrected sample;
2. corrector (UniC): unless this is the run's first step or ``i − 1`` is in ``disable_corrector``,
   the sample the previous step predicted is recomputed from the previous sample with m_i
   included (order of the previous step);
3. predictor (UniP): the next sample from the (corrected) sample and the last ``order`` m's.

Both updates work in λ = log(α/σ), h = λ_next − λ_now; the coefficients come from the B(h)
variant ``solver_type`` ("bh1": B(h) = −h, "bh2": B(h) = e^(−h) − 1 for data prediction) and,
for order ≥ 3 (predictor) or ≥ 2 (corrector), a small linear solve. The history carries the
previous (corrected) sample and the last ``order`` m's, oldest first. Coefficients and sums
follow the reference's operation order on 0-dim tensors of the sample's device, so float32
results agree to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .parameterization import FLOW_PREDICTIONS, PREDICTIONS, Prediction
from .steppers import StepContext, StepOutput
from .steppers_vp import SampleLimit

SOLVER_TYPES = ("bh1", "bh2")
FORMS = ("flow", "vp")


class Level(NamedTuple):
    """One plan point in the solver's terms (0-dim float32 each)."""

    alpha: Tensor  # the signal scale: 1 − t (flow), 1/sqrt(σ² + 1) (VP)
    sigma: Tensor  # the noise scale: t (flow), σ·α (VP)
    log_snr: Tensor  # λ = log α − log σ (+∞ at the final t = 0 / σ = 0)


def level(point: Tensor, form: str) -> Level:
    """α, σ and λ of a plan point (0-dim float32): a flow time t, or a VE noise level σ."""
    if form == "flow":
        alpha, sigma = 1 - point, point
    else:
        alpha = 1 / ((point**2 + 1) ** 0.5)
        sigma = point * alpha
    return Level(alpha, sigma, torch.log(alpha) - torch.log(sigma))


class Coefficients(NamedTuple):
    """What predictor and corrector share for one update from level s0 to level t."""

    h_phi_1: Tensor  # e^(hh) − 1, hh = −h for data prediction, h for noise prediction
    b_h: Tensor  # B(h)
    rks: Tensor  # [order] r_k = (λ_{s_k} − λ_{s0}) / h, then 1
    r: Tensor  # [order, order] R[i] = rks ** i
    b: Tensor  # [order] the right-hand side of the order conditions


@dataclass(frozen=True, eq=False)
class UniPCStepper:
    """One UniPC step (corrector, then predictor) of the order the reference takes at this step.

    ``order`` is ``solver_order`` (1–3); the first steps of a run warm up on lower orders, and
    ``lower_order_final`` caps the order at the number of steps left. Needs the raw network
    output (``step.output``). Returns the sample in the sample's dtype (``keeps_sample_dtype``),
    as the reference does.
    """

    keeps_sample_dtype: ClassVar[bool] = True

    prediction: Prediction = "flow_prediction"
    form: str = "flow"  # one of FORMS: the plan's space
    order: int = 2
    solver_type: str = "bh2"
    predict_x0: bool = True
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    limit: SampleLimit | None = None  # dynamic thresholding of x̂0, or None

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {self.order!r}")
        if self.solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {list(SOLVER_TYPES)}, got {self.solver_type!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {list(FORMS)}, got {self.form!r}")
        valid = FLOW_PREDICTIONS if self.form == "flow" else PREDICTIONS
        if self.prediction not in valid:
            raise ValueError(f"prediction_type must be one of {list(valid)} for the {self.form} form, got {self.prediction!r}")
        if self.prediction == "flow_prediction" and not self.predict_x0:
            raise ValueError("flow_prediction outputs are integrated as data predictions: predict_x0 must be True")

    @property
    def spaces(self) -> frozenset[str]:
        return frozenset({self.form})

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
        if step.output is None:
            raise ValueError("UniPC needs the raw network output on StepContext.output")
        index, num_steps = step.index, len(step.sigmas) - 1
        converted = self.convert(step.output, x, step.sigmas[index])  # on the CPU, as the reference
        last_sample, previous = (step.history[0], step.history[1:]) if step.history else (None, ())
        if last_sample is not None and index - 1 not in self.disable_corrector:
            # The previous step's order: its cap, or the outputs it had (its warm-up).
            order = min(self._cap(index - 1, num_steps), len(previous))
            x = self._correct(converted, last_sample, x, previous, order, step.sigmas, index)
        outputs = (*previous, converted)[-self.order :]
        order = min(self._cap(index, num_steps), len(previous) + 1)
        return StepOutput(self._predict(x, outputs, order, step.sigmas, index), (x, *outputs))

    def _cap(self, index: int, num_steps: int) -> int:
        """The most order step ``index`` may use: ``order``, or the steps left (``lower_order_final``)."""
        return min(self.order, num_steps - index) if self.lower_order_final else self.order

    def convert(self, output: Tensor, x: Tensor, point: Tensor) -> Tensor:
        """The raw output as the data prediction x̂0 (thresholded if asked) or, ``predict_x0=False``,
        as the noise prediction ε̂, from α, σ of the plan point (the reference's formulas)."""
        alpha, sigma = level(point, self.form)[:2]
        if not self.predict_x0:
            if self.prediction == "epsilon":
                return output
            if self.prediction == "v_prediction":
                return alpha * output + sigma * x
            return (x - alpha * output) / sigma
        if self.prediction == "flow_prediction":
            denoised = x - point * output
        elif self.prediction == "epsilon":
            denoised = (x - sigma * output) / alpha
        elif self.prediction == "v_prediction":
            denoised = alpha * x - sigma * output
        else:
            denoised = output
        return denoised if self.limit is None else self.limit(denoised)

    def _levels(self, sigmas: Tensor, indices: list[int], device: torch.device) -> list[Level]:
        return [level(sigmas[i].to(device), self.form) for i in indices]

    def _coefficients(self, levels: list[Level], outputs: tuple[Tensor, ...], order: int) -> tuple[Coefficients, list[Tensor]]:
        """(coefficients, divided differences D1_k = (m_k − m0)/r_k) of an update from ``levels[1]``
        to ``levels[0]`` with the older levels ``levels[2:]`` and their outputs (newest last)."""
        target, current = levels[0], levels[1]
        h = target.log_snr - current.log_snr
        newest = outputs[-1]
        rks, differences = [], []
        for k in range(1, order):
            rk = (levels[k + 1].log_snr - current.log_snr) / h
            rks.append(rk)
            differences.append((outputs[-(k + 1)] - newest) / rk)
        rks.append(torch.ones((), device=h.device))
        rks = torch.stack(rks)
        hh = -h if self.predict_x0 else h
        h_phi_1 = torch.expm1(hh)  # h·φ1(h) = e^h − 1
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.solver_type == "bh1" else torch.expm1(hh)
        factorial, powers, rhs = 1, [], []
        for i in range(1, order + 1):
            powers.append(torch.pow(rks, i - 1))
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return Coefficients(h_phi_1, b_h, rks, torch.stack(powers), torch.stack(rhs)), differences

    def _base(self, x: Tensor, newest: Tensor, target: Level, current: Level, h_phi_1: Tensor) -> Tensor:
        """The first-order (DDIM-like) part of either update."""
        if self.predict_x0:
            return target.sigma / current.sigma * x - target.alpha * h_phi_1 * newest
        return target.alpha / current.alpha * x - target.sigma * h_phi_1 * newest

    def _predict(self, x: Tensor, outputs: tuple[Tensor, ...], order: int, sigmas: Tensor, index: int) -> Tensor:
        """UniP: the sample at t_{index+1} from x at t_index and the last ``order`` outputs."""
        levels = self._levels(sigmas, [index + 1, index] + [index - k for k in range(1, order)], x.device)
        c, differences = self._coefficients(levels, outputs, order)
        moved = self._base(x, outputs[-1], levels[0], levels[1], c.h_phi_1)
        if not differences:
            return (moved - self._scale(levels[0]) * c.b_h * 0).to(x.dtype)  # the reference's `− α·B(h)·0`
        if order == 2:
            rhos = torch.ones(1, dtype=x.dtype, device=x.device) * 0.5
        else:
            rhos = torch.linalg.solve(c.r[:-1, :-1], c.b[:-1]).to(x.device).to(x.dtype)
        residual = torch.einsum("k,bkc...->bc...", rhos, torch.stack(differences, dim=1))
        return (moved - self._scale(levels[0]) * c.b_h * residual).to(x.dtype)

    def _correct(
        self, converted: Tensor, last_sample: Tensor, x: Tensor, previous: tuple[Tensor, ...], order: int,
        sigmas: Tensor, index: int,
    ) -> Tensor:
        """UniC: the sample at t_index recomputed from ``last_sample`` (at t_{index−1}) with the
        new output ``converted`` included; ``previous`` are the outputs before it (newest last)."""
        levels = self._levels(sigmas, [index, index - 1] + [index - (k + 1) for k in range(1, order)], x.device)
        c, differences = self._coefficients(levels, previous, order)
        if order == 1:
            rhos = torch.ones(1, dtype=last_sample.dtype, device=x.device) * 0.5
        else:
            rhos = torch.linalg.solve(c.r, c.b).to(x.device).to(last_sample.dtype)
        moved = self._base(last_sample, previous[-1], levels[0], levels[1], c.h_phi_1)
        residual = torch.einsum("k,bkc...->bc...", rhos[:-1], torch.stack(differences, dim=1)) if differences else 0
        change = converted - previous[-1]
        return (moved - self._scale(levels[0]) * c.b_h * (residual + rhos[-1] * change)).to(last_sample.dtype)

    def _scale(self, level: Level) -> Tensor:
        """The factor in front of B(h): α_t for data prediction, σ_t for noise prediction."""
        return level.alpha if self.predict_x0 else level.sigma
