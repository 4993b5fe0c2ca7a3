"""``FlowMatchEulerDiscreteScheduler``: diffusers' flow-matching Euler scheduler on vidiff's loop.

The sample is the flow sample ``x = (1 − t)·x0 + t·ε`` (initial noise × 1, network input
unscaled), the plan's σ are the flow times t (N values, then 0) and the network is told
t·``num_train_timesteps`` as a float32, unrounded. Each step is
:class:`~vidiff.diffusion.steppers_flow.FlowEulerStepper`: x + (t_next − t)·v.

Schedule, as the reference builds it: N times evenly spaced from the config's largest to its
smallest training t (the training table is already shifted by ``shift``, so the smallest end is
shifted twice), then shifted by ``shift`` (or by μ with ``use_dynamic_shifting``), stretched to
``shift_terminal``, optionally respaced Karras / exponential. Custom ``sigmas`` are the N step
times *before* the shift (the final 0 is appended); custom ``timesteps`` are given to the network
as they are.

Trap kept for parity: the option is named ``shift``; a UniPC config's ``flow_shift`` is not read,
so ``FlowMatchEulerDiscreteScheduler.from_config(unipc_config)`` samples with shift 1.

Not supported (ValueError naming the option): ``invert_sigmas``, ``use_beta_sigmas`` (needs
SciPy) and ``step(per_token_timesteps=...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from ..diffusion import flow_sigmas
from ..diffusion import free_init as forward_process
from ..diffusion.noise import seeded_noise
from ..diffusion.parameterization import FlowTimesteps, Parameterization
from ..diffusion.plan import PlanRequest, SamplingPlan
from ..diffusion.steppers import StepContext
from ..diffusion.steppers_flow import FlowEulerStepper
from .base import MAX_TRAIN_TIMESTEPS, SchedulerStepOutput, SequentialScheduler, check_choice, is_int

Values = Sequence[float] | np.ndarray | Tensor


@dataclasses.dataclass(frozen=True)
class FlowMatchEulerDiscreteConfig(Config):
    """Options of :class:`FlowMatchEulerDiscreteScheduler`: diffusers' names and defaults."""

    num_train_timesteps: int = 1000
    shift: float = 1.0  # constant shift of the flow times (SD3: 3.0); see flow_sigmas.shift_sigmas
    use_dynamic_shifting: bool = False  # shift by μ given to set_timesteps / plan instead
    base_shift: float | None = 0.5  # kept for the pipelines that compute μ from the image size
    max_shift: float | None = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    invert_sigmas: bool = False  # not supported
    shift_terminal: float | None = None  # the last t, stretched to (None or 0: off)
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False  # not supported (needs SciPy)
    time_shift_type: str = "exponential"  # dynamic shift: "exponential" | "linear"
    stochastic_sampling: bool = False  # re-noise x̂0 to the next t with fresh noise each step

    def __post_init__(self) -> None:
        owner = type(self).__name__
        count = self.num_train_timesteps
        if not is_int(count) or not 1 <= count <= MAX_TRAIN_TIMESTEPS:
            raise ValueError(f"{owner}: num_train_timesteps must be an int in [1, {MAX_TRAIN_TIMESTEPS}], got {count!r}")
        check_choice(owner, "time_shift_type", self.time_shift_type, flow_sigmas.TIME_SHIFT_TYPES)
        check_choice(owner, "invert_sigmas", bool(self.invert_sigmas), (False,))
        check_choice(owner, "use_beta_sigmas", bool(self.use_beta_sigmas), (False,))
        if bool(self.use_karras_sigmas) and bool(self.use_exponential_sigmas):
            raise ValueError(f"{owner}: use_karras_sigmas and use_exponential_sigmas cannot both be true")
        if not self.shift > 0:
            raise ValueError(f"{owner}: shift must be a positive number, got {self.shift!r}")
        if self.shift_terminal is not None and not 0 <= self.shift_terminal < 1:
            raise ValueError(f"{owner}: shift_terminal must be None or a number in [0, 1), got {self.shift_terminal!r}")


class FlowMatchEulerDiscreteScheduler(SequentialScheduler):
    """Euler sampling of a flow-matching model's ODE dx/dt = v (SD3, Flux, Wan, LTX-Video).

    ``scheduler.plan(30)`` is what vidiff's pipelines sample with; ``set_timesteps`` / ``step`` are
    diffusers' stateful surface over the same pieces.
    """

    config_class = FlowMatchEulerDiscreteConfig
    config: FlowMatchEulerDiscreteConfig
    order = 1
    init_noise_sigma = 1.0  # the flow sample at t = 1 is the unit noise itself

    def __init__(self, config: Config | dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        cfg = self.config
        self._shift = float(cfg.shift)
        self.parameterization = Parameterization("flow_prediction", FlowTimesteps(cfg.num_train_timesteps), "flow")
        self.stepper = FlowEulerStepper(stochastic=bool(cfg.stochastic_sampling))
        # The training table: t = 1, …, T over T, highest first, float32; shifted unless dynamic.
        count = cfg.num_train_timesteps
        table = torch.from_numpy(np.linspace(1, count, count, dtype=np.float32)[::-1].copy()) / count
        if not cfg.use_dynamic_shifting:
            table = cfg.shift * table / (1 + (cfg.shift - 1) * table)
        self.sigma_min, self.sigma_max = table[-1].item(), table[0].item()
        self.sigmas = table
        self.timesteps = table * count
        self.num_inference_steps = None
        self._reset_step_index()

    @property
    def shift(self) -> float:
        """The constant shift in use (the config's, or what :meth:`set_shift` set)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        """Use ``shift`` instead of the config's from the next ``set_timesteps`` / ``plan`` on."""
        self._shift = float(shift)

    # ------------------------------------------------------------------ the schedule
    honours = frozenset({"sigmas", "timesteps", "strength", "mu"})

    def _plan(self, request: PlanRequest, parameterization: Parameterization) -> SamplingPlan:
        """The plan for ``request``: ``num_inference_steps`` steps, custom ``sigmas`` (the N step
        times before the shift) and/or ``timesteps`` (told to the network as given), and ``mu`` for
        ``use_dynamic_shifting``. Timesteps go on ``device``; σ stay on the CPU."""
        sigmas, timesteps = self._schedule(request.num_inference_steps, request.sigmas, request.mu, request.timesteps)
        stepper = self.stepper
        if parameterization.prediction != stepper.prediction:
            stepper = dataclasses.replace(stepper, prediction=parameterization.prediction)
        return SamplingPlan(
            sigmas=sigmas,
            timesteps=timesteps.to(request.device),
            parameterization=parameterization,
            stepper=stepper,
            init_noise_sigma=self.init_noise_sigma,
        )

    def _schedule(
        self, num_inference_steps: int | None, sigmas: Values | None, mu: float | None, timesteps: Values | None
    ) -> tuple[Tensor, Tensor]:
        """(flow times incl. the final 0 [N+1] float32 CPU, network timesteps [N] float32 CPU)."""
        cfg = self.config
        count = cfg.num_train_timesteps
        num_steps = _check_request(num_inference_steps, sigmas, timesteps)
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("mu must be given when use_dynamic_shifting is true (the resolution-dependent shift)")
        custom_timesteps = None if timesteps is None else _as_array(timesteps, "timesteps")
        if sigmas is not None:
            times = _as_array(sigmas, "sigmas")
        elif custom_timesteps is not None:
            times = custom_timesteps / count
        else:
            # The reference spans its (already shifted) table's ends in float64.
            times = np.linspace(self.sigma_max * count, self.sigma_min * count, num_steps) / count
        if cfg.use_dynamic_shifting:
            times = flow_sigmas.time_shift(times, mu, cfg.time_shift_type)
        else:
            times = flow_sigmas.shift_sigmas(times, self.shift)
        if cfg.shift_terminal:
            times = flow_sigmas.stretch_to_terminal(times, cfg.shift_terminal)
        if cfg.use_karras_sigmas:
            times = flow_sigmas.karras_sigmas(num_steps, times[-1].item(), times[0].item())
        elif cfg.use_exponential_sigmas:
            times = flow_sigmas.exponential_sigmas(num_steps, times[-1].item(), times[0].item())
        step_times = torch.from_numpy(np.asarray(times)).to(torch.float32)
        if custom_timesteps is not None:
            network_timesteps = torch.from_numpy(custom_timesteps).to(torch.float32)
        else:
            network_timesteps = step_times * count
        return torch.cat([step_times, torch.zeros(1)]), network_timesteps

    # ------------------------------------------------------------------ diffusers' stateful surface
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        sigmas: Values | None = None,
        mu: float | None = None,
        timesteps: Values | None = None,
    ) -> None:
        """Prepare ``.timesteps`` (float32, on ``device``) and ``.sigmas`` (float32 CPU, final 0
        appended) for a hand-written loop; resets the step counter. Arguments as in :meth:`_plan`."""
        self.sigmas, step_timesteps = self._schedule(num_inference_steps, sigmas, mu, timesteps)
        self.timesteps = step_timesteps.to(device)
        self.num_inference_steps = len(step_timesteps)
        self._reset_step_index()

    def scale_model_input(self, sample: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The network input is the flow sample itself: returned unchanged."""
        return sample

    def scale_noise(self, sample: Tensor, timestep: Tensor, noise: Tensor) -> Tensor:
        """The forward process at ``timestep`` (one value per batch item): t·noise + (1 − t)·sample."""
        t = self._noise_levels(timestep, sample)  # [B, 1, …]
        return forward_process.diffuse_flow(sample, noise, t)

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        per_token_timesteps: Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerStepOutput | tuple[Tensor]:
        """One Euler step from the raw velocity ``model_output`` at ``timestep`` (a value of
        ``.timesteps``). The result is in ``model_output``'s dtype, as in the reference; ``s_churn``,
        ``s_tmin``, ``s_tmax`` and ``s_noise`` are accepted and unused, as there. ``generator``
        feeds ``stochastic_sampling``'s fresh float32 noise."""
        if isinstance(timestep, int) or (isinstance(timestep, Tensor) and not timestep.is_floating_point()):
            raise ValueError(
                f"step() takes a timestep value from scheduler.timesteps, not an integer index (got {timestep!r})"
            )
        if per_token_timesteps is not None:
            raise ValueError("per_token_timesteps is not supported by vidiff's FlowMatchEulerDiscreteScheduler.step")
        index = self._current_index(timestep)
        noise = seeded_noise(generator, model_output.device, torch.float32)
        context = StepContext(sigmas=self.sigmas, index=index, noise=noise)
        prev_sample, _, _ = self._advance(model_output, sample, self.stepper, context)
        self._step_index = index + 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerStepOutput(prev_sample=prev_sample)


def _as_array(values: Values, name: str) -> np.ndarray:
    """Custom ``sigmas`` / ``timesteps`` as a 1-D float32 numpy array (the reference's cast)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values).astype(np.float32)
    if array.ndim != 1 or len(array) < 1 or not np.isfinite(array).all():
        raise ValueError(f"{name} must be a non-empty 1-D list of finite numbers, got shape {list(array.shape)}")
    return array


def _check_request(num_inference_steps: int | None, sigmas: Any, timesteps: Any) -> int:
    """The step count the request implies; ValueError for a missing or inconsistent one."""
    lengths = {name: len(v) for name, v in (("sigmas", sigmas), ("timesteps", timesteps)) if v is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"sigmas and timesteps must have the same length, got {lengths}")
    if num_inference_steps is None:
        if not lengths:
            raise ValueError("pass num_inference_steps, sigmas or timesteps")
        return next(iter(lengths.values()))
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    if any(length != num_inference_steps for length in lengths.values()):
        raise ValueError(f"sigmas / timesteps must have num_inference_steps={num_inference_steps} values, got {lengths}")
    return num_inference_steps
