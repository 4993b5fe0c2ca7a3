"""I2VGenXLPipeline: the guide's snippets, conditioning really steers, randomness, options, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch

from tests import bad_inputs
from tests.helpers import max_abs_diff
from tests.i2vgen_xl_checkpoint import SMALL_CALL, save_tiny_i2vgen_xl
from tests.svd_checkpoint import random_image
from vidiff import I2VGenXLPipeline, export_to_gif, load_image

PROMPT = "Papers were floating in the air on a table in the library"
NEGATIVE = "Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static"
IMAGE = random_image(80, 56)
BASE = {**SMALL_CALL, "prompt": PROMPT, "image": IMAGE}


@pytest.fixture(scope="module")
def pipe(vidiff_i2vgen_xl):
    return vidiff_i2vgen_xl


def _frames(pipe, seed=0, **overrides):
    return pipe(**{**BASE, **overrides}, generator=torch.Generator().manual_seed(seed)).frames


# ---------------------------------------------------------------------------------------- the guide
@pytest.fixture(scope="module")
def guide_folder(tmp_path_factory):
    """A tiny checkpoint saved by diffusers with the fp16 variant file names, as the Hub repo has."""
    folder = tmp_path_factory.mktemp("tiny-i2vgen-xl-fp16")
    save_tiny_i2vgen_xl(folder, seed=1, variant="fp16")
    return folder


@pytest.mark.parametrize("guidance_scale", [9.0, 1.0])
def test_guide_snippets_write_gifs(guide_folder, tmp_path, monkeypatch, guidance_scale):
    """The guide's two I2VGen-XL snippets as written (fp16, numpy PCG64(8888), 50 steps, 25 frames),
    apart from the local checkpoint folder and image file."""
    monkeypatch.chdir(tmp_path)
    random_image(160, 112, seed=9).save("img_0009.png")  # halved below to 80 × 56, multiples of 8
    pipe = I2VGenXLPipeline.from_pretrained(str(guide_folder), dtype=torch.float16, variant="fp16")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float16 and pipe.vae.dtype == torch.float16
    image = load_image("img_0009.png").convert("RGB")
    image = image.resize((image.width // 2, image.height // 2))
    frames = pipe(prompt=PROMPT, image=image, height=image.height, width=image.width, num_inference_steps=50,
                  negative_prompt=NEGATIVE, guidance_scale=guidance_scale,
                  generator=np.random.Generator(np.random.PCG64(8888)), num_frames=25)[0][0]
    export_to_gif(frames, "i2v.gif")
    with PIL.Image.open(tmp_path / "i2v.gif") as gif:
        assert gif.n_frames == 25 and gif.size == (80, 56)
    pixels = np.stack([np.asarray(f, dtype=np.float32) for f in frames])
    assert np.isfinite(pixels).all() and pixels.std() > 1.0  # neither blank nor NaN-black


# ------------------------------------------------------------------------ conditioning really steers
def test_prompt_and_image_visibly_change_the_frames(pipe):
    """Controls for the parity tests: the tiny model is wide enough that a broken text or image path
    would show far above the 1e-4 tolerance."""
    reference = _frames(pipe)
    assert max_abs_diff(reference, _frames(pipe, prompt="a dog in the fog")) > 5e-2
    assert max_abs_diff(reference, _frames(pipe, image=PIL.ImageOps.invert(IMAGE))) > 5e-2
    assert max_abs_diff(reference, _frames(pipe, target_fps=4)) > 1e-2
    assert max_abs_diff(reference, _frames(pipe, seed=1)) > 5e-2


def test_image_latent_is_the_first_draw_of_the_generator(pipe):
    """Documented order: image latent [N, 4, h, w] first, then the initial latents [B, 4, F, h, w]."""
    generator = torch.Generator().manual_seed(3)
    torch.randn((1, 4, 4, 6), generator=generator)
    latents = torch.randn((1, 4, 4, 4, 6), generator=generator)
    seeded = _frames(pipe, seed=3)
    torch.manual_seed(12345)  # the global RNG must play no part
    given = pipe(**BASE, latents=latents, generator=torch.Generator().manual_seed(3)).frames
    assert max_abs_diff(seeded, given) == 0


def test_numpy_generator_is_the_documented_draw(pipe):
    """numpy: float32 standard normals, image latent first, then the initial latents."""
    seeded = pipe(**BASE, generator=np.random.Generator(np.random.PCG64(8888))).frames
    rng = np.random.Generator(np.random.PCG64(8888))
    rng.standard_normal((1, 4, 4, 6), dtype=np.float32)
    latents = torch.from_numpy(rng.standard_normal((1, 4, 4, 4, 6), dtype=np.float32))
    given = pipe(**BASE, latents=latents, generator=np.random.Generator(np.random.PCG64(8888))).frames
    assert max_abs_diff(seeded, given) == 0


def test_generator_list_gives_each_video_its_own_stream(pipe):
    both = pipe(**BASE, num_videos_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (4, 5)]).frames
    assert max_abs_diff(both[0], both[1]) > 5e-2
    repeat = pipe(**BASE, num_videos_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (4, 5)]).frames
    assert max_abs_diff(both, repeat) == 0


# ------------------------------------------------------------------------------ pairing and options
def test_one_image_serves_every_prompt(pipe):
    """An extension over diffusers (which fails on it): one image, two prompts → two videos, each the
    video that prompt makes alone with the same draws."""
    generator = torch.Generator().manual_seed(8)
    pair = pipe(**{**BASE, "prompt": [PROMPT, "a dog in the fog"]}, generator=generator).frames
    generator = torch.Generator().manual_seed(8)
    torch.randn((1, 4, 4, 6), generator=generator)
    latents = torch.randn((2, 4, 4, 4, 6), generator=generator)
    second = pipe(**{**BASE, "prompt": "a dog in the fog"}, latents=latents[1:],
                  generator=torch.Generator().manual_seed(8)).frames
    assert pair.shape[0] == 2 and max_abs_diff(pair[1:], second) <= 1e-4


def test_one_prompt_serves_every_image(pipe):
    other = random_image(80, 56, seed=4)
    frames = pipe(**{**BASE, "image": [IMAGE, other]}, generator=torch.Generator().manual_seed(2)).frames
    assert frames.shape[0] == 2 and max_abs_diff(frames[0], frames[1]) > 1e-2


def test_images_of_different_sizes_are_each_cropped_on_their_own(pipe):
    """diffusers crops a list with the first image's geometry; vidiff crops each image for itself, so
    a video depends only on its own image. With one generator per video, the pair's second video is
    the video its image makes alone."""
    tall = random_image(48, 96, seed=5)
    pair = pipe(**{**BASE, "prompt": [PROMPT, PROMPT], "image": [IMAGE, tall]},
                generator=[torch.Generator().manual_seed(s) for s in (6, 7)]).frames
    alone = pipe(**{**BASE, "image": tall}, generator=torch.Generator().manual_seed(7)).frames
    assert max_abs_diff(pair[1:], alone) <= 1e-4  # batch size alone moves float sums slightly
    assert max_abs_diff(pair[0], pair[1]) > 1e-2


def test_decode_chunk_size_does_not_change_frames(pipe):
    call = dict(num_frames=5)
    reference = _frames(pipe, **call)
    for chunk in (2, 5, None):
        assert max_abs_diff(reference, _frames(pipe, **call, decode_chunk_size=chunk)) <= 1e-5


@pytest.mark.parametrize("output_type,shape", [("np", (1, 4, 32, 48, 3)), ("pt", (1, 4, 3, 32, 48)), ("latent", (1, 4, 4, 4, 6))])
def test_output_types(pipe, output_type, shape):
    frames = pipe(**{**BASE, "num_inference_steps": 1, "output_type": output_type}).frames
    assert tuple(frames.shape) == shape


def test_pil_output_and_tuple(pipe):
    (frames,) = pipe(**{**BASE, "num_inference_steps": 1, "output_type": "pil", "num_videos_per_prompt": 2}, return_dict=False)
    assert len(frames) == 2 and len(frames[0]) == 4 and frames[0][0].size == (48, 32)


def test_callback_sees_and_replaces_latents(pipe):
    seen = []

    def callback(p, step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors["latents"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 2 else {}

    frames = pipe(**{**BASE, "output_type": "latent"}, callback_on_step_end=callback).frames
    assert [s[0] for s in seen] == [0, 1, 2] and all(s[2] == (1, 4, 4, 4, 6) for s in seen)
    assert seen[0][1] > seen[1][1] > seen[2][1]
    assert torch.count_nonzero(frames) == 0  # the last step's replacement is what comes out


def test_long_prompt_warns_with_the_dropped_text(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        pipe(**{**BASE, "prompt": "a rocket " * 40 + "ZEBRA TAIL", "num_inference_steps": 1})
    assert "truncated" in caplog.text and "zebra tail" in caplog.text.lower()


def test_save_pretrained_round_trip_and_diffusers_reads_it(pipe, tmp_path):
    import diffusers

    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "I2VGenXLUNet"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    again = I2VGenXLPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    ours = _frames(pipe, seed=1)
    assert max_abs_diff(ours, _frames(again, seed=1)) == 0
    theirs = diffusers.I2VGenXLPipeline.from_pretrained(tmp_path / "saved")
    theirs.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(1)
    torch.randn((1, 4, 4, 6), generator=generator)
    torch.manual_seed(1)
    assert max_abs_diff(ours, theirs(**BASE, generator=generator).frames) <= 1e-4


def test_loads_checkpoint_whose_processor_is_named_pil(tiny_i2vgen_xl, tmp_path):
    """transformers without torchvision saves CLIPImageProcessorPil; both names load."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_i2vgen_xl[0], folder)
    index_path = folder / "model_index.json"
    for name in ("CLIPImageProcessorPil", "CLIPImageProcessor"):
        index = json.loads(index_path.read_text())
        index["feature_extractor"] = ["transformers", name]
        index_path.write_text(json.dumps(index))
        loaded = I2VGenXLPipeline.from_pretrained(folder)
        assert loaded.feature_extractor.config.crop_size == {"height": 224, "width": 224}


# -------------------------------------------------------------------------------------- bad input
BAD_INPUTS = bad_inputs.COMMON + bad_inputs.TEXT + bad_inputs.I2VGEN_XL + [
    (dict(image=None), ValueError, "image"),
    (dict(image="img.png"), TypeError, "image"),
    (dict(image=[]), ValueError, "image"),
    (dict(image=np.zeros((8, 8), dtype=np.uint8)), ValueError, "image"),
    (dict(target_fps=0), ValueError, "target_fps"),
    (dict(target_fps="16"), ValueError, "target_fps"),
    (dict(prompt=["a", "b", "c"], image=[IMAGE, IMAGE]), ValueError, "image"),
]


@pytest.mark.parametrize("kwargs,error,word", BAD_INPUTS)
def test_bad_arguments_are_named(pipe, kwargs, error, word):
    with pytest.raises(error, match=word):
        pipe(**{**BASE, **kwargs})
