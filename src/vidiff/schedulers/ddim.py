"""``DDIMScheduler``: diffusers' DDIM scheduler on vidiff's core, sampling in VP space.

The config is diffusers' (same option names and defaults). ``plan`` builds a
:class:`~vidiff.diffusion.loop.SamplingPlan` whose parameterization works on the VP sample and
whose stepper is :class:`~vidiff.diffusion.steppers_vp.DDIMStepper`; ``set_timesteps`` /
``scale_model_input`` / ``step`` offer diffusers' stateful surface over the same pieces.

Step i goes from ᾱ(t_i) to ᾱ(t_i − T // N) (or the final ᾱ below t = 0), the reference's rule,
which for linspace and trailing spacings is not ᾱ of the next scheduled timestep.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..config import Config
from ..diffusion import sigmas as schedules
from ..diffusion.noise import given_noise, seeded_noise
from ..diffusion.parameterization import Parameterization
from ..diffusion.plan import PlanRequest, SamplingPlan
from ..diffusion.steppers import StepContext
from ..diffusion.steppers_vp import DDIMStepper
from .base import Scheduler, SchedulerStepOutput
from .vp_discrete import VPTableScheduler, as_timestep, check_step_count, check_vp_options, plan_sigmas


@dataclasses.dataclass(frozen=True)
class DDIMConfig(Config):
    """Options of :class:`DDIMScheduler`: diffusers' names and defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear" | "squaredcos_cap_v2"
    trained_betas: tuple[float, ...] | None = None  # an explicit β table; wins over beta_schedule
    clip_sample: bool = True  # clamp x̂0 to ±clip_sample_range
    set_alpha_to_one: bool = True  # the last step lands on ᾱ = 1 (else on ᾱ_0)
    steps_offset: int = 0  # added to "leading" timesteps
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" | "sample"
    thresholding: bool = False  # dynamic thresholding of x̂0 (wins over clip_sample)
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"  # "leading" | "linspace" | "trailing"
    rescale_betas_zero_snr: bool = False  # ᾱ_{T−1} = 0 (Lin et al. 2023)

    def __post_init__(self) -> None:
        check_vp_options(self)


class DDIMScheduler(VPTableScheduler, Scheduler):
    """Denoising diffusion implicit models (Song et al. 2021), η = 0 by default.

    ``DDIMScheduler.from_pretrained(repo)`` reads ``scheduler/scheduler_config.json``;
    ``scheduler.plan(25, eta=0.0)`` is what vidiff's pipelines sample with.
    """

    config_class = DDIMConfig
    config: DDIMConfig
    order = 1

    @property
    def final_alpha_cumprod(self) -> Tensor:
        """ᾱ the last step lands on: 1, or ᾱ_0 without ``set_alpha_to_one`` (0-dim float32)."""
        return self.table.final_alpha_cumprod

    # ------------------------------------------------------------------ the schedule
    honours = frozenset({"eta", "use_clipped_model_output", "strength"})

    def _plan(self, request: PlanRequest, parameterization: Parameterization) -> SamplingPlan:
        """The sampling plan for ``num_inference_steps`` DDIM steps.

        ``eta`` (η ≥ 0, default 0) scales the fresh noise of each step (0: deterministic DDIM, 1:
        DDPM's posterior variance); η > 0 needs a ``noise`` source in the loop.
        ``use_clipped_model_output`` re-derives ε̂ from the clipped / thresholded x̂0. Timesteps go
        on ``device``; the σ / ᾱ tables stay on the CPU.
        """
        num_inference_steps = request.num_inference_steps
        timesteps = self._timesteps(num_inference_steps)  # [N] int64
        landing = self._landing(timesteps, num_inference_steps)  # [N]
        points = torch.cat([self.table.at(timesteps), landing[-1:]])  # [N+1]
        eta = 0.0 if request.eta is None else float(request.eta)
        stepper = DDIMStepper(
            parameterization.prediction, landing, eta, self.limit, bool(request.use_clipped_model_output)
        )
        return SamplingPlan(
            sigmas=plan_sigmas(points),
            timesteps=timesteps.to(device=request.device, dtype=torch.float32),
            parameterization=parameterization,
            stepper=stepper,
            init_noise_sigma=self.init_noise_sigma,
            alphas_cumprod=points,
        )

    def _timesteps(self, num_inference_steps: int) -> Tensor:
        cfg = self.config
        check_step_count("num_inference_steps", num_inference_steps, cfg.num_train_timesteps)
        return schedules.integer_spaced_timesteps(
            cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset
        )

    def _landing(self, timesteps: Tensor, num_inference_steps: int) -> Tensor:
        """ᾱ at t − T // N for each t: where the reference's step from t lands."""
        return self.table.landing(timesteps - self.config.num_train_timesteps // num_inference_steps)

    # ------------------------------------------------------------------ diffusers' stateful surface
    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Prepare ``.timesteps`` (int64, on ``device``) for a hand-written loop."""
        self.timesteps = self._timesteps(num_inference_steps).to(device)
        self.num_inference_steps = num_inference_steps

    def scale_model_input(self, sample: Tensor, timestep: int | Tensor | None = None) -> Tensor:
        """The network input: the VP sample itself (VP space needs no input scaling)."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerStepOutput | tuple[Tensor, Tensor]:
        """One DDIM step from the raw ``model_output`` at the whole ``timestep``.

        η > 0 draws ``variance_noise`` from ``generator`` (not both). Computed in float32; the sample
        and x̂0 (clipped as configured) come back in ``model_output``'s dtype.
        """
        self._check_timesteps_set()
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either `generator` or `variance_noise` to step(), not both")
        t = torch.tensor([as_timestep(timestep)])
        alpha, landing = self.table.at(t)[0], self._landing(t, self.num_inference_steps)
        points = torch.stack([alpha, landing[0]])  # [2]: this step's start and landing ᾱ
        noise = seeded_noise(generator, model_output.device, model_output.dtype)
        if variance_noise is not None:
            noise = given_noise(variance_noise)
        context = StepContext(sigmas=plan_sigmas(points), index=0, noise=noise, alphas_cumprod=points)
        stepper = DDIMStepper(
            self.parameterization.prediction, landing, float(eta), self.limit, bool(use_clipped_model_output)
        )
        prev_sample, denoised, _ = self._advance(model_output, sample, stepper, context)
        denoised = (denoised if self.limit is None else self.limit(denoised)).to(model_output.dtype)
        if not return_dict:
            return prev_sample, denoised
        return SchedulerStepOutput(prev_sample=prev_sample, pred_original_sample=denoised)
