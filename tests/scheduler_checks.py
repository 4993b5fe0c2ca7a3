"""Shared pieces of the scheduler tests: a fake network, seeded inputs, and the two sampling loops
(diffusers' hand-written pipeline loop and vidiff's ``sample``) that the parity tests compare."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tests.helpers import max_abs_diff
from vidiff.diffusion.guidance import ClassifierFreeGuidance, NoGuidance
from vidiff.diffusion.loop import SamplingPlan, sample
from vidiff.diffusion import noise as noise_sources
from vidiff.diffusion.noise import NoiseSource

SHAPE = (2, 4, 3, 4, 5)  # [B, C, F, H, W]


class FakeNetwork:
    """out = 0.3·(M·x) + sin(t/100)·A + cos(t/300)·(N·text): moves the sample, depends on (x, t, cond)."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.mix = torch.eye(4) + 0.2 * torch.randn(4, 4, generator=gen)
        self.cond_mix = 0.5 * torch.randn(4, 4, generator=gen)
        self.bias = torch.randn(SHAPE[1:], generator=gen)

    def __call__(self, x: Tensor, timestep: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        mixed = torch.einsum("oc,bcfhw->bofhw", self.mix.to(x.dtype), x)
        text = torch.einsum("oc,bcfhw->bofhw", self.cond_mix.to(x.dtype), inputs["text"])
        return 0.3 * mixed + torch.sin(timestep / 100) * self.bias.to(x.dtype) + torch.cos(timestep / 300) * text


def conditioning(dtype: torch.dtype = torch.float32) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(cond, uncond) network inputs: seeded text features and zeros."""
    cond = {"text": torch.randn(SHAPE, generator=torch.Generator().manual_seed(11)).to(dtype)}
    return cond, {"text": torch.zeros(SHAPE, dtype=dtype)}


def initial_noise(dtype: torch.dtype = torch.float32) -> Tensor:
    """Seeded unit noise [B, C, F, H, W], before the scheduler's init_noise_sigma."""
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)).to(dtype)


def seeded_noise(seed: int, dtype: torch.dtype = torch.float32) -> NoiseSource:
    """vidiff's step-noise source drawing from a CPU generator seeded with ``seed``."""
    return noise_sources.seeded_noise(torch.Generator().manual_seed(seed), torch.device("cpu"), dtype)


def diffusers_loop(
    scheduler: Any,
    cond: dict[str, Tensor],
    uncond: dict[str, Tensor] | None,
    scale: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    **step_kwargs: Any,
) -> Tensor:
    """diffusers' pipeline loop over a scheduler after ``set_timesteps``: scale_model_input → network
    (both branches when guided) → classifier-free guidance on the outputs → step."""
    network = FakeNetwork()
    latents = initial_noise(dtype) * scheduler.init_noise_sigma
    inputs = {k: torch.cat([uncond[k], cond[k]]) for k in cond} if scale else cond
    if generator is not None:  # PNDM's step takes no generator
        step_kwargs = {**step_kwargs, "generator": generator}
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if scale else latents, t)
        output = network(model_input, t, inputs)
        if scale:
            output_uncond, output_cond = output.chunk(2)
            output = output_uncond + scale * (output_cond - output_uncond)
        latents = scheduler.step(output, t, latents, **step_kwargs).prev_sample
    return latents


def vidiff_loop(
    plan: SamplingPlan,
    cond: dict[str, Tensor],
    uncond: dict[str, Tensor] | None,
    scale: float | None = None,
    noise: NoiseSource | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """vidiff's ``sample`` over ``plan`` with the same network, initial noise and guidance."""
    guidance = ClassifierFreeGuidance(scale) if scale else NoGuidance()
    latents = initial_noise(dtype) * plan.init_noise_sigma
    return sample(FakeNetwork(), latents, plan, cond, uncond, guidance, noise=noise)


def set_up_both(ours_class: type, reference_class: type, config: dict, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """(ours, diffusers') built from the same config, both after ``set_timesteps(*args, **kwargs)``."""
    ours, reference = ours_class.from_config(config), reference_class.from_config(config)
    ours.set_timesteps(*args, **kwargs)
    reference.set_timesteps(*args, **kwargs)
    return ours, reference


def public_options(reference_config: dict) -> dict:
    """A diffusers config without its private ``_``-keys (class name, versions): what vidiff writes."""
    return {k: v for k, v in reference_config.items() if not k.startswith("_")}


def scaled_diff(ours: Tensor, reference: Tensor) -> float:
    """max |ours − reference| relative to the reference's magnitude (≥ 1)."""
    assert torch.isfinite(reference).all()
    return max_abs_diff(ours, reference) / max(1.0, reference.abs().max().item())
