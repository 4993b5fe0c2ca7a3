"""What every public scheduler shares: its typed config, loading and saving, the one plan protocol
(``plan(...)`` answers a :class:`~vidiff.diffusion.plan.PlanRequest`), the one step body of the
public ``step()``, the step output, the option checks common to the DDPM-trained schedulers, and
the step counter of diffusers' stateful surface.

A public scheduler is a typed config plus methods that map it onto :mod:`vidiff.diffusion`'s
functions. Its JSON is diffusers' ``scheduler_config.json``, so checkpoints load unchanged and what
vidiff saves loads in diffusers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor

from .. import loading
from ..config import Config
from ..diffusion import sigmas as schedules
from ..diffusion.parameterization import Parameterization
from ..diffusion.plan import PlanRequest, SamplingPlan, StepResult, Values, advance, skip_steps, strength_start
from ..diffusion.steppers import StepContext, Stepper

S = TypeVar("S", bound="Scheduler")

CONFIG_NAME = "scheduler_config.json"
# Released models train on 1000 timesteps; the β/ᾱ tables are built at this length, so a typo like
# 10**12 would allocate terabytes before failing.
MAX_TRAIN_TIMESTEPS = 100_000


def check_choice(owner: str, option: str, value: Any, valid: Iterable[Any]) -> None:
    """ValueError naming ``owner.option`` and the valid values unless ``value`` is one of them."""
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"{owner}: {option} must be one of {list(valid)}, got {value!r}")


def is_int(value: Any) -> bool:
    """True for a Python int that is not a bool (configs from JSON hold plain ints)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_training_options(config: Config, prediction_types: Sequence[str], min_train_timesteps: int = 1) -> None:
    """Validate the options every DDPM-trained scheduler shares (β table, prediction, spacing, offset)."""
    owner = type(config).__name__
    check_choice(owner, "beta_schedule", config.beta_schedule, schedules.BETA_SCHEDULES)
    check_choice(owner, "prediction_type", config.prediction_type, prediction_types)
    check_choice(owner, "timestep_spacing", config.timestep_spacing, schedules.TIMESTEP_SPACINGS)
    count = config.num_train_timesteps
    if not is_int(count) or not min_train_timesteps <= count <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(
            f"{owner}: num_train_timesteps must be an int in [{min_train_timesteps}, {MAX_TRAIN_TIMESTEPS}], got {count!r}"
        )
    if not is_int(config.steps_offset) or abs(config.steps_offset) > MAX_TRAIN_TIMESTEPS:
        raise ValueError(f"{owner}: steps_offset must be an int in [-{MAX_TRAIN_TIMESTEPS}, {MAX_TRAIN_TIMESTEPS}], got {config.steps_offset!r}")


def check_sigma_options(config: Config) -> None:
    """Validate the σ-spacing options of the σ-table schedulers (Euler, DPM-Solver)."""
    owner = type(config).__name__
    check_choice(owner, "final_sigmas_type", config.final_sigmas_type, ("zero", "sigma_min"))
    check_choice(owner, "use_beta_sigmas", bool(config.use_beta_sigmas), (False,))  # needs SciPy
    if bool(config.use_karras_sigmas) and bool(config.use_exponential_sigmas):
        raise ValueError(f"{owner}: use_karras_sigmas and use_exponential_sigmas cannot both be true")


def config_alphas_cumprod(config: Config, *, finite_terminal: bool = False) -> Tensor:
    """ᾱ_t [T] float32 of a config's β options; ``finite_terminal`` keeps ᾱ_{T−1} > 0 under zero
    terminal SNR (σ-space schedulers cannot start from σ = ∞)."""
    alphas_cumprod = schedules.training_alphas_cumprod(
        config.num_train_timesteps, config.beta_start, config.beta_end, config.beta_schedule,
        config.trained_betas, config.rescale_betas_zero_snr,
    )
    if finite_terminal and config.rescale_betas_zero_snr:
        alphas_cumprod = schedules.finite_terminal_alphas_cumprod(alphas_cumprod)
    return alphas_cumprod


class SchedulerStepOutput(NamedTuple):
    """What ``step`` returns: the sample at the next σ, and the x̂0 it was computed from."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


class Scheduler:
    """Base of the public schedulers: a typed, frozen ``config`` and its diffusers-format IO.

    Subclasses set :attr:`config_class` and build their tables in ``__init__`` after calling
    ``super().__init__``.
    """

    config_class: ClassVar[type[Config]]
    # The PlanRequest options (PlanRequest.OPTIONS) this scheduler's plan honours, and why the
    # others are refused (shown in the error).
    honours: ClassVar[frozenset[str]] = frozenset()
    refusal_reasons: ClassVar[Mapping[str, str]] = {
        "eta": "its steps have no η (DDIMScheduler's option); leave eta unset",
        "use_clipped_model_output": "it is a DDIMScheduler option",
        "original_inference_steps": "it is an LCMScheduler option",
        "sigmas": "it samples at whole training timesteps; pass num_inference_steps or timesteps",
        "timesteps": "it has no custom timesteps; pass num_inference_steps",
        "strength": "it cannot start part-way through its schedule",
        "mu": "it has no resolution-dependent shift (a flow-matching option with use_dynamic_shifting)",
    }
    # Whether _plan applies ``strength`` itself; otherwise plan() skips the first steps generically.
    native_strength: ClassVar[bool] = False
    parameterization: Parameterization
    # Written into model_index.json by pipelines: the library whose class name this mirrors.
    library: ClassVar[str] = "diffusers"
    # Steps of the stateful surface's schedule; None until set_timesteps.
    num_inference_steps: int | None = None

    def __init__(self, config: Config | Mapping[str, Any] | None = None, **options: Any) -> None:
        """Build from a config (typed or a diffusers dict) and/or keyword options; options win."""
        self.config = self.config_class.from_diffusers({} if config is None else config, **options)

    @classmethod
    def from_config(cls: type[S], config: Config | Mapping[str, Any], **overrides: Any) -> S:
        """From a diffusers config dict or any typed config (e.g. another scheduler's ``.config``).

        Options this scheduler does not have are kept aside and written back on save; unknown
        names in ``overrides`` are a TypeError.
        """
        if not isinstance(config, (Config, Mapping)):
            raise TypeError(f"config must be a mapping or a vidiff Config, got {type(config).__name__}")
        return cls(config, **overrides)

    @classmethod
    def from_pretrained(
        cls: type[S],
        name_or_path: str | os.PathLike,
        subfolder: str | None = "scheduler",
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        **overrides: Any,
    ) -> S:
        """Read ``<subfolder>/scheduler_config.json`` from a checkpoint folder or Hub id.

        ``subfolder=None`` reads it from the root (a folder that is itself a scheduler folder).
        """
        checkpoint = loading.Checkpoint.open(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls.from_checkpoint(checkpoint, subfolder, **overrides)

    @classmethod
    def from_checkpoint(cls: type[S], checkpoint: loading.Checkpoint, subfolder: str | None, **overrides: Any) -> S:
        """From an opened :class:`~vidiff.loading.Checkpoint` (used by pipelines)."""
        return cls(checkpoint.read_json(loading.join(subfolder, CONFIG_NAME)), **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``directory/scheduler_config.json`` (created if needed), readable by diffusers too."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        raw = {"_class_name": type(self).__name__, **self.config.to_diffusers()}
        loading.write_json(directory / CONFIG_NAME, raw)

    # ------------------------------------------------------------------ the one plan protocol
    def plan(
        self,
        num_inference_steps: int | None = None,
        *,
        sigmas: Values | None = None,
        timesteps: Values | None = None,
        eta: float | None = None,
        strength: float | None = None,
        device: torch.device | str | None = None,
        network: Parameterization | None = None,
        original_inference_steps: int | None = None,
        use_clipped_model_output: bool | None = None,
        mu: float | None = None,
    ) -> SamplingPlan:
        """The sampling plan for a :class:`~vidiff.diffusion.plan.PlanRequest` of these fields.

        Every scheduler takes the same arguments; one it cannot honour is a ValueError naming it.
        ``network`` (the network's prediction type and σ → timestep map) replaces the config's
        convention: the σ schedule stays the scheduler's, the network is told its own timesteps.
        """
        request = PlanRequest(
            num_inference_steps, sigmas, timesteps, eta, strength, device, network,
            original_inference_steps, use_clipped_model_output, mu,
        )
        return self.plan_for(request)

    def plan_for(self, request: PlanRequest) -> SamplingPlan:
        """:meth:`plan` for a ready-made request."""
        name = type(self).__name__
        for option in request.given():
            if option not in self.honours:
                reason = self.refusal_reasons.get(option, "it has no such option")
                raise ValueError(f"{name} cannot honour `{option}`: {reason}")
        parameterization = self.parameterization
        if request.network is not None:
            network = request.network
            parameterization = Parameterization(network.prediction, network.timestep_map, parameterization.space)
        plan = self._plan(request, parameterization)
        if parameterization.timestep_map != self.parameterization.timestep_map:
            plan = dataclasses.replace(plan, timesteps=_network_timesteps(plan, name))
        if request.strength is not None and not self.native_strength:
            plan = skip_steps(plan, strength_start(plan.num_steps, request.strength))
        return plan

    def _plan(self, request: PlanRequest, parameterization: Parameterization) -> SamplingPlan:
        """The scheduler's own plan for ``request`` with the (possibly the network's) parameterization."""
        raise NotImplementedError

    def plan_tail(self, num_inference_steps: int | None, start: int, **options: Any) -> SamplingPlan:
        """``plan(num_inference_steps, **options)`` from its evaluation ``start`` on: what the reference's
        image/video-to-video pipelines run after cutting ``scheduler.timesteps[start:]``.

        The cut plan keeps the full plan's per-step tables (a multistep solver's warm-up is the full
        plan's); schedulers whose reference restarts its state at the cut override this (PNDM).
        """
        if start and "strength" not in self.honours:
            raise ValueError(f"{type(self).__name__} cannot start part-way through its schedule: {self.refusal_reasons['strength']}")
        return skip_steps(self.plan(num_inference_steps, **options), start)

    # ------------------------------------------------------------------ the one step body
    def _advance(
        self, model_output: Tensor, sample: Tensor, stepper: Stepper, context: StepContext
    ) -> StepResult:
        """The public ``step()``'s body: :func:`~vidiff.diffusion.plan.advance`, as the loop steps."""
        return advance(model_output, sample, self.parameterization, stepper, context)

    def _check_timesteps_set(self) -> None:
        """ValueError unless ``set_timesteps`` has run (for ``step`` methods that need the step count)."""
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}: call set_timesteps(...) before step()")

    def __len__(self) -> int:
        """The number of training timesteps, as diffusers' schedulers report it."""
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class SequentialScheduler(Scheduler):
    """A scheduler whose ``step`` walks ``.timesteps`` in order, as diffusers' stateful ones do.

    The first ``step`` finds its place (``begin_index`` if a pipeline set one, else the timestep's
    position), and each call moves one on. Subclasses call :meth:`_reset_step_index` whenever they
    replace ``.timesteps``.
    """

    timesteps: Tensor
    _step_index: int | None = None
    _begin_index: int | None = None

    def _reset_step_index(self) -> None:
        self._step_index = None
        self._begin_index = None

    @property
    def step_index(self) -> int | None:
        """Index of the next step into the schedule (None until the first call)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First step index set by a pipeline (e.g. for image-to-image), or None."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at ``begin_index`` instead of looking the first timestep up."""
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: float | Tensor, schedule_timesteps: Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule; of repeated values, the second (so a run started
        mid-schedule does not skip a step). A timestep not in it goes to :meth:`_unscheduled_index`."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        if isinstance(timestep, Tensor):
            timestep = timestep.to(schedule.device)
        matches = (schedule == timestep).nonzero()
        if len(matches) == 0:
            return self._unscheduled_index(timestep)
        return int(matches[1 if len(matches) > 1 else 0].item())

    def _unscheduled_index(self, timestep: float | Tensor) -> int:
        """The index for a timestep not in the schedule: by default a ValueError."""
        raise ValueError(f"timestep {float(timestep)} is not one of the scheduler's timesteps")

    def _noise_levels(self, timesteps: Tensor, like: Tensor) -> Tensor:
        """σ (or flow t) of each batch item's timestep, ``[B, 1, …]`` to broadcast over ``like``, for
        ``add_noise``: looked up in the schedule, or the current step's (``begin_index`` set), as
        diffusers' schedulers do."""
        schedule = self.timesteps.to(like.device)
        timesteps = timesteps.to(like.device).reshape(-1)
        if self.begin_index is None:
            indices = [self.index_for_timestep(t, schedule) for t in timesteps]
        else:
            indices = [self.step_index if self.step_index is not None else self.begin_index] * timesteps.shape[0]
        levels = self.sigmas.to(device=like.device, dtype=like.dtype)[indices].flatten()
        return levels.reshape(-1, *([1] * (like.ndim - 1)))

    def _current_index(self, timestep: float | Tensor) -> int:
        """This step's index: the running counter, started on the first call."""
        if self._step_index is None:
            begin = self._begin_index
            self._step_index = begin if begin is not None else self.index_for_timestep(timestep)
        return self._step_index


class MultistepScheduler(SequentialScheduler):
    """A sequential scheduler whose solver keeps earlier outputs between ``step`` calls (DPM-Solver,
    UniPC); a timestep not in its schedule maps to the last step, as diffusers' multistep ones do."""

    _history: tuple[Tensor, ...] = ()

    def _reset_steps(self) -> None:
        """Forget the solver's history and the step counter (a new schedule was set)."""
        self._history = ()
        self._reset_step_index()

    def _unscheduled_index(self, timestep: int | Tensor) -> int:
        return len(self.timesteps) - 1


def _network_timesteps(plan: SamplingPlan, owner: str) -> Tensor:
    """The network's own timesteps of a plan's σ [N] (its device, float32); σ must be finite."""
    points = plan.sigmas[:-1]
    if not torch.isfinite(points).all():
        raise ValueError(
            f"{owner}: this plan starts at σ = ∞ (rescale_betas_zero_snr), which a network with its own "
            "σ → timestep map cannot be told; set rescale_betas_zero_snr=False"
        )
    return plan.parameterization.timestep(points).to(device=plan.timesteps.device, dtype=torch.float32)
