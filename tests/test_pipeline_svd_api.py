"""StableVideoDiffusionPipeline: loading routes, devices/dtypes, bad input, and the README example."""

from __future__ import annotations

import json

import av
import numpy as np
import PIL.Image
import pytest
import torch

from tests import bad_inputs
from tests.helpers import max_abs_diff
from tests.svd_checkpoint import SMALL_CALL as BASE
from tests.svd_checkpoint import random_image
from vidiff import StableVideoDiffusionPipeline, export_to_gif, export_to_video, load_image



@pytest.fixture(scope="module")
def pipe(vidiff_svd):
    return vidiff_svd


def test_readme_example_writes_mp4_and_gif(pipe, tmp_path):
    """The README's snippet as written (fp16 weights, fp16 variant), pointed at a tiny local checkpoint."""
    pipe.save_pretrained(tmp_path / "svd-xt", variant="fp16")
    random_image(width=64, height=48).save(tmp_path / "rocket.png")

    example = StableVideoDiffusionPipeline.from_pretrained(tmp_path / "svd-xt", dtype=torch.float16, variant="fp16")
    example.set_progress_bar_config(disable=True)
    image = load_image(str(tmp_path / "rocket.png")).resize((64, 48))
    frames = example(image, height=48, width=64, decode_chunk_size=8,
                     generator=np.random.Generator(np.random.PCG64(42)), num_frames=5, num_inference_steps=2)[0]
    assert example.unet.dtype == torch.float16
    assert len(frames) == 1 and len(frames[0]) == 5  # "pil": a batch holding one video of 5 frames
    path = export_to_video(frames, str(tmp_path / "generated.mp4"), fps=7)
    with av.open(path) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        assert (stream.codec_context.width, stream.codec_context.height) == (64, 48)
        assert stream.average_rate == 7
    assert len(decoded) == 5

    gif = export_to_gif(frames[0], str(tmp_path / "generated.gif"), fps=7)
    with PIL.Image.open(gif) as im:
        assert im.n_frames == 5 and im.size == (64, 48) and im.info["loop"] == 0
    with pytest.raises(ValueError, match="2"):
        export_to_video(frames + frames, str(tmp_path / "two.mp4"), fps=7)  # a batch of 2 videos
    assert not (tmp_path / "two.mp4").exists()


def test_replacing_a_component(tiny_svd, pipe):
    folder, _ = tiny_svd
    swapped = StableVideoDiffusionPipeline.from_pretrained(folder, unet=pipe.unet)
    assert swapped.unet is pipe.unet
    with pytest.raises(TypeError, match="text_encoder"):
        StableVideoDiffusionPipeline.from_pretrained(folder, text_encoder=None)


def test_save_pretrained_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "copy")
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNetSpatioTemporalConditionModel"]
    again = StableVideoDiffusionPipeline.from_pretrained(tmp_path / "copy")
    again.set_progress_bar_config(disable=True)
    image = random_image()
    a = pipe(image, generator=torch.Generator().manual_seed(0), **BASE).frames
    b = again(image, generator=torch.Generator().manual_seed(0), **BASE).frames
    assert max_abs_diff(a, b) == 0


def test_fp16_variant_and_diffusers_can_read_our_save(pipe, tmp_path):
    from diffusers import StableVideoDiffusionPipeline as DiffusersSVD

    pipe.save_pretrained(tmp_path / "v", variant="fp16")
    assert (tmp_path / "v" / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    loaded = StableVideoDiffusionPipeline.from_pretrained(tmp_path / "v", variant="fp16")
    assert loaded.unet.dtype == torch.float32  # the variant names files; dtype= casts
    theirs = DiffusersSVD.from_pretrained(tmp_path / "v", variant="fp16")
    assert type(theirs.unet).__name__ == "UNetSpatioTemporalConditionModel"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_on_cpu(tiny_svd, dtype):
    folder, _ = tiny_svd
    half = StableVideoDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype)
    half.set_progress_bar_config(disable=True)
    assert {half.unet.dtype, half.vae.dtype, half.image_encoder.dtype} == {dtype}
    frames = half(random_image(), generator=torch.Generator().manual_seed(0), **BASE).frames
    assert frames.dtype == np.float32 and np.isfinite(frames).all()
    assert half.vae.dtype == dtype  # the fp16 encode upcast is undone


def test_to_moves_every_component(tiny_svd):
    folder, _ = tiny_svd
    moved = StableVideoDiffusionPipeline.from_pretrained(folder).to(torch.bfloat16)
    assert {m.dtype for m in (moved.unet, moved.vae, moved.image_encoder)} == {torch.bfloat16}
    moved.to("cpu", torch.float32)
    assert moved.device == torch.device("cpu") and moved.dtype == torch.float32
    moved.to(device="meta")
    assert {p.device.type for m in (moved.unet, moved.vae, moved.image_encoder) for p in m.parameters()} == {"meta"}
    with pytest.raises(TypeError):
        moved.to(3)


BAD_INPUTS = bad_inputs.COMMON + bad_inputs.SVD + [
    (dict(min_guidance_scale=-1.0), ValueError, "guidance"),
    (dict(min_guidance_scale=3.0, max_guidance_scale=2.0), ValueError, "min_guidance_scale"),
    (dict(generator=[torch.Generator()] * 3, num_videos_per_prompt=2), ValueError, "generator"),
    (dict(latents=torch.zeros(1, 3, 4, 4, 6)), ValueError, "latents"),
]


@pytest.mark.parametrize("kwargs,error,word", BAD_INPUTS)
def test_bad_arguments_are_named(pipe, kwargs, error, word):
    with pytest.raises(error, match=word):
        pipe(random_image(), **{**BASE, **kwargs})


@pytest.mark.parametrize("image", ["rocket.png", 3, [], np.zeros((4, 4)), torch.zeros(2, 4, 8, 8)])
def test_not_an_image(pipe, image):
    with pytest.raises((TypeError, ValueError), match="image"):
        pipe(image, **BASE)


def test_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        StableVideoDiffusionPipeline.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        StableVideoDiffusionPipeline.from_pretrained(tmp_path / "missing")


def test_image_forms_agree(pipe):
    """A PIL image, its uint8 array and its [0, 1] tensor condition the same way at the output size."""
    image = random_image(width=48, height=32)  # already the output size: no resize filter involved
    array = np.asarray(image)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    run = lambda x: pipe(x, generator=torch.Generator().manual_seed(0), **BASE).frames  # noqa: E731
    from_pil = run(image)
    # Same pixels in; only memory layouts differ (which moves float32 kernels by ~1e-5).
    assert max_abs_diff(run(array), from_pil) <= 1e-4
    assert max_abs_diff(run(tensor), from_pil) <= 1e-4
    assert run([image, image]).shape[0] == 2
