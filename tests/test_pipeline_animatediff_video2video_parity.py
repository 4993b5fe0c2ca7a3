"""AnimateDiffVideoToVideoPipeline against diffusers 0.42.1 on the tiny random checkpoint: the same frames.

Both pipelines load the same files, get fresh copies of the same scheduler and the same seeded CPU
torch generator(s), so the generator's draw order (one VAE posterior sample per decode chunk, then
the added noise [B, F, C, h, w]; with given latents and ``enforce_inference_steps`` a [B, C, F, h, w]
draw; with given latents alone nothing), the strength cut and the schedulers' step noise are all
compared through the frames, within 1e-4 absolute in [0, 1].
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.control_checkpoint import frames, load_pair, random_video, set_schedulers

TOLERANCE = 1e-4
PROMPT = "a marble statue dancing"
NEGATIVE = "blurry, low quality"
VIDEO = random_video(4, seed=0)
OTHER_VIDEO = random_video(4, seed=1)
SMALL = dict(prompt=PROMPT, height=32, width=48, num_inference_steps=4)

# name -> (scheduler name, scheduler options, call overrides); frames 4, decode chunks of 3 where set.
CASES = {
    "ddim_strength_0_5_chunk_3": ("DDIMScheduler", {}, dict(strength=0.5, decode_chunk_size=3)),
    "ddim_strength_1": ("DDIMScheduler", {}, dict(strength=1.0)),
    "ddim_strength_0_8_negative_eta": ("DDIMScheduler", {}, dict(strength=0.8, negative_prompt=NEGATIVE, eta=0.5, guidance_scale=5.0)),
    "ddim_strength_0_3_no_cfg": ("DDIMScheduler", {}, dict(strength=0.3, guidance_scale=1.0, num_inference_steps=6)),
    "ddim_enforce_0_6": ("DDIMScheduler", {}, dict(strength=0.6, num_inference_steps=3, enforce_inference_steps=True)),
    "ddim_enforce_1_chunk_1": ("DDIMScheduler", {}, dict(strength=1.0, num_inference_steps=2, enforce_inference_steps=True, decode_chunk_size=1)),
    "euler_strength_0_7": ("EulerDiscreteScheduler", {}, dict(strength=0.7)),
    "euler_sigmas": ("EulerDiscreteScheduler", {}, dict(strength=0.75, sigmas=[9.0, 4.0, 1.5, 0.4])),
    "euler_timesteps": ("EulerDiscreteScheduler", {}, dict(strength=0.6, timesteps=[901, 650, 400, 120, 20])),
    "euler_ancestral_0_7": ("EulerAncestralDiscreteScheduler", {}, dict(strength=0.7, decode_chunk_size=2)),
    "dpmpp_2m_0_8": ("DPMSolverMultistepScheduler", {}, dict(strength=0.8, num_inference_steps=5)),
    "sde_dpmpp_karras_0_9": ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True), dict(strength=0.9)),
    "lcm_0_75": ("LCMScheduler", {}, dict(strength=0.75, guidance_scale=1.5)),
    # an SD 1.5 repository's own scheduler: PLMS restarts its warm-up at the cut, as diffusers' counter does
    "pndm_plms_0_5": ("PNDMScheduler", dict(skip_prk_steps=True), dict(strength=0.5, num_inference_steps=5)),
    "pndm_plms_0_34": ("PNDMScheduler", dict(skip_prk_steps=True), dict(strength=0.34, num_inference_steps=6)),
    "pndm_plms_enforce": ("PNDMScheduler", dict(skip_prk_steps=True), dict(strength=0.6, num_inference_steps=3, enforce_inference_steps=True)),
    "default_size": ("DDIMScheduler", {}, dict(strength=0.5, height=None, width=None, num_inference_steps=2)),
    "ddim_v_zero_snr_trailing": ("DDIMScheduler", dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"), dict(strength=0.7)),
    "euler_karras": ("EulerDiscreteScheduler", dict(use_karras_sigmas=True), dict(strength=0.7)),
    "euler_sigmas_enforce": ("EulerDiscreteScheduler", {}, dict(strength=0.5, sigmas=[9.0, 4.0, 1.5, 0.4], enforce_inference_steps=True)),
    "sde_dpmpp_enforce": ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"), dict(strength=0.5, enforce_inference_steps=True)),
    "enforce_0_3_two_steps": ("DDIMScheduler", {}, dict(strength=0.3, num_inference_steps=2, enforce_inference_steps=True)),
    "video_numpy": ("DDIMScheduler", {}, dict(strength=0.7, video=np.stack([np.asarray(f) for f in VIDEO]).astype(np.float32) / 255)),
    "video_tensor_batch": ("DDIMScheduler", {}, dict(
        strength=0.7, video=torch.from_numpy(np.stack([np.asarray(f) for f in VIDEO]).astype(np.float32) / 255).permute(0, 3, 1, 2)[None])),
}


@pytest.fixture(scope="module")
def pair(tiny_animatediff):
    """(vidiff, diffusers) AnimateDiffVideoToVideoPipelines of this module's own."""
    return load_pair(tiny_animatediff[0], "AnimateDiffVideoToVideoPipeline")


def _both(root, pair, scheduler="DDIMScheduler", options=None, **call) -> tuple:
    results = []
    for pipe in pair:
        set_schedulers(root, pair, scheduler, **(options or {}))
        results.append(frames(pipe, **call))
    return tuple(results)


@pytest.mark.parametrize("case", CASES)
def test_frames_match_diffusers(tiny_animatediff, pair, case):
    scheduler, options, overrides = CASES[case]
    ours, theirs = _both(tiny_animatediff[0], pair, scheduler, options, **{**SMALL, "video": VIDEO, **overrides})
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_strength_and_video_matter(tiny_animatediff, pair):
    """A pipeline that ignored the video or the strength would fail here (and still "match" above)."""
    root, ours = tiny_animatediff[0], pair[0]
    set_schedulers(root, pair)
    base = frames(ours, **SMALL, video=VIDEO, strength=0.5)
    assert np.abs(base - frames(ours, **SMALL, video=OTHER_VIDEO, strength=0.5)).max() > 1e-2
    assert np.abs(base - frames(ours, **SMALL, video=VIDEO, strength=0.9)).max() > 1e-2


def test_two_prompts_two_videos_generator_list(tiny_animatediff, pair):
    """diffusers wants one video per prompt; generator k encodes video k and draws its noise."""
    call = dict(SMALL, prompt=[PROMPT, "a dog"], negative_prompt=[NEGATIVE, "ugly"], video=[VIDEO, OTHER_VIDEO],
                strength=0.7, num_generators=2, decode_chunk_size=3)
    ours, theirs = _both(tiny_animatediff[0], pair, "EulerAncestralDiscreteScheduler", **call)
    assert ours.shape == theirs.shape == (2, 4, 32, 48, 3)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    assert np.abs(ours[0] - ours[1]).max() > 1e-2


@pytest.mark.parametrize("enforce", [False, True])
def test_given_latents(tiny_animatediff, pair, enforce):
    """Given latents (no video) are the start as they are (no draw), or, with enforce_inference_steps,
    noised with a [B, C, F, h, w] draw at the first kept timestep."""
    latents = torch.randn(1, 4, 4, 4, 6, generator=torch.Generator().manual_seed(5))
    call = dict(SMALL, video=None, strength=0.6, latents=latents, enforce_inference_steps=enforce, eta=0.3)
    ours, theirs = _both(tiny_animatediff[0], pair, **call)
    assert ours.shape == theirs.shape == (1, 4, 32, 48, 3)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    other = frames(pair[0], **{**call, "latents": latents + 0.5})
    assert np.abs(ours - other).max() > 1e-2


def test_video_and_latents_together_are_refused(pair):
    """Like diffusers: `video` and `latents` are alternatives."""
    latents = torch.zeros(1, 4, 4, 4, 6)
    for pipe in pair:
        with pytest.raises(ValueError, match="latents"):
            frames(pipe, **SMALL, video=VIDEO, latents=latents)


def _free_noise_both(root, pair, **call) -> tuple:
    results = []
    for pipe in pair:
        set_schedulers(root, pair)
        try:
            pipe.enable_free_noise(context_length=4, context_stride=2)
            results.append(frames(pipe, **call))
        finally:
            pipe.disable_free_noise()
    return tuple(results)


@pytest.mark.parametrize("prompt", [PROMPT, {0: PROMPT, 3: "a dog running"}], ids=["one_prompt", "prompt_travel"])
def test_free_noise_matches_diffusers(tiny_animatediff, pair, prompt):
    """Six frames in windows of 4 every 2 (0-4, 2-6), with guidance; a dict prompt travels."""
    video = random_video(6, seed=2)
    call = dict(SMALL, prompt=prompt, negative_prompt=NEGATIVE, video=video, strength=0.7, num_inference_steps=3)
    ours, theirs = _free_noise_both(tiny_animatediff[0], pair, **call)
    assert ours.shape == theirs.shape == (1, 6, 32, 48, 3)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_strength_that_leaves_no_step_is_refused(pair):
    """int(8 · 0.1) = 0 steps: diffusers crashes inside torch.cat; vidiff names the argument."""
    with pytest.raises(ValueError, match="strength"):
        frames(pair[0], **{**SMALL, "num_inference_steps": 8}, video=VIDEO, strength=0.1)


def test_free_noise_given_latents_enforce_steps(tiny_animatediff, pair):
    """FreeNoise over given latents noised at the cut ([B, C, F, h, w] draw) under enforce_inference_steps."""
    latents = torch.randn(1, 4, 6, 4, 6, generator=torch.Generator().manual_seed(3))
    call = dict(SMALL, video=None, latents=latents, enforce_inference_steps=True, strength=0.7, num_inference_steps=3)
    ours, theirs = _free_noise_both(tiny_animatediff[0], pair, **call)
    assert ours.shape == (1, 6, 32, 48, 3)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_callback_sees_the_cut_schedule_and_replaces_latents(tiny_animatediff, pair):
    """The step callback runs on the strength-cut schedule (index from 0, its timesteps) and its
    replacement latents are used, as in diffusers."""
    results = []
    for pipe in pair:
        seen = []

        def callback(pipe, step, timestep, tensors, seen=seen):
            seen.append((int(step), float(timestep)))
            return {"latents": tensors["latents"] * 0.98}

        set_schedulers(tiny_animatediff[0], pair)
        results.append((frames(pipe, **SMALL, video=VIDEO, strength=0.6, callback_on_step_end=callback), seen))
    (ours, our_steps), (theirs, their_steps) = results
    assert our_steps == their_steps and len(our_steps) == 2  # int(4 · 0.6) = 2 of the 4 steps
    assert np.abs(ours - theirs).max() <= TOLERANCE
    plain = frames(pair[0], **SMALL, video=VIDEO, strength=0.6)
    assert np.abs(ours - plain).max() > 1e-3
