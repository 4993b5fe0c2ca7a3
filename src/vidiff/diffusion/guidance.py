"""Guidance as data: which network branches to run, and how to combine their outputs.

The loop asks ``needs_uncond``; if true it runs the unconditional and conditional branches in one
batched call (``[uncond, cond]`` along the batch) and hands both raw outputs to ``combine``.

Guidance is applied to the **raw network outputs** (ε or v), before they become x̂0, because that
is where the reference pipelines apply it. Linear guidance gives the same result in ε, v or x̂0
space in exact arithmetic (each is an affine function of the output at fixed x and σ), but not
in float32: combining SVD's x̂0 instead moved the final latents of a 25-step run by 2e-6, while
the raw-output form keeps them bit-identical to the reference. Non-linear rules (e.g. rescaled
CFG) would need the space named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class Guidance(Protocol):
    """A guidance rule: ``needs_uncond`` picks the branches, ``combine`` merges their outputs."""

    @property
    def needs_uncond(self) -> bool: ...

    def combine(self, uncond: Tensor, cond: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class NoGuidance:
    """Run the conditional branch only and use it as is."""

    @property
    def needs_uncond(self) -> bool:
        return False

    def combine(self, uncond: Tensor, cond: Tensor) -> Tensor:
        return cond


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """out = uncond + scale·(cond − uncond) (Ho & Salimans 2022).

    As in the reference pipelines, the unconditional branch only runs when ``scale > 1``; at or below
    1 this is the conditional output alone.
    """

    scale: float

    @property
    def needs_uncond(self) -> bool:
        return self.scale > 1

    def combine(self, uncond: Tensor, cond: Tensor) -> Tensor:
        if not self.needs_uncond:
            return cond
        return uncond + self.scale * (cond - uncond)


@dataclass(frozen=True)
class FrameRampGuidance:
    """Stable Video Diffusion's frame-wise CFG: the scale ramps linearly over the frames.

    Frame f of F gets ``linspace(min_scale, max_scale, F)[f]``, so the first frame (the conditioning
    image) is barely guided and the last the most. Tensors are ``[B, C, F, H, W]``; the ramp
    broadcasts as ``[1, 1, F, 1, 1]``. ``num_frames`` (optional) is checked against the outputs. As in
    the reference, the unconditional branch runs only when ``max_scale > 1``.
    """

    min_scale: float
    max_scale: float
    num_frames: int | None = None
    frame_dim: int = 2

    @property
    def needs_uncond(self) -> bool:
        return self.max_scale > 1

    def scales(self, like: Tensor) -> Tensor:
        """The per-frame scales in ``like``'s dtype and device, shaped to broadcast over it."""
        num_frames = like.shape[self.frame_dim]
        ramp = torch.linspace(self.min_scale, self.max_scale, num_frames)  # [F] float32
        shape = [1] * like.ndim
        shape[self.frame_dim] = num_frames
        return ramp.to(device=like.device, dtype=like.dtype).view(shape)  # [1, 1, F, 1, 1]

    def combine(self, uncond: Tensor, cond: Tensor) -> Tensor:
        if not self.needs_uncond:
            return cond
        num_frames = cond.shape[self.frame_dim]
        if self.num_frames is not None and num_frames != self.num_frames:
            raise ValueError(
                f"FrameRampGuidance was built for num_frames={self.num_frames} but the network output "
                f"{list(cond.shape)} has {num_frames} frames along dim {self.frame_dim}"
            )
        scale = self.scales(cond)
        return uncond + scale * (cond - uncond)


@dataclass(frozen=True)
class SwitchedGuidance:
    """One guidance rule at timesteps ≥ ``boundary``, another below (Wan 2.2's two experts: the
    high-noise expert with ``guidance_scale``, the low-noise one with ``guidance_scale_2``).

    The loop asks :meth:`at_timestep` for each step's rule. Which branches run is decided once for
    the whole run, by ``high`` (the reference runs the unconditional branch whenever the first
    scale is > 1, and never otherwise); below the boundary ``low`` then combines them, with the
    plain linear formula even at a scale ≤ 1 (as the reference computes it).
    """

    high: Guidance
    low: Guidance
    boundary: float  # in the network's timestep units (boundary_ratio · num_train_timesteps)

    @property
    def needs_uncond(self) -> bool:
        return self.high.needs_uncond

    def at_timestep(self, timestep: Tensor) -> Guidance:
        """The rule of the step whose network timestep is ``timestep`` (0-dim)."""
        if float(timestep) >= self.boundary:
            return self.high
        if isinstance(self.low, ClassifierFreeGuidance) and self.needs_uncond:
            return _LinearGuidance(self.low.scale)
        return self.low

    def combine(self, uncond: Tensor, cond: Tensor) -> Tensor:
        raise TypeError("SwitchedGuidance combines per step: call at_timestep(t).combine(...)")


@dataclass(frozen=True)
class _LinearGuidance:
    """uncond + scale·(cond − uncond) at any scale (both branches always run)."""

    scale: float

    @property
    def needs_uncond(self) -> bool:
        return True

    def combine(self, uncond: Tensor, cond: Tensor) -> Tensor:
        return uncond + self.scale * (cond - uncond)


def at_timestep(guidance: Guidance, timestep: Tensor) -> Guidance:
    """The rule a step at ``timestep`` uses: rules that change along the plan (those with an
    ``at_timestep`` method, e.g. :class:`SwitchedGuidance`) pick one; the others are themselves."""
    select = getattr(guidance, "at_timestep", None)
    return guidance if select is None else select(timestep)
