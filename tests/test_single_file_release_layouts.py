"""Full-size released models in their original single-file layouts, on the meta device (no weights).

Each released diffusers model is built at full size from its published config, converted to the
original layout (tests/single_file_layouts.py), and converted back by vidiff's tables. The result
must have exactly the diffusers model's keys and shapes, and the config vidiff derives from the
tensors plus its release defaults must be the published config: the proof that the real files
(which cannot be downloaded here) load, with the real stage counts, widths and heads.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import published_config
from tests.single_file_layouts import (
    motion_adapter_to_original,
    stable_diffusion_to_original,
    svd_to_original,
    unet_to_ldm,
)
from vidiff.models.controlnet import ControlNetModel
from vidiff.models.motion_adapter import MotionAdapter
from vidiff.models.single_file import controlnet as original_controlnet
from vidiff.models.single_file import motion_modules as original_motion_modules
from vidiff.models.single_file_components import convert_components

SD_ATTENTION = (True, True, True, False)  # SD 1.5 and SVD: no spatial transformer in the last stage


def _shapes(state) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("position_ids")}


def _check(model_class, converted, config, oracle, published: dict) -> None:
    """Converted keys/shapes = the oracle's; the derived config states every published value; the
    vidiff model built from it has those keys and shapes."""
    assert _shapes(converted) == _shapes(oracle.state_dict())
    with torch.device("meta"):
        ours = model_class.from_config(config)
    assert _shapes(ours.state_dict()) == _shapes(converted)
    fields = [key for key in published if key in type(ours.config).__dataclass_fields__]
    assert len(fields) >= 7  # guard: the comparison below is not vacuous
    for key in fields:
        value = published[key]
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(ours.config, key) == expected, key


def _meta(build):
    with torch.device("meta"):
        return build()


def test_motion_adapter_v2_release():
    from diffusers import MotionAdapter as Oracle

    published = published_config("animatediff_motion_adapter_v1_5_2.json")
    oracle = _meta(lambda: Oracle.from_config(published))
    converted, config = original_motion_modules.convert(motion_adapter_to_original(oracle.state_dict()), "mm_sd_v15_v2", {})
    _check(MotionAdapter, converted, config, oracle, published)


def test_controlnet_v11_release():
    from diffusers import ControlNetModel as Oracle

    published = published_config("sd15_controlnet_canny.json")
    oracle = _meta(lambda: Oracle.from_config(published))
    ldm = unet_to_ldm(oracle.state_dict(), layers=2, attention=SD_ATTENTION)
    converted, config = original_controlnet.convert(ldm, "control_v11p_sd15_canny", {})
    _check(ControlNetModel, converted, config, oracle, published)


def test_stable_diffusion_15_release():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    published = {name: published_config(f"sd15_{name}.json") for name in ("unet", "vae", "text_encoder")}
    oracles = {
        "unet": _meta(lambda: UNet2DConditionModel.from_config(published["unet"])),
        "vae": _meta(lambda: AutoencoderKL.from_config(published["vae"])),
        "text_encoder": _meta(lambda: CLIPTextModel(CLIPTextConfig(**published["text_encoder"]))),
    }
    state = stable_diffusion_to_original(*oracles.values(), layers=2, attention=SD_ATTENTION)
    for name, (model_class, converted, config) in convert_components(state, "sd15", "stable_diffusion", {}).items():
        _check(model_class, converted, config, oracles[name], published[name])


@pytest.mark.parametrize("encoder_in_conditioner", [True, False])
def test_svd_xt_release(encoder_in_conditioner):
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    published = {name: published_config(f"svd_xt_{name}.json") for name in ("unet", "vae", "image_encoder")}
    oracles = {
        "unet": _meta(lambda: UNetSpatioTemporalConditionModel.from_config(published["unet"])),
        "vae": _meta(lambda: AutoencoderKLTemporalDecoder.from_config(published["vae"])),
        "image_encoder": _meta(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**published["image_encoder"]))),
    }
    state = svd_to_original(*oracles.values(), layers=2, attention=SD_ATTENTION, encoder_in_conditioner=encoder_in_conditioner)
    for name, (model_class, converted, config) in convert_components(state, "svd_xt", "svd", {}).items():
        _check(model_class, converted, config, oracles[name], published[name])
