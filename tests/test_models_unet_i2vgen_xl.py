"""I2VGen-XL's UNet against diffusers: save_pretrained → from_pretrained parity, conditioning, full-size schema."""

from __future__ import annotations

import pytest
import torch
from diffusers import I2VGenXLUNet as OracleUNet

from tests import i2vgen_xl_checkpoint
from tests.helpers import assert_same_state_dict_schema, max_abs_diff, perturb_, published_config
from vidiff.models.unet_i2vgen_xl import I2VGenXLUNet, I2VGenXLUNetConfig

TOLERANCE = 1e-4
CROSS = i2vgen_xl_checkpoint.CROSS

# The pipeline tests' tiny UNet: attention_head_dim 8 on 32/64 channels gives 4/8 heads of width 8,
# so swapping heads and width would show.
TINY = {**i2vgen_xl_checkpoint.UNET, "sample_size": 16}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[OracleUNet, I2VGenXLUNet]:
    folder = tmp_path_factory.mktemp("tiny-i2vgen-xl-unet")
    torch.manual_seed(0)
    oracle = perturb_(OracleUNet(**TINY), seed=1).eval()
    oracle.save_pretrained(folder)
    return oracle, I2VGenXLUNet.from_pretrained(folder)


def random_inputs(batch: int, frames: int, height: int, width: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    image_latents = torch.zeros(batch, 4, frames, height, width)
    image_latents[:, :, 0] = torch.randn(batch, 4, height, width, generator=gen)  # the pipeline's layout
    return dict(
        sample=torch.randn(batch, 4, frames, height, width, generator=gen),
        timestep=torch.tensor([17, 903][:batch]),
        fps=torch.tensor([16.0, 8.0][:batch]),
        image_latents=image_latents,
        image_embeddings=torch.randn(batch, CROSS, generator=gen),
        encoder_hidden_states=torch.randn(batch, 7, CROSS, generator=gen),
    )


@torch.no_grad()
def oracle_forward(oracle: OracleUNet, inputs: dict) -> torch.Tensor:
    return oracle(**inputs).sample  # diffusers takes [B, C, F, H, W] too


def test_state_dict_equals_diffusers(models):
    oracle, ours = models
    expected, got = oracle.state_dict(), ours.state_dict()
    assert sorted(got) == sorted(expected)
    assert max(max_abs_diff(got[k], expected[k]) for k in expected) == 0.0


@pytest.mark.parametrize(
    "batch, frames, height, width", [(2, 4, 16, 12), (1, 1, 8, 8), (2, 3, 9, 7), (1, 6, 12, 16)]
)
def test_forward_matches_diffusers(models, batch, frames, height, width):
    oracle, ours = models
    inputs = random_inputs(batch, frames, height, width)
    reference = oracle_forward(oracle, inputs)
    with torch.no_grad():
        out = ours(**inputs)
    assert out.shape == (batch, 4, frames, height, width)
    diff = max_abs_diff(out, reference)
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("timestep, fps", [(999, 7), (torch.tensor(250), torch.tensor(16.0))])
def test_scalar_timestep_and_fps_match_diffusers(models, timestep, fps):
    oracle, ours = models
    inputs = random_inputs(batch=2, frames=2, height=8, width=8, seed=1)
    inputs.update(timestep=timestep, fps=fps)
    # diffusers needs fps as a 1-D tensor; it broadcasts a length-1 one over the batch
    reference = oracle_forward(oracle, {**inputs, "fps": torch.as_tensor(fps, dtype=torch.float32).reshape(1)})
    with torch.no_grad():
        out = ours(**inputs)
    diff = max_abs_diff(out, reference)
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("name", ["image_embeddings", "image_latents", "fps", "encoder_hidden_states"])
def test_every_condition_changes_the_output(models, name):
    _, ours = models
    inputs = random_inputs(batch=1, frames=3, height=8, width=8, seed=2)
    changed = dict(inputs)
    if name == "fps":
        changed["fps"] = inputs["fps"] * 2
    else:
        changed[name] = inputs[name] + torch.randn(inputs[name].shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        difference = max_abs_diff(ours(**inputs), ours(**changed))
    assert difference > 1e-3, (name, difference)


def test_bad_inputs_name_the_argument(models):
    _, ours = models
    inputs = random_inputs(batch=1, frames=2, height=8, width=8)
    with pytest.raises(ValueError, match="image_latents"):
        ours(**{**inputs, "image_latents": inputs["image_latents"][:, :, :1]})
    with pytest.raises(ValueError, match="image_embeddings"):
        ours(**{**inputs, "image_embeddings": inputs["image_embeddings"][:, :8]})
    with pytest.raises(ValueError, match="sample"):
        ours(**{**inputs, "sample": inputs["sample"][:, :, 0]})
    with pytest.raises(ValueError, match="attention_head_dim"):
        I2VGenXLUNetConfig.from_diffusers({**TINY, "attention_head_dim": 12})


def test_config_round_trip_keeps_diffusers_keys():
    config = I2VGenXLUNetConfig.from_diffusers(published_config("i2vgenxl_unet.json"))
    assert config.attention_head_dim == 64 and config.cross_attention_dim == 1024
    assert I2VGenXLUNetConfig.from_diffusers(config.to_diffusers()) == config


def test_real_config_state_dict_schema_matches_diffusers():
    raw = published_config("i2vgenxl_unet.json")
    with torch.device("meta"):
        reference = OracleUNet.from_config(raw)
        ours = I2VGenXLUNet.from_config(raw)
    assert_same_state_dict_schema(reference, ours)
