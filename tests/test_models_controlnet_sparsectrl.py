"""AnimateDiff SparseCtrl's SparseControlNetModel against diffusers: forward parity, loading, schema at full size."""

from __future__ import annotations

import pytest
import torch
from diffusers import SparseControlNetModel as OracleSparseControlNet
from diffusers import MotionAdapter as OracleAdapter
from diffusers import UNet2DConditionModel as OracleUNet
from diffusers import UNetMotionModel as OracleMotionUNet

from tests.helpers import (
    assert_same_state_dict_schema,
    diffusers_round_trip,
    max_abs_diff,
    perturb_,
    perturbed_pair,
    published_config,
)
from vidiff.models.controlnet_sparsectrl import SparseControlNetModel
from vidiff.models.unet_2d import UNet2DConditionModel
from vidiff.models.unet_motion import UNetMotionModel

TOLERANCE = 1e-5
FRAMES, HEIGHT, WIDTH = 3, 8, 8

TINY = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    layers_per_block=2,
    cross_attention_dim=16,
    attention_head_dim=(2, 4),
    norm_num_groups=8,
    motion_num_attention_heads=(2, 4),
    motion_max_seq_length=8,
    conditioning_embedding_out_channels=(8, 8, 16, 16),
)
VARIANTS = {
    "rgb_simplified": dict(conditioning_channels=4, use_simplified_condition_embedding=True),
    "scribble_embedding": dict(conditioning_channels=3, use_simplified_condition_embedding=False),
    "rgb_embedding_no_mask": dict(
        conditioning_channels=4, use_simplified_condition_embedding=False, concat_conditioning_mask=False,
        num_attention_heads=(4, 2), only_cross_attention=(True, False), mid_block_scale_factor=2.0,
    ),
    # downsample_padding is ignored by diffusers' SparseControlNetModel (always 1): ours must agree
    "scribble_simplified_bgr": dict(
        conditioning_channels=3, use_simplified_condition_embedding=True, controlnet_conditioning_channel_order="bgr",
        transformer_layers_per_block=(2, 1), temporal_transformer_layers_per_block=(1, 2), downsample_padding=0,
        norm_eps=1e-3,
    ),
}


def inputs_for(config: dict, batch: int = 2, seed: int = 0) -> dict:
    """Random inputs in diffusers' calling convention (the same [B, C, F, H, W] sample layout as ours)."""
    gen = torch.Generator().manual_seed(seed)
    size = 1 if config.get("use_simplified_condition_embedding", True) else 8
    cond_shape = (batch, config["conditioning_channels"], FRAMES, HEIGHT * size, WIDTH * size)
    mask = torch.zeros(batch, 1, FRAMES, HEIGHT * size, WIDTH * size)
    mask[:, :, [0, FRAMES - 1]] = 1.0  # first and last frame conditioned
    return dict(
        sample=torch.randn(batch, 4, FRAMES, HEIGHT, WIDTH, generator=gen),
        encoder_hidden_states=torch.randn(batch * FRAMES, 5, 16, generator=gen),  # per frame, as the pipeline
        controlnet_cond=torch.randn(cond_shape, generator=gen) * mask,
        conditioning_mask=mask,
    )


def assert_same_residuals(expected, got) -> None:
    expected_down, expected_mid = expected
    got_down, got_mid = got
    assert len(got_down) == len(expected_down)
    for index, (a, b) in enumerate(zip(expected_down, got_down)):
        assert max_abs_diff(a, b) < TOLERANCE, f"down residual {index}"
    assert max_abs_diff(expected_mid, got_mid) < TOLERANCE


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("guess_mode", [False, True])
@torch.no_grad()
def test_forward_matches_diffusers(variant: str, guess_mode: bool) -> None:
    config = {**TINY, **VARIANTS[variant]}
    oracle, ours = perturbed_pair(OracleSparseControlNet, SparseControlNetModel, config, seed=3)
    inputs = inputs_for(config)
    kwargs = dict(conditioning_scale=0.7, guess_mode=guess_mode)
    expected = oracle(timestep=torch.tensor(421), return_dict=False, **inputs, **kwargs)
    got = ours(timestep=torch.tensor(421), **inputs, **kwargs)
    assert_same_residuals(expected, got)
    assert got.down_block_res_samples[0].shape == (2 * FRAMES, 32, HEIGHT, WIDTH)  # the UNet's image layout
    assert any(r.abs().max() > 1e-3 for r in got.down_block_res_samples), "residuals must not be trivially zero"


@torch.no_grad()
def test_per_video_context_and_float_timestep_match_per_frame() -> None:
    config = {**TINY, **VARIANTS["rgb_simplified"]}
    oracle, ours = perturbed_pair(OracleSparseControlNet, SparseControlNetModel, config, seed=5)
    inputs = inputs_for(config, seed=1)
    per_video = inputs["encoder_hidden_states"][::FRAMES]  # [B, L, D]
    inputs["encoder_hidden_states"] = per_video.repeat_interleave(FRAMES, dim=0)
    expected = oracle(timestep=37.5, return_dict=False, **inputs)
    got = ours(timestep=37.5, **{**inputs, "encoder_hidden_states": per_video})
    assert_same_residuals(expected, got)


@torch.no_grad()
def test_global_pool_conditions_match_diffusers() -> None:
    config = {**TINY, **VARIANTS["rgb_simplified"], "global_pool_conditions": True}
    oracle, ours = perturbed_pair(OracleSparseControlNet, SparseControlNetModel, config, seed=6)
    inputs = inputs_for(config, batch=1, seed=2)
    expected = oracle(timestep=500, return_dict=False, guess_mode=True, **inputs)
    got = ours(timestep=500, guess_mode=True, **inputs)
    assert_same_residuals(expected, got)


@torch.no_grad()
def test_diffusers_saved_model_loads_and_round_trips(tmp_path) -> None:
    config = {**TINY, **VARIANTS["scribble_embedding"]}
    torch.manual_seed(0)
    oracle = perturb_(OracleSparseControlNet(**config), seed=1).eval()
    ours, reloaded = diffusers_round_trip(oracle, SparseControlNetModel, tmp_path)
    inputs = inputs_for(config, seed=4)
    expected = oracle(timestep=999, return_dict=False, **inputs)
    assert_same_residuals(expected, ours(timestep=999, **inputs))
    assert_same_residuals(expected, reloaded(timestep=999, return_dict=False, **inputs))


def test_released_scribble_config_has_diffusers_keys_and_shapes() -> None:
    config = published_config("animatediff_sparsectrl_scribble.json")
    with torch.device("meta"):
        oracle = OracleSparseControlNet(**{k: v for k, v in config.items() if not k.startswith("_")})
        ours = SparseControlNetModel.from_config(config)
    assert_same_state_dict_schema(oracle, ours)


def test_rgb_default_config_has_diffusers_keys_and_shapes() -> None:
    with torch.device("meta"):
        oracle = OracleSparseControlNet(use_simplified_condition_embedding=True)
        ours = SparseControlNetModel.from_config({})
    assert_same_state_dict_schema(oracle, ours)


TINY_UNET = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=16,
    attention_head_dim=(2, 4),
    norm_num_groups=8,
    sample_size=16,
)


@pytest.mark.parametrize("conditioning_channels", [3, 4])
@torch.no_grad()
def test_from_unet_matches_diffusers_config_and_copied_weights(tmp_path, conditioning_channels: int) -> None:
    torch.manual_seed(0)
    oracle_unet = perturb_(OracleUNet(**TINY_UNET), seed=1).eval()
    oracle_unet.save_pretrained(tmp_path / "unet")
    # diffusers' from_unet renames the block types in place: it needs the list a loaded config holds
    oracle_unet = OracleUNet.from_pretrained(tmp_path / "unet").eval()
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    options = dict(conditioning_channels=conditioning_channels, conditioning_embedding_out_channels=(8, 16))
    oracle = OracleSparseControlNet.from_unet(oracle_unet, **options)
    ours = SparseControlNetModel.from_unet(unet, **options)
    expected_config = {k: v for k, v in oracle.config.items() if not k.startswith("_")}
    got_config = {k: v for k, v in ours.config.to_diffusers().items() if k in expected_config}
    assert json_like(got_config) == json_like(expected_config)
    assert_same_state_dict_schema(oracle, ours)
    expected, got = oracle.state_dict(), ours.state_dict()
    compared = [key for key in expected if ".motion_modules." not in key]  # motion modules: random in both
    assert any(key.startswith("down_blocks.0.attentions") for key in compared)
    for key in compared:
        assert torch.equal(expected[key], got[key]), key
    # from_unet keeps the simplified (one conv) condition embedding: it and the residual convs start at zero
    zero_keys = [key for key in got if key.startswith("controlnet_")]
    assert "controlnet_cond_embedding.weight" in zero_keys
    assert all(got[key].abs().max() == 0 for key in zero_keys)


def test_from_unet_rejects_what_it_cannot_copy() -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config({**TINY_UNET, "time_cond_proj_dim": 8})
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        SparseControlNetModel.from_unet(unet, load_weights_from_unet=False)
    with pytest.raises(TypeError, match="unet"):
        SparseControlNetModel.from_unet(OracleUNet(**TINY_UNET))


def json_like(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def test_bad_inputs_raise_errors_naming_the_argument() -> None:
    config = {**TINY, **VARIANTS["scribble_embedding"]}
    model = SparseControlNetModel.from_config(config).eval()
    inputs = inputs_for(config, batch=1)
    cases = {
        "conditioning_mask": {**inputs, "conditioning_mask": None},
        "controlnet_cond must be": {**inputs, "controlnet_cond": inputs["controlnet_cond"][:, :2]},
        "8 × the latents": {**inputs, "controlnet_cond": inputs["controlnet_cond"][..., :16, :16],
                            "conditioning_mask": inputs["conditioning_mask"][..., :16, :16]},
        "sample must be": {**inputs, "sample": inputs["sample"][:, :, 0]},
        "encoder_hidden_states": {**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"][:2]},
    }
    for message, arguments in cases.items():
        with pytest.raises(ValueError, match=message):
            model(timestep=1, **arguments)


def test_config_errors_name_the_key() -> None:
    for changes, key in [
        (dict(down_block_types=("CrossAttnDownBlock2D", "DownBlockMotion")), "down_block_types"),
        (dict(controlnet_conditioning_channel_order="rbg"), "controlnet_conditioning_channel_order"),
        (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift"),
        (dict(motion_num_attention_heads=(2, 4, 8)), "motion_num_attention_heads"),
    ]:
        with pytest.raises(ValueError, match=key):
            SparseControlNetModel.from_config({**TINY, **changes})


@torch.no_grad()
def test_residuals_fit_the_motion_unets_seam_as_in_diffusers() -> None:
    """Our residuals through our UNetMotionModel's residual seam = diffusers' through its UNetMotionModel."""
    torch.manual_seed(0)
    unet = perturb_(OracleUNet(**TINY_UNET), seed=1)
    adapter = perturb_(OracleAdapter(block_out_channels=(32, 64), motion_layers_per_block=2,
                                     motion_num_attention_heads=2, motion_max_seq_length=8), seed=2)
    oracle_unet = OracleMotionUNet.from_unet2d(unet, adapter).eval()
    ours_unet = UNetMotionModel.from_config(dict(oracle_unet.config)).eval()
    ours_unet.load_state_dict(oracle_unet.state_dict(), strict=True)
    config = {**TINY, **VARIANTS["rgb_simplified"]}
    oracle, ours = perturbed_pair(OracleSparseControlNet, SparseControlNetModel, config, seed=7)
    inputs = inputs_for(config, seed=3)
    down, mid = oracle(timestep=10, return_dict=False, **inputs)
    expected = oracle_unet(inputs["sample"], 10, inputs["encoder_hidden_states"],
                           down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    down, mid = ours(timestep=10, **inputs)
    got = ours_unet(inputs["sample"], 10, inputs["encoder_hidden_states"],
                    down_block_additional_residuals=down, mid_block_additional_residual=mid)
    assert max_abs_diff(expected, got) < TOLERANCE
    plain = ours_unet(inputs["sample"], 10, inputs["encoder_hidden_states"])
    assert max_abs_diff(plain, got) > 1e-3, "the residuals must change the UNet's output"
