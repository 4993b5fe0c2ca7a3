"""What the VP-space schedulers (DDIM, LCM) share: the ᾱ table, its parameterization, option checks.

Both read ᾱ_t straight from the float32 training table at whole timesteps, sample the VP latent
``x = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε`` (initial noise × 1, network input unscaled) and may limit x̂0
by clipping or dynamic thresholding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..diffusion import sigmas as schedules
from ..diffusion.parameterization import PREDICTIONS, DiscreteTimesteps, Parameterization
from ..diffusion.steppers_vp import SampleLimit, sample_limit
from .base import check_training_options, config_alphas_cumprod, is_int


@dataclass(frozen=True, eq=False)
class AlphaTable:
    """ᾱ_t of a DDPM training schedule, and the ᾱ a step that goes below t = 0 lands on."""

    alphas_cumprod: Tensor  # [T] float32, decreasing with t (ᾱ_{T−1} = 0 with zero terminal SNR)
    final_alpha_cumprod: Tensor  # 0-dim float32: 1 (set_alpha_to_one) or ᾱ_0

    @classmethod
    def from_config(cls, config: Any) -> AlphaTable:
        """From a config with the β options and ``set_alpha_to_one`` (DDIM's / LCM's)."""
        table = config_alphas_cumprod(config)
        final = torch.tensor(1.0) if config.set_alpha_to_one else table[0].clone()
        return cls(table, final)

    def __len__(self) -> int:
        return len(self.alphas_cumprod)

    def at(self, timesteps: Tensor) -> Tensor:
        """ᾱ at int64 ``timesteps`` (any shape). A negative t counts from the end, as the reference's
        table indexing does (trailing spacing can schedule t = −1)."""
        self._check_range(timesteps)
        return self.alphas_cumprod[timesteps]

    def landing(self, timesteps: Tensor) -> Tensor:
        """ᾱ a step lands on at int64 ``timesteps``: the table value, or the final ᾱ below t = 0."""
        self._check_range(timesteps)
        inside = self.alphas_cumprod[timesteps.clamp(min=0)]
        return torch.where(timesteps >= 0, inside, self.final_alpha_cumprod)

    def parameterization(self, prediction: str) -> Parameterization:
        """The VP parameterization for ``prediction``; its timestep map (σ → fractional t) serves
        steppers that evaluate the model at other σ (none of DDIM's or LCM's do)."""
        sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)  # [T], ∞ where ᾱ = 0
        return Parameterization(prediction, DiscreteTimesteps(schedules.log_sigmas(sigmas)), space="vp")

    def _check_range(self, timesteps: Tensor) -> None:
        count = len(self.alphas_cumprod)
        if timesteps.numel() and (timesteps.max() >= count or timesteps.min() < -count):
            raise ValueError(
                f"timesteps must lie in [0, {count - 1}] (num_train_timesteps), got values from "
                f"{timesteps.min().item()} to {timesteps.max().item()}; check steps_offset and the step count"
            )


def plan_sigmas(points: Tensor) -> Tensor:
    """σ of VP plan points from their ᾱ [N+1]: sqrt((1 − ᾱ)/ᾱ), ∞ at ᾱ = 0. float32."""
    return schedules.sigmas_from_alphas_cumprod(points.to(torch.float32))


def config_limit(config: Any) -> SampleLimit | None:
    """The x̂0 limit of a DDIM / LCM config (thresholding, clipping, or None)."""
    return sample_limit(
        clip_sample=bool(config.clip_sample),
        clip_sample_range=config.clip_sample_range,
        thresholding=bool(config.thresholding),
        dynamic_thresholding_ratio=config.dynamic_thresholding_ratio,
        sample_max_value=config.sample_max_value,
    )


@dataclass(frozen=True, eq=False)
class VPSchedulerParts:
    """What a DDIM / LCM scheduler derives from its config once, at construction."""

    table: AlphaTable
    parameterization: Parameterization
    limit: SampleLimit | None
    training_timesteps: Tensor  # [T] int64, T-1 … 0: ``timesteps`` before ``set_timesteps``

    @classmethod
    def from_config(cls, config: Any) -> VPSchedulerParts:
        table = AlphaTable.from_config(config)
        count = config.num_train_timesteps
        return cls(
            table, table.parameterization(config.prediction_type), config_limit(config),
            torch.arange(count - 1, -1, -1, dtype=torch.int64),
        )


class VPTableScheduler:
    """Mixin of the VP-table schedulers (DDIM, LCM): their config-derived parts, set at construction.

    Put it before the scheduler base: ``class DDIMScheduler(VPTableScheduler, Scheduler)``.
    """

    init_noise_sigma = 1.0  # VP sample: the initial latents are unit noise

    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)  # type: ignore[call-arg]
        parts = VPSchedulerParts.from_config(self.config)  # type: ignore[attr-defined]
        self.table, self.parameterization, self.limit = parts.table, parts.parameterization, parts.limit
        self.timesteps = parts.training_timesteps  # until set_timesteps

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t of the training schedule, [T] float32."""
        return self.table.alphas_cumprod


def check_vp_options(config: Any) -> None:
    """ValueError naming the option for the choices DDIM and LCM share."""
    owner = type(config).__name__
    check_training_options(config, PREDICTIONS)
    if config.trained_betas is not None and len(config.trained_betas) != config.num_train_timesteps:
        raise ValueError(
            f"{owner}: trained_betas must hold num_train_timesteps={config.num_train_timesteps} values, "
            f"got {len(config.trained_betas)}"
        )
    if config.thresholding and not 0 <= config.dynamic_thresholding_ratio <= 1:
        raise ValueError(
            f"{owner}: dynamic_thresholding_ratio must be in [0, 1], got {config.dynamic_thresholding_ratio!r}"
        )


def check_step_count(name: str, value: Any, num_train_timesteps: int) -> None:
    """ValueError unless ``value`` is an int in [1, num_train_timesteps]."""
    if not is_int(value) or not 1 <= value <= num_train_timesteps:
        raise ValueError(
            f"{name} must be an int in [1, {num_train_timesteps}] (num_train_timesteps), got {value!r}"
        )


def as_timestep(timestep: Any) -> int:
    """A whole-number timestep (int, integral float or 0-dim tensor) as an int; ValueError otherwise."""
    if isinstance(timestep, Tensor):
        if timestep.numel() != 1:
            raise ValueError(f"timestep must be a single value, got a tensor of shape {list(timestep.shape)}")
        timestep = timestep.item()
    value = timestep
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise ValueError(f"timestep must be a whole training step (an int or 0-dim tensor), got {timestep!r}")
    return int(value)
