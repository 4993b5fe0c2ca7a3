"""``EulerDiscreteScheduler``: diffusers' Euler scheduler on vidiff's σ-space core.

The config is diffusers' (same option names and defaults); ``plan`` turns it into a
:class:`~vidiff.diffusion.loop.SamplingPlan` (σ schedule, network timesteps, parameterization,
:func:`~vidiff.diffusion.steppers.euler`). ``set_timesteps`` / ``scale_model_input`` / ``step``
offer diffusers' stateful surface for hand-written loops, as thin wrappers over the same pieces.
"""

from __future__ import annotations

import dataclasses
from numbers import Integral
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..config import Config
from ..diffusion import sigmas as schedules
from ..diffusion.noise import seeded_noise
from ..diffusion.parameterization import ContinuousTimesteps, DiscreteTimesteps, Parameterization
from ..diffusion.plan import PlanRequest, SamplingPlan
from ..diffusion.steppers import StepContext, Stepper, euler
from .base import (
    SchedulerStepOutput,
    SequentialScheduler,
    check_choice,
    check_sigma_options,
    check_training_options,
    config_alphas_cumprod,
)

SigmaValues = Sequence[float] | Tensor
# "original_sample" is diffusers' older spelling of "sample".
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "original_sample")


@dataclasses.dataclass(frozen=True)
class EulerDiscreteConfig(Config):
    """Options of :class:`EulerDiscreteScheduler`: diffusers' names and defaults.

    ``use_beta_sigmas`` is accepted in configs but only ``False`` is supported (it needs SciPy's
    beta quantile function).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear" | "squaredcos_cap_v2"
    trained_betas: tuple[float, ...] | None = None  # an explicit β table; wins over beta_schedule
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" | "sample"
    interpolation_type: str = "linear"  # σ between spaced timesteps: "linear" | "log_linear"
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    sigma_min: float | None = None  # Karras / exponential range; None: from the spaced schedule
    sigma_max: float | None = None
    timestep_spacing: str = "linspace"  # "linspace" | "leading" | "trailing"
    timestep_type: str = "discrete"  # "continuous" = ¼·ln σ, used together with v_prediction (SVD)
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: str = "zero"  # last σ: "zero" | "sigma_min" (the table's smallest σ)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        # σ interpolation between training steps needs at least two of them.
        check_training_options(self, PREDICTION_TYPES, min_train_timesteps=2)
        check_choice(owner, "interpolation_type", self.interpolation_type, ("linear", "log_linear"))
        check_choice(owner, "timestep_type", self.timestep_type, ("discrete", "continuous"))
        check_sigma_options(self)


class EulerDiscreteScheduler(SequentialScheduler):
    """Euler sampling of the probability-flow ODE over a DDPM-trained network (Karras et al. 2022).

    ``EulerDiscreteScheduler.from_pretrained(repo)`` reads ``scheduler/scheduler_config.json``;
    ``scheduler.plan(25)`` is what vidiff's pipelines sample with.
    """

    config_class = EulerDiscreteConfig
    config: EulerDiscreteConfig
    order = 1
    # How plan() and step() move the sample; a subclass with another stepper shares the schedule.
    stepper: ClassVar[Stepper] = staticmethod(euler)

    def __init__(self, config: Config | dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        cfg = self.config
        # ᾱ_T = 0 would mean σ_T = ∞, which an Euler step cannot start from.
        alphas_cumprod = config_alphas_cumprod(cfg, finite_terminal=True)
        self.alphas_cumprod = alphas_cumprod  # [T] float32
        self.training_sigmas = schedules.sigmas_from_alphas_cumprod(alphas_cumprod)  # [T], increasing
        self._discrete_timesteps = DiscreteTimesteps(schedules.log_sigmas(self.training_sigmas))
        continuous = cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction"
        prediction = "sample" if cfg.prediction_type == "original_sample" else cfg.prediction_type
        # Continuous timesteps exist only with v-prediction (SVD); otherwise the reference keeps
        # discrete ones, and so do we.
        self.parameterization = Parameterization(
            prediction, ContinuousTimesteps() if continuous else self._discrete_timesteps
        )
        self._set_training_schedule()

    # ------------------------------------------------------------------ the schedule
    honours = frozenset({"sigmas", "timesteps", "strength"})
    refusal_reasons = {
        **SequentialScheduler.refusal_reasons,
        "eta": "its steps are deterministic ODE steps (DDIMScheduler takes eta); leave eta unset",
    }

    def _plan(self, request: PlanRequest, parameterization: Parameterization) -> SamplingPlan:
        """The plan for ``request``: ``num_inference_steps`` steps, or custom ``sigmas`` / ``timesteps``.

        ``sigmas`` lists every σ including the final one (N+1 values for N steps); ``timesteps``
        lists the N training timesteps to visit. Custom ``sigmas`` or ``timesteps`` replace
        ``num_inference_steps`` (as in the reference pipelines, which drop the step count then);
        giving both custom lists is an error. The plan's timesteps are put on ``device``; its σ stay
        on the CPU (scalars of each step).
        """
        num_inference_steps, sigmas, timesteps = request.num_inference_steps, request.sigmas, request.timesteps
        if sigmas is not None or timesteps is not None:
            num_inference_steps = None
        all_sigmas, step_timesteps = self._schedule(num_inference_steps, sigmas, timesteps)
        return SamplingPlan(
            # The reference's log-linear σ list is one longer than its steps use; drop the unused tail.
            sigmas=all_sigmas[: len(step_timesteps) + 1],
            timesteps=step_timesteps.to(request.device),
            parameterization=parameterization,
            stepper=self.stepper,
            init_noise_sigma=self._init_noise_sigma(all_sigmas),
        )

    def _schedule(
        self, num_inference_steps: int | None, sigmas: SigmaValues | None, timesteps: Sequence[float] | Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(σ list incl. the final σ [≥ N+1] float32 CPU, network timesteps [N] float32 CPU)."""
        _check_request(self.config, num_inference_steps, sigmas, timesteps)
        if sigmas is not None:
            custom = torch.as_tensor(sigmas, dtype=torch.float32).detach().cpu()
            if custom.ndim != 1 or len(custom) < 2:
                raise ValueError(
                    f"sigmas must be 1-D with at least 2 values (the final σ included), got shape {list(custom.shape)}"
                )
            return custom, self.parameterization.timestep(custom[:-1])
        if timesteps is not None:
            spaced = torch.as_tensor(timesteps, dtype=torch.float32).detach().cpu().flatten()
        else:
            cfg = self.config
            spaced = schedules.spaced_timesteps(
                cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset
            )
        num_steps = len(spaced) if timesteps is not None else num_inference_steps
        step_sigmas, spaced = self._step_sigmas(spaced, num_steps)
        all_sigmas = torch.cat([step_sigmas.to(torch.float64), self._final_sigma().reshape(1)]).to(torch.float32)
        if isinstance(self.parameterization.timestep_map, ContinuousTimesteps):
            spaced = self.parameterization.timestep(all_sigmas[:-1])
        return all_sigmas, spaced

    def _step_sigmas(self, spaced: Tensor, num_steps: int) -> tuple[Tensor, Tensor]:
        """σ of each step (float64, or float32 for log-linear) and the matching discrete timesteps."""
        cfg = self.config
        if cfg.interpolation_type == "linear":
            step_sigmas = schedules.interpolate_sigmas(self.training_sigmas, spaced)
        else:
            # The reference spans num_steps + 1 values here; plan() drops the unused last one.
            step_sigmas = schedules.log_linear_sigmas(self.training_sigmas, num_steps + 1)
        if not (cfg.use_karras_sigmas or cfg.use_exponential_sigmas):
            return step_sigmas, spaced
        sigma_min = cfg.sigma_min if cfg.sigma_min is not None else step_sigmas[-1].item()
        sigma_max = cfg.sigma_max if cfg.sigma_max is not None else step_sigmas[0].item()
        if cfg.use_karras_sigmas:
            step_sigmas = schedules.karras_sigmas(num_steps, sigma_min, sigma_max)
        else:
            step_sigmas = schedules.exponential_sigmas(num_steps, sigma_min, sigma_max)
        return step_sigmas, self._discrete_timesteps(step_sigmas)

    def _final_sigma(self) -> Tensor:
        """The σ the last step lands on: 0, or the table's smallest σ (0-dim float64)."""
        if self.config.final_sigmas_type == "sigma_min":
            return self.training_sigmas[0].to(torch.float64)
        return torch.zeros((), dtype=torch.float64)

    def _init_noise_sigma(self, all_sigmas: Tensor) -> float:
        """Scale of the initial unit noise: σ_max, or sqrt(σ_max² + 1) for "leading" spacing.

        sqrt(σ² + 1) is the standard deviation of x0 + σ·ε for unit-variance x0; which of the two
        applies is decided by the spacing alone, the reference's convention, kept for parity.
        """
        largest = all_sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return largest.item()
        return ((largest**2 + 1) ** 0.5).item()

    def _set_training_schedule(self) -> None:
        """Before ``set_timesteps``: every training timestep, highest first (the reference's initial state)."""
        table = self.training_sigmas.flip(0)  # [T] decreasing
        self.sigmas = torch.cat([table, torch.zeros(1)])
        if isinstance(self.parameterization.timestep_map, ContinuousTimesteps):
            self.timesteps = self.parameterization.timestep(table)
        else:
            count = self.config.num_train_timesteps
            self.timesteps = torch.arange(count - 1, -1, -1, dtype=torch.float32)
        self.num_inference_steps = None
        self._reset_step_index()

    # ------------------------------------------------------------------ diffusers' stateful surface
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Sequence[float] | Tensor | None = None,
        sigmas: SigmaValues | None = None,
    ) -> None:
        """Prepare ``.timesteps`` (on ``device``), ``.sigmas`` (CPU, final σ appended) and
        ``.init_noise_sigma`` for a hand-written loop; resets the step counter."""
        all_sigmas, step_timesteps = self._schedule(num_inference_steps, sigmas, timesteps)
        if num_inference_steps is None:
            num_inference_steps = len(all_sigmas) - 1 if sigmas is not None else len(step_timesteps)
        self.num_inference_steps = num_inference_steps
        self.sigmas = all_sigmas
        self.timesteps = step_timesteps.to(device)
        self._reset_step_index()

    @property
    def init_noise_sigma(self) -> float:
        """Scale of the initial unit noise for the current ``.sigmas``."""
        return self._init_noise_sigma(self.sigmas)

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor) -> Tensor:
        """The network input at this step: ``sample / sqrt(σ² + 1)``, in ``sample``'s dtype."""
        return self.parameterization.scale_input(sample, self.sigmas[self._current_index(timestep)])

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerStepOutput | tuple[Tensor, Tensor]:
        """One step from the raw ``model_output`` at ``timestep`` (a value of ``.timesteps``).

        The sample is upcast to float32 for the step and the result cast to ``model_output``'s dtype.
        ``generator`` feeds steppers that draw noise (Euler's draws none).
        """
        if isinstance(timestep, int) or (isinstance(timestep, Tensor) and not timestep.is_floating_point()):
            raise ValueError(
                "step() takes a timestep value from scheduler.timesteps, not an integer index "
                f"(got {timestep!r})"
            )
        index = self._current_index(timestep)
        noise = seeded_noise(generator, model_output.device, model_output.dtype)
        context = StepContext(sigmas=self.sigmas, index=index, noise=noise)
        prev_sample, denoised, _ = self._advance(model_output, sample, self.stepper, context)
        self._step_index = index + 1
        if not return_dict:
            return prev_sample, denoised
        return SchedulerStepOutput(prev_sample=prev_sample, pred_original_sample=denoised)


def _check_request(
    config: Config, num_inference_steps: int | None, sigmas: Any, timesteps: Any
) -> None:
    """Exactly one of the three schedule requests, each valid for this config."""
    requests = (("num_inference_steps", num_inference_steps), ("sigmas", sigmas), ("timesteps", timesteps))
    given = [name for name, value in requests if value is not None]
    if len(given) != 1:
        raise ValueError(f"pass exactly one of num_inference_steps, sigmas or timesteps; got {given or 'none'}")
    if num_inference_steps is not None and not _is_positive_int(num_inference_steps):
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    if timesteps is not None:
        continuous = config.timestep_type == "continuous" and config.prediction_type == "v_prediction"
        if config.use_karras_sigmas or config.use_exponential_sigmas or continuous:
            raise ValueError(
                "custom timesteps need discrete, spaced σ: not with use_karras_sigmas, "
                "use_exponential_sigmas or continuous v-prediction timesteps; pass sigmas instead"
            )


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1
