"""``LCMScheduler``: diffusers' latent-consistency scheduler on vidiff's core, in VP space.

Timesteps are a subset of the distillation schedule ("original" steps t = k·(T // S) − 1 for
k = 1 … S·strength); each step maps the network's x̂0 through the consistency boundary
condition (c_skip, c_out) and re-noises it to the next timestep with fresh noise, except the last,
which returns the clean estimate. The stepper is :class:`~vidiff.diffusion.steppers_vp.LCMStepper`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from ..diffusion.noise import seeded_noise
from ..diffusion.parameterization import Parameterization
from ..diffusion.plan import PlanRequest, SamplingPlan
from ..diffusion.steppers import StepContext
from ..diffusion.steppers_vp import LCMStepper, lcm_boundary_scalings
from .base import SequentialScheduler
from .vp_discrete import VPTableScheduler, as_timestep, check_step_count, check_vp_options, plan_sigmas


@dataclasses.dataclass(frozen=True)
class LCMConfig(Config):
    """Options of :class:`LCMScheduler`: diffusers' names and defaults.

    ``timestep_spacing`` and ``steps_offset`` are kept for config compatibility; LCM's timestep
    selection does not use them (nor does the reference's).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"  # "linear" | "scaled_linear" | "squaredcos_cap_v2"
    trained_betas: tuple[float, ...] | None = None
    original_inference_steps: int = 50  # S: the distillation schedule's length
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" | "sample"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    timestep_scaling: float = 10.0  # t × this enters the boundary condition
    rescale_betas_zero_snr: bool = False

    def __post_init__(self) -> None:
        check_vp_options(self)
        check_step_count(f"{type(self).__name__}: original_inference_steps", self.original_inference_steps,
                         self.num_train_timesteps)


class LCMStepOutput(NamedTuple):
    """What ``LCMScheduler.step`` returns: the next sample and the consistency estimate x̂0'."""

    prev_sample: Tensor
    denoised: Tensor | None = None


class LCMScheduler(VPTableScheduler, SequentialScheduler):
    """Multistep latent consistency sampling (Luo et al. 2023).

    ``scheduler.plan(4)`` is what vidiff's pipelines sample with; the loop needs a ``noise``
    source (one draw per step but the last).
    """

    config_class = LCMConfig
    config: LCMConfig
    order = 1

    # ------------------------------------------------------------------ the schedule
    honours = frozenset({"timesteps", "strength", "original_inference_steps"})
    native_strength = True  # LCM keeps the low-noise part of its distillation schedule itself

    def _plan(self, request: PlanRequest, parameterization: Parameterization) -> SamplingPlan:
        """The sampling plan for ``num_inference_steps`` steps, or for custom descending ``timesteps``.

        ``original_inference_steps`` overrides the config's distillation length; ``strength`` < 1
        keeps the lower-noise part of the schedule (image-to-image).
        """
        strength = 1.0 if request.strength is None else request.strength
        steps, count = self._schedule(
            request.num_inference_steps, request.original_inference_steps, request.timesteps, strength
        )
        nxt = torch.cat([steps[1:], steps[-1:]])  # the last step's "next" is itself (as the reference)
        landing = self.table.landing(nxt)  # [n]
        c_skip, c_out = lcm_boundary_scalings(steps, self.config.timestep_scaling)
        # The reference re-noises every step but step num_inference_steps − 1; that is all steps of a
        # custom schedule cut short by strength.
        num_renoised = count - 1
        final = torch.ones(1) if len(steps) > num_renoised else landing[-1:]
        points = torch.cat([self.table.at(steps), final])  # [n+1]
        return SamplingPlan(
            sigmas=plan_sigmas(points),
            timesteps=steps.to(device=request.device, dtype=torch.float32),
            parameterization=parameterization,
            stepper=LCMStepper(c_skip, c_out, landing, num_renoised, self.limit),
            init_noise_sigma=self.init_noise_sigma,
            alphas_cumprod=points,
        )

    def _schedule(
        self,
        num_inference_steps: int | None,
        original_inference_steps: int | None,
        timesteps: Sequence[int] | Tensor | None,
        strength: float,
    ) -> tuple[Tensor, int]:
        """(timesteps [n] int64, the reference's num_inference_steps)."""
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        original = cfg.original_inference_steps if original_inference_steps is None else original_inference_steps
        check_step_count("original_inference_steps", original, cfg.num_train_timesteps)
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        stride = cfg.num_train_timesteps // original
        # The distillation schedule, lowest noise first: k·stride − 1 for k = 1 … ⌊S·strength⌋.
        origin = np.arange(1, int(original * strength) + 1) * stride - 1
        if timesteps is not None:
            steps = _custom_timesteps(timesteps, cfg.num_train_timesteps)
            count = len(steps)
            start = max(count - min(int(count * strength), count), 0)
            steps = steps[start:]
        else:
            count = num_inference_steps
            steps = _spread(origin, count, original, strength, cfg.num_train_timesteps)
        if len(steps) == 0:
            raise ValueError(f"strength={strength} leaves no timesteps of the {count} scheduled; raise it")
        return steps, count

    # ------------------------------------------------------------------ diffusers' stateful surface
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        original_inference_steps: int | None = None,
        timesteps: Sequence[int] | Tensor | None = None,
        strength: float = 1.0,
    ) -> None:
        """Prepare ``.timesteps`` (int64, on ``device``) for a hand-written loop; resets the step counter."""
        steps, count = self._schedule(num_inference_steps, original_inference_steps, timesteps, strength)
        self.timesteps = steps.to(device)
        self.num_inference_steps = count
        self._reset_step_index()

    def scale_model_input(self, sample: Tensor, timestep: int | Tensor | None = None) -> Tensor:
        """The network input: the VP sample itself (VP space needs no input scaling)."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> LCMStepOutput | tuple[Tensor, Tensor]:
        """One LCM step from the raw ``model_output`` at ``timestep``; fresh noise from ``generator``
        unless this is step ``num_inference_steps − 1``. Float32 inside; results in the output's dtype."""
        self._check_timesteps_set()
        t = torch.tensor([as_timestep(timestep)])  # checks the value before it is looked up
        index = self._current_index(timestep)
        nxt = self.timesteps[index + 1 : index + 2].cpu() if index + 1 < len(self.timesteps) else t
        landing = self.table.landing(nxt)
        c_skip, c_out = lcm_boundary_scalings(t, self.config.timestep_scaling)
        stepper = LCMStepper(c_skip, c_out, landing, int(index != self.num_inference_steps - 1), self.limit)
        points = torch.cat([self.table.at(t), landing])  # [2]
        noise = seeded_noise(generator, model_output.device, model_output.dtype)
        context = StepContext(sigmas=plan_sigmas(points), index=0, noise=noise, alphas_cumprod=points)
        prev_sample, denoised, _ = self._advance(model_output, sample, stepper, context)
        x = sample.to(torch.float32)
        consistent = stepper.consistent(x, denoised, 0).to(model_output.dtype)
        self._step_index = index + 1
        if not return_dict:
            return prev_sample, consistent
        return LCMStepOutput(prev_sample=prev_sample, denoised=consistent)


def _spread(origin: np.ndarray, num_steps: int, original: int, strength: float, num_train_timesteps: int) -> Tensor:
    """``num_steps`` timesteps spread evenly (by index, floored) over the descending ``origin`` schedule."""
    check_step_count("num_inference_steps", num_steps, num_train_timesteps)
    if len(origin) // num_steps < 1:
        raise ValueError(
            f"num_inference_steps={num_steps} exceeds original_inference_steps × strength = {original} × {strength} "
            f"= {len(origin)} schedule entries; lower num_inference_steps or raise strength"
        )
    if num_steps > original:
        raise ValueError(f"num_inference_steps={num_steps} cannot exceed original_inference_steps={original}")
    descending = origin[::-1].copy()
    picks = np.floor(np.linspace(0, len(descending), num=num_steps, endpoint=False)).astype(np.int64)
    return torch.from_numpy(descending[picks]).to(torch.int64)


def _custom_timesteps(timesteps: Sequence[int] | Tensor, num_train_timesteps: int) -> Tensor:
    """Checked custom timesteps: whole numbers, strictly descending, the first below T. [n] int64."""
    values = [as_timestep(t) for t in (timesteps.tolist() if isinstance(timesteps, Tensor) else timesteps)]
    if not values:
        raise ValueError("timesteps must not be empty")
    if any(later >= earlier for earlier, later in zip(values, values[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {values}")
    if values[0] >= num_train_timesteps:
        raise ValueError(f"timesteps must start below num_train_timesteps={num_train_timesteps}, got {values[0]}")
    return torch.tensor(values, dtype=torch.int64)
