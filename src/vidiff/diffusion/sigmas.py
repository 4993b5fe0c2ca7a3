"""Noise schedules as σ tensors.

Everything here works in "VE" σ-space, where a noisy sample is ``x = x0 + σ·ε``. A DDPM-style
training schedule (betas → ᾱ_t) maps onto it through ``σ_t = sqrt((1 − ᾱ_t) / ᾱ_t)``, and the
sampling schedules below pick a decreasing run of σ values from it (or ignore it, like Karras').

Two families of functions:

* the **training table**: ``*_betas``, :func:`rescale_zero_terminal_snr`, :func:`training_alphas_cumprod`
  and :func:`sigmas_from_alphas_cumprod`: one value per training timestep ``t = 0 … T−1``, float32,
  increasing noise with ``t``;
* **inference schedules**: timestep spacings (which training steps to visit) and σ schedules
  (Karras, exponential, interpolated from the table), decreasing noise, float64 where the
  published reference computes in float64, so the float32 results agree to the last bit or two.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


# ---------------------------------------------------------------------------- training table
def linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int) -> Tensor:
    """β_t evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020). [T] float32."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)


def scaled_linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int) -> Tensor:
    """√β_t evenly spaced, then squared: the Latent/Stable Diffusion schedule. [T] float32."""
    root = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32)
    return root**2


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> Tensor:
    """The "squaredcos_cap_v2" schedule (Nichol & Dhariwal 2021, eq. 17), each β capped at ``max_beta``.

    ᾱ(s) = cos²((s + 0.008) / 1.008 · π/2) for s ∈ [0, 1]; β_t = 1 − ᾱ((t+1)/T) / ᾱ(t/T).
    Evaluated in float64 Python floats, then stored as float32. [T]
    """

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = num_train_timesteps
    betas = [min(1 - alpha_bar((t + 1) / steps) / alpha_bar(t / steps), max_beta) for t in range(steps)]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale √ᾱ_t so the last training step has ᾱ = 0 (Lin et al. 2023, Alg. 1). [T] → [T]

    The first step keeps its √ᾱ; the schedule in between is moved linearly in √ᾱ.
    """
    root_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root_alpha_bar[0].clone(), root_alpha_bar[-1].clone()
    root_alpha_bar = (root_alpha_bar - last) * (first / (first - last))
    alpha_bar = root_alpha_bar**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def training_alphas_cumprod(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: tuple[float, ...] | list[float] | None = None,
    rescale_betas_zero_snr: bool = False,
) -> Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s) for a scheduler config's beta options. [T] float32.

    ``trained_betas`` (an explicit β table) wins over ``beta_schedule``. With
    ``rescale_betas_zero_snr`` the last entry is exactly 0 (σ = ∞); callers that cannot take an
    infinite σ clamp it themselves.
    """
    if trained_betas is not None:
        betas = torch.tensor(list(trained_betas), dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = linear_betas(beta_start, beta_end, num_train_timesteps)
    elif beta_schedule == "scaled_linear":
        betas = scaled_linear_betas(beta_start, beta_end, num_train_timesteps)
    elif beta_schedule == "squaredcos_cap_v2":
        betas = cosine_betas(num_train_timesteps)
    else:
        raise ValueError(f"beta_schedule must be one of {list(BETA_SCHEDULES)}, got {beta_schedule!r}")
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0)


def finite_terminal_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """A copy whose last ᾱ is 2⁻²⁴, the smallest positive float16 subnormal (σ_T ≈ 4096).

    A zero-terminal-SNR table ends at ᾱ = 0, σ = ∞, which σ-space schedulers cannot start from;
    the reference schedulers substitute this value. [T] float32
    """
    finite = alphas_cumprod.clone()
    finite[-1] = 2**-24
    return finite


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), in the table's order (increasing with t) and dtype. [T]"""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def log_sigmas(table: Tensor) -> Tensor:
    """log σ_t of a float32 table, taken with numpy's float32 log. [T] float32

    numpy's and torch's float32 ``log`` differ in the last bit for ~15% of a 1000-entry table, which
    moves σ → timestep lookups by one float32 ulp; the reference uses numpy's.
    """
    return torch.from_numpy(np.log(table.detach().cpu().to(torch.float32).numpy()))


# ---------------------------------------------------------------------------- timestep spacings
def spaced_timesteps(spacing: str, num_steps: int, num_train_timesteps: int, steps_offset: int = 0) -> Tensor:
    """Which training timesteps ``num_steps`` inference steps visit, highest first. float32.

    The three spacings of Lin et al. 2023, Table 2:

    * ``"linspace"``: evenly from T−1 down to 0 (fractional timesteps);
    * ``"leading"``: multiples of T // n, counted from 0, plus ``steps_offset``;
    * ``"trailing"``: from T−1 down in steps of T / n, rounded. The length comes from a float64
      ``arange`` exactly as in the reference implementation, so for some ``num_steps`` (61, 103, …
      with T = 1000) it is ``num_steps + 1`` with a last timestep of −1; kept for parity.
    """
    if spacing == "linspace":
        grid = torch.linspace(0, num_train_timesteps - 1, num_steps, dtype=torch.float64)
        return grid.flip(0).to(torch.float32)
    if spacing == "leading":
        stride = num_train_timesteps // num_steps
        grid = torch.arange(num_steps, dtype=torch.float64) * stride
        return grid.flip(0).to(torch.float32) + steps_offset
    if spacing == "trailing":
        # numpy's arange fixes both the length and the rounding of the visited steps.
        grid = np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps).round()
        return torch.from_numpy(grid).to(torch.float32) - 1
    raise ValueError(f"timestep_spacing must be one of {list(TIMESTEP_SPACINGS)}, got {spacing!r}")


def integer_spaced_timesteps(spacing: str, num_steps: int, num_train_timesteps: int, steps_offset: int = 0) -> Tensor:
    """:func:`spaced_timesteps` as whole training steps, the DDIM convention. int64, highest first.

    ``"leading"`` and ``"trailing"`` already are whole numbers. ``"linspace"`` is rounded half to
    even from numpy's float64 ``linspace`` (torch's differs in the last bit often enough to flip a
    .5 case; the reference uses numpy's) and, as in the reference, ignores ``steps_offset``.
    """
    if spacing == "linspace":
        grid = np.linspace(0, num_train_timesteps - 1, num_steps).round()[::-1].copy()
        return torch.from_numpy(grid).to(torch.int64)
    return spaced_timesteps(spacing, num_steps, num_train_timesteps, steps_offset).to(torch.int64)


def solver_spaced_timesteps(
    spacing: str, num_steps: int, num_train_timesteps: int, last_timestep: int, steps_offset: int = 0
) -> Tensor:
    """Whole training steps for the multistep-solver convention (DPM-Solver). int64, highest first.

    ``"linspace"`` and ``"leading"`` lay out ``num_steps + 1`` points over ``[0, last_timestep)`` and
    drop the lowest, so the run never visits t = 0; ``"trailing"`` counts down from
    ``last_timestep`` in steps of ``num_train_timesteps / num_steps``. ``last_timestep`` < T when
    the reference clips small λ (``lambda_min_clipped``).
    """
    if spacing == "trailing":
        grid = np.arange(last_timestep, 0, -num_train_timesteps / num_steps).round()
        return torch.from_numpy(grid).to(torch.int64) - 1
    return integer_spaced_timesteps(spacing, num_steps + 1, last_timestep, steps_offset)[:-1]


# ---------------------------------------------------------------------------- σ schedules
def interpolate_sigmas(table: Tensor, timesteps: Tensor) -> Tensor:
    """σ at (possibly fractional) ``timesteps``, linear between table entries. float64, [N].

    ``table`` is σ_t for t = 0 … T−1; timesteps outside [0, T−1] take the end values.
    """
    table = table.to(torch.float64)
    t = timesteps.to(torch.float64).clamp(0, table.shape[0] - 1)
    low = t.floor().clamp(max=table.shape[0] - 2).long()
    frac = t - low
    return table[low] + (table[low + 1] - table[low]) * frac


def log_linear_sigmas(table: Tensor, num_points: int) -> Tensor:
    """``num_points`` σ evenly spaced in log σ from the table's largest down to its smallest. float32."""
    log_table = table.to(torch.float32).log()
    return torch.linspace(log_table[-1].item(), log_table[0].item(), num_points, dtype=torch.float32).exp()


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: σ_i evenly spaced in σ^(1/ρ) from ``sigma_max`` to ``sigma_min``. float64, [n]."""
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    max_root, min_root = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_root + ramp * (min_root - max_root)) ** rho


def log_uniform_sigmas(num_steps: int, log_sigma_min: float, log_sigma_max: float) -> Tensor:
    """σ = exp(λ) with λ evenly spaced from ``log_sigma_max`` down to ``log_sigma_min``: DPM-Solver's
    "uniform λ" schedule (Lu et al. 2022b), whose reference takes the ends from a float32 log table
    and ramps as ``max + ramp·(min − max)``. float64, [n]."""
    ramp = torch.from_numpy(np.linspace(0, 1, num_steps))
    return (log_sigma_max + ramp * (log_sigma_min - log_sigma_max)).exp()


def exponential_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """σ evenly spaced in log σ from ``sigma_max`` to ``sigma_min``. float64, [n]."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), num_steps, dtype=torch.float64).exp()
