"""Wan pipelines beyond diffusers parity: bad input refused clearly (before any network runs), the
save/load round trip with diffusers, numpy generators, context windows, the memory levers."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from tests import wan_checkpoint
from tests.helpers import max_abs_diff

from vidiff import WanImageToVideoPipeline, WanPipeline
from vidiff.diffusion.noise import randn

CALL = dict(prompt="a cat", height=32, width=32, num_frames=5, num_inference_steps=2, max_sequence_length=16)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_api")
    kinds = ("t2v", "i2v", "ti2v", "a14b")
    return {kind: wan_checkpoint.save_tiny_wan(kind, root, seed=10 + index)[0] for index, kind in enumerate(kinds)}


def _load(cls, folder, **kwargs):
    pipe = cls.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image() -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))


class _NoNetwork(Exception):
    pass


def _refuse_networks(pipe):
    """Make every network call fail loudly: a refusal must come before any work."""
    def boom(*args, **kwargs):
        raise _NoNetwork

    for name in ("transformer", "transformer_2", "text_encoder", "vae", "image_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.forward = boom
    return pipe


@pytest.mark.parametrize(
    ("kind", "overrides", "match"),
    [
        ("t2v", dict(height=40), r"`height` must be a multiple of 16 .*nearest valid: 32 or 48"),
        ("t2v", dict(width=8), r"`width` must be a multiple of 16 .*nearest valid: 16"),
        ("ti2v", dict(width=48), r"`width` must be a multiple of 32 \(the VAE's 16 × the transformer's patch 2\).*32 or 64"),
        ("t2v", dict(height=-32), r"`height` must be a positive multiple of 16"),
        ("t2v", dict(num_frames=0), r"`num_frames` must be an integer ≥ 1"),
        ("t2v", dict(num_inference_steps=0), r"`num_inference_steps`"),
        ("t2v", dict(guidance_scale=float("nan")), r"`guidance_scale`"),
        ("t2v", dict(guidance_scale_2=3.0), r"`guidance_scale_2` .*two-expert"),
        ("t2v", dict(max_sequence_length=0), r"`max_sequence_length` must be an integer ≥ 1"),
        ("t2v", dict(attention_kwargs={"scale": 0.5}), r"`attention_kwargs`"),
        ("t2v", dict(output_type="gif"), r"`output_type`"),
        ("t2v", dict(prompt=None), r"`prompt`"),
        ("t2v", dict(latents=torch.zeros(1, 4, 3, 4, 4)), r"`latents` must have shape .*\[1, 4, 2, 4, 4\]"),
    ],
)
def test_text_to_video_refuses_bad_arguments_before_any_work(folders, kind, overrides, match):
    pipe = _refuse_networks(_load(WanPipeline, folders[kind]))
    with pytest.raises((ValueError, TypeError), match=match):
        pipe(**{**CALL, **overrides})


@pytest.mark.parametrize(
    ("kind", "overrides", "match"),
    [
        ("i2v", dict(image=None), r"`image` is required"),
        ("ti2v", dict(last_image=_image()), r"`last_image` is not supported by this checkpoint"),
        ("ti2v", dict(image_embeds=torch.zeros(1, 17, 16)), r"`image_embeds` feeds Wan 2.1's CLIP image branch"),
        ("i2v", dict(image_embeds=torch.zeros(17, 16)), r"`image_embeds` must be a tensor \[N, T, D\]"),
        ("i2v", dict(last_image=_image(), num_frames=1), r"`num_frames` must be ≥ 2 with a `last_image`"),
        ("i2v", dict(image="cat.png"), r"`image` must be a PIL image"),
    ],
)
def test_image_to_video_refuses_bad_arguments_before_any_work(folders, kind, overrides, match):
    pipe = _refuse_networks(_load(WanImageToVideoPipeline, folders[kind]))
    call = {**CALL, "image": _image(), **overrides}
    if kind == "ti2v":
        call.update(width=64)
    with pytest.raises((ValueError, TypeError), match=match):
        pipe(**call)


def test_a_checkpoint_for_the_other_task_is_refused_naming_the_right_pipeline(folders):
    with pytest.raises(ValueError, match=r"`transformer` takes 4 input channels .* is for WanPipeline \(text only"):
        WanImageToVideoPipeline.from_pretrained(folders["t2v"])
    with pytest.raises(ValueError, match=r"`transformer` takes 12 input channels .* WanImageToVideoPipeline \(pass an image\)"):
        WanPipeline.from_pretrained(folders["i2v"])


def test_two_expert_settings_are_checked_when_the_pipeline_is_built(folders):
    with pytest.raises(ValueError, match=r"`boundary_ratio` is 0.9, .* `transformer_2` is missing"):
        WanPipeline.from_pretrained(folders["t2v"], boundary_ratio=0.9)
    with pytest.raises(ValueError, match=r"`boundary_ratio` must be a number in \[0, 1\]"):
        WanPipeline.from_pretrained(folders["a14b"], boundary_ratio=1.5)
    with pytest.raises(ValueError, match=r"has a `transformer_2` but `boundary_ratio` is None"):
        WanPipeline.from_pretrained(folders["a14b"], boundary_ratio=None)
    pipe = WanPipeline.from_pretrained(folders["a14b"])
    assert pipe.config.boundary_ratio == 0.875 and pipe.transformer_2 is not None


def test_save_pretrained_round_trips_with_diffusers(folders, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    ours = _load(WanPipeline, folders["a14b"])
    ours.save_pretrained(tmp_path / "saved")
    theirs = diffusers.WanPipeline.from_pretrained(tmp_path / "saved")
    theirs.set_progress_bar_config(disable=True)
    assert theirs.config.boundary_ratio == 0.875
    call = {**CALL, "num_inference_steps": 4, "output_type": "np"}
    expected = theirs(generator=torch.Generator().manual_seed(1), **call).frames
    actual = ours(generator=torch.Generator().manual_seed(1), **call).frames
    assert max_abs_diff(expected, actual) < 1e-4
    again = _load(WanPipeline, tmp_path / "saved")
    assert again.config == ours.config


def test_a_numpy_generator_draws_only_the_initial_latents(folders):
    pipe = _load(WanPipeline, folders["t2v"])
    call = {**CALL, "output_type": "np"}
    first = pipe(generator=np.random.Generator(np.random.PCG64(5)), **call).frames
    latents = randn((1, 4, 2, 4, 4), np.random.Generator(np.random.PCG64(5)), device=torch.device("cpu"), dtype=torch.float32)
    given = pipe(latents=latents, **call).frames
    other = pipe(generator=np.random.Generator(np.random.PCG64(6)), **call).frames
    assert np.array_equal(first, given)
    assert max_abs_diff(first, other) > 1e-3


def test_one_context_window_over_all_latent_frames_is_the_plain_call(folders):
    pipe = _load(WanImageToVideoPipeline, folders["ti2v"])
    call = {**CALL, "image": _image(), "width": 64, "num_frames": 9, "output_type": "np"}
    plain = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    pipe.enable_context_windows(context_length=3, context_overlap=1)  # 9 frames = 3 latent frames
    windowed = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    assert np.array_equal(plain, windowed)
    pipe.enable_context_windows(context_length=2, context_overlap=1)
    shorter = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    assert np.isfinite(shorter).all() and max_abs_diff(plain, shorter) > 1e-4
    pipe.enable_context_windows(context_length=4, context_overlap=1)
    with pytest.raises(ValueError, match="context_length"):
        pipe(**call)


def test_forward_chunking_reaches_both_experts_and_keeps_the_frames(folders):
    pipe = _load(WanPipeline, folders["a14b"])
    call = {**CALL, "num_inference_steps": 4, "output_type": "np"}
    plain = pipe(generator=torch.Generator().manual_seed(2), **call).frames
    pipe.enable_forward_chunking(chunk_size=1, dim=1)
    chunked = pipe(generator=torch.Generator().manual_seed(2), **call).frames
    assert max_abs_diff(plain, chunked) < 1e-5
    assert any(getattr(m, "chunking", None) is not None for m in pipe.transformer_2.modules())


def test_model_offload_hooks_every_network_in_order(folders):
    pipe = _load(WanPipeline, folders["a14b"])
    pipe._enable_offload("model", torch.device("cpu"))
    assert list(pipe._offloader.components) == ["text_encoder", "transformer", "transformer_2", "vae"]
    frames = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **CALL).frames
    pipe.disable_offload()
    assert np.array_equal(frames, pipe(generator=torch.Generator().manual_seed(0), output_type="np", **CALL).frames)


def test_vae_tiling_through_the_pipeline_matches_diffusers_tiling(folders):
    diffusers = pytest.importorskip("diffusers")
    tiles = dict(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16, tile_sample_stride_width=16)
    call = {**CALL, "height": 64, "width": 64, "output_type": "np"}
    ours = _load(WanPipeline, folders["t2v"])
    plain = ours(generator=torch.Generator().manual_seed(0), **call).frames
    ours.enable_vae_tiling(**tiles)
    tiled = ours(generator=torch.Generator().manual_seed(0), **call).frames
    theirs = diffusers.WanPipeline.from_pretrained(folders["t2v"])
    theirs.set_progress_bar_config(disable=True)
    theirs.vae.enable_tiling(**tiles)
    expected = theirs(generator=torch.Generator().manual_seed(0), **call).frames
    assert max_abs_diff(expected, tiled) < 1e-4
    assert max_abs_diff(plain, tiled) > 1e-3  # tiling really happened


def test_several_videos_per_prompt_from_an_image_equal_separate_calls(folders):
    # diffusers 0.42.1 crashes here (its CLIP states keep one row per prompt); each video must be the
    # call made with its own generator alone.
    pipe = _load(WanImageToVideoPipeline, folders["i2v"])
    call = {**CALL, "image": _image(), "width": 48, "output_type": "np"}
    both = pipe(num_videos_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (1, 2)], **call).frames
    for index, seed in enumerate((1, 2)):
        alone = pipe(generator=torch.Generator().manual_seed(seed), **call).frames
        assert max_abs_diff(both[index], alone[0]) < 1e-5
    assert max_abs_diff(both[0], both[1]) > 1e-3


def test_a_scheduler_that_does_not_sample_flow_matching_is_refused(folders):
    from vidiff import DDIMScheduler, UniPCMultistepScheduler

    pipe = _load(WanPipeline, folders["t2v"])
    for scheduler in (DDIMScheduler(), UniPCMultistepScheduler()):  # UniPC's default: the VP (ε) form
        pipe.scheduler = scheduler
        with pytest.raises(ValueError, match=r"`scheduler`: Wan's transformer predicts flow-matching velocities"):
            _refuse_networks(pipe)(**CALL)
