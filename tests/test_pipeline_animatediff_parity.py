"""AnimateDiffPipeline against diffusers' on a tiny random checkpoint: the same frames.

Both pipelines get the same seeded CPU torch generator and draw the initial latents (and any step
noise) themselves, so the seeding path is compared too. Frames are compared as ``np`` output in
[0, 1], within 1e-4 absolute.
"""

from __future__ import annotations

import pytest
import torch

from tests.animatediff_checkpoint import SMALL_CALL
from tests.helpers import max_abs_diff

PROMPT = "a rocket flying into space"
NEGATIVE = "bad quality, worse quality, low resolution"
# Well over 77 tokens with the tiny byte-level vocabulary: truncation must match.
LONG_PROMPT = "A space rocket launching into space from the desert, 4k, high resolution, " * 4
TOLERANCE = 1e-4

CASES = {
    "negative_prompt": dict(prompt=PROMPT, negative_prompt=NEGATIVE),
    "no_negative_prompt": dict(prompt=PROMPT),
    "cfg_off": dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=1.0),
    "long_prompt": dict(prompt=LONG_PROMPT, negative_prompt=NEGATIVE),
    "prompt_list": dict(prompt=[PROMPT, "a dog"], negative_prompt=[NEGATIVE, "blurry"]),
    "clip_skip": dict(prompt=PROMPT, clip_skip=1, guidance_scale=3.0),
    "square_default_size": dict(prompt=PROMPT, height=None, width=None),
    "frames_6_chunk_4": dict(prompt=PROMPT, num_frames=6, decode_chunk_size=4),
    "steps_5": dict(prompt=PROMPT, num_inference_steps=5),
}


def _run_both(oracle, pipe, **overrides):
    call = {**SMALL_CALL, **overrides}
    ours = pipe(**call, generator=torch.Generator().manual_seed(7)).frames
    theirs = oracle(**call, generator=torch.Generator().manual_seed(7)).frames
    return ours, theirs


@pytest.mark.parametrize("case", CASES)
def test_frames_match_diffusers(tiny_animatediff, vidiff_animatediff, case):
    ours, theirs = _run_both(tiny_animatediff[1], vidiff_animatediff, **CASES[case])
    assert ours.shape == theirs.shape
    assert max_abs_diff(ours, theirs) <= TOLERANCE


def _with_scheduler(oracle, pipe, name, options):
    """Copies of both pipelines (sharing the loaded networks) with the scheduler ``name`` built from
    the current scheduler's config plus ``options``, as users switch samplers."""
    import diffusers

    import vidiff

    ours = vidiff.AnimateDiffPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=getattr(vidiff, name).from_config(pipe.scheduler.config, **options),
    )
    ours.set_progress_bar_config(disable=True)
    theirs = diffusers.AnimateDiffPipeline(
        vae=oracle.vae, text_encoder=oracle.text_encoder, tokenizer=oracle.tokenizer, unet=oracle.unet,
        motion_adapter=None, scheduler=getattr(diffusers, name).from_config(oracle.scheduler.config, **options),
    )
    theirs.set_progress_bar_config(disable=True)
    return theirs, ours


ZERO_SNR_V = dict(prediction_type="v_prediction", rescale_betas_zero_snr=True)
SCHEDULER_CASES = {
    "ddim_eta": ("DDIMScheduler", {}, dict(eta=0.6)),
    "ddim_v_zero_snr_trailing": ("DDIMScheduler", dict(ZERO_SNR_V, timestep_spacing="trailing"), {}),
    "ddim_v_zero_snr_leading_i2vgenxl": ("DDIMScheduler", dict(ZERO_SNR_V, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=True, beta_schedule="scaled_linear"), {}),
    "ddim_clip_sample_scaled_linear": ("DDIMScheduler", dict(clip_sample=True, beta_schedule="scaled_linear", set_alpha_to_one=True), {}),
    "euler": ("EulerDiscreteScheduler", {}, {}),
    "euler_karras_leading": ("EulerDiscreteScheduler", dict(use_karras_sigmas=True, timestep_spacing="leading"), {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, dict(num_inference_steps=5)),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", dict(use_karras_sigmas=True), dict(num_inference_steps=5)),
    "sde_dpmpp_karras": ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True), dict(num_inference_steps=4)),
    "lcm": ("LCMScheduler", {}, dict(num_inference_steps=4, guidance_scale=1.0)),
}


@pytest.mark.parametrize("case", SCHEDULER_CASES)
def test_schedulers_match_diffusers(tiny_animatediff, vidiff_animatediff, case):
    name, options, call = SCHEDULER_CASES[case]
    theirs_pipe, ours_pipe = _with_scheduler(tiny_animatediff[1], vidiff_animatediff, name, options)
    ours, theirs = _run_both(theirs_pipe, ours_pipe, prompt=PROMPT, negative_prompt=NEGATIVE, **call)
    assert max_abs_diff(ours, theirs) <= TOLERANCE


def test_saved_animatediff_pipeline_route(tiny_animatediff):
    """A pipeline diffusers saved (unet = UNetMotionModel, scheduler = the guide's DDIM) loads and
    gives the oracle's frames; the separate motion_adapter copy is not loaded."""
    from vidiff import AnimateDiffPipeline, DDIMScheduler, UNetMotionModel

    root, oracle = tiny_animatediff
    pipe = AnimateDiffPipeline.from_pretrained(root / "animatediff")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.unet, UNetMotionModel) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.motion_adapter is None
    ours, theirs = _run_both(oracle, pipe, prompt=PROMPT, negative_prompt=NEGATIVE)
    assert max_abs_diff(ours, theirs) <= TOLERANCE


def test_num_videos_per_prompt_is_honoured(tiny_animatediff, vidiff_animatediff):
    """diffusers forces one video per prompt; vidiff's two videos of one prompt equal diffusers'
    videos of that prompt listed twice (same generator, same draws)."""
    call = {**SMALL_CALL, "negative_prompt": NEGATIVE}
    ours = vidiff_animatediff(prompt=PROMPT, num_videos_per_prompt=2, generator=torch.Generator().manual_seed(3), **call).frames
    theirs = tiny_animatediff[1](
        prompt=[PROMPT, PROMPT], generator=torch.Generator().manual_seed(3), **{**call, "negative_prompt": [NEGATIVE] * 2}
    ).frames
    assert ours.shape[0] == 2
    assert max_abs_diff(ours, theirs) <= TOLERANCE
    assert max_abs_diff(ours[0], ours[1]) > 1e-2  # two different videos, not one repeated


def test_given_latents_and_callback_match_diffusers(tiny_animatediff, vidiff_animatediff):
    """Caller-supplied latents [B, C, F, h, w] and a callback that rescales the latents each step."""
    latents = torch.randn(1, 4, SMALL_CALL["num_frames"], 4, 6, generator=torch.Generator().manual_seed(11))

    def callback(pipe, step, timestep, tensors):
        return {"latents": tensors["latents"] * 0.9}

    call = {**SMALL_CALL, "prompt": PROMPT, "negative_prompt": NEGATIVE, "callback_on_step_end": callback}
    ours = vidiff_animatediff(latents=latents.clone(), **call).frames
    theirs = tiny_animatediff[1](latents=latents.clone(), **call).frames
    assert max_abs_diff(ours, theirs) <= TOLERANCE
    plain = vidiff_animatediff(latents=latents.clone(), **{**call, "callback_on_step_end": None}).frames
    assert max_abs_diff(ours, plain) > 1e-3  # the callback's replacement was used


def test_prompt_changes_the_video(vidiff_animatediff):
    """Control: the tiny text path is wide enough that another prompt visibly changes the frames."""
    call = {**SMALL_CALL, "negative_prompt": NEGATIVE}
    first = vidiff_animatediff(prompt=PROMPT, generator=torch.Generator().manual_seed(5), **call).frames
    second = vidiff_animatediff(prompt="a dog on a beach", generator=torch.Generator().manual_seed(5), **call).frames
    assert max_abs_diff(first, second) > 1e-2
