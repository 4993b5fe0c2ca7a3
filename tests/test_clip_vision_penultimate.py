"""The CLIP image branch of Wan 2.1 I2V: vidiff's vision tower and preprocessing against transformers.

diffusers' WanImageToVideoPipeline conditions on ``image_encoder(pixel_values, output_hidden_states=True)
.hidden_states[-2]`` — the output of the second-to-last layer, without ``post_layernorm`` — of a
ViT-H/14 ``CLIPVisionModelWithProjection``, fed by the repository's ``CLIPImageProcessor``.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from tests.helpers import assert_same_state_dict_schema, max_abs_diff, perturb_, published_config
from vidiff import CLIPImageProcessor, CLIPVisionModelWithProjection
from vidiff.image_processing import CLIPImageProcessorConfig

VIT_H_PARAMETERS = 632_076_800
# ViT-H/14's layout at a tiny width: 224 / 14 = 16 × 16 patches + the class token = 257 tokens.
TINY = dict(
    hidden_size=32, intermediate_size=40, num_attention_heads=4, num_hidden_layers=3, image_size=224,
    patch_size=14, projection_dim=16, hidden_act="gelu", layer_norm_eps=1e-5,
)
# (height, width) of Wan inputs: 480p landscape and portrait, 720p, and a small odd one.
SIZES = [(480, 832), (832, 480), (720, 1280), (97, 131)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, oracle): a perturbed tiny transformers tower saved as ``folder/image_encoder``."""
    folder = tmp_path_factory.mktemp("wan-clip")
    torch.manual_seed(0)
    oracle = transformers.CLIPVisionModelWithProjection._from_config(
        transformers.CLIPVisionConfig(**TINY), attn_implementation="eager"
    )
    oracle = perturb_(oracle.eval(), seed=0, scale=0.1)
    oracle.save_pretrained(folder / "image_encoder")
    return folder, oracle


def _image(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_wan_image_encoder_config_on_meta_has_transformers_keys_and_shapes():
    raw = published_config("wan/Wan2.1-I2V-14B-480P-Diffusers/image_encoder/config.json")
    with torch.device("meta"):
        ours = CLIPVisionModelWithProjection.from_config(raw)
        theirs = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig.from_dict(raw))
        tokens = ours.penultimate_hidden_states(torch.empty(2, 3, 224, 224))
    assert_same_state_dict_schema(theirs, ours)
    assert sum(p.numel() for p in ours.parameters()) == theirs.num_parameters() == VIT_H_PARAMETERS
    assert tokens.shape == (2, 257, 1280)


# float32 against transformers' eager attention (independent math); bfloat16 against its default SDPA
# attention, what a diffusers pipeline runs (eager rounds differently in bfloat16: a few ulps).
@pytest.mark.parametrize("dtype, attention", [(torch.float32, "eager"), (torch.bfloat16, "sdpa")])
def test_penultimate_hidden_states_match_transformers_hidden_states_minus_2(saved, dtype, attention):
    folder, _ = saved
    oracle = transformers.CLIPVisionModelWithProjection.from_pretrained(
        folder / "image_encoder", dtype=dtype, attn_implementation=attention
    ).eval()
    ours = CLIPVisionModelWithProjection.from_pretrained(folder, subfolder="image_encoder", dtype=dtype)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        outputs = oracle(pixel_values=pixels, output_hidden_states=True)
        expected = outputs.hidden_states[-2]
        got = ours.penultimate_hidden_states(pixels)
        # Neither the last layer nor post_layernorm is applied: both would change the result.
        normed = ours.vision_model.post_layernorm(got)
        last = ours.encode(pixels).last_hidden_state
    assert got.shape == expected.shape == (2, 257, TINY["hidden_size"]) and got.dtype == dtype
    assert max_abs_diff(got, expected) <= 1e-5
    assert max_abs_diff(normed, expected) > 0.1 and max_abs_diff(last, expected) > 0.1
    # The existing outputs are untouched by the penultimate path.
    assert max_abs_diff(last, outputs.last_hidden_state) <= 1e-5


def test_wan_image_processor_config_loads_as_the_default(tmp_path):
    raw = published_config("wan/Wan2.1-I2V-14B-480P-Diffusers/image_processor/preprocessor_config.json")
    ours = CLIPImageProcessor.from_config(raw)
    assert ours.config == CLIPImageProcessorConfig()  # OpenAI CLIP's: shortest edge 224, bicubic, crop 224
    (tmp_path / "image_processor").mkdir()
    (tmp_path / "image_processor" / "preprocessor_config.json").write_text(json.dumps(raw))
    assert CLIPImageProcessor.from_pretrained(tmp_path, subfolder="image_processor").config == ours.config


@pytest.mark.parametrize("size", SIZES)
def test_wan_image_processor_matches_transformers(tmp_path, size):
    raw = published_config("wan/Wan2.1-I2V-14B-480P-Diffusers/image_processor/preprocessor_config.json")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(raw))
    # What diffusers loads for model_index's ["transformers", "CLIPImageProcessor"] (without torchvision,
    # transformers falls back to its PIL backend).
    oracle = transformers.CLIPImageProcessor.from_pretrained(tmp_path)
    assert isinstance(oracle, CLIPImageProcessorPil)
    ours = CLIPImageProcessor.from_pretrained(tmp_path, subfolder=None)
    # One image, and the [first, last] pair WanImageToVideoPipeline encodes when last_image is given.
    first, last = _image(*size, seed=size[0]), _image(*size, seed=size[1])
    for images in (first, [first, last]):
        expected = oracle(images=images, return_tensors="pt").pixel_values
        got = ours(images)
        assert got.shape == expected.shape == (1 if images is first else 2, 3, 224, 224)
        assert max_abs_diff(got, expected) <= 1e-4
