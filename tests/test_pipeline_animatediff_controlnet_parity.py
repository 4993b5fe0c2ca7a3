"""AnimateDiffControlNetPipeline and AnimateDiffVideoToVideoControlNetPipeline against diffusers 0.42.1
on the tiny random checkpoint with tiny perturbed ControlNets: the same frames, within 1e-4.

Guess mode with classifier-free guidance crashes in diffusers' AnimateDiff ControlNet pipelines (the
ControlNet runs on the conditional half only, and its residuals are never padded for the
unconditional half). vidiff gives the unconditional half zero residuals, as diffusers' image
ControlNet pipeline does; the expected frames come from diffusers with its ControlNet wrapped to
return exactly that padding (``zero_uncond_residuals``), and the unwrapped call is checked to crash.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.control_checkpoint import (
    frames,
    load_pair,
    random_video,
    set_schedulers,
    zero_uncond_residuals,
)

TOLERANCE = 1e-4
PROMPT = "a robot dancing"
NEGATIVE = "blurry, low quality"
CONTROL = random_video(4, seed=3)
CONTROL_B = random_video(4, seed=4)
VIDEO = random_video(4, seed=5)
T2V = dict(prompt=PROMPT, height=32, width=48, num_frames=4, num_inference_steps=3)
V2V = dict(prompt=PROMPT, height=32, width=48, num_inference_steps=4, video=VIDEO, strength=0.7)


@pytest.fixture(scope="module")
def t2v(tiny_animatediff):
    return load_pair(tiny_animatediff[0], "AnimateDiffControlNetPipeline", "controlnet_a")


@pytest.fixture(scope="module")
def t2v_multi(tiny_animatediff):
    return load_pair(tiny_animatediff[0], "AnimateDiffControlNetPipeline", ["controlnet_a", "controlnet_b"])


@pytest.fixture(scope="module")
def t2v_pool(tiny_animatediff):
    return load_pair(tiny_animatediff[0], "AnimateDiffControlNetPipeline", "controlnet_pool")


@pytest.fixture(scope="module")
def v2v(tiny_animatediff):
    return load_pair(tiny_animatediff[0], "AnimateDiffVideoToVideoControlNetPipeline", "controlnet_a")


@pytest.fixture(scope="module")
def v2v_multi(tiny_animatediff):
    return load_pair(tiny_animatediff[0], "AnimateDiffVideoToVideoControlNetPipeline", ["controlnet_a", "controlnet_b"])


def _both(root, pair, scheduler="DDIMScheduler", options=None, pad_reference=False, **call) -> tuple:
    """(ours, theirs) frames; ``pad_reference`` wraps diffusers' ControlNet with zero_uncond_residuals."""
    set_schedulers(root, pair, scheduler, **(options or {}))
    ours = frames(pair[0], **call)
    set_schedulers(root, pair, scheduler, **(options or {}))
    if pad_reference:
        with zero_uncond_residuals(pair[1].controlnet):
            theirs = frames(pair[1], **call)
    else:
        theirs = frames(pair[1], **call)
    assert ours.shape == theirs.shape
    return ours, theirs


# ------------------------------------------------------------------ text-to-video
T2V_CASES = {
    "scale_0_8": ("DDIMScheduler", {}, dict(controlnet_conditioning_scale=0.8)),
    "scale_1_5_negative_eta": ("DDIMScheduler", {}, dict(controlnet_conditioning_scale=1.5, negative_prompt=NEGATIVE, eta=0.4)),
    "window_0_25_0_75": ("DDIMScheduler", {}, dict(num_inference_steps=4, control_guidance_start=0.25, control_guidance_end=0.75)),
    "window_start_0_5": ("DDIMScheduler", {}, dict(num_inference_steps=4, control_guidance_start=0.5)),
    "guess_mode_no_cfg": ("DDIMScheduler", {}, dict(guess_mode=True, guidance_scale=1.0, controlnet_conditioning_scale=0.9)),
    "euler_ancestral_chunk_3": ("EulerAncestralDiscreteScheduler", {}, dict(decode_chunk_size=3)),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, dict(num_inference_steps=4, control_guidance_end=0.6)),
    "lcm_clip_skip": ("LCMScheduler", {}, dict(guidance_scale=1.0, clip_skip=1)),
    "prompt_embeds": ("DDIMScheduler", {}, dict(
        prompt=None, prompt_embeds=torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)),
        negative_prompt_embeds=torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2)))),
}


@pytest.mark.parametrize("case", T2V_CASES)
def test_text_to_video_matches_diffusers(tiny_animatediff, t2v, case):
    scheduler, options, overrides = T2V_CASES[case]
    call = {**T2V, "conditioning_frames": CONTROL, **overrides}
    ours, theirs = _both(tiny_animatediff[0], t2v, scheduler, options, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_given_latents_text_to_video(tiny_animatediff, t2v):
    latents = torch.randn(1, 4, 4, 4, 6, generator=torch.Generator().manual_seed(8))
    ours, theirs = _both(tiny_animatediff[0], t2v, **T2V, conditioning_frames=CONTROL, latents=latents, controlnet_conditioning_scale=0.7)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_control_scale_and_frames_matter(tiny_animatediff, t2v):
    """A pipeline that ignored the ControlNet would match diffusers only if the residuals were ~0."""
    set_schedulers(tiny_animatediff[0], t2v)
    base = frames(t2v[0], **T2V, conditioning_frames=CONTROL, controlnet_conditioning_scale=0.8)
    off = frames(t2v[0], **T2V, conditioning_frames=CONTROL, controlnet_conditioning_scale=0.0)
    other = frames(t2v[0], **T2V, conditioning_frames=CONTROL_B, controlnet_conditioning_scale=0.8)
    assert np.abs(base - off).max() > 1e-2
    assert np.abs(base - other).max() > 1e-2


def test_two_controlnets_per_net_scales_and_windows(tiny_animatediff, t2v_multi):
    call = dict(T2V, num_inference_steps=4, conditioning_frames=[CONTROL, CONTROL_B], controlnet_conditioning_scale=[0.5, 1.2],
                control_guidance_start=[0.0, 0.25], control_guidance_end=[1.0, 0.5])
    ours, theirs = _both(tiny_animatediff[0], t2v_multi, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    swapped = frames(t2v_multi[0], **{**call, "controlnet_conditioning_scale": [1.2, 0.5]})
    assert np.abs(ours - swapped).max() > 1e-2


def test_guess_mode_with_guidance_pads_zero_residuals(tiny_animatediff, t2v):
    call = dict(T2V, conditioning_frames=CONTROL, guess_mode=True, guidance_scale=6.0, negative_prompt=NEGATIVE)
    ours, theirs = _both(tiny_animatediff[0], t2v, pad_reference=True, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    plain = frames(t2v[0], **{**call, "guess_mode": False})
    assert np.abs(ours - plain).max() > 1e-2
    with pytest.raises(RuntimeError):  # the trap this padding documents
        frames(t2v[1], **call)


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_global_pool_controlnet(tiny_animatediff, t2v_pool, guidance_scale):
    """global_pool_conditions turns guess mode on (with guidance: the zero-padding case)."""
    call = dict(T2V, conditioning_frames=CONTROL, guidance_scale=guidance_scale, controlnet_conditioning_scale=0.9)
    ours, theirs = _both(tiny_animatediff[0], t2v_pool, pad_reference=guidance_scale > 1, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def _with_free_noise(root, pair, **call) -> tuple:
    try:
        for pipe in pair:
            pipe.enable_free_noise(context_length=4, context_stride=2)
        return _both(root, pair, **call)
    finally:
        for pipe in pair:
            pipe.disable_free_noise()


def test_controlnet_with_global_pool_in_a_pair(tiny_animatediff):
    """A global-pool net second in the list: its pooled residuals [(B·F), C, 1, 1] broadcast over the
    other's; guess mode follows the first net (off). (diffusers crashes with the pool net first.)"""
    pair = load_pair(tiny_animatediff[0], "AnimateDiffControlNetPipeline", ["controlnet_a", "controlnet_pool"])
    call = dict(T2V, conditioning_frames=[CONTROL, CONTROL_B], controlnet_conditioning_scale=0.6, control_guidance_start=[0.0, 0.3])
    ours, theirs = _both(tiny_animatediff[0], pair, guidance_scale=5.0, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_free_noise_prompt_travel_guess_mode_with_guidance(tiny_animatediff, t2v):
    call = dict(T2V, num_frames=6, prompt={0: PROMPT, 3: "a dog running"}, conditioning_frames=random_video(6, seed=6),
                guess_mode=True)
    ours, theirs = _with_free_noise(tiny_animatediff[0], t2v, pad_reference=True, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_free_noise_text_to_video(tiny_animatediff, t2v):
    call = dict(T2V, num_frames=6, conditioning_frames=random_video(6, seed=6), controlnet_conditioning_scale=0.8,
                negative_prompt=NEGATIVE)
    ours, theirs = _with_free_noise(tiny_animatediff[0], t2v, **call)
    assert ours.shape == (1, 6, 32, 48, 3)
    assert np.abs(ours - theirs).max() <= TOLERANCE


@pytest.mark.parametrize("fast", [False, True], ids=["full", "fast_sampling"])
def test_free_init_text_to_video(tiny_animatediff, t2v, fast):
    """FreeInit re-runs the loop (fewer steps per iteration with fast sampling) under a guidance
    window, so the window's per-step keep list must be indexed as diffusers does."""
    call = dict(T2V, num_inference_steps=4, conditioning_frames=CONTROL, control_guidance_start=0.2,
                control_guidance_end=0.7, controlnet_conditioning_scale=0.8)
    for pipe in t2v:
        pipe.enable_free_init(num_iters=2, use_fast_sampling=fast)
    try:
        ours, theirs = _both(tiny_animatediff[0], t2v, **call)
    finally:
        for pipe in t2v:
            pipe.disable_free_init()
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_free_noise_and_free_init_text_to_video(tiny_animatediff, t2v):
    call = dict(T2V, num_frames=6, num_inference_steps=4, conditioning_frames=random_video(6, seed=6), control_guidance_end=0.6)
    for pipe in t2v:
        pipe.enable_free_init(num_iters=2, use_fast_sampling=True)
    try:
        ours, theirs = _with_free_noise(tiny_animatediff[0], t2v, **call)
    finally:
        for pipe in t2v:
            pipe.disable_free_init()
    assert np.abs(ours - theirs).max() <= TOLERANCE


# ------------------------------------------------------------------ video-to-video
V2V_CASES = {
    "strength_0_7_scale_0_8_chunk_3": ("DDIMScheduler", {}, dict(controlnet_conditioning_scale=0.8, decode_chunk_size=3)),
    "strength_1_window": ("DDIMScheduler", {}, dict(strength=1.0, control_guidance_start=0.3, control_guidance_end=0.8)),
    "strength_0_6_window_after_cut": ("DDIMScheduler", {}, dict(strength=0.6, num_inference_steps=6, control_guidance_end=0.5)),
    "enforce_0_5": ("DDIMScheduler", {}, dict(strength=0.5, num_inference_steps=3, enforce_inference_steps=True, control_guidance_start=0.4)),
    "euler_sigmas": ("EulerDiscreteScheduler", {}, dict(strength=0.8, sigmas=[9.0, 4.0, 1.5, 0.4], controlnet_conditioning_scale=1.3)),
    "guess_mode_no_cfg": ("DDIMScheduler", {}, dict(guess_mode=True, guidance_scale=1.0)),
    "enforce_0_4_window": ("DDIMScheduler", {}, dict(strength=0.4, enforce_inference_steps=True, control_guidance_start=0.25, control_guidance_end=0.75)),
    "lcm": ("LCMScheduler", {}, dict(guidance_scale=1.0)),
    "dpmpp_2m_start_0_4": ("DPMSolverMultistepScheduler", {}, dict(num_inference_steps=5, control_guidance_start=0.4)),
    "euler_timesteps": ("EulerDiscreteScheduler", {}, dict(timesteps=[901, 650, 400, 120, 20])),
}


@pytest.mark.parametrize("case", V2V_CASES)
def test_video_to_video_matches_diffusers(tiny_animatediff, v2v, case):
    scheduler, options, overrides = V2V_CASES[case]
    ours, theirs = _both(tiny_animatediff[0], v2v, scheduler, options, **{**V2V, "conditioning_frames": CONTROL, **overrides})
    assert np.abs(ours - theirs).max() <= TOLERANCE


@pytest.mark.parametrize("enforce", [False, True])
def test_video_to_video_given_latents(tiny_animatediff, v2v, enforce):
    latents = torch.randn(1, 4, 4, 4, 6, generator=torch.Generator().manual_seed(5))
    call = dict(V2V, video=None, latents=latents, enforce_inference_steps=enforce, conditioning_frames=CONTROL, eta=0.4)
    ours, theirs = _both(tiny_animatediff[0], v2v, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_video_to_video_guess_mode_with_guidance(tiny_animatediff, v2v):
    call = dict(V2V, conditioning_frames=CONTROL, guess_mode=True, guidance_scale=4.0)
    ours, theirs = _both(tiny_animatediff[0], v2v, pad_reference=True, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    with pytest.raises(RuntimeError):
        frames(v2v[1], **call)


def test_video_to_video_two_controlnets(tiny_animatediff, v2v_multi):
    call = dict(V2V, conditioning_frames=[CONTROL, CONTROL_B], controlnet_conditioning_scale=[0.5, 1.2],
                control_guidance_end=[1.0, 0.5], decode_chunk_size=2)
    ours, theirs = _both(tiny_animatediff[0], v2v_multi, "EulerAncestralDiscreteScheduler", **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    off = frames(v2v_multi[0], **{**call, "controlnet_conditioning_scale": [0.0, 0.0]})
    assert np.abs(ours - off).max() > 1e-2


def test_free_noise_video_to_video_two_controlnets(tiny_animatediff, v2v_multi):
    call = dict(V2V, video=random_video(6, seed=7), conditioning_frames=[random_video(6, seed=6), random_video(6, seed=8)],
                controlnet_conditioning_scale=[0.7, 1.1], control_guidance_start=[0.0, 0.3], num_inference_steps=3)
    ours, theirs = _with_free_noise(tiny_animatediff[0], v2v_multi, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_free_noise_video_to_video(tiny_animatediff, v2v):
    call = dict(V2V, video=random_video(6, seed=7), conditioning_frames=random_video(6, seed=6), negative_prompt=NEGATIVE,
                num_inference_steps=3)
    ours, theirs = _with_free_noise(tiny_animatediff[0], v2v, **call)
    assert ours.shape == (1, 6, 32, 48, 3)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_video_to_video_two_prompts_one_control_video_each(tiny_animatediff, v2v):
    """diffusers' video-to-video ControlNet pipeline takes one control video per prompt (and one video
    and one generator each); control video k steers video k."""
    call = dict(V2V, prompt=[PROMPT, "a dog"], video=[VIDEO, CONTROL_B], conditioning_frames=[CONTROL, CONTROL_B],
                num_generators=2, controlnet_conditioning_scale=0.9)
    ours, theirs = _both(tiny_animatediff[0], v2v, **call)
    assert ours.shape == (2, 4, 32, 48, 3)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    same_control = frames(v2v[0], **{**call, "conditioning_frames": [CONTROL, CONTROL]})
    assert np.abs(ours[0] - same_control[0]).max() <= TOLERANCE
    assert np.abs(ours[1] - same_control[1]).max() > 1e-2
    with pytest.raises(ValueError, match="conditioning_frames"):
        frames(v2v[0], **{**call, "conditioning_frames": [CONTROL] * 3})
