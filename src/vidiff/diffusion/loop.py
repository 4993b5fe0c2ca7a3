"""The one denoising loop every pipeline uses.

Per step i (σ_i → σ_{i+1}):

1. network input ``x / sqrt(σ_i² + 1)`` (VE plans) or ``x`` itself (VP plans), in the latents'
   dtype, doubled to ``[uncond, cond]`` along the batch when the guidance needs both branches;
2. one network call with ``plan.timesteps[i]``; the guidance combines the raw outputs (ε or v);
3. the parameterization turns the combined output into x̂0, from the float32 sample (VP plans:
   with the exact ᾱ_i of ``plan.alphas_cumprod``);
4. the stepper moves the float32 sample to σ_{i+1}; the result is cast back to the network
   output's dtype (as the reference scheduler does), then ``on_step`` may replace it.

Steps 3–4 are :func:`~vidiff.diffusion.plan.advance`, the body every public ``scheduler.step()``
runs too. ``SamplingPlan`` lives in :mod:`vidiff.diffusion.plan` and is re-exported here.

The sample's space (VE ``x0 + σ·ε`` or VP ``sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε``) is the plan's
parameterization's ``space``; the loop itself is the same for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from .guidance import Guidance, NoGuidance, at_timestep
from .noise import NoiseSource
from .parameterization import Parameterization
from .plan import SamplingPlan, advance
from .steppers import Denoise, StepContext

__all__ = ["Network", "OnStep", "SamplingPlan", "sample"]

# (network input [B', C, F, H, W], timestep 0-dim, inputs of the branch(es), batch first) -> raw output.
Network = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]
# (step index, timestep, latents after the step) -> replacement latents, or None to keep them.
OnStep = Callable[[int, Tensor, Tensor], "Tensor | None"]


def sample(
    network: Network,
    latents: Tensor,
    plan: SamplingPlan,
    cond: Mapping[str, Tensor],
    uncond: Mapping[str, Tensor] | None = None,
    guidance: Guidance = NoGuidance(),
    noise: NoiseSource | None = None,
    on_step: OnStep | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    before_step: Callable[[int], None] | None = None,
) -> Tensor:
    """Denoise ``latents`` [B, C, F, H, W] (already × ``plan.init_noise_sigma``) along ``plan``.

    Args:
        network: ``(x_in, timestep, inputs) -> raw output`` shaped like ``x_in``.
        cond / uncond: network inputs of the conditional / unconditional branch, batch first;
            ``uncond`` is required (with the same keys) when ``guidance.needs_uncond``.
        guidance: how branches combine (:mod:`vidiff.diffusion.guidance`).
        noise: fresh unit noise of a given shape, for stochastic steppers (the caller owns the RNG).
        on_step: called after every step; a returned tensor replaces the latents.
        progress: wraps the step iterator (e.g. a tqdm bar).
        before_step: called with the step index before the step's network call(s), for networks
            whose inputs depend on the step's place in the plan (ControlNet guidance windows).

    Returns:
        The final latents, in the network output's dtype.
    """
    if not isinstance(latents, Tensor) or not latents.is_floating_point():
        raise TypeError(f"latents must be a floating-point torch.Tensor, got {type(latents).__name__}")
    inputs = _branch_inputs(cond, uncond, guidance)
    history: tuple[Tensor, ...] = ()
    steps: Iterable[int] = range(plan.num_steps)
    if progress is not None:
        steps = progress(steps)
    x = latents
    for index in steps:
        if before_step is not None:
            before_step(index)
        timestep, sigma = plan.timesteps[index], plan.sigmas[index]
        rule = at_timestep(guidance, timestep)  # Wan 2.2: each expert its own scale
        output = _guided_output(network, x, sigma, timestep, inputs, plan.parameterization, rule, guidance.needs_uncond)
        context = StepContext(
            sigmas=plan.sigmas,
            index=index,
            history=history,
            denoise=_extra_denoise(network, inputs, plan.parameterization, rule, guidance.needs_uncond, output.dtype),
            noise=noise,
            alphas_cumprod=plan.alphas_cumprod,
        )
        x, _, history = advance(output, x, plan.parameterization, plan.stepper, context)
        if on_step is not None:
            replacement = on_step(index, timestep, x)
            if replacement is not None:
                x = replacement
    return x


def _branch_inputs(
    cond: Mapping[str, Tensor], uncond: Mapping[str, Tensor] | None, guidance: Guidance
) -> Mapping[str, Tensor]:
    """The network inputs of one call: ``cond`` alone, or ``[uncond, cond]`` stacked on the batch."""
    if not guidance.needs_uncond:
        return cond
    if uncond is None:
        raise ValueError(f"{type(guidance).__name__} runs an unconditional branch, so `uncond` is required")
    if set(uncond) != set(cond):
        raise ValueError(f"`uncond` must have the keys of `cond` {sorted(cond)}, got {sorted(uncond)}")
    return {name: torch.cat([uncond[name], cond[name]]) for name in cond}


def _guided_output(
    network: Network,
    x: Tensor,
    sigma: Tensor,
    timestep: Tensor,
    inputs: Mapping[str, Tensor],
    parameterization: Parameterization,
    guidance: Guidance,
    both_branches: bool,
) -> Tensor:
    """One network call at (x, σ) and the guidance combine; the raw output's dtype and x's shape.

    ``both_branches``: whether ``inputs`` hold ``[uncond, cond]`` (decided once per run)."""
    x_in = parameterization.scale_input(x, sigma)  # [B, C, F, H, W], x's dtype
    if both_branches:
        x_in = torch.cat([x_in, x_in])  # [2B, ...]: unconditional half first
    output = network(x_in, timestep, inputs)
    if output.shape != x_in.shape:
        raise ValueError(f"the network returned {list(output.shape)} for an input of {list(x_in.shape)}")
    if both_branches:
        return guidance.combine(*output.chunk(2))
    return output


def _extra_denoise(
    network: Network,
    inputs: Mapping[str, Tensor],
    parameterization: Parameterization,
    guidance: Guidance,
    both_branches: bool,
    dtype: torch.dtype,
) -> Denoise:
    """D(x, σ) at any σ, for steppers that evaluate the model more than once per step (Heun)."""

    def denoise(x32: Tensor, sigma: Tensor) -> Tensor:
        timestep = parameterization.timestep(sigma.reshape(1))[0].to(x32.device)
        output = _guided_output(network, x32.to(dtype), sigma, timestep, inputs, parameterization, guidance, both_branches)
        return parameterization.denoised(output, x32, sigma)

    return denoise
