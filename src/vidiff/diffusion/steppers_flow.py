"""Euler steps in flow space: ``x = (1 − t)·x0 + t·ε``, the plan's σ being the flow time t.

The probability-flow ODE of a flow-matching model is dx/dt = v with v = ε − x0 the velocity the
network predicts, so one Euler step from t to t_next is ``x + (t_next − t)·v``. With
``"flow_prediction"`` the raw (guided) network output *is* v and is used as it is: the
``Δt·output`` product stays in the output's dtype before meeting the float32 sample, the order the
reference FlowMatchEulerDiscreteScheduler rounds in, so float32 results agree to the bit. Other
predictions go through x̂0 (v = (x − x̂0)/t).

The stochastic variant (the reference's ``stochastic_sampling``) re-noises x̂0 to t_next with one
fresh float32 draw per step: ``(1 − t_next)·x̂0 + t_next·z``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .parameterization import FLOW_PREDICTIONS, Prediction
from .steppers import StepContext, StepOutput


@dataclass(frozen=True, eq=False)
class FlowEulerStepper:
    """One Euler step along the flow ODE (or, ``stochastic``, x̂0 re-noised to the next t)."""

    spaces: ClassVar[frozenset[str]] = frozenset({"flow"})

    prediction: Prediction = "flow_prediction"
    stochastic: bool = False

    def __post_init__(self) -> None:
        if self.prediction not in FLOW_PREDICTIONS:
            raise ValueError(f"prediction must be one of {list(FLOW_PREDICTIONS)} for a flow step, got {self.prediction!r}")

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
        t, t_next = step.sigma, step.sigma_next
        if self.stochastic:
            if step.noise is None:
                raise ValueError("stochastic flow sampling draws fresh noise every step: pass `noise` to the sampling loop")
            noise = step.noise(x.shape, torch.float32)  # the reference draws in the sample's float32
            return StepOutput((1.0 - t_next) * denoised + t_next * noise, step.history)
        velocity = step.output if self.prediction == "flow_prediction" and step.output is not None else (x - denoised) / t
        return StepOutput(x + (t_next - t) * velocity, step.history)
