"""FreeInit for every pipeline: re-run the one loop from low-frequency-kept, re-noised latents.

FreeInit (Wu et al. 2023) samples a video, diffuses the result back to the terminal noise level,
keeps its low spatio-temporal frequencies, replaces the high ones with fresh noise and samples
again, ``num_iters`` times in all. It is a wrapper around the one loop (``Pipeline._denoise`` runs
the loop once per iteration), with diffusers 0.42.1's API and numbers:

- iteration 0 starts from the call's initial latents (already × ``init_noise_sigma``);
- iteration k > 0 diffuses the previous result to training timestep ``num_train_timesteps − 1``
  with those *initial latents* as the noise (so a σ-space scheduler's noise is scaled twice, by
  ``init_noise_sigma`` and by σ; diffusers does the same), then draws fresh float32 unit noise of
  the latents' shape from the call's generator (the global torch RNG without one), interleaved
  with any per-step noise (DDIM's η) exactly as diffusers draws it, and mixes the two in frequency
  space (:mod:`vidiff.diffusion.free_init`);
- ``use_fast_sampling``: iteration ``it`` runs ``max(1, int(steps / num_iters · (it + 1)))`` steps;
- the step callback's step index restarts at 0 in every iteration, as in diffusers.

The terminal noise level (a decision where diffusers has none or fails, documented here):

- VP-space plans (DDIM, LCM, PNDM, DPM-Solver): ``sqrt(ᾱ)·x + sqrt(1 − ᾱ)·n`` with ᾱ of training
  timestep T − 1 from the scheduler's table (DPM-Solver's reference form ``α_t·x + σ_t·n`` is the
  same up to float rounding);
- σ-space plans (Euler, Euler-ancestral): ``x + σ·n`` with σ of timestep T − 1 from the scheduler's
  ᾱ table, or its config's ``sigma_max`` when set (SVD's EDM schedule: 700 for the released
  checkpoints). diffusers looks T − 1 up among the timesteps of the schedule just run and raises an
  IndexError where it is missing ("leading" spacing, or a 1-step "linspace" schedule in fast
  sampling, whose only timestep is 0); vidiff uses the same σ there as everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..diffusion import free_init as free_init_math
from ..diffusion.loop import SamplingPlan
from ..diffusion.noise import NoiseSource, randn

# (initial latents, plan, progress-bar description) -> final latents: one run of the one loop.
RunLoop = Callable[[torch.Tensor, SamplingPlan, str], torch.Tensor]


@dataclass(frozen=True)
class FreeInitSettings:
    """What :meth:`FreeInitMixin.enable_free_init` was given (validated)."""

    num_iters: int
    use_fast_sampling: bool
    method: str
    order: float
    spatial_stop_frequency: float
    temporal_stop_frequency: float


def fast_sampling_steps(num_inference_steps: int, num_iters: int, iteration: int) -> int:
    """Steps of iteration ``iteration`` (from 0) with coarse-to-fine sampling: diffusers' float formula."""
    return max(1, int(num_inference_steps / num_iters * (iteration + 1)))


def _check_number(name: str, value: object, low: float, high: float | None) -> None:
    """ValueError naming ``name`` unless ``value`` is a real number in [low, high], or a finite number
    > ``low`` when ``high`` is None."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if high is None:
        valid = is_number and low < value < float("inf")
        expected = f"a finite number > {low}"
    else:
        valid = is_number and low <= value <= high
        expected = f"a number in [{low}, {high}]"
    if not valid:
        raise ValueError(f"`{name}` must be {expected}, got {value!r}")


class FreeInitMixin:
    """FreeInit (Wu et al. 2023) with diffusers' API and results, as a wrapper around the one loop."""

    scheduler: Any  # the pipeline's scheduler: its config and ᾱ table set the terminal noise level
    _free_init: FreeInitSettings | None = None

    def enable_free_init(
        self,
        num_iters: int = 3,
        use_fast_sampling: bool = False,
        method: str = "butterworth",
        order: int = 4,
        spatial_stop_frequency: float = 0.25,
        temporal_stop_frequency: float = 0.25,
    ) -> None:
        """Sample every following call ``num_iters`` times, each from the last result's low frequencies.

        Args:
            num_iters: sampling runs per call (≥ 1; 1 is a plain call). Cost grows with it.
            use_fast_sampling: coarse-to-fine: run iteration ``it`` with ``int(steps / num_iters · (it + 1))``
                steps (at least 1), so only the last runs all of them.
            method: the low-pass filter, "butterworth", "ideal" or "gaussian".
            order: butterworth's order (> 0); higher is closer to "ideal".
            spatial_stop_frequency / temporal_stop_frequency: normalised stop frequencies in [0, 1]
                (0: keep nothing of the previous result).
        """
        if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
            raise ValueError(f"`num_iters` must be an int ≥ 1 (sampling runs per call), got {num_iters!r}")
        if not isinstance(use_fast_sampling, bool):
            raise TypeError(f"`use_fast_sampling` must be True or False, got {use_fast_sampling!r}")
        if method not in free_init_math.FILTER_METHODS:
            raise ValueError(f"`method` must be one of {list(free_init_math.FILTER_METHODS)}, got {method!r}")
        _check_number("order", order, 0, None)
        _check_number("spatial_stop_frequency", spatial_stop_frequency, 0, 1)
        _check_number("temporal_stop_frequency", temporal_stop_frequency, 0, 1)
        self._free_init = FreeInitSettings(
            num_iters, use_fast_sampling, method, order, spatial_stop_frequency, temporal_stop_frequency
        )

    def disable_free_init(self) -> None:
        """Sample once per call again."""
        self._free_init = None

    @property
    def free_init_enabled(self) -> bool:
        """Whether :meth:`enable_free_init` is in effect."""
        return self._free_init is not None

    # ------------------------------------------------------------------ the wrapper around the loop
    def _free_init_sample(
        self,
        run: RunLoop,
        latents: torch.Tensor,
        plan: SamplingPlan,
        replan: Callable[[int], SamplingPlan] | None,
        num_inference_steps: int | None,
        noise: NoiseSource | None,
    ) -> torch.Tensor:
        """Run the loop once per FreeInit iteration (``run``) from ``latents`` [B, C, F, h, w].

        ``replan(steps)`` gives the plan for another step count (fast sampling); ``noise`` is the
        call's seeded noise source (its generator also draws FreeInit's fresh noise).
        """
        settings = self._free_init
        if settings.use_fast_sampling and (replan is None or num_inference_steps is None):
            raise ValueError(f"{type(self).__name__} cannot re-plan its steps, so FreeInit's use_fast_sampling is unavailable")
        initial = latents.detach().clone()  # the noise every later iteration diffuses with
        for iteration in range(settings.num_iters):
            if iteration > 0:
                latents = self._reinitialize(latents, initial, plan.parameterization.space, noise)
            if settings.use_fast_sampling:
                plan = replan(fast_sampling_steps(num_inference_steps, settings.num_iters, iteration))
            latents = run(latents, plan, f"denoising (FreeInit {iteration + 1}/{settings.num_iters})")
        return latents

    def _reinitialize(
        self, latents: torch.Tensor, initial: torch.Tensor, plan_space: str, noise: NoiseSource | None
    ) -> torch.Tensor:
        """The previous result diffused to the terminal noise level with ``initial`` as the noise, its
        low frequencies kept and the high ones replaced by fresh float32 noise; in ``latents``' dtype."""
        settings = self._free_init
        config = self.scheduler.config
        if plan_space == "vp":
            diffused = free_init_math.diffuse_vp(latents, initial, self.scheduler.alphas_cumprod[config.num_train_timesteps - 1])
        else:
            diffused = free_init_math.diffuse_ve(latents, initial, self._terminal_sigma())
        if noise is not None:
            fresh = noise(tuple(latents.shape), torch.float32)
        else:
            fresh = randn(latents.shape, None, device=latents.device, dtype=torch.float32)
        low_pass = free_init_math.low_pass_filter(
            (1, *latents.shape[1:]), settings.method, settings.order,
            settings.spatial_stop_frequency, settings.temporal_stop_frequency,
        )
        mixed = free_init_math.mix_frequencies(diffused.to(torch.float32), fresh, low_pass)
        return mixed.to(latents.dtype)

    def _terminal_sigma(self) -> torch.Tensor:
        """σ of a σ-space scheduler's terminal training noise level (0-dim float32): its config's
        ``sigma_max`` when set (SVD's EDM schedule, 700), else σ of timestep T − 1 from its ᾱ table."""
        config = self.scheduler.config
        sigma_max = getattr(config, "sigma_max", None)
        if sigma_max is not None:
            return torch.tensor(float(sigma_max), dtype=torch.float32)
        alpha = self.scheduler.alphas_cumprod[config.num_train_timesteps - 1]  # float32, as the reference's σ table
        return ((1 - alpha) / alpha) ** 0.5
