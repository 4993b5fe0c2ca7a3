"""I2VGenXLPipeline against diffusers' on tiny random checkpoints: the same frames.

Randomness: vidiff draws the image's VAE latent from ``generator`` (first draw), then the initial
latents and any step noise. diffusers draws that latent from torch's global RNG and the rest from
``generator``. So diffusers gets ``torch.manual_seed(s)`` plus a generator seeded ``s`` that has
already made vidiff's first draw, and vidiff a fresh generator seeded ``s``: every number drawn is
then the same on both sides, and each pipeline still draws its own latents and noise. Frames are
compared as ``np`` output in [0, 1], within 1e-4 absolute.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import max_abs_diff
from tests.i2vgen_xl_checkpoint import SMALL_CALL, save_tiny_i2vgen_xl
from tests.svd_checkpoint import random_image

PROMPT = "Papers were floating in the air on a table in the library"
NEGATIVE = "Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static"
# Well over 77 tokens with the tiny byte-level vocabulary: truncation must match.
LONG_PROMPT = "A space rocket launching into space from the desert, 4k, high resolution, " * 4
TOLERANCE = 1e-4
# 80 × 56: another aspect ratio than any output size below, so the cover-and-crop steps matter.
IMAGE = random_image(80, 56)
# diffusers crops a list of images with the first one's geometry, so pairs compared with it share a size.
OTHER_IMAGE = random_image(80, 56, seed=3)


def oracle_generator(seed: int, images: int, height: int, width: int) -> torch.Generator:
    """A CPU generator seeded ``seed`` past vidiff's first draw (the image latent [N, 4, H/8, W/8])."""
    generator = torch.Generator().manual_seed(seed)
    torch.randn((images, 4, height // 8, width // 8), generator=generator)
    return generator


def run_both(oracle, pipe, seed: int = 7, image=IMAGE, **overrides):
    call = {**SMALL_CALL, "prompt": PROMPT, **overrides}
    images = len(image) if isinstance(image, list) else 1
    ours = pipe(image=image, **call, generator=torch.Generator().manual_seed(seed)).frames
    generator = oracle_generator(seed, images, call["height"], call["width"])
    torch.manual_seed(seed)
    theirs = oracle(image=image, **call, generator=generator).frames
    return ours, theirs


CASES = {
    "negative_prompt": dict(negative_prompt=NEGATIVE),
    "no_negative_prompt": dict(),
    "cfg_off": dict(negative_prompt=NEGATIVE, guidance_scale=1.0),
    "guidance_3": dict(guidance_scale=3.0),
    "long_prompt": dict(prompt=LONG_PROMPT, negative_prompt=NEGATIVE),
    "portrait": dict(height=48, width=32),
    "square": dict(height=40, width=40),
    "decode_chunk_3": dict(num_frames=5, decode_chunk_size=3),
    "decode_all_at_once": dict(num_frames=5, decode_chunk_size=None),
    "videos_per_prompt_2": dict(negative_prompt=NEGATIVE, num_videos_per_prompt=2),
    "target_fps_8": dict(target_fps=8),
    "eta": dict(eta=0.7),
    "clip_skip_none": dict(clip_skip=None),
    "clip_skip_2": dict(clip_skip=2, negative_prompt=NEGATIVE),
    "steps_6": dict(num_inference_steps=6),
    "two_frames": dict(num_frames=2),
    "one_frame": dict(num_frames=1),
}


@pytest.mark.parametrize("case", CASES)
def test_frames_match_diffusers(tiny_i2vgen_xl, vidiff_i2vgen_xl, case):
    ours, theirs = run_both(tiny_i2vgen_xl[1], vidiff_i2vgen_xl, **CASES[case])
    assert ours.shape == theirs.shape
    assert max_abs_diff(ours, theirs) <= TOLERANCE


def test_prompt_list_with_one_image_each(tiny_i2vgen_xl, vidiff_i2vgen_xl):
    ours, theirs = run_both(
        tiny_i2vgen_xl[1], vidiff_i2vgen_xl, image=[IMAGE, OTHER_IMAGE],
        prompt=[PROMPT, "a dog in the fog"], negative_prompt=[NEGATIVE, "blurry"],
    )
    assert ours.shape[0] == 2 and max_abs_diff(ours, theirs) <= TOLERANCE


def test_tensor_image_matches_diffusers(tiny_i2vgen_xl, vidiff_i2vgen_xl):
    """A [1, 3, H, W] tensor in [0, 1] goes through the same 8-bit crop path in both libraries."""
    import numpy as np

    tensor = torch.from_numpy(np.asarray(IMAGE, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    ours, theirs = run_both(tiny_i2vgen_xl[1], vidiff_i2vgen_xl, image=tensor)
    assert max_abs_diff(ours, theirs) <= TOLERANCE


def test_given_latents_and_torch_seed_match_diffusers_global_seed(tiny_i2vgen_xl, vidiff_i2vgen_xl):
    """The issue's rule: with ``latents`` given, a CPU generator seeded s gives diffusers' video after
    ``torch.manual_seed(s)``; with η > 0 the DDIM noise follows from the same stream too."""
    oracle, pipe = tiny_i2vgen_xl[1], vidiff_i2vgen_xl
    call = {**SMALL_CALL, "prompt": PROMPT, "negative_prompt": NEGATIVE, "eta": 0.5}
    latents = torch.randn(1, 4, 4, 4, 6, generator=torch.Generator().manual_seed(99))
    ours = pipe(image=IMAGE, latents=latents, generator=torch.Generator().manual_seed(5), **call).frames
    torch.manual_seed(5)
    theirs = oracle(image=IMAGE, latents=latents, **call).frames
    assert max_abs_diff(ours, theirs) <= TOLERANCE


def test_prompt_embeds_match_diffusers(tiny_i2vgen_xl, vidiff_i2vgen_xl):
    from vidiff.pipelines.prompts import encode_prompts

    pipe = vidiff_i2vgen_xl
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [PROMPT], clip_skip=1)
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [NEGATIVE], clip_skip=1)
    ours, theirs = run_both(tiny_i2vgen_xl[1], pipe, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    assert max_abs_diff(ours, theirs) <= TOLERANCE
    by_text = run_both(tiny_i2vgen_xl[1], pipe, negative_prompt=NEGATIVE)[0]
    assert max_abs_diff(ours, by_text) <= 1e-6


@pytest.mark.parametrize(
    "name, options, call",
    [
        ("EulerDiscreteScheduler", {}, {}),
        ("DPMSolverMultistepScheduler", {}, dict(num_inference_steps=5)),
    ],
)
def test_other_schedulers_match_diffusers(tiny_i2vgen_xl, vidiff_i2vgen_xl, name, options, call):
    """Swapping the sampler as users do (``from_config`` of the DDIM config) in both libraries."""
    import diffusers

    import vidiff

    oracle, pipe = tiny_i2vgen_xl[1], vidiff_i2vgen_xl
    parts = {n: getattr(pipe, n) for n in pipe.components if n != "scheduler"}
    ours = vidiff.I2VGenXLPipeline(**parts, scheduler=getattr(vidiff, name).from_config(pipe.scheduler.config, **options))
    ours.set_progress_bar_config(disable=True)
    oracle_parts = {n: getattr(oracle, n) for n in oracle.components if n != "scheduler"}
    theirs = diffusers.I2VGenXLPipeline(
        **oracle_parts, scheduler=getattr(diffusers, name).from_config(oracle.scheduler.config, **options)
    )
    theirs.set_progress_bar_config(disable=True)
    a, b = run_both(theirs, ours, negative_prompt=NEGATIVE, **call)
    assert max_abs_diff(a, b) <= TOLERANCE


# A held-out architecture: three stages, two of them with attention, head width 4 and two layers per block, a
# 4-layer gelu text encoder, and the release's VAE scaling factor.
HELD_OUT = dict(
    unet=dict(
        block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        layers_per_block=2,
        attention_head_dim=4,  # diffusers takes one value only (its transformer_in needs an int)
    ),
    vae=dict(scaling_factor=0.18125),
    text=dict(num_hidden_layers=4, hidden_act="gelu"),
)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    from vidiff import I2VGenXLPipeline

    folder = tmp_path_factory.mktemp("held-out-i2vgen-xl")
    oracle = save_tiny_i2vgen_xl(folder, seed=3, **HELD_OUT)
    pipe = I2VGenXLPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return oracle, pipe


@pytest.mark.parametrize(
    "overrides",
    [dict(negative_prompt=NEGATIVE), dict(num_frames=6, height=40, width=56, target_fps=10, clip_skip=2)],
)
def test_held_out_configuration_matches_diffusers(held_out, overrides):
    oracle, pipe = held_out
    assert pipe.vae.config.scaling_factor == 0.18125
    ours, theirs = run_both(oracle, pipe, **overrides)
    assert max_abs_diff(ours, theirs) <= TOLERANCE
