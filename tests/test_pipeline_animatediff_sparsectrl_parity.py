"""AnimateDiffSparseControlNetPipeline against diffusers 0.42.1 on the tiny random checkpoint with tiny
perturbed SparseCtrl networks (RGB: simplified embedding over VAE latents; scribble: full embedding over
images): the same frames, within 1e-4.

RGB conditions are VAE-encoded with a posterior *sample*: diffusers draws it from torch's global RNG,
vidiff from ``generator``. The RGB cases therefore give both sides explicit ``latents`` (so the
generator draws nothing else) and seed the global RNG for diffusers with the generator's seed.
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
PROMPT = "a girl walking in the park"
NEGATIVE = "blurry, low quality"
KEYS = random_video(3, seed=12)
CALL = dict(prompt=PROMPT, height=32, width=48, num_frames=6, num_inference_steps=3)
SEED = 11


@pytest.fixture(scope="module")
def rgb(tiny_animatediff):
    return load_pair(tiny_animatediff[0], "AnimateDiffSparseControlNetPipeline", "sparse_rgb")


@pytest.fixture(scope="module")
def scribble(tiny_animatediff):
    return load_pair(tiny_animatediff[0], "AnimateDiffSparseControlNetPipeline", "sparse_scribble")


def _latents(seed: int = 3) -> torch.Tensor:
    return torch.randn(1, 4, 6, 4, 6, generator=torch.Generator().manual_seed(seed))


def _both(root, pair, scheduler="DDIMScheduler", pad_reference=False, **call) -> tuple:
    """(ours, theirs); the global RNG is seeded like the generator before diffusers' call."""
    set_schedulers(root, pair, scheduler)
    ours = frames(pair[0], seed=SEED, **call)
    set_schedulers(root, pair, scheduler)
    torch.manual_seed(SEED)
    if pad_reference:
        with zero_uncond_residuals(pair[1].controlnet):
            theirs = frames(pair[1], seed=SEED, **call)
    else:
        theirs = frames(pair[1], seed=SEED, **call)
    assert ours.shape == theirs.shape == (1, 6, 32, 48, 3)
    return ours, theirs


# name -> (number of key frames, their indices, call overrides)
CASES = {
    "one_frame_first": (1, [0], dict(controlnet_conditioning_scale=0.7)),
    "one_frame_middle": (1, [3], dict(negative_prompt=NEGATIVE)),
    "three_frames_unsorted": (3, [5, 0, 2], dict(controlnet_conditioning_scale=1.3)),
    "guess_mode_no_cfg": (3, [4, 1, 2], dict(guess_mode=True, guidance_scale=1.0)),
}


@pytest.mark.parametrize("case", CASES)
def test_rgb_matches_diffusers(tiny_animatediff, rgb, case):
    count, indices, overrides = CASES[case]
    call = dict(CALL, conditioning_frames=KEYS[:count], controlnet_frame_indices=indices, latents=_latents(), **overrides)
    ours, theirs = _both(tiny_animatediff[0], rgb, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_scribble_matches_diffusers(tiny_animatediff, scribble, case):
    """No VAE encoding here: the generator draws the initial latents and DDIM's η noise on both sides."""
    count, indices, overrides = CASES[case]
    call = dict(CALL, conditioning_frames=KEYS[:count], controlnet_frame_indices=indices, eta=0.5, **overrides)
    ours, theirs = _both(tiny_animatediff[0], scribble, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_scribble_euler_ancestral(tiny_animatediff, scribble):
    call = dict(CALL, conditioning_frames=KEYS[:2], controlnet_frame_indices=[5, 1], controlnet_conditioning_scale=0.8)
    ours, theirs = _both(tiny_animatediff[0], scribble, "EulerAncestralDiscreteScheduler", **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE


@pytest.mark.parametrize("kind", ["rgb", "scribble"])
def test_guess_mode_with_guidance_pads_zero_residuals(tiny_animatediff, request, kind):
    """diffusers crashes here; the reference is diffusers with zero residuals for the unconditional half."""
    pair = request.getfixturevalue(kind)
    call = dict(CALL, conditioning_frames=KEYS, controlnet_frame_indices=[2, 0, 5], latents=_latents(), guess_mode=True,
                guidance_scale=6.0, negative_prompt=NEGATIVE)
    ours, theirs = _both(tiny_animatediff[0], pair, pad_reference=True, **call)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    with pytest.raises(RuntimeError):
        frames(pair[1], **call)


@pytest.mark.parametrize("kind", ["rgb", "scribble"])
def test_key_frames_order_and_scale_matter(tiny_animatediff, request, kind):
    """conditioning_frames[k] goes to controlnet_frame_indices[k]: reordering the indices alone changes
    the frames, and so does turning the SparseControlNet off."""
    ours = request.getfixturevalue(kind)[0]
    set_schedulers(tiny_animatediff[0], (ours, request.getfixturevalue(kind)[1]))
    call = dict(CALL, conditioning_frames=KEYS, latents=_latents())
    base = frames(ours, seed=SEED, controlnet_frame_indices=[5, 0, 2], **call)
    sorted_indices = frames(ours, seed=SEED, controlnet_frame_indices=[0, 2, 5], **call)
    off = frames(ours, seed=SEED, controlnet_frame_indices=[5, 0, 2], controlnet_conditioning_scale=0.0, **call)
    assert np.abs(base - sorted_indices).max() > 1e-2
    assert np.abs(base - off).max() > 1e-2


def test_free_init_scribble(tiny_animatediff, scribble):
    call = dict(CALL, num_inference_steps=4, conditioning_frames=KEYS[:2], controlnet_frame_indices=[4, 1])
    for pipe in scribble:
        pipe.enable_free_init(num_iters=2, use_fast_sampling=True)
    try:
        ours, theirs = _both(tiny_animatediff[0], scribble, **call)
    finally:
        for pipe in scribble:
            pipe.disable_free_init()
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_free_init_rgb_draw_order(tiny_animatediff, rgb):
    """FreeInit's fresh noise comes from ``generator``, which in vidiff has already given the RGB
    posterior sample (two key frames: [2, 4, h, w]); diffusers took that sample from the global RNG.
    Handing diffusers a generator advanced by the same draw gives the same frames."""
    call = dict(CALL, num_inference_steps=4, conditioning_frames=KEYS[:2], controlnet_frame_indices=[4, 1], output_type="np")
    for pipe in rgb:
        pipe.enable_free_init(num_iters=2)
    try:
        set_schedulers(tiny_animatediff[0], rgb)
        ours = rgb[0](**call, latents=_latents(), generator=torch.Generator().manual_seed(SEED)).frames
        advanced = torch.Generator().manual_seed(SEED)
        torch.randn(2, 4, 4, 6, generator=advanced)
        torch.manual_seed(SEED)
        theirs = rgb[1](**call, latents=_latents(), generator=advanced).frames
    finally:
        for pipe in rgb:
            pipe.disable_free_init()
    assert np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)).max() <= TOLERANCE
