"""StableVideoDiffusionPipeline: the same frames as diffusers on the same tiny random weights and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import max_abs_diff
from tests.svd_checkpoint import SMALL_CALL as BASE
from tests.svd_checkpoint import random_image

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pipes(tiny_svd, vidiff_svd):
    return vidiff_svd, tiny_svd[1]


CASES = {
    "cfg": dict(),
    "cfg_off": dict(max_guidance_scale=1.0),
    "ramp_both_above_one": dict(min_guidance_scale=1.5, max_guidance_scale=4.0),
    "chunk_1": dict(decode_chunk_size=1),
    "chunk_not_dividing": dict(num_frames=5, decode_chunk_size=2),
    "two_videos": dict(num_videos_per_prompt=2, decode_chunk_size=2),
    "square": dict(height=64, width=64),
    "portrait": dict(height=48, width=32, fps=12, motion_bucket_id=60),
    "no_noise_aug": dict(noise_aug_strength=0.0),
    "strong_noise_aug": dict(noise_aug_strength=0.3),
    "more_steps": dict(num_inference_steps=5),
    "custom_sigmas": dict(sigmas=[700.0, 40.0, 3.0, 0.3]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_frames_match_diffusers(pipes, name):
    ours, oracle = pipes
    kwargs = {**BASE, **CASES[name]}
    image = random_image()
    expected = oracle(image, generator=torch.Generator().manual_seed(7), **kwargs).frames
    got = ours(image, generator=torch.Generator().manual_seed(7), **kwargs).frames
    assert got.shape == expected.shape
    assert got.dtype == np.float32
    assert max_abs_diff(got, expected) <= TOLERANCE


def test_conditioning_matters(pipes):
    """Guards the parity tests: the tiny model must react to its image, or a broken path would pass."""
    ours, _ = pipes
    a = ours(random_image(seed=1), generator=torch.Generator().manual_seed(0), **BASE).frames
    b = ours(random_image(seed=2), generator=torch.Generator().manual_seed(0), **BASE).frames
    assert max_abs_diff(a, b) > 1e-2


def test_generator_list_and_given_latents(pipes):
    ours, oracle = pipes
    image = random_image()
    kwargs = {**BASE, "num_videos_per_prompt": 2}
    generators = lambda: [torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)]  # noqa: E731
    expected = oracle(image, generator=generators(), **kwargs).frames
    got = ours(image, generator=generators(), **kwargs).frames
    assert max_abs_diff(got, expected) <= TOLERANCE

    # Given latents: ours are [B, C, F, h, w]; diffusers' [B, F, C, h, w].
    latents = torch.randn(2, 4, 3, 4, 6, generator=torch.Generator().manual_seed(5))
    expected = oracle(image, generator=generators(), latents=latents.permute(0, 2, 1, 3, 4), **kwargs).frames
    got = ours(image, generator=generators(), latents=latents, **kwargs).frames
    assert max_abs_diff(got, expected) <= TOLERANCE


def test_output_types_agree(pipes):
    ours, oracle = pipes
    image = random_image()
    run = lambda pipe, kind: pipe(image, generator=torch.Generator().manual_seed(1), **{**BASE, "output_type": kind}).frames  # noqa: E731
    as_np = run(ours, "np")
    as_pt = run(ours, "pt")
    assert tuple(as_pt.shape) == (1, 3, 3, 32, 48)  # [B, F, 3, H, W], diffusers' layout
    assert max_abs_diff(as_pt.permute(0, 1, 3, 4, 2), as_np) <= 1e-6
    as_pil = run(ours, "pil")
    assert len(as_pil) == 1 and len(as_pil[0]) == 3 and as_pil[0][0].size == (48, 32)
    assert np.abs(np.asarray(as_pil[0][1], dtype=np.float32) / 255 - as_np[0, 1]).max() <= 0.5 / 255 + 1e-6
    latents = run(ours, "latent")
    expected = run(oracle, "latent")  # diffusers: [B, F, C, h, w]
    assert max_abs_diff(latents, expected.permute(0, 2, 1, 3, 4)) <= TOLERANCE
    # return_dict=False gives the tuple (frames,); output[0] is output.frames.
    out = ours(image, generator=torch.Generator().manual_seed(1), return_dict=False, **BASE)
    assert isinstance(out, tuple) and max_abs_diff(out[0], as_np) == 0
    assert ours(image, generator=torch.Generator().manual_seed(1), **BASE)[0].shape == as_np.shape


def test_callback_sees_and_replaces_latents(pipes):
    ours, oracle = pipes
    image = random_image()
    seen = []

    def halve(pipe, step, timestep, tensors):
        seen.append((step, tuple(tensors["latents"].shape)))
        return {"latents": tensors["latents"] * 0.5}

    def halve_diffusers(pipe, step, timestep, tensors):
        return {"latents": tensors["latents"] * 0.5}

    got = ours(image, generator=torch.Generator().manual_seed(2), callback_on_step_end=halve, **BASE).frames
    expected = oracle(image, generator=torch.Generator().manual_seed(2), callback_on_step_end=halve_diffusers, **BASE).frames
    assert seen == [(0, (1, 4, 3, 4, 6)), (1, (1, 4, 3, 4, 6))]
    assert max_abs_diff(got, expected) <= TOLERANCE


def test_numpy_seed_is_reproducible(pipes):
    ours, _ = pipes
    image = random_image()
    a = ours(image, generator=np.random.Generator(np.random.PCG64(42)), **BASE).frames
    b = ours(image, generator=np.random.Generator(np.random.PCG64(42)), **BASE).frames
    c = ours(image, generator=np.random.Generator(np.random.PCG64(43)), **BASE).frames
    assert np.array_equal(a, b)
    assert max_abs_diff(a, c) > 1e-3
