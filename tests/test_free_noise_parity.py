"""FreeNoise on AnimateDiff: vidiff against diffusers 0.42.1 on the tiny checkpoint.

Both pipelines are loaded fresh for this module (diffusers' split inference wraps modules for good,
so the session's shared pipelines are left alone). The adapter's position table has 32 frames;
the windows here have 8, so every call runs several windows, with guidance on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.animatediff_checkpoint import GUIDE_DDIM, SMALL_CALL, diffusers_pipeline

TOLERANCE = 1e-4
# 13 frames with windows of 8 every 2: (0, 8), (2, 10), (4, 12) and a trailing (5, 13) that adds one frame;
# 14 frames with windows of 8 every 4: (0, 8), (4, 12) and a trailing (6, 14) that adds two.
SHORT_LAST = dict(num_frames=13, context_length=8, context_stride=2)
SHORT_LAST_WIDE = dict(num_frames=14, context_length=8, context_stride=4)
EXACT = dict(num_frames=12, context_length=8, context_stride=4)


@pytest.fixture(scope="module")
def pipelines(tiny_animatediff):
    """(vidiff, diffusers) AnimateDiff pipelines of their own (DDIM as the guide sets it)."""
    from vidiff import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    root = tiny_animatediff[0]
    adapter = MotionAdapter.from_pretrained(root / "motion_adapter")
    ours = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=adapter)
    ours.scheduler = DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
    ours.set_progress_bar_config(disable=True)
    return ours, diffusers_pipeline(root)


def _run_both(
    pipelines, windows: dict, *, latents: torch.Tensor | None = None, seed: int = 0, eta: float = 0.0, **free_noise
):
    ours, reference = pipelines
    windows = dict(windows)
    num_frames = windows.pop("num_frames")
    call = {**SMALL_CALL, "num_frames": num_frames, "num_inference_steps": 2, "prompt": "a cat", "eta": eta}
    frames = []
    for pipe in (ours, reference):
        pipe.enable_free_noise(**windows, **free_noise)
        try:
            given = None if latents is None else latents.clone()
            frames.append(np.asarray(pipe(generator=torch.Generator().manual_seed(seed), latents=given, **call).frames))
        finally:
            pipe.disable_free_noise()
    assert frames[0].shape == (1, num_frames, SMALL_CALL["height"], SMALL_CALL["width"], 3)
    return frames


@pytest.mark.parametrize("noise_type", ["shuffle_context", "repeat_context", "random"])
@pytest.mark.parametrize("weighting_scheme", ["flat", "pyramid", "delayed_reverse_sawtooth"])
def test_every_weighting_and_noise_type_matches_diffusers(pipelines, weighting_scheme, noise_type):
    windows = SHORT_LAST if weighting_scheme != "pyramid" else SHORT_LAST_WIDE
    ours, reference = _run_both(pipelines, windows, weighting_scheme=weighting_scheme, noise_type=noise_type)
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE, rtol=0)


def test_windows_ending_on_the_last_frame_match_diffusers(pipelines):
    ours, reference = _run_both(pipelines, EXACT, weighting_scheme="pyramid", seed=3)
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("noise_type", ["shuffle_context", "random"])
def test_given_latents_with_all_frames_are_used_as_they_are(pipelines, noise_type):
    latents = torch.randn(1, 4, SHORT_LAST["num_frames"], 4, 6, generator=torch.Generator().manual_seed(7))
    ours, reference = _run_both(pipelines, SHORT_LAST, latents=latents, noise_type=noise_type)
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE, rtol=0)


def test_given_context_latents_are_tiled_for_repeat_context(pipelines):
    latents = torch.randn(1, 4, SHORT_LAST["context_length"], 4, 6, generator=torch.Generator().manual_seed(8))
    ours, reference = _run_both(pipelines, SHORT_LAST, latents=latents, noise_type="repeat_context")
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE, rtol=0)


def test_split_inference_matches_diffusers_and_the_unsplit_run(pipelines, tiny_animatediff):
    ours = pipelines[0]
    # diffusers wraps the modules for good (and must enable FreeNoise first): a pipeline of its own.
    reference = diffusers_pipeline(tiny_animatediff[0])
    windows = dict(SHORT_LAST)
    call = {**SMALL_CALL, "num_frames": windows.pop("num_frames"), "num_inference_steps": 2, "prompt": "a cat"}
    frames = []
    ours.enable_free_noise(**windows)
    try:
        frames.append(ours(generator=torch.Generator().manual_seed(0), **call).frames)  # unsplit
        # The tiny UNet's motion modules see 2·4·6 = 48 and 2·2·3 = 12 pixel sequences (guidance
        # doubles the batch), its stages 2·13 = 26 images: slices of 5 and 4 split every one of them.
        for pipe in (ours, reference):
            if pipe is reference:
                pipe.enable_free_noise(**windows)
            pipe.enable_free_noise_split_inference(spatial_split_size=5, temporal_split_size=4)
            frames.append(pipe(generator=torch.Generator().manual_seed(0), **call).frames)
    finally:
        ours.disable_free_noise()
    unsplit, split_ours, split_reference = (np.asarray(f) for f in frames)
    np.testing.assert_allclose(split_ours, split_reference, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(split_ours, unsplit, atol=TOLERANCE, rtol=0)
    assert ours.unet.down_blocks[0].image_chunking is None  # disable_free_noise ended the split too


def test_videos_longer_than_the_position_table_match_diffusers(pipelines):
    # 36 frames > motion_max_seq_length=32: windows (0, 16), (8, 24), (16, 32) and a trailing (20, 36)
    windows = dict(num_frames=36, context_length=16, context_stride=8)
    ours, reference = _run_both(pipelines, windows, weighting_scheme="pyramid", noise_type="shuffle_context", seed=5)
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE, rtol=0)


def test_ddim_noise_is_drawn_after_the_shuffles_as_in_diffusers(pipelines):
    # η = 1: every DDIM step draws from the generator that shuffled the initial noise before
    ours, reference = _run_both(pipelines, SHORT_LAST, noise_type="shuffle_context", eta=1.0, seed=11)
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE, rtol=0)
