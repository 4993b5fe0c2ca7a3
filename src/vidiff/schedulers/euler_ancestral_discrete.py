"""``EulerAncestralDiscreteScheduler``: Euler's schedule, stepped with fresh noise every step.

The reference's ancestral scheduler visits exactly the σ of its Euler scheduler with linear
interpolation, discrete timesteps, no Karras/exponential σ and a final σ of 0, and starts from the
same initial noise scale; only the step differs (:func:`~vidiff.diffusion.steppers.euler_ancestral`).
So this class is :class:`EulerDiscreteScheduler` with those options fixed and that stepper: one
schedule implementation for both.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..config import Config
from ..diffusion.steppers import Stepper, euler_ancestral
from .base import check_training_options
from .euler_discrete import EulerDiscreteScheduler

# The reference's ancestral step has no "sample" branch of its own; x̂0 = output is exact, so vidiff
# accepts it (and, like the reference, not the older spelling "original_sample").
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclasses.dataclass(frozen=True)
class EulerAncestralDiscreteConfig(Config):
    """Options of :class:`EulerAncestralDiscreteScheduler`: diffusers' names and defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear" | "squaredcos_cap_v2"
    trained_betas: tuple[float, ...] | None = None  # an explicit β table; wins over beta_schedule
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" | "sample"
    timestep_spacing: str = "linspace"  # "linspace" | "leading" | "trailing"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    # Euler options this scheduler does not have, fixed at the values its schedule equals. Class
    # constants, not config keys: they are never read from or written to scheduler_config.json.
    interpolation_type: ClassVar[str] = "linear"
    use_karras_sigmas: ClassVar[bool] = False
    use_exponential_sigmas: ClassVar[bool] = False
    sigma_min: ClassVar[None] = None
    sigma_max: ClassVar[None] = None
    timestep_type: ClassVar[str] = "discrete"
    final_sigmas_type: ClassVar[str] = "zero"

    def __post_init__(self) -> None:
        check_training_options(self, PREDICTION_TYPES, min_train_timesteps=2)  # as Euler's schedule


class EulerAncestralDiscreteScheduler(EulerDiscreteScheduler):
    """Ancestral Euler sampling over a DDPM-trained network (k-diffusion's ``sample_euler_ancestral``).

    Stochastic: ``plan(...)`` needs the loop's ``noise`` source, and ``step(..., generator=...)``
    draws from ``generator`` exactly as diffusers' scheduler does, once per step.
    """

    config_class = EulerAncestralDiscreteConfig
    config: EulerAncestralDiscreteConfig  # type: ignore[assignment]
    stepper: ClassVar[Stepper] = staticmethod(euler_ancestral)
