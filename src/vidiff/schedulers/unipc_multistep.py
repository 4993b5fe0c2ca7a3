"""``UniPCMultistepScheduler``: diffusers' UniPC scheduler on vidiff's loop, flow and VP forms.

Flow form, the one every Wan checkpoint configures (``use_flow_sigmas``, ``prediction_type="flow_prediction"``,
``flow_shift`` 3 or 5, ``solver_order`` 2, ``bh2``, ``predict_x0``): the sample is the flow sample
``x = (1 − t)·x0 + t·ε`` (initial noise × 1, network input unscaled), the stepper is
:class:`~vidiff.diffusion.steppers_unipc.UniPCStepper`, which carries the previous outputs and
sample in the loop's ``history``.

Schedule, as the reference builds it: N flow times evenly spaced over [1, 1/T] (N + 1 points, the
last dropped), shifted by ``flow_shift`` (or by μ with ``use_dynamic_shifting``), stretched to
``shift_terminal``; a first t of 1 is lowered by 1e-6 (λ = log(α/σ) must stay finite); the
network is told t·T *truncated* to a whole number (computed in float64, then cut, so
``.timesteps`` are int64), and the final t is 0 (``final_sigmas_type="zero"``) or the last step's
t. With ``use_karras_sigmas`` the Karras σ of the β table become t = σ/(σ + 1), unshifted.
Custom ``sigmas`` are the N step times before the shift.

VP form (``use_flow_sigmas=False``, diffusers' default, for DDPM-trained ε / v / x0 networks): a
VP-space plan like DPM-Solver's — whole training timesteps spaced as ``timestep_spacing`` says
(N + 1 points, the lowest dropped), their σ from the β table (or Karras / exponential σ mapped
back to timesteps), the sample the DDPM latent itself; the final σ is 0 or, ``"sigma_min"``, the
table's smallest σ (Karras / exponential: their last σ).

Not supported (ValueError naming the option): ``use_beta_sigmas`` (needs SciPy), ``solver_p``,
``use_exponential_sigmas`` with flow σ, the dynamic shift without flow σ, ``flow_prediction``
without flow σ or without ``predict_x0``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from ..diffusion import flow_sigmas, sigmas as schedules
from ..diffusion import free_init as forward_process
from ..diffusion.parameterization import FLOW_PREDICTIONS, PREDICTIONS, DiscreteTimesteps, FlowTimesteps, Parameterization
from ..diffusion.plan import PlanRequest, SamplingPlan
from ..diffusion.steppers import StepContext
from ..diffusion.steppers_unipc import SOLVER_TYPES, UniPCStepper
from ..diffusion.steppers_vp import DynamicThreshold
from .base import (
    MultistepScheduler,
    SchedulerStepOutput,
    SequentialScheduler,
    check_choice,
    check_training_options,
    config_alphas_cumprod,
)

Values = Sequence[float] | np.ndarray | Tensor
# The reference maps the DPM-Solver solver types onto its own (so from_config(dpm.config) works).
SIBLING_SOLVER_TYPES = {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
FIRST_TIME_MARGIN = 1e-6  # a first flow time within this of 1 is lowered by it (the reference's eps)


@dataclasses.dataclass(frozen=True)
class UniPCMultistepConfig(Config):
    """Options of :class:`UniPCMultistepScheduler`: diffusers' names and defaults (see the module
    docstring for what vidiff supports)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear" | "squaredcos_cap_v2"
    trained_betas: tuple[float, ...] | None = None
    solver_order: int = 2  # 1, 2 or 3 (2 for guided sampling)
    prediction_type: str = "epsilon"  # Wan: "flow_prediction" (the velocity ε − x0)
    thresholding: bool = False  # dynamic thresholding of x̂0 (pixel-space models)
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    predict_x0: bool = True  # integrate the data prediction x̂0 (False: the noise prediction)
    solver_type: str = "bh2"  # B(h): "bh1" (few steps, unguided) | "bh2" (guided)
    lower_order_final: bool = True  # the last steps use at most the steps left as order
    disable_corrector: tuple[int, ...] = ()  # step indices whose following step skips the corrector
    solver_p: None = None  # an external predictor scheduler: not supported
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False  # VP form only
    use_beta_sigmas: bool = False  # not supported (needs SciPy)
    use_flow_sigmas: bool = False  # the flow form (Wan); False: the VP form
    flow_shift: float = 1.0  # Wan: 3.0 (480p) or 5.0 (720p)
    timestep_spacing: str = "linspace"  # VP form: "linspace" | "leading" | "trailing"
    steps_offset: int = 0
    final_sigmas_type: str = "zero"  # the final point: "zero" | "sigma_min" (see the module docstring)
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False  # shift by μ given to set_timesteps / plan instead
    time_shift_type: str = "exponential"  # dynamic shift: "exponential" | "linear"
    sigma_min: float | None = None  # Karras range; None: the β table's
    sigma_max: float | None = None
    shift_terminal: float | None = None  # the last t, stretched to (None or 0: off)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "solver_type", SIBLING_SOLVER_TYPES.get(self.solver_type, self.solver_type))
        check_training_options(self, PREDICTION_TYPES, min_train_timesteps=2)
        check_choice(owner, "solver_type", self.solver_type, SOLVER_TYPES)
        check_choice(owner, "solver_order", self.solver_order, (1, 2, 3))
        check_choice(owner, "final_sigmas_type", self.final_sigmas_type, ("zero", "sigma_min"))
        check_choice(owner, "time_shift_type", self.time_shift_type, flow_sigmas.TIME_SHIFT_TYPES)
        if sum(bool(v) for v in (self.use_karras_sigmas, self.use_exponential_sigmas, self.use_beta_sigmas)) > 1:
            raise ValueError(f"{owner}: use at most one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas")
        for option in ("shift_terminal", "use_dynamic_shifting"):
            if getattr(self, option) and not self.use_flow_sigmas:
                raise ValueError(f"{owner}: {option} needs use_flow_sigmas=True")
        form = "flow σ" if self.use_flow_sigmas else "use_flow_sigmas=False"
        check_choice(owner, f"prediction_type (with {form})", self.prediction_type,
                     FLOW_PREDICTIONS if self.use_flow_sigmas else PREDICTIONS)
        if self.prediction_type == "flow_prediction" and not self.predict_x0:
            raise ValueError(f"{owner}: predict_x0=False cannot integrate flow_prediction outputs; set predict_x0=True")
        check_choice(owner, "use_beta_sigmas", bool(self.use_beta_sigmas), (False,))
        if self.use_flow_sigmas:
            check_choice(owner, "use_exponential_sigmas (with flow σ)", bool(self.use_exponential_sigmas), (False,))
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.disable_corrector):
            raise ValueError(f"{owner}: disable_corrector must be a list of step indices, got {self.disable_corrector!r}")
        if not self.flow_shift > 0:
            raise ValueError(f"{owner}: flow_shift must be a positive number, got {self.flow_shift!r}")


class UniPCMultistepScheduler(MultistepScheduler):
    """UniPC multistep sampling (Zhao et al. 2023): Wan's default scheduler (flow form), or a
    DDPM-trained network's (VP form).

    ``UniPCMultistepScheduler.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")`` reads
    ``scheduler/scheduler_config.json``; ``scheduler.plan(50)`` is what vidiff's pipelines sample
    with; ``set_timesteps`` / ``step`` are diffusers' stateful surface over the same pieces.
    """

    config_class = UniPCMultistepConfig
    config: UniPCMultistepConfig
    order = 1
    init_noise_sigma = 1.0  # both forms start from unit noise (the flow / VP sample at the first point)

    def __init__(self, config: Config | dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        cfg = self.config
        self.alphas_cumprod = config_alphas_cumprod(cfg, finite_terminal=True)  # [T] float32
        self.training_sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)  # [T], increasing
        if cfg.use_flow_sigmas:
            timestep_map = FlowTimesteps(cfg.num_train_timesteps, truncate=True)
        else:
            timestep_map = DiscreteTimesteps(schedules.log_sigmas(self.training_sigmas))
        form = "flow" if cfg.use_flow_sigmas else "vp"
        self.parameterization = Parameterization(cfg.prediction_type, timestep_map, form)
        self.stepper = UniPCStepper(
            prediction=cfg.prediction_type,
            form=form,
            order=cfg.solver_order,
            solver_type=cfg.solver_type,
            predict_x0=bool(cfg.predict_x0),
            lower_order_final=bool(cfg.lower_order_final),
            disable_corrector=tuple(cfg.disable_corrector),
            limit=DynamicThreshold(cfg.dynamic_thresholding_ratio, cfg.sample_max_value) if cfg.thresholding else None,
        )
        # The reference's state before set_timesteps: the β table's σ and every training timestep.
        self.sigmas = self.training_sigmas
        self.timesteps = torch.arange(cfg.num_train_timesteps - 1, -1, -1, dtype=torch.float32)
        self._reset_steps()

    # ------------------------------------------------------------------ the schedule
    honours = frozenset({"sigmas", "strength", "mu"})
    refusal_reasons = {
        **SequentialScheduler.refusal_reasons,
        "timesteps": "its timesteps follow from its flow times; pass num_inference_steps or sigmas",
    }

    def _plan(self, request: PlanRequest, parameterization: Parameterization) -> SamplingPlan:
        """The plan for ``num_inference_steps`` steps or custom ``sigmas`` (the N step times before
        the shift), with ``mu`` for ``use_dynamic_shifting``. Its timesteps are the reference's
        whole-number ``.timesteps`` as float32, on ``device``; its σ (flow times) stay on the CPU."""
        sigmas, timesteps = self._schedule(request.num_inference_steps, request.sigmas, request.mu)
        stepper = self.stepper
        if parameterization.prediction != stepper.prediction:
            stepper = dataclasses.replace(stepper, prediction=parameterization.prediction)
        return SamplingPlan(
            sigmas=sigmas,
            timesteps=timesteps.to(device=request.device, dtype=torch.float32),
            parameterization=parameterization,
            stepper=stepper,
            init_noise_sigma=self.init_noise_sigma,
            # VP form: the loop's ᾱ bookkeeping (the stepper forms its own α, σ from σ).
            alphas_cumprod=None if self.config.use_flow_sigmas else 1 / (sigmas**2 + 1),
        )

    def _schedule(self, num_inference_steps: int | None, sigmas: Values | None, mu: float | None) -> tuple[Tensor, Tensor]:
        """(flow times incl. the final one [N+1] float32 CPU, network timesteps [N] int64 CPU)."""
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("mu must be given when use_dynamic_shifting is true (the resolution-dependent shift)")
        if sigmas is not None and not cfg.use_flow_sigmas:
            raise ValueError("custom sigmas need use_flow_sigmas=True (the reference's rule); pass num_inference_steps")
        given = None if sigmas is None else _as_array(sigmas)
        if given is None:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        num_steps = len(given) if given is not None else num_inference_steps
        if not cfg.use_flow_sigmas:
            return self._vp_schedule(num_steps)
        times = self._karras_times(given, num_steps) if cfg.use_karras_sigmas else self._shifted_times(given, num_steps, mu)
        timesteps = torch.from_numpy(times * cfg.num_train_timesteps).to(torch.int64)  # truncated, as the reference casts
        last = times[-1] if cfg.final_sigmas_type == "sigma_min" else 0
        return torch.from_numpy(np.concatenate([times, [last]]).astype(np.float32)), timesteps

    def _shifted_times(self, given: np.ndarray | None, num_steps: int, mu: float | None) -> np.ndarray:
        """The N step times: evenly spaced (or ``given``), shifted, stretched, first one kept below 1."""
        cfg = self.config
        if given is not None and not (given <= 1).all():
            raise ValueError(f"sigmas must be flow times in (0, 1], got {given.tolist()}")
        times = np.linspace(1, 1 / cfg.num_train_timesteps, num_steps + 1)[:-1] if given is None else given.copy()
        if cfg.use_dynamic_shifting:
            times = flow_sigmas.time_shift(times, mu, cfg.time_shift_type)
        else:
            times = flow_sigmas.shift_sigmas(times, cfg.flow_shift)
        if cfg.shift_terminal:
            times = flow_sigmas.stretch_to_terminal(times, cfg.shift_terminal)
        if np.fabs(times[0] - 1) < FIRST_TIME_MARGIN:
            times[0] -= FIRST_TIME_MARGIN  # at t = 1, α = 0 and λ = log(α/σ) is −∞
        return times

    def _karras_times(self, given: np.ndarray | None, num_steps: int) -> np.ndarray:
        """Karras σ over the β table's range (or ``given``'s), as flow times σ/(σ + 1), unshifted."""
        cfg = self.config
        table = given if given is not None else (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
        table = np.flip(table)  # the reference flips whatever it is given
        sigma_min = cfg.sigma_min if cfg.sigma_min is not None else table[-1].item()
        sigma_max = cfg.sigma_max if cfg.sigma_max is not None else table[0].item()
        karras = flow_sigmas.karras_sigmas(num_steps, sigma_min, sigma_max)
        return karras / (karras + 1)

    def _vp_schedule(self, num_steps: int) -> tuple[Tensor, Tensor]:
        """The VP form's (σ incl. the final one [N+1] float32, whole timesteps [N] int64)."""
        cfg = self.config
        table = self.training_sigmas  # [T] float32, increasing with t
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas:
            flipped = table.flip(0)
            sigma_min = cfg.sigma_min if cfg.sigma_min is not None else flipped[-1].item()
            sigma_max = cfg.sigma_max if cfg.sigma_max is not None else flipped[0].item()
            spread = flow_sigmas.karras_sigmas if cfg.use_karras_sigmas else flow_sigmas.exponential_sigmas
            step_sigmas = spread(num_steps, sigma_min, sigma_max)  # float64 numpy
            fractional = _fractional_timesteps(step_sigmas, schedules.log_sigmas(table).numpy())
            timesteps = torch.from_numpy(fractional.round() if cfg.use_karras_sigmas else fractional).to(torch.int64)
            last = step_sigmas[-1] if cfg.final_sigmas_type == "sigma_min" else 0
        else:
            timesteps = schedules.solver_spaced_timesteps(
                cfg.timestep_spacing, num_steps, cfg.num_train_timesteps, cfg.num_train_timesteps, cfg.steps_offset
            )
            step_sigmas = schedules.interpolate_sigmas(table, timesteps).numpy()
            last = table[0].item() if cfg.final_sigmas_type == "sigma_min" else 0
        return torch.from_numpy(np.concatenate([step_sigmas, [last]]).astype(np.float32)), timesteps

    # ------------------------------------------------------------------ diffusers' stateful surface
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        sigmas: Values | None = None,
        mu: float | None = None,
    ) -> None:
        """Prepare ``.timesteps`` (int64, on ``device``) and ``.sigmas`` (float32 CPU, final t
        appended) for a hand-written loop; resets the step counter and the solver's history."""
        self.sigmas, step_timesteps = self._schedule(num_inference_steps, sigmas, mu)
        self.timesteps = step_timesteps.to(device)
        self.num_inference_steps = len(step_timesteps)
        self._reset_steps()

    def scale_model_input(self, sample: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The network input is the flow sample itself: returned unchanged."""
        return sample

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The sample at ``timesteps`` (one per batch item): (1 − t)·x0 + t·noise in the flow form,
        α·x0 + σ·α·noise (α = 1/sqrt(σ² + 1)) in the VP form."""
        t = self._noise_levels(timesteps, original_samples)  # [B, 1, …]
        if self.config.use_flow_sigmas:
            return forward_process.diffuse_flow(original_samples, noise, t)
        alpha = 1 / ((t**2 + 1) ** 0.5)
        return alpha * original_samples + t * alpha * noise

    def step(
        self, model_output: Tensor, timestep: int | Tensor, sample: Tensor, return_dict: bool = True
    ) -> SchedulerStepOutput | tuple[Tensor]:
        """One UniPC step (corrector, then predictor) from the raw ``model_output`` at ``timestep``
        (a value of ``.timesteps``). The result keeps ``sample``'s dtype, as in the reference."""
        self._check_timesteps_set()
        index = self._current_index(timestep)
        context = StepContext(sigmas=self.sigmas, index=index, history=self._history)
        prev_sample, _, self._history = self._advance(model_output, sample, self.stepper, context)
        self._step_index = index + 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerStepOutput(prev_sample=prev_sample)


def _fractional_timesteps(sigmas: np.ndarray, log_table: np.ndarray) -> np.ndarray:
    """The fractional training timestep of each σ: linear in log σ between the float32 table's
    neighbours (k-diffusion's ``sigma_to_t``), one σ at a time in the reference's mixed precision
    (float64 log σ, float32 neighbour difference). [N] float64."""
    result = []
    for sigma in sigmas:
        log_sigma = np.log(np.maximum(sigma, 1e-10))
        low = min(int(np.cumsum(log_sigma - log_table >= 0).argmax()), len(log_table) - 2)
        weight = np.clip((log_table[low] - log_sigma) / (log_table[low] - log_table[low + 1]), 0, 1)
        result.append((1 - weight) * low + weight * (low + 1))
    return np.array(result)


def _as_array(values: Values) -> np.ndarray:
    """Custom ``sigmas`` as a 1-D numpy array of positive numbers: float64 from a list, a numpy
    array's own dtype (the reference computes in it)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.array(values, dtype=np.float64) if not isinstance(values, np.ndarray) else values.copy()
    if array.ndim != 1 or len(array) < 1 or not np.isfinite(array).all() or not (array > 0).all():
        raise ValueError(f"sigmas must be a non-empty 1-D list of positive numbers, got {values!r}")
    return array
