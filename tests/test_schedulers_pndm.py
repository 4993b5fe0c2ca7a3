"""PNDMScheduler (PLMS form) against diffusers': timesteps, the loop, stateful steps, options, config IO."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch

from tests.scheduler_checks import (
    FakeNetwork,
    conditioning,
    diffusers_loop,
    initial_noise,
    public_options,
    vidiff_loop,
)
from tests.real_checkpoint_fixtures import SD15_SCHEDULER
from vidiff.schedulers import DDIMScheduler, PNDMScheduler

# A Stable Diffusion 1.5 repository's scheduler_config.json (diffusers 0.6.0 era).
SD15 = SD15_SCHEDULER
VARIANTS = [
    SD15,
    {**SD15, "prediction_type": "v_prediction"},
    {**SD15, "timestep_spacing": "linspace"},
    {**SD15, "timestep_spacing": "trailing", "set_alpha_to_one": True},
    {"skip_prk_steps": True, "beta_schedule": "squaredcos_cap_v2", "steps_offset": 3},
]


def reference_scheduler(config, num_steps):
    scheduler = diffusers.PNDMScheduler.from_config(config)
    scheduler.set_timesteps(num_steps)
    return scheduler


@pytest.mark.parametrize("config", VARIANTS)
@pytest.mark.parametrize("num_steps", [1, 2, 3, 5, 7, 25, 61])
def test_timesteps_match_diffusers(config, num_steps):
    reference = reference_scheduler(config, num_steps)
    plan = PNDMScheduler.from_config(config).plan(num_steps)
    ours = PNDMScheduler.from_config(config)
    ours.set_timesteps(num_steps)
    assert torch.equal(ours.timesteps, reference.timesteps)
    assert torch.equal(plan.timesteps.to(torch.int64), reference.timesteps)
    assert len(plan.sigmas) == len(plan.timesteps) + 1


def test_five_steps_repeat_the_second_timestep():
    plan = PNDMScheduler.from_config(SD15).plan(5)
    assert plan.timesteps.tolist() == [801, 601, 601, 401, 201, 1]
    assert plan.num_steps == 6 and len(plan.sigmas) == 7
    # Each step goes to t − T//N; the last one below t = 0 lands on ᾱ_0 (set_alpha_to_one=False).
    reference = diffusers.PNDMScheduler.from_config(SD15)
    assert plan.stepper.alphas_to[0] == reference.alphas_cumprod[601]
    assert plan.stepper.alphas_from[1] == reference.alphas_cumprod[801]
    assert plan.alphas_cumprod[-1] == reference.alphas_cumprod[0]


@pytest.mark.parametrize("config", VARIANTS)
@pytest.mark.parametrize("num_steps", [1, 2, 4, 25])
def test_loop_samples_like_diffusers(config, num_steps):
    cond, uncond = conditioning()
    reference = diffusers_loop(reference_scheduler(config, num_steps), cond, uncond, 7.5)
    ours = vidiff_loop(PNDMScheduler.from_config(config).plan(num_steps), cond, uncond, 7.5)
    assert torch.isfinite(reference).all()
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("config", VARIANTS[:3])
def test_stateful_steps_match_diffusers_bit_for_bit(config):
    cond, _ = conditioning()
    network = FakeNetwork()
    reference = reference_scheduler(config, 6)
    ours = PNDMScheduler.from_config(config)
    ours.set_timesteps(6)
    ours_latents = reference_latents = initial_noise()
    for t in reference.timesteps:
        ref_out = reference.step(network(reference_latents, t, cond), t, reference_latents)
        our_out = ours.step(network(ours_latents, t, cond), t, ours_latents)
        assert torch.equal(our_out.prev_sample, ref_out.prev_sample)
        reference_latents, ours_latents = ref_out.prev_sample, our_out.prev_sample
    assert ours.counter == len(reference.timesteps)


def test_rescale_betas_zero_snr_is_ignored_as_in_diffusers():
    config = {**SD15, "rescale_betas_zero_snr": True}
    reference = diffusers.PNDMScheduler.from_config(config)
    ours = PNDMScheduler.from_config(config)
    assert torch.equal(ours.alphas_cumprod, reference.alphas_cumprod)
    assert ours.config.extra["rescale_betas_zero_snr"] is True  # kept aside, written back on save


# ---------------------------------------------------------------------------- the Runge-Kutta warm-up
PRK_VARIANTS = [
    {k: v for k, v in SD15.items() if k != "skip_prk_steps"},  # diffusers' default: skip_prk_steps=False
    {**SD15, "skip_prk_steps": False, "prediction_type": "v_prediction", "timestep_spacing": "linspace"},
    {**SD15, "skip_prk_steps": False, "timestep_spacing": "trailing", "set_alpha_to_one": True},
]


@pytest.mark.parametrize("config", PRK_VARIANTS)
@pytest.mark.parametrize("num_steps", [4, 5, 10, 25])
def test_runge_kutta_warm_up_timesteps_and_loop_match_diffusers(config, num_steps):
    reference = reference_scheduler(config, num_steps)
    plan = PNDMScheduler.from_config(config).plan(num_steps)
    assert torch.equal(plan.timesteps.to(torch.int64), reference.timesteps)
    assert plan.num_steps == num_steps + 9
    cond, uncond = conditioning()
    expected = diffusers_loop(reference, cond, uncond, 7.5)
    assert torch.isfinite(expected).all()
    assert torch.equal(vidiff_loop(plan, cond, uncond, 7.5), expected)


def test_runge_kutta_stateful_steps_match_diffusers_bit_for_bit():
    config, (cond, _), network = PRK_VARIANTS[1], conditioning(), FakeNetwork()
    reference = reference_scheduler(config, 5)
    ours = PNDMScheduler.from_config(config)
    ours.set_timesteps(5)
    assert torch.equal(ours.timesteps, reference.timesteps)
    ours_latents = reference_latents = initial_noise()
    for t in reference.timesteps:
        reference_latents = reference.step(network(reference_latents, t, cond), t, reference_latents).prev_sample
        ours_latents = ours.step(network(ours_latents, t, cond), t, ours_latents).prev_sample
        assert torch.equal(ours_latents, reference_latents)


def test_runge_kutta_warm_up_needs_four_steps():
    ddim = DDIMScheduler(beta_schedule="scaled_linear")
    scheduler = PNDMScheduler.from_config(ddim.config)  # diffusers' default: skip_prk_steps=False
    assert scheduler.config.skip_prk_steps is False
    assert scheduler.plan(4).num_steps == 13
    with pytest.raises(ValueError, match="skip_prk_steps"):
        scheduler.plan(3)
    with pytest.raises(ValueError, match="skip_prk_steps"):
        scheduler.set_timesteps(2)


@pytest.mark.parametrize(
    ("options", "name"), [({"eta": 0.5}, "eta"), ({"timesteps": [501, 1]}, "timesteps"), ({"sigmas": [1.0, 0.0]}, "sigmas")]
)
def test_options_it_cannot_honour_are_named(options, name):
    with pytest.raises(ValueError, match=f"PNDMScheduler cannot honour `{name}`"):
        PNDMScheduler.from_config(SD15).plan(5, **options)


def test_strength_cuts_plms_only():
    # the Runge-Kutta warm-up spans the first steps: a cut schedule cannot start inside it
    with pytest.raises(ValueError, match="skip_prk_steps"):
        PNDMScheduler.from_config(SD15, skip_prk_steps=False).plan(5, strength=0.5)
    with pytest.raises(ValueError, match="skip_prk_steps"):
        PNDMScheduler.from_config(SD15, skip_prk_steps=False).plan_tail(5, 2)
    full, cut = PNDMScheduler.from_config(SD15).plan(5), PNDMScheduler.from_config(SD15).plan(5, strength=0.5)
    assert torch.equal(cut.timesteps, full.timesteps[5 - int(5 * 0.5):])  # of N = 5 steps, skip N − int(N·s)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="prediction_type"):
        PNDMScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="num_inference_steps"):
        PNDMScheduler.from_config(SD15).plan(0)
    with pytest.raises(ValueError, match="set_timesteps"):
        PNDMScheduler.from_config(SD15).step(torch.zeros(1), 1, torch.zeros(1))


def test_config_round_trip_loads_in_diffusers(tmp_path):
    PNDMScheduler.from_config(SD15).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert raw["_class_name"] == "PNDMScheduler"
    reference = diffusers.PNDMScheduler.from_pretrained(tmp_path)
    expected = public_options(diffusers.PNDMScheduler.from_config(SD15).config)
    assert public_options(reference.config) == expected


# ---------------------------------------------------------------------------- AnimateDiff with an SD 1.5 repository
def test_sd15_repository_scheduler_config_is_the_real_one(tiny_animatediff):
    raw = json.loads((tiny_animatediff[0] / "sd15" / "scheduler" / "scheduler_config.json").read_text())
    assert raw["_class_name"] == "PNDMScheduler"
    assert (raw["skip_prk_steps"], raw["set_alpha_to_one"], raw["steps_offset"]) == (True, False, 1)
    assert (raw["beta_schedule"], raw["beta_start"], raw["beta_end"]) == ("scaled_linear", 0.00085, 0.012)


@pytest.mark.parametrize("call", [dict(), dict(num_inference_steps=5, guidance_scale=1.0), dict(num_inference_steps=1)])
def test_animatediff_with_the_repository_pndm_gives_diffusers_frames(tiny_animatediff, call):
    """``AnimateDiffPipeline.from_pretrained(sd15_repo)`` without a scheduler swap: PNDM, diffusers' frames."""
    from diffusers import AnimateDiffPipeline as ReferencePipeline
    from diffusers import PNDMScheduler as ReferencePNDM

    from tests.animatediff_checkpoint import SMALL_CALL
    from tests.helpers import max_abs_diff
    from vidiff import AnimateDiffPipeline, MotionAdapter

    root, oracle = tiny_animatediff
    ours = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=MotionAdapter.from_pretrained(root / "motion_adapter"))
    ours.set_progress_bar_config(disable=True)
    assert isinstance(ours.scheduler, PNDMScheduler)
    theirs = ReferencePipeline(
        vae=oracle.vae, text_encoder=oracle.text_encoder, tokenizer=oracle.tokenizer, unet=oracle.unet, motion_adapter=None,
        scheduler=ReferencePNDM.from_pretrained(root / "sd15", subfolder="scheduler"),
    )
    theirs.set_progress_bar_config(disable=True)
    arguments = {**SMALL_CALL, "prompt": "a rocket flying into space", "negative_prompt": "blurry", **call}
    frames = ours(**arguments, generator=torch.Generator().manual_seed(7)).frames
    reference = theirs(**arguments, generator=torch.Generator().manual_seed(7)).frames
    assert frames.shape == reference.shape
    assert max_abs_diff(frames, reference) <= 1e-4


def test_animatediff_with_pndm_from_another_config_runs_the_runge_kutta_warm_up(tiny_animatediff, vidiff_animatediff):
    """``PNDMScheduler.from_config(ddim.config)`` (skip_prk_steps=False) on AnimateDiff: diffusers' frames."""
    import diffusers

    from tests.animatediff_checkpoint import SMALL_CALL
    from tests.helpers import max_abs_diff
    from vidiff import AnimateDiffPipeline

    pipe, oracle = vidiff_animatediff, tiny_animatediff[1]
    ours = AnimateDiffPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=PNDMScheduler.from_config(pipe.scheduler.config),
    )
    theirs = diffusers.AnimateDiffPipeline(
        vae=oracle.vae, text_encoder=oracle.text_encoder, tokenizer=oracle.tokenizer, unet=oracle.unet,
        motion_adapter=None, scheduler=diffusers.PNDMScheduler.from_config(oracle.scheduler.config),
    )
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)
    arguments = {**SMALL_CALL, "prompt": "a rocket flying into space", "num_inference_steps": 4}
    frames = ours(**arguments, generator=torch.Generator().manual_seed(3)).frames
    reference = theirs(**arguments, generator=torch.Generator().manual_seed(3)).frames
    assert max_abs_diff(frames, reference) <= 1e-4
