"""AnimateDiffPipeline: the guide's snippets, loading routes, memory options, randomness, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch

from tests import bad_inputs
from tests.animatediff_checkpoint import SMALL_CALL as BASE
from tests.helpers import max_abs_diff
from vidiff import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNetMotionModel, export_to_gif

PROMPT = "a rocket flying into space"


@pytest.fixture(scope="module")
def pipe(vidiff_animatediff):
    return vidiff_animatediff


def _guide_pipeline(root):
    """The guide's loading lines, verbatim apart from the local folders."""
    adapter = MotionAdapter.from_pretrained(str(root / "motion_adapter"), dtype=torch.float16)
    pipe = AnimateDiffPipeline.from_pretrained(str(root / "sd15"), motion_adapter=adapter, dtype=torch.float16)
    pipe.scheduler = DDIMScheduler.from_pretrained(str(root / "sd15"), subfolder="scheduler",
        clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_guide_snippet_writes_gif(tiny_animatediff, tmp_path, monkeypatch):
    """The issue's snippet as written (fp16, 16 frames, 50 steps, numpy seed 49) on the tiny checkpoint."""
    monkeypatch.chdir(tmp_path)
    pipe = _guide_pipeline(tiny_animatediff[0])
    assert pipe.unet.dtype == torch.float16 and isinstance(pipe.unet, UNetMotionModel)
    output = pipe(prompt="A space rocket launching into space from the desert, 4k, high resolution",
                  negative_prompt="bad quality, worse quality, low resolution", num_frames=16,
                  guidance_scale=7.5, num_inference_steps=50,
                  generator=np.random.Generator(np.random.PCG64(49)))
    export_to_gif(output[0][0], "animation.gif")
    with PIL.Image.open(tmp_path / "animation.gif") as gif:
        # Default size: the UNet's sample_size (8) × 8 pixels.
        assert gif.n_frames == 16 and gif.size == (64, 64)
    frames = np.stack([np.asarray(f, dtype=np.float32) for f in output[0][0]])
    assert np.isfinite(frames).all() and frames.std() > 1.0  # not a blank or NaN-black video


def test_guide_negative_prompt_example_writes_gif(tiny_animatediff, tmp_path):
    """The guide's negative-prompt example (VAE slicing on, torch CPU seed) on the tiny checkpoint."""
    pipe = _guide_pipeline(tiny_animatediff[0])
    pipe.vae.enable_slicing()
    output = pipe(prompt="360 camera shot of a sushi roll in a restaurant",
                  negative_prompt="Distorted, discontinuous, ugly, blurry, low resolution, motionless, static",
                  num_frames=16, guidance_scale=7.5, num_inference_steps=50,
                  generator=torch.Generator("cpu").manual_seed(0))
    path = export_to_gif(output.frames[0], str(tmp_path / "animation.gif"))
    with PIL.Image.open(path) as gif:
        assert gif.n_frames == 16


def test_sd15_layout_never_reads_unused_components(tiny_animatediff):
    """model_index.json lists a safety checker and a feature extractor whose folders do not exist."""
    root = tiny_animatediff[0]
    index = json.loads((root / "sd15" / "model_index.json").read_text())
    assert index["safety_checker"][1] and not (root / "sd15" / "safety_checker").exists()
    adapter = MotionAdapter.from_pretrained(root / "motion_adapter")
    pipe = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=adapter)
    assert not hasattr(pipe, "safety_checker") and not hasattr(pipe, "feature_extractor")


def test_sd15_repository_scheduler_loads_as_pndm(tiny_animatediff, caplog):
    """An SD 1.5 repository's PNDMScheduler is loaded as such (no substitution, no warning)."""
    from vidiff import PNDMScheduler

    root = tiny_animatediff[0]
    adapter = MotionAdapter.from_pretrained(root / "motion_adapter")
    with caplog.at_level(logging.WARNING):
        pipe = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=adapter)
    assert isinstance(pipe.scheduler, PNDMScheduler)
    assert "PNDMScheduler" not in caplog.text
    assert pipe.scheduler.config.steps_offset == 1 and pipe.scheduler.config.skip_prk_steps  # the repository's schedule


def test_sd15_unet_without_motion_adapter_is_a_clear_error(tiny_animatediff):
    with pytest.raises(ValueError, match="motion_adapter"):
        AnimateDiffPipeline.from_pretrained(tiny_animatediff[0] / "sd15")


def test_save_pretrained_round_trip_and_diffusers_reads_it(pipe, tmp_path):
    import diffusers

    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNetMotionModel"] and index["tokenizer"][0] == "transformers"
    again = AnimateDiffPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    call = dict(BASE, prompt=PROMPT, num_inference_steps=2)
    ours = pipe(**call, generator=torch.Generator().manual_seed(1)).frames
    assert max_abs_diff(ours, again(**call, generator=torch.Generator().manual_seed(1)).frames) == 0
    theirs = diffusers.AnimateDiffPipeline.from_pretrained(tmp_path / "saved")
    theirs.set_progress_bar_config(disable=True)
    assert max_abs_diff(ours, theirs(**call, generator=torch.Generator().manual_seed(1)).frames) <= 1e-4


def test_numpy_generator_is_the_documented_draw(pipe):
    """A numpy generator draws the initial latents as float32 standard normals [B, C, F, h, w]."""
    call = dict(BASE, prompt=PROMPT, num_inference_steps=2)
    seeded = pipe(**call, generator=np.random.Generator(np.random.PCG64(49))).frames
    latents = np.random.Generator(np.random.PCG64(49)).standard_normal((1, 4, 4, 4, 6), dtype=np.float32)
    given = pipe(**call, latents=torch.from_numpy(latents)).frames
    assert max_abs_diff(seeded, given) == 0


def test_decode_options_do_not_change_frames(tiny_animatediff, pipe):
    """decode_chunk_size and VAE slicing only change memory use for the image VAE."""
    call = dict(BASE, prompt=PROMPT, num_inference_steps=2, num_frames=5)
    reference = pipe(**call, generator=torch.Generator().manual_seed(2)).frames
    chunked = pipe(**call, decode_chunk_size=2, generator=torch.Generator().manual_seed(2)).frames
    pipe.vae.enable_slicing()
    try:
        sliced = pipe(**call, generator=torch.Generator().manual_seed(2)).frames
    finally:
        pipe.vae.disable_slicing()
    assert max_abs_diff(reference, chunked) <= 1e-5 and max_abs_diff(reference, sliced) <= 1e-5


def test_vae_tiling_matches_diffusers(tiny_animatediff, pipe):
    """Tiled decoding (tiles of 32 pixels, smaller than the 48×64 frames) as diffusers tiles."""
    oracle = tiny_animatediff[1]
    call = dict(BASE, prompt=PROMPT, num_inference_steps=2, height=48, width=64)
    plain = pipe(**call, generator=torch.Generator().manual_seed(4)).frames
    pipe.vae.enable_tiling(tile_sample_min_size=32)
    oracle.vae.enable_tiling()
    oracle.vae.tile_sample_min_size, oracle.vae.tile_latent_min_size = 32, 4
    try:
        ours = pipe(**call, generator=torch.Generator().manual_seed(4)).frames
        theirs = oracle(**call, generator=torch.Generator().manual_seed(4)).frames
    finally:
        pipe.vae.disable_tiling()
        oracle.vae.disable_tiling()
        oracle.vae.tile_sample_min_size, oracle.vae.tile_latent_min_size = 64, 8
    assert max_abs_diff(ours, theirs) <= 1e-4
    assert max_abs_diff(ours, plain) > 1e-3  # tiling was really on


@pytest.mark.parametrize("output_type,shape", [("np", (1, 4, 32, 48, 3)), ("pt", (1, 4, 3, 32, 48)), ("latent", (1, 4, 4, 4, 6))])
def test_output_types(pipe, output_type, shape):
    frames = pipe(**dict(BASE, prompt=PROMPT, num_inference_steps=1, output_type=output_type)).frames
    assert tuple(frames.shape) == shape


def test_pil_output_and_tuple(pipe):
    (frames,) = pipe(**dict(BASE, prompt=[PROMPT, "a dog"], num_inference_steps=1, output_type="pil"), return_dict=False)
    assert len(frames) == 2 and len(frames[0]) == 4 and frames[0][0].size == (48, 32)


def test_prompt_embeds_instead_of_prompt(pipe):
    from vidiff.pipelines.prompts import encode_prompts

    call = dict(BASE, num_inference_steps=2)
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [PROMPT])
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["blurry"])
    by_text = pipe(prompt=PROMPT, negative_prompt="blurry", generator=torch.Generator().manual_seed(6), **call).frames
    by_embeds = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, generator=torch.Generator().manual_seed(6), **call).frames
    assert max_abs_diff(by_text, by_embeds) == 0


def test_long_prompt_warns_with_the_dropped_text(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        pipe(**dict(BASE, prompt="a rocket " * 40 + "ZEBRA TAIL", num_inference_steps=1))
    assert "truncated" in caplog.text and "zebra tail" in caplog.text.lower()


def test_eta_with_another_scheduler_is_refused_by_name(pipe):
    """η > 0 asks for something Euler cannot do: a ValueError naming the option, not a silent ignore."""
    from vidiff import EulerDiscreteScheduler

    euler = AnimateDiffPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                                scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config))
    euler.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="EulerDiscreteScheduler cannot honour `eta`"):
        euler(**dict(BASE, prompt=PROMPT, num_inference_steps=1, eta=0.5))
    euler(**dict(BASE, prompt=PROMPT, num_inference_steps=1, eta=0.0))  # the default η suits every scheduler


BAD_INPUTS = bad_inputs.COMMON + bad_inputs.TEXT + [
    (dict(num_frames=33), ValueError, "frames"),  # more than the motion modules' 32 positions
    (dict(prompt_embeds=torch.zeros(1, 77, 32)), ValueError, "prompt"),
]


@pytest.mark.parametrize("kwargs,error,word", BAD_INPUTS)
def test_bad_arguments_are_named(pipe, kwargs, error, word):
    with pytest.raises(error, match=word):
        pipe(**{**BASE, "prompt": PROMPT, **kwargs})
