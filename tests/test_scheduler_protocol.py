"""The one scheduler protocol: one plan signature, named refusals, generic strength (diffusers'
image/video-to-video rule), the network's convention, the one noise source and the one step body."""

from __future__ import annotations

import dataclasses
import inspect

import diffusers
import numpy as np
import pytest
import torch

from tests.scheduler_checks import FakeNetwork, conditioning, initial_noise, seeded_noise, vidiff_loop
from vidiff.diffusion import noise as noise_sources
from vidiff.diffusion.parameterization import ContinuousTimesteps, Parameterization
from vidiff.diffusion.plan import PlanRequest, plan_in_space
from vidiff.schedulers import (
    SCHEDULERS,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_every_scheduler_has_the_one_plan_signature():
    signatures = {name: inspect.signature(cls.plan) for name, cls in SCHEDULERS.items()}
    assert len(set(signatures.values())) == 1, signatures
    fields = [name for name in PlanRequest.__dataclass_fields__]
    assert list(signatures["DDIMScheduler"].parameters)[1:] == fields
    assert set(SCHEDULERS) == {
        "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler", "LCMScheduler", "PNDMScheduler",
    }


@pytest.mark.parametrize("name", SCHEDULERS)
def test_a_default_request_suits_every_scheduler(name):
    options = {"skip_prk_steps": True} if name == "PNDMScheduler" else {}
    plan = SCHEDULERS[name](**options).plan(4, eta=None, strength=None)
    assert plan.num_steps >= 4 and torch.isfinite(plan.timesteps).all()


@pytest.mark.parametrize(
    ("scheduler", "option", "value"),
    [
        (EulerDiscreteScheduler(), "eta", 0.3),
        (EulerAncestralDiscreteScheduler(), "eta", 0.3),
        (DPMSolverMultistepScheduler(), "eta", 0.3),
        (LCMScheduler(), "eta", 0.3),
        (DDIMScheduler(), "sigmas", [3.0, 1.0, 0.0]),
        (DDIMScheduler(), "original_inference_steps", 20),
        (EulerDiscreteScheduler(), "use_clipped_model_output", True),
        (PNDMScheduler(skip_prk_steps=True), "eta", 0.5),
    ],
)
def test_an_option_a_scheduler_cannot_honour_is_named(scheduler, option, value):
    with pytest.raises(ValueError, match=f"{type(scheduler).__name__} cannot honour `{option}`"):
        scheduler.plan(4, **{option: value})


def test_eta_reaches_ddim_through_the_request():
    assert DDIMScheduler().plan(4, eta=0.7).stepper.eta == 0.7
    assert DDIMScheduler().plan(4).stepper.eta == 0.0


# ---------------------------------------------------------------------------- strength
def _reference_partial_loop(scheduler, num_steps, strength, cond):
    """diffusers' img2img/video2video rule: skip the first N − int(N·strength) steps (get_timesteps),
    start the stateful scheduler there (set_begin_index), and denoise from the same latents."""
    scheduler.set_timesteps(num_steps)
    start = max(num_steps - min(int(num_steps * strength), num_steps), 0)
    timesteps = scheduler.timesteps[start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    network, latents = FakeNetwork(), initial_noise()
    for t in timesteps:
        output = network(scheduler.scale_model_input(latents, t), t, cond)
        latents = scheduler.step(output, t, latents).prev_sample
    return latents, timesteps


@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler"])
@pytest.mark.parametrize("strength", [0.35, 0.8])
def test_strength_skips_the_first_steps_as_diffusers_does(name, strength):
    # PNDM (PLMS) restarts its warm-up at the cut: its step counter starts from 0 after set_timesteps
    options = {"skip_prk_steps": True} if name == "PNDMScheduler" else {}
    cond, _ = conditioning()
    reference, timesteps = _reference_partial_loop(getattr(diffusers, name).from_config(SD, **options), 10, strength, cond)
    plan = SCHEDULERS[name].from_config(SD, **options).plan(10, strength=strength)
    assert torch.equal(plan.timesteps, timesteps.to(torch.float32))
    # vidiff_loop multiplies by init_noise_sigma; start from the very same latents instead.
    ours = vidiff_loop(dataclasses.replace(plan, init_noise_sigma=1.0), cond, None)
    assert torch.isfinite(reference).all()
    assert torch.allclose(ours, reference, rtol=0, atol=1e-5 * max(1.0, reference.abs().max().item()))


def test_strength_is_checked():
    with pytest.raises(ValueError, match="strength"):
        EulerDiscreteScheduler().plan(10, strength=0.05)  # int(10 · 0.05) = 0 steps left
    with pytest.raises(ValueError, match="strength"):
        DDIMScheduler().plan(10, strength=1.5)


# ---------------------------------------------------------------------------- the network's convention
def test_network_convention_replaces_the_configs():
    network = Parameterization("v_prediction", ContinuousTimesteps())
    for name, cls in SCHEDULERS.items():
        options = {"skip_prk_steps": True} if name == "PNDMScheduler" else {}
        plan = cls(**SD, **options).plan(5, network=network)
        assert plan.parameterization.prediction == "v_prediction", name
        assert torch.equal(plan.timesteps, 0.25 * plan.sigmas[:-1].log()), name
    # Zero terminal SNR starts at σ = ∞, which ¼·ln σ cannot express.
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing").plan(5, network=network)


def test_converting_a_plan_twice_gives_it_back():
    plan = DDIMScheduler(**SD).plan(6)
    there_and_back = plan_in_space(plan_in_space(plan, "ve"), "vp")
    assert there_and_back.stepper is plan.stepper
    assert there_and_back.init_noise_sigma == pytest.approx(plan.init_noise_sigma, rel=1e-6)
    cond, uncond = conditioning()
    ours = vidiff_loop(plan, cond, uncond, 5.0)
    assert torch.allclose(vidiff_loop(there_and_back, cond, uncond, 5.0), ours, atol=1e-5)


# ---------------------------------------------------------------------------- the one noise source
def test_frames_first_noise_is_the_permuted_frame_major_draw():
    shape = (2, 4, 3, 5, 6)  # [B, C, F, h, w]
    got = noise_sources.randn(shape, torch.Generator().manual_seed(4), frames_first=True)
    drawn = torch.randn((2, 3, 4, 5, 6), generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, drawn.permute(0, 2, 1, 3, 4))


def test_generator_lists_draw_one_item_each_and_numpy_generators_work():
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    got = noise_sources.randn((2, 3, 4), generators)
    assert torch.equal(got[1], torch.randn((1, 3, 4), generator=torch.Generator().manual_seed(2))[0])
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        noise_sources.randn((3, 4), [torch.Generator(), torch.Generator()])
    host = noise_sources.randn((2, 3), np.random.default_rng(5))
    assert torch.equal(host, torch.from_numpy(np.random.default_rng(5).standard_normal((2, 3), dtype=np.float32)))


def test_step_generator_and_loop_noise_are_the_same_draws():
    """The public step(generator=...) and the loop's noise source draw the same numbers (Euler-a)."""
    cond, _ = conditioning()
    scheduler = EulerAncestralDiscreteScheduler(**SD)
    scheduler.set_timesteps(4)
    generator, network = torch.Generator().manual_seed(9), FakeNetwork()
    latents = initial_noise() * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        output = network(scheduler.scale_model_input(latents, t), t, cond)
        latents = scheduler.step(output, t, latents, generator=generator).prev_sample
    ours = vidiff_loop(EulerAncestralDiscreteScheduler(**SD).plan(4), cond, None, noise=seeded_noise(9))
    assert torch.equal(ours, latents)
