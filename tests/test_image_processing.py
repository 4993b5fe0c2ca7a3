"""CLIP preprocessing against transformers' CLIPImageProcessor and diffusers' SVD resize (the oracles).

Without torchvision, transformers' ``CLIPImageProcessor`` is its PIL backend, ``CLIPImageProcessorPil``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from tests.helpers import max_abs_diff
from vidiff.image_processing import CLIPImageProcessor, CLIPImageProcessorConfig
from vidiff.pipelines.svd_preprocessing import pixels_from_signed_range, resize_with_antialiasing, svd_clip_input

SVD_FEATURE_EXTRACTOR = Path(__file__).parent / "configs" / "svd_xt_feature_extractor.json"
# (height, width): square, landscape, portrait, smaller than 224, odd sizes, a large downscale.
SIZES = [(224, 224), (576, 1024), (1024, 576), (100, 150), (225, 223), (57, 300), (800, 800)]
# The flags with which SVD and I2VGen-XL call their feature extractor: normalize only.
NORMALIZE_ONLY = dict(do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False)


def _svd_raw() -> dict:
    raw = json.loads(SVD_FEATURE_EXTRACTOR.read_text())
    raw.pop("_source")
    return raw


def _random_uint8(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _oracle_pixels(processor: CLIPImageProcessorPil, images, **flags) -> torch.Tensor:
    return processor(images=images, return_tensors="pt", **flags).pixel_values


@pytest.mark.parametrize("size", SIZES)
def test_pil_images_match_transformers(size):
    oracle, ours = CLIPImageProcessorPil(**_svd_raw()), CLIPImageProcessor.from_config(_svd_raw())
    image = PIL.Image.fromarray(_random_uint8(*size, seed=size[0]))
    got = ours(image)
    assert got.shape == (1, 3, 224, 224) and got.dtype == torch.float32
    assert max_abs_diff(got, _oracle_pixels(oracle, image)) <= 1e-4


def test_non_rgb_modes_are_converted_like_transformers():
    oracle, ours = CLIPImageProcessorPil(), CLIPImageProcessor()
    images = [
        PIL.Image.fromarray(_random_uint8(240, 320, channels=4, seed=1), mode="RGBA"),
        PIL.Image.fromarray(_random_uint8(240, 320, channels=1, seed=2), mode="L"),
    ]
    assert max_abs_diff(ours(images), _oracle_pixels(oracle, images)) <= 1e-4


def test_other_options_match_transformers():
    # Exact-size resize smaller than a non-square crop (zero padding), bilinear, other statistics.
    raw = dict(
        size={"height": 61, "width": 90},
        crop_size={"height": 64, "width": 75},
        resample=2,
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.3, 0.4],
        rescale_factor=1 / 200,
    )
    oracle, ours = CLIPImageProcessorPil(**raw), CLIPImageProcessor.from_config(raw)
    image = PIL.Image.fromarray(_random_uint8(100, 130, seed=3))
    got = ours(image)
    assert got.shape == (1, 3, 64, 75)
    assert max_abs_diff(got, _oracle_pixels(oracle, image)) <= 1e-4


def test_old_int_sizes_match_transformers():
    raw = dict(size=96, crop_size=80)
    oracle, ours = CLIPImageProcessorPil(**raw), CLIPImageProcessor.from_config(raw)
    image = PIL.Image.fromarray(_random_uint8(130, 100, seed=4))
    assert ours.config.size == {"shortest_edge": 96} and ours.config.crop_size == {"height": 80, "width": 80}
    assert max_abs_diff(ours(image), _oracle_pixels(oracle, image)) <= 1e-4


def test_uint8_arrays_and_tensors_match_transformers():
    oracle, ours = CLIPImageProcessorPil(), CLIPImageProcessor()
    batch = np.stack([_random_uint8(300, 260, seed=s) for s in (5, 6)])  # [N, H, W, C]
    expected = _oracle_pixels(oracle, list(batch))
    assert max_abs_diff(ours(batch), expected) <= 1e-4
    assert max_abs_diff(ours(torch.from_numpy(batch).permute(0, 3, 1, 2)), expected) <= 1e-4


def test_normalize_only_path_matches_transformers():
    oracle, ours = CLIPImageProcessorPil(**_svd_raw()), CLIPImageProcessor.from_config(_svd_raw())
    unit = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    expected = _oracle_pixels(oracle, unit, **NORMALIZE_ONLY)
    assert max_abs_diff(ours.normalize(unit), expected) <= 1e-4
    assert max_abs_diff(ours(unit, **NORMALIZE_ONLY), expected) <= 1e-4


@pytest.mark.parametrize("size", SIZES)
def test_resize_with_antialiasing_matches_diffusers(size):
    images = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(size[1])) * 2 - 1
    got = resize_with_antialiasing(images, (224, 224))
    assert got.shape == (1, 3, 224, 224)
    assert max_abs_diff(got, _resize_with_antialiasing(images, (224, 224))) <= 1e-5


@pytest.mark.parametrize("size", [(576, 1024), (100, 150), (333, 240)])
def test_svd_clip_input_matches_diffusers(size):
    # diffusers' StableVideoDiffusionPipeline._encode_image for a PIL image, step by step.
    oracle, ours = CLIPImageProcessorPil(**_svd_raw()), CLIPImageProcessor.from_config(_svd_raw())
    unit = torch.from_numpy(_random_uint8(*size, seed=8)).permute(2, 0, 1)[None].float() / 255.0
    signed = unit * 2.0 - 1.0
    resized = (_resize_with_antialiasing(signed, (224, 224)) + 1.0) / 2.0
    expected = _oracle_pixels(oracle, resized, **NORMALIZE_ONLY)
    assert max_abs_diff(pixels_from_signed_range(ours, signed), expected) <= 1e-5
    assert max_abs_diff(svd_clip_input(ours, unit), expected) <= 1e-5


def test_config_round_trips_through_transformers(tmp_path):
    # transformers writes → vidiff reads (default subfolder) → vidiff writes → transformers reads.
    raw = {**_svd_raw(), "crop_size": {"height": 200, "width": 180}, "image_mean": [0.5, 0.5, 0.5]}
    CLIPImageProcessorPil(**raw).save_pretrained(tmp_path / "feature_extractor")
    ours = CLIPImageProcessor.from_pretrained(tmp_path)
    assert ours.config.crop_size == {"height": 200, "width": 180} and ours.config.image_mean == (0.5, 0.5, 0.5)
    ours.save_pretrained(tmp_path / "copy")
    written = json.loads((tmp_path / "copy" / "preprocessor_config.json").read_text())
    assert written["image_processor_type"] == "CLIPImageProcessor"
    reread = CLIPImageProcessorPil.from_pretrained(tmp_path / "copy")
    image = PIL.Image.fromarray(_random_uint8(310, 250, seed=9))
    assert max_abs_diff(ours(image), _oracle_pixels(reread, image)) <= 1e-4


def test_published_config_is_the_default():
    assert CLIPImageProcessor.from_config(_svd_raw()).config == CLIPImageProcessorConfig()


def test_bad_inputs_raise_clear_errors():
    ours = CLIPImageProcessor()
    with pytest.raises(ValueError, match="8-bit"):
        ours(torch.rand(3, 300, 300))  # float images are not resized with PIL
    with pytest.raises(TypeError, match="do_resise"):
        ours(PIL.Image.new("RGB", (8, 8)), do_resise=False)
    with pytest.raises(TypeError, match="images"):
        ours("image.png")
    with pytest.raises(ValueError, match="crop_size"):
        CLIPImageProcessor.from_config({"crop_size": {"shortest_edge": 3}})
    with pytest.raises(ValueError, match="channels"):
        ours.normalize(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="float tensor"):
        resize_with_antialiasing(torch.zeros(3, 8, 8), (4, 4))
