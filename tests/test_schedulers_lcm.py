"""LCMScheduler against diffusers': timestep selection, seeded sampling in VP space, config IO."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import pytest
import torch

from tests.scheduler_checks import (
    SHAPE,
    FakeNetwork,
    conditioning,
    diffusers_loop,
    initial_noise,
    public_options,
    scaled_diff,
    seeded_noise,
    vidiff_loop,
)
from vidiff.diffusion.loop import sample
from vidiff.schedulers import DDIMScheduler, LCMConfig, LCMScheduler

CONFIGS = Path(__file__).parent / "configs"
ANIMATEDIFF = json.loads((CONFIGS / "animatediff_scheduler.json").read_text())


def reference_loop(config, cond, uncond, scale=None, seed=0, **schedule):
    """diffusers' pipeline loop around its LCMScheduler, drawing step noise from a seeded generator."""
    scheduler = diffusers.LCMScheduler.from_config(config)
    scheduler.set_timesteps(**schedule)
    return diffusers_loop(scheduler, cond, uncond, scale, torch.Generator().manual_seed(seed))


def run_ours(config, cond, uncond, scale=None, seed=0, noise=None, **schedule):
    num_steps = schedule.pop("num_inference_steps", None)
    plan = LCMScheduler.from_config(config).plan(num_steps, **schedule)
    return vidiff_loop(plan, cond, uncond, scale, seeded_noise(seed) if noise is None else noise)


# ---------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize("original_inference_steps", [50, 100, 7])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_timesteps_match_reference(original_inference_steps, strength):
    ours = LCMScheduler(original_inference_steps=original_inference_steps)
    reference = diffusers.LCMScheduler(original_inference_steps=original_inference_steps)
    for num_steps in range(1, int(original_inference_steps * strength) + 1):
        reference.set_timesteps(num_steps, strength=strength)
        ours.set_timesteps(num_steps, strength=strength)
        assert torch.equal(ours.timesteps, reference.timesteps), num_steps
        assert ours.num_inference_steps == reference.num_inference_steps
        plan = ours.plan(num_steps, strength=strength)
        assert torch.equal(plan.timesteps.to(torch.int64), reference.timesteps)
        assert torch.equal(plan.alphas_cumprod[:-1], reference.alphas_cumprod[reference.timesteps])


def test_original_steps_argument_and_custom_timesteps_match_reference():
    ours, reference = LCMScheduler(), diffusers.LCMScheduler()
    for kwargs in (
        {"num_inference_steps": 4, "original_inference_steps": 30},
        {"timesteps": [999, 759, 499, 259]},
        {"timesteps": [999, 700, 420, 50, 3], "strength": 0.5},
    ):
        ours.set_timesteps(**kwargs)
        reference.set_timesteps(**kwargs)
        assert torch.equal(ours.timesteps, reference.timesteps), kwargs
        assert ours.num_inference_steps == reference.num_inference_steps, kwargs


# ---------------------------------------------------------------------------- sampling
GRID = [
    {},
    ANIMATEDIFF,
    {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "beta_schedule": "squaredcos_cap_v2"},
    {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.8, "timestep_scaling": 3.7},
    {"thresholding": True, "sample_max_value": 1.7, "set_alpha_to_one": False, "beta_schedule": "linear"},
    {"prediction_type": "v_prediction", "original_inference_steps": 20, "timestep_scaling": 1.0},
]


@pytest.mark.parametrize("config", GRID)
@pytest.mark.parametrize("num_steps", [1, 2, 4, 8])
def test_seeded_sampling_matches_reference(config, num_steps):
    cond, uncond = conditioning()
    ours = run_ours(config, cond, uncond, scale=2.0, seed=7, num_inference_steps=num_steps)
    reference = reference_loop(config, cond, uncond, scale=2.0, seed=7, num_inference_steps=num_steps)
    assert scaled_diff(ours, reference) <= 1e-6


@pytest.mark.parametrize(
    "schedule",
    [{"num_inference_steps": 3, "strength": 0.5}, {"timesteps": [999, 639, 279, 39]},
     # A custom schedule cut by strength: the reference re-noises on every step, the last included.
     {"timesteps": [999, 700, 420, 50], "strength": 0.5}],
)
def test_strength_and_custom_schedules_match_reference(schedule):
    cond, uncond = conditioning()
    ours = run_ours({}, cond, uncond, seed=1, **schedule)
    reference = reference_loop({}, cond, uncond, seed=1, **schedule)
    assert scaled_diff(ours, reference) <= 1e-6


def test_noise_drawn_on_every_step_but_the_last():
    draws = []

    def noise(shape):
        draws.append(tuple(shape))
        return torch.randn(shape, generator=torch.Generator().manual_seed(len(draws)))

    cond, _ = conditioning()
    run_ours({}, cond, None, noise=noise, num_inference_steps=5)
    assert draws == [SHAPE] * 4
    with pytest.raises(ValueError, match="noise"):
        sample(FakeNetwork(), initial_noise(), LCMScheduler().plan(2), cond)


def test_last_step_returns_the_consistency_estimate():
    ours, reference = LCMScheduler(), diffusers.LCMScheduler()
    ours.set_timesteps(3)
    reference.set_timesteps(3)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(SHAPE, generator=gen)
    for t in ours.timesteps:
        output = torch.randn(SHAPE, generator=gen)
        step = ours.step(output, t, x, generator=torch.Generator().manual_seed(int(t)))
        step_ref = reference.step(output, t, x, generator=torch.Generator().manual_seed(int(t)))
        assert ours.scale_model_input(x, t) is x
        assert scaled_diff(step.prev_sample, step_ref.prev_sample) <= 1e-6
        assert scaled_diff(step.denoised, step_ref.denoised) <= 1e-6
        x = step_ref.prev_sample
    assert torch.equal(step.prev_sample, step.denoised)  # the last step does not re-noise
    assert ours.step_index == reference.step_index == 3


def test_stateful_step_with_begin_index_and_tuple_output():
    ours, reference = LCMScheduler(), diffusers.LCMScheduler()
    for scheduler in (ours, reference):
        scheduler.set_timesteps(4)
        scheduler.set_begin_index(2)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    output = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    t = ours.timesteps[2]
    prev, denoised = ours.step(output, t, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    prev_ref, denoised_ref = reference.step(output, t, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert scaled_diff(prev, prev_ref) <= 1e-6 and scaled_diff(denoised, denoised_ref) <= 1e-6
    assert ours.step_index == 3


# ---------------------------------------------------------------------------- config IO and errors
def test_defaults_are_diffusers_defaults():
    assert LCMScheduler().config.to_diffusers() == public_options(diffusers.LCMScheduler().config)


def test_config_round_trips(tmp_path):
    ddim = DDIMScheduler.from_config(ANIMATEDIFF)
    ours = LCMScheduler.from_config(ddim.config, original_inference_steps=40)
    assert isinstance(ours.config, LCMConfig) and ours.config.beta_schedule == "linear"
    assert ours.config.timestep_scaling == 10.0  # LCM's own default where the DDIM config has none
    ours.save_pretrained(tmp_path / "scheduler")
    reference = diffusers.LCMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert reference.config.original_inference_steps == 40 and reference.config.beta_schedule == "linear"
    reference.save_pretrained(tmp_path / "from_diffusers")
    loaded = LCMScheduler.from_pretrained(tmp_path / "from_diffusers", subfolder=None)
    assert loaded.config == LCMScheduler.from_config(reference.config).config
    reference.set_timesteps(6)
    loaded.set_timesteps(6)
    assert torch.equal(loaded.timesteps, reference.timesteps)


@pytest.mark.parametrize(
    "schedule, match",
    [({"num_inference_steps": 51}, "original_inference_steps"),
     ({"num_inference_steps": 20, "strength": 0.3}, "strength"),
     ({"num_inference_steps": 4, "timesteps": [999, 499]}, "exactly one"),
     ({}, "exactly one"),
     ({"timesteps": [499, 999]}, "descending"),
     ({"timesteps": [1000, 499]}, "num_train_timesteps"),
     ({"num_inference_steps": 4, "strength": 0.0}, "strength"),
     ({"num_inference_steps": 4, "original_inference_steps": 2000}, "original_inference_steps")],
)
def test_bad_schedule_requests_are_value_errors(schedule, match):
    with pytest.raises(ValueError, match=match):
        LCMScheduler().plan(**schedule)


@pytest.mark.parametrize("option, value", [("prediction_type", "x0"), ("beta_schedule", "cosine"),
                                           ("original_inference_steps", 0)])
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        LCMScheduler(**{option: value})
