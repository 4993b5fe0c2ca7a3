"""``DPMSolverMultistepScheduler``: diffusers' DPM-Solver(++) multistep scheduler on vidiff's loop.

The config is diffusers' (same option names and defaults). ``plan`` builds a VP-space
:class:`~vidiff.diffusion.loop.SamplingPlan`: the sample is the DDPM latent itself (initial noise
× 1, network input unscaled), its σ list is the reference's (whole training timesteps, optionally
Karras / exponential / uniform-λ σ mapped back to timesteps), and the stepper is
:class:`~vidiff.diffusion.steppers_dpm.DPMSolverStepper`, which carries the previous outputs in
the loop's ``history``. ``set_timesteps`` / ``scale_model_input`` / ``step`` are diffusers'
stateful surface over the same pieces.

Not supported (ValueError naming the option): the flow-matching options (``use_flow_sigmas``,
``prediction_type="flow_prediction"``, ``use_dynamic_shifting``), ``use_beta_sigmas`` (needs
SciPy) and learned variances (``variance_type``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from ..diffusion import sigmas as schedules
from ..diffusion.noise import given_noise, seeded_noise
from ..diffusion.parameterization import PREDICTIONS, DiscreteTimesteps, Parameterization
from ..diffusion.plan import PlanRequest, SamplingPlan
from ..diffusion.steppers import StepContext
from ..diffusion.steppers_dpm import ALGORITHMS, SOLVER_TYPES, DPMSolverStepper
from ..diffusion.steppers_vp import DynamicThreshold
from .base import (
    MultistepScheduler,
    SchedulerStepOutput,
    check_choice,
    check_sigma_options,
    check_training_options,
    config_alphas_cumprod,
)

# Options of the reference's sibling solvers that it maps onto its own (DEIS → DPM-Solver++ with
# the midpoint rule), so that ``from_config(deis.config)`` works; kept for parity.
SIBLING_ALGORITHMS = {"deis": "dpmsolver++"}
SIBLING_SOLVER_TYPES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}


@dataclasses.dataclass(frozen=True)
class DPMSolverMultistepConfig(Config):
    """Options of :class:`DPMSolverMultistepScheduler`: diffusers' names and defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear" | "squaredcos_cap_v2"
    trained_betas: tuple[float, ...] | None = None
    solver_order: int = 2  # 1, 2 or 3 (2 for guided sampling, 3 unguided)
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" | "sample"
    thresholding: bool = False  # dynamic thresholding of x̂0 (pixel-space models)
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    algorithm_type: str = "dpmsolver++"  # "dpmsolver++" | "sde-dpmsolver++" | "dpmsolver" | "sde-dpmsolver"
    solver_type: str = "midpoint"  # second-order rule: "midpoint" | "heun"
    lower_order_final: bool = True  # under 15 steps, end with first/second-order steps
    euler_at_final: bool = False  # always end with a first-order step
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False  # not supported
    use_lu_lambdas: bool = False  # σ uniform in λ = −log σ (Lu et al. 2022b)
    use_flow_sigmas: bool = False  # not supported
    flow_shift: float = 1.0  # flow matching only; kept for the config round trip
    final_sigmas_type: str = "zero"  # last σ: "zero" | "sigma_min" (the table's smallest σ)
    lambda_min_clipped: float = -float("inf")  # skip the timesteps whose λ is below this
    variance_type: str | None = None  # only None ("learned" variances are not supported)
    timestep_spacing: str = "linspace"  # "linspace" | "leading" | "trailing"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False  # not supported (flow matching)
    time_shift_type: str = "exponential"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        # Frozen dataclass: the reference's sibling-option mapping rewrites the field in place.
        object.__setattr__(self, "algorithm_type", SIBLING_ALGORITHMS.get(self.algorithm_type, self.algorithm_type))
        object.__setattr__(self, "solver_type", SIBLING_SOLVER_TYPES.get(self.solver_type, self.solver_type))
        check_training_options(self, PREDICTIONS, min_train_timesteps=2)
        check_choice(owner, "algorithm_type", self.algorithm_type, ALGORITHMS)
        check_choice(owner, "solver_type", self.solver_type, SOLVER_TYPES)
        check_choice(owner, "solver_order", self.solver_order, (1, 2, 3))
        check_sigma_options(self)
        check_choice(owner, "variance_type", self.variance_type, (None,))
        for option in ("use_flow_sigmas", "use_dynamic_shifting"):
            check_choice(owner, option, bool(getattr(self, option)), (False,))
        check_choice(owner, "time_shift_type", self.time_shift_type, ("exponential",))
        if self.algorithm_type == "sde-dpmsolver" and self.solver_order == 3:
            raise ValueError(f"{owner}: solver_order=3 has no sde-dpmsolver form; use 1 or 2, or sde-dpmsolver++")
        if not self.algorithm_type.endswith("++") and self.final_sigmas_type == "zero":
            raise ValueError(
                f"{owner}: final_sigmas_type='zero' needs a dpmsolver++ algorithm_type; "
                f"use final_sigmas_type='sigma_min' with {self.algorithm_type!r}"
            )


class DPMSolverMultistepScheduler(MultistepScheduler):
    """DPM-Solver / DPM-Solver++ multistep sampling (Lu et al. 2022) over a DDPM-trained network.

    ``DPMSolverMultistepScheduler.from_pretrained(repo, use_karras_sigmas=True)`` reads
    ``scheduler/scheduler_config.json``; ``scheduler.plan(25)`` is what vidiff's pipelines sample with.
    """

    config_class = DPMSolverMultistepConfig
    config: DPMSolverMultistepConfig
    order = 1
    init_noise_sigma = 1.0  # VP sample: the initial latents are unit noise

    def __init__(self, config: Config | dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        cfg = self.config
        alphas_cumprod = config_alphas_cumprod(cfg, finite_terminal=True)
        self.alphas_cumprod = alphas_cumprod  # [T] float32
        self.training_sigmas = schedules.sigmas_from_alphas_cumprod(alphas_cumprod)  # [T], increasing
        self._sigma_to_timestep = DiscreteTimesteps(schedules.log_sigmas(self.training_sigmas))
        self.parameterization = Parameterization(cfg.prediction_type, self._sigma_to_timestep, space="vp")
        self.stepper = DPMSolverStepper(
            prediction=cfg.prediction_type,
            algorithm=cfg.algorithm_type,
            order=cfg.solver_order,
            solver_type=cfg.solver_type,
            lower_order_final=bool(cfg.lower_order_final),
            euler_at_final=bool(cfg.euler_at_final),
            final_sigma_is_zero=cfg.final_sigmas_type == "zero",
            limit=DynamicThreshold(cfg.dynamic_thresholding_ratio, cfg.sample_max_value) if cfg.thresholding else None,
        )
        # The reference's state before set_timesteps: the training table, every timestep.
        self.sigmas = self.training_sigmas
        self.timesteps = torch.arange(cfg.num_train_timesteps - 1, -1, -1, dtype=torch.float32)
        self._reset_steps()

    # ------------------------------------------------------------------ the schedule
    honours = frozenset({"timesteps", "strength"})

    def _plan(self, request: PlanRequest, parameterization: Parameterization) -> SamplingPlan:
        """The sampling plan for ``num_inference_steps`` steps, or for custom whole ``timesteps``.

        The plan's timesteps (float32 values of whole training steps) go on ``device``; its σ stay
        on the CPU. Its ᾱ table is 1/(σ² + 1) at each plan point (the loop's VP bookkeeping; the
        stepper forms its own α, σ from σ exactly as the reference does).
        """
        all_sigmas, step_timesteps = self._schedule(request.num_inference_steps, request.timesteps)
        stepper = self.stepper
        if parameterization.prediction != stepper.prediction:
            stepper = dataclasses.replace(stepper, prediction=parameterization.prediction)
        return SamplingPlan(
            sigmas=all_sigmas,
            timesteps=step_timesteps.to(device=request.device, dtype=torch.float32),
            parameterization=parameterization,
            stepper=stepper,
            init_noise_sigma=self.init_noise_sigma,
            alphas_cumprod=1 / (all_sigmas**2 + 1),
        )

    def _schedule(self, num_inference_steps: int | None, timesteps: Any) -> tuple[Tensor, Tensor]:
        """(σ list incl. the final σ [N+1] float32 CPU, network timesteps [N] int64 CPU)."""
        cfg = self.config
        self._check_request(num_inference_steps, timesteps)
        if timesteps is not None:
            spaced = torch.as_tensor(timesteps).detach().cpu().flatten().to(torch.int64)
        else:
            spaced = schedules.solver_spaced_timesteps(
                cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps,
                self._last_timestep(), cfg.steps_offset,
            )
        step_sigmas, spaced = self._step_sigmas(spaced, num_inference_steps)
        final = self.training_sigmas[0] if cfg.final_sigmas_type == "sigma_min" else torch.zeros(())
        return torch.cat([step_sigmas, final.to(torch.float64).reshape(1)]).to(torch.float32), spaced

    def _last_timestep(self) -> int:
        """One past the highest timestep whose λ = log(α/σ_VP) is ≥ ``lambda_min_clipped`` (T by default)."""
        alpha = self.alphas_cumprod.sqrt()
        sigma_vp = (1 - self.alphas_cumprod).sqrt()
        log_snr = torch.log(alpha) - torch.log(sigma_vp)  # [T], decreasing with t
        clipped = torch.searchsorted(log_snr.flip(0), self.config.lambda_min_clipped)
        return self.config.num_train_timesteps - int(clipped)

    def _step_sigmas(self, spaced: Tensor, num_steps: int | None) -> tuple[Tensor, Tensor]:
        """σ of each step (float64) and the whole timesteps the network is told."""
        cfg = self.config
        table = self.training_sigmas
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas:
            sigma_min, sigma_max = self._sigma_range()
            if cfg.use_karras_sigmas:
                sigmas = schedules.karras_sigmas(num_steps, sigma_min, sigma_max)
            else:
                sigmas = schedules.exponential_sigmas(num_steps, sigma_min, sigma_max)
            return sigmas, self._timesteps_of(sigmas, rounded=cfg.use_karras_sigmas)
        if cfg.use_lu_lambdas:
            log_table = schedules.log_sigmas(table)  # [T] float32, as the reference's numpy log
            sigmas = schedules.log_uniform_sigmas(num_steps, log_table[0].item(), log_table[-1].item())
            return sigmas, self._timesteps_of(sigmas, rounded=True)
        return schedules.interpolate_sigmas(table, spaced), spaced

    def _sigma_range(self) -> tuple[float, float]:
        """(σ_min, σ_max) for Karras / exponential σ: the table's ends, unless the config carries
        ``sigma_min`` / ``sigma_max`` from another scheduler (the reference reads them when present)."""
        extra = self.config.extra
        sigma_min = extra.get("sigma_min")
        sigma_max = extra.get("sigma_max")
        return (
            sigma_min if sigma_min is not None else self.training_sigmas[0].item(),
            sigma_max if sigma_max is not None else self.training_sigmas[-1].item(),
        )

    def _timesteps_of(self, sigmas: Tensor, rounded: bool) -> Tensor:
        """Whole timesteps for σ not on the table: the fractional t, rounded (Karras, uniform λ,
        except for the cosine schedule) or truncated, as the reference casts to int64.

        The fractional t must stay float64 here (unlike the loop's float32
        :class:`DiscreteTimesteps`): truncation turns t = 998.99999 into 998, and the first Karras
        σ lands just there. The interpolation mirrors the reference's mixed precision: float64 log σ
        against the float32 log table, whose neighbour difference rounds in float32.
        """
        log_table = self._sigma_to_timestep.log_sigmas  # [T] float32, increasing
        log_sigma = torch.from_numpy(np.log(np.maximum(sigmas.numpy(), 1e-10)))  # [N] float64
        low = ((log_table[:, None] <= log_sigma[None, :]).sum(0) - 1).clamp(0, len(log_table) - 2)  # [N]
        spread = (log_table[low] - log_table[low + 1]).to(torch.float64)  # float32 difference
        weight = ((log_table[low].to(torch.float64) - log_sigma) / spread).clamp(0, 1)
        timesteps = (1 - weight) * low + weight * (low + 1)  # [N] float64
        if rounded and self.config.beta_schedule != "squaredcos_cap_v2":
            timesteps = timesteps.round()
        return timesteps.to(torch.int64)

    def _check_request(self, num_inference_steps: int | None, timesteps: Any) -> None:
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        if num_inference_steps is not None:
            count = num_inference_steps
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"num_inference_steps must be a positive int, got {count!r}")
        elif cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_lu_lambdas:
            raise ValueError(
                "custom timesteps cannot be combined with use_karras_sigmas, use_exponential_sigmas or use_lu_lambdas"
            )

    # ------------------------------------------------------------------ diffusers' stateful surface
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        mu: float | None = None,
        timesteps: Sequence[int] | Tensor | None = None,
    ) -> None:
        """Prepare ``.timesteps`` (int64, on ``device``) and ``.sigmas`` (CPU, final σ appended) for a
        hand-written loop; resets the step counter and the solver's history. ``mu`` (flow matching's
        dynamic shift) is not supported."""
        if mu is not None:
            raise ValueError("mu is flow matching's dynamic shift (use_dynamic_shifting); vidiff does not support it")
        self.sigmas, step_timesteps = self._schedule(num_inference_steps, timesteps)
        self.timesteps = step_timesteps.to(device)
        self.num_inference_steps = len(step_timesteps)
        self._reset_steps()

    def scale_model_input(self, sample: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The network input is the VP sample itself: returned unchanged."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        variance_noise: Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerStepOutput | tuple[Tensor]:
        """One solver step from the raw ``model_output`` at ``timestep`` (a value of ``.timesteps``).

        The SDE algorithms draw float32 noise from ``generator`` (or take ``variance_noise``). The
        result is cast to ``model_output``'s dtype; ``pred_original_sample`` is None, as in the reference.
        """
        self._check_timesteps_set()
        index = self._current_index(timestep)
        noise = seeded_noise(generator, model_output.device, torch.float32)  # the reference's float32 draw
        if variance_noise is not None:
            noise = given_noise(variance_noise.to(device=model_output.device, dtype=torch.float32))
        context = StepContext(
            sigmas=self.sigmas, index=index, history=self._history, noise=noise, alphas_cumprod=1 / (self.sigmas**2 + 1)
        )
        # The stepper converts the raw output itself; the x̂0 advance() forms only fills the signature.
        prev_sample, _, self._history = self._advance(model_output, sample, self.stepper, context)
        self._step_index = index + 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerStepOutput(prev_sample=prev_sample)
