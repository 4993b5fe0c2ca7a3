"""How a network's raw output and timestep input relate to σ-space.

Sampling happens on ``x = x0 + σ·ε``. A trained network sees ``c_in(σ)·x`` and a timestep
``c_noise(σ)``, and predicts ε, v or x0 (Karras et al. 2022, Table 1, "VP"/"EDM" columns). A
:class:`Parameterization` bundles those two choices, so that the loop can turn any network into
the denoiser ``D(x, σ) → x̂0`` the steppers work with.

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

Prediction = Literal["epsilon", "v_prediction", "sample"]
PREDICTIONS = ("epsilon", "v_prediction", "sample")


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


@dataclass(frozen=True, eq=False)
class Parameterization:
    """What the network predicts and what timestep it sees, as the scalings of a denoiser.

    ``prediction``: ``"epsilon"`` (the noise), ``"v_prediction"`` (v = α·ε − σ_VP·x0, Salimans & Ho
    2022) or ``"sample"`` (x0 itself). The network input is always ``x / sqrt(σ² + 1)``: the VE
    sample rescaled to the unit-variance VP sample the network was trained on.
    """

    prediction: Prediction
    timestep_map: TimestepMap

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {list(PREDICTIONS)}, got {self.prediction!r}")

    def timestep(self, sigmas: Tensor) -> Tensor:
        """σ [N] → the timesteps [N] the network is given."""
        return self.timestep_map(sigmas)

    @staticmethod
    def scale_input(x: Tensor, sigma: Tensor) -> Tensor:
        """c_in(σ)·x = x / sqrt(σ² + 1), in ``x``'s dtype (σ is a 0-dim float32 tensor)."""
        return x / ((sigma**2 + 1) ** 0.5)

    def denoised(self, output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """x̂0 from the raw network ``output`` at the VE sample ``x`` (float32) and 0-dim σ.

        ε: x̂0 = x − σ·ε.  v: x̂0 = x/(σ²+1) − v·σ/sqrt(σ²+1).  sample: x̂0 = output.
        The σ·output products stay in the output's dtype before meeting the float32 sample, as
        in the reference step.
        """
        if self.prediction == "epsilon":
            return x - sigma * output
        if self.prediction == "v_prediction":
            return output * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
        return output
