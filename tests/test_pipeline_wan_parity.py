"""Wan pipelines: vidiff's frames equal diffusers 0.42.1's on the same tiny random checkpoints.

Every checkpoint is built and saved by diffusers (tests/wan_checkpoint.py, every parameter perturbed)
and loaded by both libraries; both run with the same torch generator (or the same given latents),
and the frames must agree within 1e-4. Covered: text-to-video with and without guidance, several
sizes and frame counts (one rounded to 4k + 1), both flow schedulers, several prompts with several
videos each, given latents, ``max_sequence_length``; Wan 2.1 image-to-video with its CLIP branch;
Wan 2.2 TI2V (``expand_timesteps``) from an image and from text; the two-expert A14B setup with its
second guidance scale, from text and from an image with ``last_image``; Wan 2.1 FLF2V (first and last
frame through the CLIP branch).
"""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest
import torch

from tests import wan_checkpoint
from tests.helpers import max_abs_diff

diffusers = pytest.importorskip("diffusers")

from vidiff import WanImageToVideoPipeline, WanPipeline  # noqa: E402
from vidiff.schedulers import FlowMatchEulerDiscreteScheduler  # noqa: E402

TOLERANCE = 1e-4
COMMON = dict(num_inference_steps=3, max_sequence_length=16, output_type="np")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    return {kind: wan_checkpoint.save_tiny_wan(kind, root, seed=index)[0] for index, kind in enumerate(wan_checkpoint.KINDS)}


def _image(seed: int, size=(56, 40)) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _pair(folder, ours_class, theirs_class, scheduler=None, **call):
    """(diffusers frames, vidiff frames) of the same call; ``generator`` seeds are rebuilt per library."""
    theirs = theirs_class.from_pretrained(folder)
    ours = ours_class.from_pretrained(folder)
    if scheduler is not None:
        theirs.scheduler = getattr(diffusers, scheduler).from_config(theirs.scheduler.config)
        ours.scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(ours.scheduler.config.to_diffusers()))
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
    seed = call.pop("seed", 0)
    count = call.pop("generators", None)

    def generator():
        if count is None:
            return torch.Generator().manual_seed(seed)
        return [torch.Generator().manual_seed(seed + i) for i in range(count)]

    call = {**COMMON, **call}
    expected = theirs(generator=generator(), **call).frames
    actual = ours(generator=generator(), **call).frames
    return np.asarray(expected), np.asarray(actual)


def _check(expected, actual):
    assert expected.shape == actual.shape
    assert max_abs_diff(expected, actual) < TOLERANCE
    assert np.abs(expected - expected.mean()).max() > 0.01  # a real video, not a constant


@pytest.mark.parametrize(
    "call",
    [
        dict(prompt="a cat walks on the grass", negative_prompt="blurry", height=32, width=32, num_frames=9),
        dict(prompt="a cat walks", height=48, width=64, num_frames=5, guidance_scale=1.0),
        dict(prompt=["a red fox", "snow falls  &amp; melts"], num_videos_per_prompt=2, generators=4,
             height=32, width=48, num_frames=5, guidance_scale=4.0),
        dict(prompt="waves", height=32, width=32, num_frames=1, num_inference_steps=4),
    ],
    ids=["cfg", "no-cfg", "two-prompts-two-videos", "one-frame"],
)
def test_text_to_video_matches_diffusers(folders, call):
    expected, actual = _pair(folders["t2v"], WanPipeline, diffusers.WanPipeline, **call)
    _check(expected, actual)


def test_frame_count_is_rounded_like_diffusers_with_a_warning(folders, caplog):
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        expected, actual = _pair(folders["t2v"], WanPipeline, diffusers.WanPipeline, prompt="a cat", height=32, width=32, num_frames=7)
    assert actual.shape[1] == 5
    assert any("rounding 7 down to 5" in record.getMessage() for record in caplog.records)
    _check(expected, actual)


def test_flow_match_euler_scheduler_matches_diffusers(folders):
    # FlowMatchEuler built from the UniPC config keeps shift = 1.0 (its key is `shift`, not `flow_shift`).
    expected, actual = _pair(
        folders["t2v"], WanPipeline, diffusers.WanPipeline, scheduler="FlowMatchEulerDiscreteScheduler",
        prompt="a cat walks", height=32, width=32, num_frames=5,
    )
    _check(expected, actual)


def test_given_latents_match_diffusers(folders):
    latents = torch.randn(1, wan_checkpoint.Z_DIM, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    expected, actual = _pair(
        folders["t2v"], WanPipeline, diffusers.WanPipeline, prompt="rain", height=32, width=32, num_frames=9, latents=latents
    )
    _check(expected, actual)


def test_max_sequence_length_changes_the_video_as_in_diffusers(folders):
    short = _pair(folders["t2v"], WanPipeline, diffusers.WanPipeline, prompt="a cat", height=32, width=32, num_frames=5)
    call = dict(COMMON, max_sequence_length=24)
    pipe = WanPipeline.from_pretrained(folders["t2v"])
    pipe.set_progress_bar_config(disable=True)
    longer = pipe(prompt="a cat", height=32, width=32, num_frames=5, generator=torch.Generator().manual_seed(0), **call).frames
    _check(*short)
    assert max_abs_diff(short[1], longer) > 10 * TOLERANCE  # the zero-padded states are attended to


@pytest.mark.parametrize("size", [(32, 48), (48, 32)])
def test_wan21_image_to_video_with_clip_branch_matches_diffusers(folders, size):
    height, width = size
    expected, actual = _pair(
        folders["i2v"], WanImageToVideoPipeline, diffusers.WanImageToVideoPipeline,
        image=_image(1), prompt="the cat turns its head", negative_prompt="static", height=height, width=width, num_frames=5,
    )
    _check(expected, actual)


def test_ti2v_image_to_video_matches_diffusers(folders):
    expected, actual = _pair(
        folders["ti2v"], WanImageToVideoPipeline, diffusers.WanImageToVideoPipeline,
        image=_image(2), prompt="the cat turns its head", height=32, width=64, num_frames=9,
    )
    _check(expected, actual)


def test_ti2v_text_to_video_matches_diffusers(folders):
    expected, actual = _pair(
        folders["ti2v"], WanPipeline, diffusers.WanPipeline, prompt="a boat", height=64, width=32, num_frames=5, guidance_scale=3.0,
    )
    _check(expected, actual)


def test_two_experts_text_to_video_match_diffusers(folders):
    # 6 steps with flow_shift 3: timesteps above and below 875, so both experts (and both scales) run.
    timesteps = WanPipeline.from_pretrained(folders["a14b"]).scheduler.plan(6).timesteps
    assert (timesteps >= 875).any() and (timesteps < 875).any()
    expected, actual = _pair(
        folders["a14b"], WanPipeline, diffusers.WanPipeline, prompt="a cat", height=32, width=32, num_frames=5,
        num_inference_steps=6, guidance_scale=4.0, guidance_scale_2=2.0, seed=3,
    )
    _check(expected, actual)


def test_two_experts_image_to_video_with_last_image_match_diffusers(folders):
    expected, actual = _pair(
        folders["a14b_i2v"], WanImageToVideoPipeline, diffusers.WanImageToVideoPipeline,
        image=_image(3), last_image=_image(4), prompt="a door opens", height=32, width=48, num_frames=9,
        num_inference_steps=4, guidance_scale=3.0,
    )
    _check(expected, actual)


def test_wan21_first_last_frame_matches_diffusers(folders):
    expected, actual = _pair(
        folders["flf2v"], WanImageToVideoPipeline, diffusers.WanImageToVideoPipeline,
        image=_image(5), last_image=_image(6), prompt="a flower opens", height=48, width=32, num_frames=9,
    )
    _check(expected, actual)
