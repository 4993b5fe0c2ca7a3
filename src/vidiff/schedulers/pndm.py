"""``PNDMScheduler``: diffusers' PNDM scheduler in its PLMS form (``skip_prk_steps=True``), in VP space.

Stable Diffusion 1.5 repositories ship this scheduler (``skip_prk_steps: true``,
``set_alpha_to_one: false``, ``steps_offset: 1``). The reference's schedule, reproduced here:

* N steps visit N + 1 timesteps, the second one twice (N = 5, leading spacing, offset 1:
  801, 601, 601, 401, 201, 1): the second evaluation is a warm-up correction of the first step;
* each step goes from t to t − T // N, not to the next listed timestep (the warm-up step goes
  from t + T // N to t), and below t = 0 to the final ᾱ (1 with ``set_alpha_to_one``, else ᾱ₀);
* ``steps_offset`` counts only for leading spacing; ``rescale_betas_zero_snr`` is not an option
  (a config that carries it keeps it aside, unused); v-prediction is honoured.

The Runge–Kutta warm-up (``skip_prk_steps=False``, the reference's default, e.g. after
``PNDMScheduler.from_config(ddim.config)``) is implemented too: 12 warm-up evaluations, N + 9 in
all, and at least 4 steps (the reference fails below that). The stepper is
:class:`~vidiff.diffusion.steppers_pndm.PLMSStepper`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from ..config import Config
from ..diffusion import sigmas as schedules
from ..diffusion.parameterization import DiscreteTimesteps, Parameterization
from ..diffusion.plan import PlanRequest, SamplingPlan, strength_start
from ..diffusion.steppers import StepContext
from ..diffusion.steppers_pndm import RUNGE_KUTTA_EVALUATIONS, PLMSStepper
from .base import Scheduler, SchedulerStepOutput, check_training_options
from .vp_discrete import as_timestep, check_step_count, plan_sigmas

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclasses.dataclass(frozen=True)
class PNDMConfig(Config):
    """Options of :class:`PNDMScheduler`: diffusers' names and defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear" | "squaredcos_cap_v2"
    trained_betas: tuple[float, ...] | None = None
    skip_prk_steps: bool = False  # True: PLMS with a repeated-step warm-up; False: Runge–Kutta warm-up
    set_alpha_to_one: bool = False  # the last step lands on ᾱ = 1 (else on ᾱ₀)
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction"
    timestep_spacing: str = "leading"  # "linspace" | "leading" | "trailing"
    steps_offset: int = 0  # added to "leading" timesteps only

    def __post_init__(self) -> None:
        check_training_options(self, PREDICTION_TYPES)
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ValueError(
                f"PNDMConfig: trained_betas must hold num_train_timesteps={self.num_train_timesteps} values, "
                f"got {len(self.trained_betas)}"
            )


class PNDMScheduler(Scheduler):
    """Pseudo numerical methods for diffusion models (Liu et al. 2022), PLMS form.

    ``PNDMScheduler.from_pretrained(sd15_repo)`` reads ``scheduler/scheduler_config.json``;
    ``scheduler.plan(25)`` is what vidiff's pipelines sample with (26 network evaluations).
    """

    config_class = PNDMConfig
    config: PNDMConfig
    order = 1
    init_noise_sigma = 1.0  # VP sample: the initial latents are unit noise
    # strength: the reference's image/video-to-video cut, the PLMS warm-up restarting there (plan_tail)
    honours = frozenset({"strength"})
    native_strength = True

    def __init__(self, config: Config | dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        cfg = self.config
        # PNDM has no zero-terminal-SNR option: the plain β table, whatever the config carries.
        self.alphas_cumprod = schedules.training_alphas_cumprod(
            cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.trained_betas
        )
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0].clone()
        table_sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.parameterization = Parameterization(
            cfg.prediction_type, DiscreteTimesteps(schedules.log_sigmas(table_sigmas)), space="vp"
        )
        self.timesteps = torch.arange(cfg.num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._reset()

    # ------------------------------------------------------------------ the schedule
    def _plms_timesteps(self, num_inference_steps: int) -> Tensor:
        """The timesteps PNDM evaluates, highest first. [M] int64.

        ``skip_prk_steps``: N + 1 (N = 1: one), the second repeated. Otherwise the Runge–Kutta
        warm-up's 12 (three blocks t, t − h, t − h, t − 2h over the highest four spaced steps, h =
        T // N // 2) and then the spaced steps from the fourth highest down: N + 9.
        """
        cfg = self.config
        check_step_count("num_inference_steps", num_inference_steps, cfg.num_train_timesteps)
        if not cfg.skip_prk_steps and num_inference_steps < 4:
            raise ValueError(
                f"PNDMScheduler with skip_prk_steps=False needs num_inference_steps ≥ 4 (its Runge-Kutta "
                f"warm-up spans 3 steps), got {num_inference_steps}; pass skip_prk_steps=True for fewer steps"
            )
        offset = cfg.steps_offset if cfg.timestep_spacing == "leading" else 0
        spaced = schedules.integer_spaced_timesteps(
            cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, offset
        )  # [N] highest first
        if cfg.skip_prk_steps:
            return torch.cat([spaced[:1], spaced[1:2], spaced[1:]])
        half = cfg.num_train_timesteps // num_inference_steps // 2
        highest = spaced[:4].flip(0)  # [4] ascending: the warm-up covers the first three steps
        points = torch.stack([highest, highest + half], dim=1).flatten()  # [8]: t, t + h for each
        # Every point but the last twice, the outer two once: 12 evaluations, highest first.
        warm_up = points[:-1].repeat_interleave(2)[1:-1].flip(0)
        return torch.cat([warm_up, spaced[3:]])  # PLMS from the fourth highest down

    def _alpha(self, timesteps: Tensor) -> Tensor:
        """ᾱ at int64 ``timesteps``: the table, or the final ᾱ below t = 0."""
        count = len(self.alphas_cumprod)
        if timesteps.numel() and timesteps.max() >= count:
            raise ValueError(
                f"timesteps must lie below num_train_timesteps={count}, got {timesteps.max().item()}; "
                "check steps_offset and the step count"
            )
        inside = self.alphas_cumprod[timesteps.clamp(min=0)]
        return torch.where(timesteps >= 0, inside, self.final_alpha_cumprod)

    def _step_alphas(self, timesteps: Tensor, num_inference_steps: int) -> tuple[Tensor, Tensor]:
        """(ᾱ each step starts from [M], ᾱ it lands on [M]) of the plan's evaluations."""
        starts, targets = zip(*(self._step_range(timesteps, i, int(t), num_inference_steps) for i, t in enumerate(timesteps)))
        return self._alpha(torch.tensor(starts)), self._alpha(torch.tensor(targets))

    def _step_range(self, timesteps: Tensor, index: int, timestep: int, num_inference_steps: int) -> tuple[int, int]:
        """(t the step's formula starts from, t it lands on) for evaluation ``index`` told ``timestep``.

        PLMS: t → t − T//N (the repeated warm-up step: t + T//N → t). Runge–Kutta stage k of a
        block started at t_s: from t_s to the told t − h for even k, to the told t for odd k.
        """
        stride = self.config.num_train_timesteps // num_inference_steps
        if not self.config.skip_prk_steps:
            if index < RUNGE_KUTTA_EVALUATIONS:
                half = 0 if index % 2 else stride // 2
                return int(timesteps[index // 4 * 4]), timestep - half
            return timestep, timestep - stride
        if index == 1:
            return timestep + stride, timestep
        return timestep, timestep - stride

    def _plan(self, request: PlanRequest, parameterization: Parameterization) -> SamplingPlan:
        """The plan for ``num_inference_steps`` PLMS steps: N + 1 evaluations, σ [N + 2] incl. the final one."""
        timesteps = self._plms_timesteps(request.num_inference_steps)  # [M]
        if request.strength is not None:  # of N steps skip N − int(N·strength), as the reference's pipelines
            timesteps = self._cut(timesteps, strength_start(request.num_inference_steps, request.strength))
        return self._plan_of(timesteps, request.num_inference_steps, parameterization, request.device)

    def plan_tail(self, num_inference_steps: int | None, start: int, **options: Any) -> SamplingPlan:
        """The PLMS plan over the evaluations ``timesteps[start:]``, as the reference's image/video-to-video
        pipelines run it: its step counter restarts at the cut, so the warm-up (one plain step, then
        the repeated step back from the first sample) happens again from there, each step's size
        still ``T // N``. Only with ``skip_prk_steps`` (the Runge–Kutta warm-up cannot be cut)."""
        if start == 0:
            return self.plan(num_inference_steps, **options)
        given = sorted(name for name, value in options.items() if value is not None and name != "device")
        if given:
            raise ValueError(f"PNDMScheduler cannot honour {given} when starting part-way; pass num_inference_steps only")
        timesteps = self._cut(self._plms_timesteps(num_inference_steps), start)
        return self._plan_of(timesteps, num_inference_steps, self.parameterization, options.get("device"))

    def _cut(self, timesteps: Tensor, start: int) -> Tensor:
        """``timesteps[start:]``, checked: PLMS only (the Runge–Kutta warm-up cannot be cut), some left."""
        if start and not self.config.skip_prk_steps:
            raise ValueError(
                "PNDMScheduler with skip_prk_steps=False cannot start part-way (its Runge-Kutta warm-up spans the "
                "first steps); use skip_prk_steps=True, DDIM or Euler for image/video-to-video"
            )
        if start >= len(timesteps):
            raise ValueError(f"starting at evaluation {start} leaves none of the {len(timesteps)} PLMS evaluations")
        return timesteps[start:]

    def _plan_of(self, timesteps: Tensor, num_inference_steps: int, parameterization: Parameterization, device: Any) -> SamplingPlan:
        """The plan evaluating ``timesteps`` [M] in order, the step counter from 0, steps of ``T // num_inference_steps``."""
        alphas_from, alphas_to = self._step_alphas(timesteps, num_inference_steps)
        points = torch.cat([self._alpha(timesteps), alphas_to[-1:]])  # [M+1]: evaluation levels, final
        return SamplingPlan(
            sigmas=plan_sigmas(points),
            timesteps=timesteps.to(device=device, dtype=torch.float32),
            parameterization=parameterization,
            stepper=PLMSStepper(parameterization.prediction, alphas_from, alphas_to, not self.config.skip_prk_steps),
            init_noise_sigma=self.init_noise_sigma,
            alphas_cumprod=points,
        )

    # ------------------------------------------------------------------ diffusers' stateful surface
    def _reset(self) -> None:
        self.counter = 0  # network evaluations stepped since set_timesteps
        self._history: tuple[Tensor, ...] = ()

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Prepare ``.timesteps`` (int64, N + 1 of them, on ``device``); resets the multistep history."""
        self.timesteps = self._plms_timesteps(num_inference_steps).to(device)
        self.num_inference_steps = num_inference_steps
        self._reset()

    def scale_model_input(self, sample: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The network input is the VP sample itself: returned unchanged."""
        return sample

    def step(
        self, model_output: Tensor, timestep: int | Tensor, sample: Tensor, return_dict: bool = True
    ) -> SchedulerStepOutput | tuple[Tensor]:
        """One PLMS step from the raw ``model_output`` at the whole ``timestep`` (the next of ``.timesteps``).

        As in the reference, the step goes from ``timestep`` to ``timestep − T // N`` (the second
        call: from ``timestep + T // N`` back to ``timestep``, restarting from the first sample).
        Float32 inside; the sample comes back in ``model_output``'s dtype.
        """
        self._check_timesteps_set()
        index = self.counter
        start, target = self._step_range(self.timesteps.cpu(), index, as_timestep(timestep), self.num_inference_steps)
        alpha_from, alpha_to = self._alpha(torch.tensor([start])), self._alpha(torch.tensor([target]))  # [1] each
        # Tables long enough for this step's index; only entry ``index`` is read.
        stepper = PLMSStepper(
            self.parameterization.prediction, alpha_from.expand(index + 1), alpha_to.expand(index + 1),
            not self.config.skip_prk_steps,
        )
        points = torch.cat([alpha_from.expand(index + 1), alpha_to])  # [index + 2]
        context = StepContext(sigmas=plan_sigmas(points), index=index, history=self._history, alphas_cumprod=points)
        prev_sample, _, self._history = self._advance(model_output, sample, stepper, context)
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerStepOutput(prev_sample=prev_sample)
