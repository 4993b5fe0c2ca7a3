"""FreeInit against diffusers 0.42.1's AnimateDiffPipeline on the tiny random checkpoint: the same frames.

Both sides run ``enable_free_init`` with the same options and the same seeded CPU torch generator
(or the same given latents), so the re-noising, FreeInit's fresh draws (interleaved with DDIM's η
noise) and fast sampling's step counts are compared through the frames, within 1e-4 absolute.
Each test builds its own pair of pipelines around the session's networks, so FreeInit never leaks
into the session fixtures.
"""

from __future__ import annotations

import pytest
import torch

from tests.animatediff_checkpoint import SMALL_CALL
from tests.helpers import max_abs_diff

PROMPT = "a rocket flying into space"
NEGATIVE = "bad quality, worse quality, low resolution"
TOLERANCE = 1e-4

# (enable_free_init options, call options)
CASES = {
    "butterworth_3": (dict(num_iters=3), {}),
    "butterworth_3_fast": (dict(num_iters=3, use_fast_sampling=True), {}),
    "ideal_2": (dict(num_iters=2, method="ideal"), {}),
    "ideal_3_fast": (dict(num_iters=3, method="ideal", use_fast_sampling=True), {}),
    "gaussian_2": (dict(num_iters=2, method="gaussian"), {}),
    "gaussian_3_fast": (dict(num_iters=3, method="gaussian", use_fast_sampling=True), {}),
    "butterworth_order_2_stops": (dict(num_iters=2, order=2, spatial_stop_frequency=0.4, temporal_stop_frequency=0.1), {}),
    "ddim_eta": (dict(num_iters=2), dict(eta=0.7)),
    "ddim_eta_fast": (dict(num_iters=3, use_fast_sampling=True), dict(eta=0.7)),
    "no_guidance_5_steps_fast": (dict(num_iters=2, use_fast_sampling=True), dict(guidance_scale=1.0, num_inference_steps=5)),
    "two_videos_generator_list": (dict(num_iters=2), dict(prompt=[PROMPT, "a dog"], negative_prompt=[NEGATIVE, "blurry"])),
}


def _pair(oracle, pipe, scheduler: str | None = None, options: dict | None = None):
    """(diffusers, vidiff) AnimateDiff pipelines sharing the session's networks, with copies of its
    schedulers (or ``scheduler`` built from their configs plus ``options``)."""
    import diffusers

    import vidiff

    name, options = scheduler or type(pipe.scheduler).__name__, options or {}
    ours_scheduler = getattr(vidiff, name).from_config(pipe.scheduler.config, **options)
    theirs_scheduler = getattr(diffusers, name).from_config(oracle.scheduler.config, **options)
    ours = vidiff.AnimateDiffPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, scheduler=ours_scheduler
    )
    theirs = diffusers.AnimateDiffPipeline(
        vae=oracle.vae, text_encoder=oracle.text_encoder, tokenizer=oracle.tokenizer, unet=oracle.unet,
        motion_adapter=None, scheduler=theirs_scheduler,
    )
    for each in (ours, theirs):
        each.set_progress_bar_config(disable=True)
    return theirs, ours


def _generators(call: dict) -> object:
    prompts = call.get("prompt", PROMPT)
    if isinstance(prompts, list):
        return [torch.Generator().manual_seed(7 + i) for i in range(len(prompts))]
    return torch.Generator().manual_seed(7)


def _compare(theirs, ours, free_init: dict, call: dict) -> None:
    call = {**SMALL_CALL, "prompt": PROMPT, "negative_prompt": NEGATIVE, **call}
    ours.enable_free_init(**free_init)
    theirs.enable_free_init(**free_init)
    ours_frames = ours(**call, generator=_generators(call)).frames
    theirs_frames = theirs(**call, generator=_generators(call)).frames
    assert ours_frames.shape == theirs_frames.shape
    assert max_abs_diff(ours_frames, theirs_frames) <= TOLERANCE
    # FreeInit changed the video: the comparison is not the plain call's.
    ours.disable_free_init()
    assert max_abs_diff(ours(**call, generator=_generators(call)).frames, ours_frames) > 1e-2


@pytest.mark.parametrize("case", CASES)
def test_free_init_matches_diffusers(tiny_animatediff, vidiff_animatediff, case):
    free_init, call = CASES[case]
    _compare(*_pair(tiny_animatediff[1], vidiff_animatediff), free_init, call)


def test_given_latents_path_matches_diffusers(tiny_animatediff, vidiff_animatediff):
    """Given latents are the iteration-0 start and the noise every re-noising uses; the generator
    then only draws FreeInit's fresh noise."""
    theirs, ours = _pair(tiny_animatediff[1], vidiff_animatediff)
    latents = torch.randn(1, 4, SMALL_CALL["num_frames"], 4, 6, generator=torch.Generator().manual_seed(3))
    call = {**SMALL_CALL, "prompt": PROMPT}
    for each in (ours, theirs):
        each.enable_free_init(num_iters=3, method="gaussian", use_fast_sampling=True)
    ours_frames = ours(**call, latents=latents.clone(), generator=torch.Generator().manual_seed(5)).frames
    theirs_frames = theirs(**call, latents=latents.clone(), generator=torch.Generator().manual_seed(5)).frames
    assert max_abs_diff(ours_frames, theirs_frames) <= TOLERANCE


SCHEDULER_CASES = {
    # σ-space: x + σ_T·n with the initial latents (× init_noise_sigma) as n.
    "euler": ("EulerDiscreteScheduler", {}, {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, {}),
    "dpmpp_2m_fast": ("DPMSolverMultistepScheduler", {}, dict(num_inference_steps=4)),
    "ddim_v_zero_snr_trailing_fast": (
        "DDIMScheduler", dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"), {}
    ),
}


@pytest.mark.parametrize("case", SCHEDULER_CASES)
def test_free_init_with_other_schedulers_matches_diffusers(tiny_animatediff, vidiff_animatediff, case):
    name, options, call = SCHEDULER_CASES[case]
    theirs, ours = _pair(tiny_animatediff[1], vidiff_animatediff, name, options)
    # diffusers' σ-space add_noise looks timestep 999 up in the last schedule: fast sampling's 1-step
    # "linspace" schedule ([0]) makes it raise, so only the VP cases use fast sampling here.
    _compare(theirs, ours, dict(num_iters=2, use_fast_sampling=case.endswith("_fast")), call)
