"""How a network's raw output and timestep input relate to the sample being denoised.

Three sample spaces (``Parameterization.space``):

* ``"ve"``: ``x = x0 + σ·ε``. The network sees ``c_in(σ)·x = x / sqrt(σ² + 1)`` and a timestep
  ``c_noise(σ)`` (Karras et al. 2022, Table 1, "VP"/"EDM" columns). Euler-type samplers live here.
* ``"vp"``: ``x = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε``, the DDPM sample itself, with ᾱ = 1 / (σ² + 1). The
  network sees ``x`` unscaled. DDIM and LCM step here, with ᾱ read from the float32 training
  table, and ᾱ = 0 (σ = ∞, zero terminal SNR) stays finite: v-prediction gives x̂0 = −v, ε̂ = x.
* ``"flow"``: ``x = (1 − t)·x0 + t·ε`` (rectified flow / flow matching, Lipman et al. 2023), with
  t ∈ [0, 1] stored as the plan's "σ". The network sees ``x`` unscaled and predicts the velocity
  ``v = ε − x0`` (``"flow_prediction"``), so x̂0 = x − t·v; it is told ``t·num_train_timesteps``
  (:class:`FlowTimesteps`). Wan and the other flow-matching video models sample here.

A :class:`Parameterization` bundles the space, the prediction type (ε, v or x0) and the timestep
map, so that the loop can turn any network into the denoiser ``D(x, σ) → x̂0`` the steppers use.

The arithmetic mirrors the reference scheduler's expressions operation by operation (same
operands, same order, same dtypes), so results are bit-identical: at σ ≈ 700 the sample is ~700
and one float32 ulp is 6e-5, so another rounding order shows in single steps (and at ~1e-6 in
the final latents of a 25-step SVD run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

Prediction = Literal["epsilon", "v_prediction", "sample", "flow_prediction"]
# What DDPM-trained (VE / VP) networks predict; "flow_prediction" (the velocity ε − x0) belongs to
# the flow space, where ε and x0 predictions also have a form.
PREDICTIONS = ("epsilon", "v_prediction", "sample")
FLOW_PREDICTIONS = ("flow_prediction", "epsilon", "sample")
Space = Literal["ve", "vp", "flow"]
SPACES = ("ve", "vp", "flow")


class TimestepMap(Protocol):
    """σ → the timestep value the network is conditioned on."""

    def __call__(self, sigmas: Tensor) -> Tensor: ...


@dataclass(frozen=True, eq=False)
class DiscreteTimesteps:
    """A DDPM network's timestep: the (fractional) training step whose σ_t equals σ.

    Found by linear interpolation in log σ between neighbouring entries of the training table
    (k-diffusion's ``sigma_to_t``); σ outside the table clamps to t = 0 or T−1.
    """

    log_sigmas: Tensor  # [T] float32, log σ_t of the training table, increasing with t

    def __call__(self, sigmas: Tensor) -> Tensor:
        """[N] σ → [N] float32 timesteps.

        Works in the precision of ``sigmas`` (float64 stays float64, anything else float32) with
        numpy's ``log``, as the reference does, so the float32 result agrees to the bit.
        """
        dtype = torch.float64 if sigmas.dtype == torch.float64 else torch.float32
        values = sigmas.detach().to(device="cpu", dtype=dtype).numpy()
        log_sigma = torch.from_numpy(np.log(np.maximum(values, 1e-10)))  # [N]
        table = self.log_sigmas.to(device="cpu", dtype=dtype)  # [T]
        # Index of the last table entry ≤ log σ, kept where a right neighbour exists.
        low = ((table[:, None] <= log_sigma[None, :]).sum(0) - 1).clamp(0, table.shape[0] - 2)
        weight = ((table[low] - log_sigma) / (table[low] - table[low + 1])).clamp(0, 1)
        # Blend of the two neighbouring indices in float64 (not low + weight): rounds like the reference.
        low = low.to(torch.float64)
        return ((1 - weight).double() * low + weight.double() * (low + 1)).to(torch.float32)


@dataclass(frozen=True)
class ContinuousTimesteps:
    """SVD's / EDM's continuous timestep, c_noise = ¼·ln σ (Karras et al. 2022, Table 1)."""

    def __call__(self, sigmas: Tensor) -> Tensor:
        """[N] σ → [N] float32; computed in float32 as the reference does."""
        return 0.25 * sigmas.to(torch.float32).log()


@dataclass(frozen=True)
class FlowTimesteps:
    """A flow-matching network's timestep: t·num_train_timesteps for the flow time t ∈ [0, 1].

    ``truncate=False``: the float32 product, fed unrounded (FlowMatchEulerDiscreteScheduler).
    ``truncate=True``: cut to a whole number, as UniPCMultistepScheduler casts its timesteps to
    int64 (it truncates the float64 product; from a float32 t the cut can differ where t·T lies
    within a float32 ulp of a whole number, so schedulers put their exact timesteps in the plan).
    """

    num_train_timesteps: int = 1000
    truncate: bool = False

    def __call__(self, sigmas: Tensor) -> Tensor:
        """[N] flow t → [N] float32 timesteps."""
        if self.truncate:
            return (sigmas.to(torch.float64) * self.num_train_timesteps).to(torch.int64).to(torch.float32)
        return sigmas.to(torch.float32) * self.num_train_timesteps


@dataclass(frozen=True, eq=False)
class Parameterization:
    """What the network predicts, what timestep it sees, and which sample space the loop keeps.

    ``prediction``: ``"epsilon"`` (the noise), ``"v_prediction"`` (v = α·ε − σ_VP·x0, Salimans & Ho
    2022), ``"sample"`` (x0 itself) or, in flow space only, ``"flow_prediction"`` (the velocity
    ε − x0). ``space``: ``"ve"`` (the default; the network input is ``x / sqrt(σ² + 1)``, the VE
    sample rescaled to the unit-variance sample the network was trained on), ``"vp"`` (the sample
    already is that, so the input is ``x`` itself) or ``"flow"`` (input ``x`` itself; σ is the flow
    time t).
    """

    prediction: Prediction
    timestep_map: TimestepMap
    space: Space = "ve"

    def __post_init__(self) -> None:
        if self.prediction not in (*PREDICTIONS, "flow_prediction"):
            raise ValueError(f"prediction must be one of {[*PREDICTIONS, 'flow_prediction']}, got {self.prediction!r}")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {list(SPACES)}, got {self.space!r}")
        valid = FLOW_PREDICTIONS if self.space == "flow" else PREDICTIONS
        if self.prediction not in valid:
            raise ValueError(f"prediction must be one of {list(valid)} in {self.space!r} space, got {self.prediction!r}")

    def timestep(self, sigmas: Tensor) -> Tensor:
        """σ [N] → the timesteps [N] the network is given."""
        return self.timestep_map(sigmas)

    def scale_input(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The network input: ``x / sqrt(σ² + 1)`` in VE space, ``x`` itself in VP and flow space.

        In ``x``'s dtype; σ is a 0-dim float32 tensor.
        """
        if self.space in ("vp", "flow"):
            return x
        return x / ((sigma**2 + 1) ** 0.5)

    def denoised(self, output: Tensor, x: Tensor, sigma: Tensor, alpha_cumprod: Tensor | None = None) -> Tensor:
        """x̂0 from the raw network ``output`` at the sample ``x`` (float32) and 0-dim σ.

        VE space — ε: x̂0 = x − σ·ε.  v: x̂0 = x/(σ²+1) − v·σ/sqrt(σ²+1).  sample: x̂0 = output.
        The σ·output products stay in the output's dtype before meeting the float32 sample, as
        in the reference step.

        VP space: see :func:`vp_denoised`. ``alpha_cumprod`` is the exact float32 ᾱ of this noise
        level (a plan's table value); without it ᾱ = 1 / (σ² + 1), exact only up to rounding.
        Flow space (σ = t): see :func:`flow_denoised`.
        """
        if self.space == "flow":
            return flow_denoised(self.prediction, output, x, sigma)
        if self.space == "vp":
            return vp_denoised(self.prediction, output, x, _alpha_cumprod(sigma, alpha_cumprod))
        if self.prediction == "epsilon":
            return x - sigma * output
        if self.prediction == "v_prediction":
            return output * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
        return output


def _alpha_cumprod(sigma: Tensor, alpha_cumprod: Tensor | None) -> Tensor:
    """The given table value, else ᾱ = 1 / (σ² + 1) (0 at σ = ∞)."""
    if alpha_cumprod is not None:
        return alpha_cumprod
    return 1 / (sigma**2 + 1)


# ---------------------------------------------------------------------------- VP-space formulas
# x = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε and v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x0 (Salimans & Ho 2022, §4).
# Operands and order follow the reference DDIM/LCM steps, so float32 results agree to the bit;
# ᾱ is a 0-dim float32 tensor, ``x`` the float32 sample, ``output`` the raw network output.
def vp_denoised(prediction: Prediction, output: Tensor, x: Tensor, alpha_cumprod: Tensor) -> Tensor:
    """x̂0 in VP space. ε: (x − sqrt(1−ᾱ)·ε)/sqrt(ᾱ) (infinite at ᾱ = 0); v: sqrt(ᾱ)·x − sqrt(1−ᾱ)·v."""
    if prediction == "epsilon":
        return (x - (1 - alpha_cumprod) ** 0.5 * output) / alpha_cumprod**0.5
    if prediction == "v_prediction":
        return alpha_cumprod**0.5 * x - (1 - alpha_cumprod) ** 0.5 * output
    return output


def vp_noise(prediction: Prediction, output: Tensor, x: Tensor, alpha_cumprod: Tensor) -> Tensor:
    """ε̂ in VP space, straight from the raw output (no division by sqrt(ᾱ), so finite at ᾱ = 0).

    ε: the output itself; v: sqrt(ᾱ)·v + sqrt(1−ᾱ)·x; sample: (x − sqrt(ᾱ)·x0)/sqrt(1−ᾱ).
    """
    if prediction == "epsilon":
        return output
    if prediction == "v_prediction":
        return alpha_cumprod**0.5 * output + (1 - alpha_cumprod) ** 0.5 * x
    return noise_from_denoised(output, x, alpha_cumprod)


def noise_from_denoised(denoised: Tensor, x: Tensor, alpha_cumprod: Tensor) -> Tensor:
    """ε̂ = (x − sqrt(ᾱ)·x̂0) / sqrt(1 − ᾱ): the noise a given x̂0 implies at the VP sample ``x``."""
    return (x - alpha_cumprod**0.5 * denoised) / (1 - alpha_cumprod) ** 0.5


# ---------------------------------------------------------------------------- flow-space formulas
# x = (1 − t)·x0 + t·ε, v = dx/dt = ε − x0. ``t`` is a 0-dim float32 tensor; the t·output product
# stays in the output's dtype before meeting the float32 sample, as the reference schedulers round.
def flow_denoised(prediction: Prediction, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """x̂0 in flow space. velocity: x − t·v; ε: (x − t·ε)/(1 − t) (infinite at t = 1); sample: x0."""
    if prediction == "flow_prediction":
        return x - t * output
    if prediction == "epsilon":
        return (x - t * output) / (1 - t)
    return output
