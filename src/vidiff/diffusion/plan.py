"""Sampling plans, the request every scheduler answers with one, and the one step body.

A :class:`PlanRequest` says what a pipeline (or a user) wants: a step count or custom σ /
timesteps, ``eta``, ``strength``, and the network's own convention (prediction type and σ →
timestep map). A scheduler answers with a :class:`SamplingPlan` or a ValueError naming the option
it cannot honour. :func:`advance` is the single step body shared by the loop and every public
``scheduler.step(...)``.

Sample spaces: a plan's sample is VE (``x = x0 + σ·ε``) or VP (``x = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε``);
each stepper declares the spaces its formulas are written for and a plan refuses any other
pairing. :func:`plan_in_space` runs a stepper on the other space's sample by converting around
each step (x_vp = x_ve·sqrt(ᾱ), ᾱ = 1/(σ² + 1)): the same numbers up to rounding. Flow-space
plans (``x = (1 − t)·x0 + t·ε``, σ = t) run only flow steppers; they have no conversion yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .parameterization import SPACES, Parameterization
from .steppers import StepContext, Stepper, StepOutput

Values = Sequence[float] | Tensor


@dataclass(frozen=True)
class PlanRequest:
    """What a sampling plan is asked for; ``None`` everywhere means "the scheduler's default".

    Exactly one of ``num_inference_steps``, ``sigmas`` (every σ incl. the final one) and
    ``timesteps`` (training timesteps to visit) selects the schedule. ``eta`` scales the fresh noise
    of DDIM-type steps; ``strength`` in (0, 1] keeps the last ``int(N·strength)`` steps
    (image/video-to-video: the reference skips the first ``N − int(N·strength)``). ``network``: the
    network's convention (its prediction type and σ → timestep map; its ``space`` is not read),
    when it is not the scheduler config's (SVD: v-prediction with ¼·ln σ timesteps).
    ``original_inference_steps`` (LCM) and ``use_clipped_model_output`` (DDIM) are options of one
    scheduler each; ``mu`` is the resolution-dependent shift of the flow-matching schedulers
    configured with ``use_dynamic_shifting``.
    """

    num_inference_steps: int | None = None
    sigmas: Values | None = None
    timesteps: Values | None = None
    eta: float | None = None
    strength: float | None = None
    device: torch.device | str | None = None
    network: Parameterization | None = None
    original_inference_steps: int | None = None
    use_clipped_model_output: bool | None = None
    mu: float | None = None

    # Options a scheduler must declare it honours; the others (step count, device, network) every
    # scheduler takes.
    OPTIONS = ("sigmas", "timesteps", "eta", "strength", "original_inference_steps", "use_clipped_model_output", "mu")

    def given(self) -> tuple[str, ...]:
        """The names of :attr:`OPTIONS` this request sets (not None)."""
        return tuple(name for name in self.OPTIONS if getattr(self, name) is not None)


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """A complete sampling recipe; schedulers build it with ``scheduler.plan(...)``."""

    sigmas: Tensor  # [N+1] float32 on the CPU, decreasing; sigmas[-1] is the final σ (0 for Euler)
    timesteps: Tensor  # [N] float32: what the network is given at step i
    parameterization: Parameterization
    stepper: Stepper
    init_noise_sigma: float  # unit noise × this = the initial latents
    # VP plans only: [N+1] float32 on the CPU, the exact ᾱ of each plan point (σ² = (1 − ᾱ)/ᾱ,
    # so ᾱ = 0 is σ = ∞); alphas_cumprod[-1] belongs to the final sample.
    alphas_cumprod: Tensor | None = None

    def __post_init__(self) -> None:
        if self.sigmas.ndim != 1 or self.timesteps.ndim != 1 or len(self.sigmas) != len(self.timesteps) + 1:
            raise ValueError(
                f"SamplingPlan needs sigmas [N+1] and timesteps [N], got sigmas {list(self.sigmas.shape)} "
                f"and timesteps {list(self.timesteps.shape)}"
            )
        space = self.parameterization.space
        if self.parameterization.space == "vp" and self.alphas_cumprod is None:
            raise ValueError("a SamplingPlan in VP space needs alphas_cumprod [N+1]")
        if self.alphas_cumprod is not None and self.alphas_cumprod.shape != self.sigmas.shape:
            raise ValueError(
                f"SamplingPlan needs alphas_cumprod shaped like sigmas {list(self.sigmas.shape)}, "
                f"got {list(self.alphas_cumprod.shape)}"
            )
        spaces = getattr(self.stepper, "spaces", None)
        if spaces is None:
            raise TypeError(f"the stepper {self.stepper!r} must declare the sample spaces it supports (`spaces`)")
        if space not in spaces:
            raise ValueError(
                f"stepper {_name(self.stepper)} works in {sorted(spaces)} space, not in this plan's {space!r} "
                f"space; convert the plan with plan_in_space(plan, {sorted(spaces)[0]!r})"
            )

    def alpha_cumprod(self, index: int) -> Tensor | None:
        """ᾱ of plan point ``index`` (0-dim float32), or None for a plan without an ᾱ table."""
        return None if self.alphas_cumprod is None else self.alphas_cumprod[index]

    @property
    def num_steps(self) -> int:
        """N, the number of network evaluations (PLMS: one more than its requested steps)."""
        return len(self.timesteps)


def _name(stepper: Any) -> str:
    return getattr(stepper, "__name__", type(stepper).__name__)


# ---------------------------------------------------------------------------- the one step body
class StepResult(NamedTuple):
    """What one step gives: the next sample (in the output's dtype), its x̂0 (float32), the history."""

    prev_sample: Tensor
    denoised: Tensor
    history: tuple[Tensor, ...]


def advance(
    output: Tensor, sample: Tensor, parameterization: Parameterization, stepper: Stepper, context: StepContext
) -> StepResult:
    """One step from the raw (guided) network ``output`` at ``sample``: the loop's and every public
    ``step()``'s body.

    x̂0 comes from the float32 sample at ``context.sigma`` (with the context's exact ᾱ when it has
    a table), the stepper moves the float32 sample, and the result is cast to the output's dtype,
    as the reference schedulers round; a stepper with ``keeps_sample_dtype`` (UniPC, whose reference
    returns the sample's dtype) gives the result in the sample's dtype instead.
    """
    x = sample.to(torch.float32)
    alpha = None if context.alphas_cumprod is None else context.alpha_cumprod
    denoised = parameterization.denoised(output, x, context.sigma, alpha)
    stepped = stepper(x, denoised, dataclasses.replace(context, output=output))
    dtype = sample.dtype if getattr(stepper, "keeps_sample_dtype", False) else output.dtype
    return StepResult(stepped.sample.to(dtype), denoised, stepped.history)


# ---------------------------------------------------------------------------- plan transforms
def _alphas(plan: SamplingPlan) -> Tensor:
    """ᾱ of every plan point [N+1]: the plan's table, else 1/(σ² + 1)."""
    if plan.alphas_cumprod is not None:
        return plan.alphas_cumprod
    return 1 / (plan.sigmas.to(torch.float32) ** 2 + 1)


@dataclass(frozen=True, eq=False)
class InSpace:
    """A stepper written for one space run on the other space's sample.

    In: x_inner = x·sqrt(ᾱ_i) (VE → VP) or x/sqrt(ᾱ_i) (VP → VE); out: the inverse at ᾱ_{i+1}.
    Consecutive steps' conversions cancel, so only the start and the end see extra rounding.
    """

    inner: Stepper
    space: str  # the outer sample's space

    @property
    def spaces(self) -> frozenset[str]:
        return frozenset({self.space})

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
        alphas = step.alphas_cumprod if step.alphas_cumprod is not None else 1 / (step.sigmas**2 + 1)
        scale_now, scale_next = alphas[step.index] ** 0.5, alphas[step.index + 1] ** 0.5
        if self.space == "ve":  # the inner stepper wants the VP sample
            stepped = self.inner(x * scale_now, denoised, step)
            return StepOutput(stepped.sample / scale_next, stepped.history)
        stepped = self.inner(x / scale_now, denoised, step)
        return StepOutput(stepped.sample * scale_next, stepped.history)


def plan_in_space(plan: SamplingPlan, space: str) -> SamplingPlan:
    """``plan`` with its sample in ``space`` ("ve" or "vp"), its stepper converted around each step.

    The same σ, timesteps, network input and x̂0; the initial noise scale and the final sample
    are those of the new space. A plan that starts at σ = ∞ (ᾱ = 0) has no VE form.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {list(SPACES)}, got {space!r}")
    current = plan.parameterization.space
    if space == current:
        return plan
    if "flow" in (space, current):
        raise ValueError(f"a {current!r}-space plan cannot be converted to {space!r} space: flow plans run flow steppers only")
    alphas = _alphas(plan)
    if not alphas[0] > 0:
        raise ValueError("this plan starts at σ = ∞ (ᾱ = 0, zero terminal SNR): it has no VE-space form")
    stepper = plan.stepper
    stepper = stepper.inner if isinstance(stepper, InSpace) and space in stepper.inner.spaces else InSpace(stepper, space)
    start = float(alphas[0]) ** 0.5
    init = plan.init_noise_sigma / start if space == "ve" else plan.init_noise_sigma * start
    parameterization = Parameterization(plan.parameterization.prediction, plan.parameterization.timestep_map, space)
    return dataclasses.replace(plan, parameterization=parameterization, stepper=stepper, init_noise_sigma=init, alphas_cumprod=alphas)


@dataclass(frozen=True, eq=False)
class Offset:
    """A stepper whose plan starts ``skipped`` steps into a longer one: it sees the full plan's
    tables and step index, so per-step tables and warm-up rules stay those of the full plan."""

    inner: Stepper
    skipped: int
    sigmas: Tensor  # [N_full + 1] of the full plan
    alphas_cumprod: Tensor | None  # [N_full + 1] of the full plan, or None

    @property
    def spaces(self) -> frozenset[str]:
        return self.inner.spaces

    @property
    def keeps_sample_dtype(self) -> bool:
        return getattr(self.inner, "keeps_sample_dtype", False)

    def __call__(self, x: Tensor, denoised: Tensor, step: StepContext) -> StepOutput:
        full = dataclasses.replace(
            step, sigmas=self.sigmas, index=step.index + self.skipped, alphas_cumprod=self.alphas_cumprod
        )
        return self.inner(x, denoised, full)


def strength_start(num_steps: int, strength: float) -> int:
    """Steps the reference's image/video-to-video pipelines skip: N − min(int(N·strength), N)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    start = max(num_steps - min(int(num_steps * strength), num_steps), 0)
    if start >= num_steps:
        raise ValueError(f"strength={strength} leaves none of the {num_steps} steps; raise it")
    return start


def skip_steps(plan: SamplingPlan, start: int) -> SamplingPlan:
    """``plan`` from step ``start`` on (its initial noise level is σ_start); ``start = 0`` is the plan."""
    if start == 0:
        return plan
    alphas = None if plan.alphas_cumprod is None else plan.alphas_cumprod[start:]
    return dataclasses.replace(
        plan,
        sigmas=plan.sigmas[start:],
        timesteps=plan.timesteps[start:],
        stepper=Offset(plan.stepper, start, plan.sigmas, plan.alphas_cumprod),
        alphas_cumprod=alphas,
    )
