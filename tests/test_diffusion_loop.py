"""The denoising loop against a hand-written diffusers loop around diffusers' EulerDiscreteScheduler."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import pytest
import torch

from tests.helpers import max_abs_diff
from vidiff.diffusion.guidance import ClassifierFreeGuidance, FrameRampGuidance, NoGuidance
from vidiff.diffusion.loop import SamplingPlan, sample
from vidiff.schedulers import EulerDiscreteScheduler

SVD_XT = json.loads((Path(__file__).parent / "configs" / "svd_xt_scheduler.json").read_text())
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
      "timestep_spacing": "leading"}
BATCH, CHANNELS, FRAMES, HEIGHT, WIDTH = 2, 4, 5, 3, 4


class FakeNetwork:
    """A fixed linear map of the input and the conditioning, modulated by the timestep.

    out = cos(0.01·t)·(M·x_in) + (1 + 0.001·t)·(N·image) + embedding, channel-mixing matrices M, N;
    records the batch size of every call.
    """

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.mix = torch.eye(CHANNELS) + 0.3 * torch.randn(CHANNELS, CHANNELS, generator=gen)
        self.cond_mix = 0.5 * torch.randn(CHANNELS, CHANNELS, generator=gen)
        self.batch_sizes: list[int] = []
        self.timesteps: list[float] = []

    def __call__(self, x, timestep, inputs):
        assert timestep.ndim == 0
        self.batch_sizes.append(x.shape[0])
        self.timesteps.append(float(timestep))
        mixed = torch.einsum("oc,bcfhw->bofhw", self.mix.to(x.dtype), x)
        image = torch.einsum("oc,bcfhw->bofhw", self.cond_mix.to(x.dtype), inputs["image"])
        embedding = inputs["embedding"][:, :, None, None, None]  # [B, C] → [B, C, 1, 1, 1]
        return torch.cos(0.01 * timestep) * mixed + (1 + 0.001 * timestep) * image + embedding


def conditioning(dtype=torch.float32):
    gen = torch.Generator().manual_seed(7)
    cond = {
        "image": torch.randn(BATCH, CHANNELS, FRAMES, HEIGHT, WIDTH, generator=gen).to(dtype),
        "embedding": torch.randn(BATCH, CHANNELS, generator=gen).to(dtype),
    }
    uncond = {name: torch.zeros_like(value) for name, value in cond.items()}
    return cond, uncond


def initial_noise(dtype=torch.float32):
    return torch.randn(BATCH, CHANNELS, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3)).to(dtype)


def reference_loop(config, num_steps, network, cond, uncond, scale, dtype=torch.float32, edit=None):
    """diffusers' pipeline loop: scale_model_input → net on cat([x]*2) → guidance on outputs → step.

    ``scale``: None (one branch), a float, or an SVD-style per-frame tensor [1, 1, F, 1, 1].
    """
    scheduler = diffusers.EulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(num_steps)
    latents = initial_noise(dtype) * scheduler.init_noise_sigma
    guided = scale is not None
    inputs = {k: torch.cat([uncond[k], cond[k]]) for k in cond} if guided else cond
    for index, t in enumerate(scheduler.timesteps):
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        output = network(model_input, t, inputs)
        if guided:
            output_uncond, output_cond = output.chunk(2)
            output = output_uncond + scale * (output_cond - output_uncond)
        latents = scheduler.step(output, t, latents).prev_sample
        if edit is not None:
            latents = edit(index, latents)
    return latents


def run_ours(config, num_steps, network, cond, uncond, guidance, dtype=torch.float32, **kwargs):
    plan = EulerDiscreteScheduler.from_config(config).plan(num_steps)
    return sample(network, initial_noise(dtype) * plan.init_noise_sigma, plan, cond, uncond, guidance, **kwargs)


def svd_ramp(min_scale, max_scale, dtype=torch.float32):
    # diffusers: linspace(min, max, F) in float32, cast to the latents' dtype, one scale per frame.
    return torch.linspace(min_scale, max_scale, FRAMES).to(dtype).view(1, 1, FRAMES, 1, 1)


# ---------------------------------------------------------------------------- parity
@pytest.mark.parametrize("num_steps", [1, 4, 25])
def test_svd_frame_ramp_guidance_matches_reference(num_steps):
    cond, uncond = conditioning()
    ours = run_ours(SVD_XT, num_steps, FakeNetwork(), cond, uncond, FrameRampGuidance(1.0, 3.0, FRAMES))
    reference = reference_loop(SVD_XT, num_steps, FakeNetwork(), cond, uncond, svd_ramp(1.0, 3.0))
    assert max_abs_diff(ours, reference) <= 1e-5


@pytest.mark.parametrize("config", [SD, {**SD, "prediction_type": "v_prediction", "use_karras_sigmas": True}])
def test_classifier_free_guidance_matches_reference(config):
    cond, uncond = conditioning()
    ours = run_ours(config, 10, FakeNetwork(1), cond, uncond, ClassifierFreeGuidance(7.5))
    reference = reference_loop(config, 10, FakeNetwork(1), cond, uncond, 7.5)
    assert max_abs_diff(ours, reference) <= 1e-5


def test_float16_matches_reference():
    cond, uncond = conditioning(torch.float16)
    ours = run_ours(SVD_XT, 5, FakeNetwork(), cond, uncond, FrameRampGuidance(1.0, 3.0), dtype=torch.float16)
    reference = reference_loop(
        SVD_XT, 5, FakeNetwork(), cond, uncond, svd_ramp(1.0, 3.0, torch.float16), dtype=torch.float16
    )
    assert ours.dtype == reference.dtype == torch.float16
    assert max_abs_diff(ours, reference) <= 1e-3 * max(1.0, reference.abs().max().item())


# ---------------------------------------------------------------------------- branches and hooks
def test_no_guidance_runs_one_branch():
    network = FakeNetwork()
    cond, _ = conditioning()
    ours = run_ours(SVD_XT, 6, network, cond, None, NoGuidance())
    assert network.batch_sizes == [BATCH] * 6
    plan = EulerDiscreteScheduler.from_config(SVD_XT).plan(6)
    assert network.timesteps == plan.timesteps.tolist()
    reference = reference_loop(SVD_XT, 6, FakeNetwork(), cond, None, None)
    assert max_abs_diff(ours, reference) <= 1e-5


def test_guidance_batches_both_branches_in_one_call():
    network = FakeNetwork()
    cond, uncond = conditioning()
    run_ours(SD, 3, network, cond, uncond, ClassifierFreeGuidance(5.0))
    assert network.batch_sizes == [2 * BATCH] * 3


@pytest.mark.parametrize("guidance", [ClassifierFreeGuidance(1.0), FrameRampGuidance(0.5, 1.0)])
def test_scales_at_most_one_skip_the_unconditional_branch(guidance):
    network = FakeNetwork()
    cond, _ = conditioning()
    run_ours(SD, 3, network, cond, None, guidance)
    assert network.batch_sizes == [BATCH] * 3


def test_on_step_can_replace_latents():
    cond, uncond = conditioning()
    seen = []

    def edit(index, latents):
        return latents * 0.5 if index == 1 else None

    def on_step(index, timestep, latents):
        seen.append((index, float(timestep)))
        return edit(index, latents)

    ours = run_ours(SD, 4, FakeNetwork(), cond, uncond, ClassifierFreeGuidance(3.0), on_step=on_step)
    reference = reference_loop(
        SD, 4, FakeNetwork(), cond, uncond, 3.0, edit=lambda i, x: x * 0.5 if i == 1 else x
    )
    assert max_abs_diff(ours, reference) <= 1e-5
    plan = EulerDiscreteScheduler.from_config(SD).plan(4)
    assert seen == list(enumerate(plan.timesteps.tolist()))
    unedited = run_ours(SD, 4, FakeNetwork(), cond, uncond, ClassifierFreeGuidance(3.0))
    assert max_abs_diff(ours, unedited) > 1e-3  # the replacement really changed the run


def test_progress_wraps_the_steps():
    wrapped = []

    def progress(steps):
        wrapped.append(len(steps))
        yield from steps

    cond, _ = conditioning()
    run_ours(SD, 5, FakeNetwork(), cond, None, NoGuidance(), progress=progress)
    assert wrapped == [5]


# ---------------------------------------------------------------------------- errors
def test_guidance_without_uncond_is_an_error():
    cond, _ = conditioning()
    with pytest.raises(ValueError, match="uncond"):
        run_ours(SD, 2, FakeNetwork(), cond, None, ClassifierFreeGuidance(7.5))
    with pytest.raises(ValueError, match="keys"):
        run_ours(SD, 2, FakeNetwork(), cond, {"image": cond["image"]}, ClassifierFreeGuidance(7.5))


def test_wrong_output_shape_and_frame_count_are_errors():
    cond, uncond = conditioning()
    with pytest.raises(ValueError, match="network returned"):
        run_ours(SD, 2, lambda x, t, c: x[:, :2], cond, None, NoGuidance())
    with pytest.raises(ValueError, match="num_frames"):
        run_ours(SVD_XT, 2, FakeNetwork(), cond, uncond, FrameRampGuidance(1.0, 3.0, FRAMES + 1))


def test_plan_shapes_are_checked():
    plan = EulerDiscreteScheduler.from_config(SD).plan(3)
    with pytest.raises(ValueError, match="sigmas"):
        SamplingPlan(plan.sigmas[:-1], plan.timesteps, plan.parameterization, plan.stepper, plan.init_noise_sigma)
