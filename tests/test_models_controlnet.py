"""SD ControlNetModel / MultiControlNetModel against diffusers (the oracle): schema at full size,
residuals on tiny perturbed weights, loading diffusers-saved folders, and the UNet fed the residuals."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel as OracleControlNet
from diffusers import MotionAdapter as OracleAdapter
from diffusers import UNet2DConditionModel as OracleUNet
from diffusers import UNetMotionModel as OracleMotionUNet
from diffusers.models.controlnets.multicontrolnet import (
    MultiControlNetModel as OracleMultiControlNet,
)

from tests.helpers import (
    assert_same_state_dict_schema,
    diffusers_round_trip,
    max_abs_diff,
    perturb_,
    perturbed_pair,
    published_config,
)
from vidiff import (
    ControlNetModel,
    MultiControlNetModel,
    UNet2DConditionModel,
    UNetMotionModel,
)
from vidiff.config import ConfigError

TOLERANCE = 1e-5

# SD 1.5's ControlNet shrunk: an attention stage and a plain one, 8 norm groups, a 2-step (×4) control encoder.
TINY = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=(2, 4),
    norm_num_groups=8,
    conditioning_embedding_out_channels=(8, 16, 16),
)
TINY_UNET = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=(2, 4),
    norm_num_groups=8,
    sample_size=8,
)


def tiny_pair(seed: int = 0, **changes) -> tuple[OracleControlNet, ControlNetModel]:
    return perturbed_pair(OracleControlNet, ControlNetModel, {**TINY, **changes}, seed)


@pytest.fixture(scope="module")
def pair() -> tuple[OracleControlNet, ControlNetModel]:
    return tiny_pair()


def random_inputs(batch: int = 2, height: int = 8, width: int = 6, seed: int = 0, downscale: int = 4) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, 4, height, width, generator=gen),
        encoder_hidden_states=torch.randn(batch, 5, 32, generator=gen),  # [N, L, cross_attention_dim]
        controlnet_cond=torch.rand(batch, 3, height * downscale, width * downscale, generator=gen),
    )


@torch.no_grad()
def residual_diff(oracle, ours, inputs: dict, timestep, **options) -> float:
    down, mid = ours(timestep=timestep, **inputs, **options)
    ref_down, ref_mid = oracle(timestep=timestep, **inputs, **options, return_dict=False)
    assert len(down) == len(ref_down)
    return max(max_abs_diff(a, b) for a, b in zip([*down, mid], [*ref_down, ref_mid]))


def test_released_config_builds_diffusers_state_dict_schema():
    raw = published_config("sd15_controlnet_canny.json")
    with torch.device("meta"):
        oracle = OracleControlNet.from_config(raw)
        ours = ControlNetModel.from_config(raw)
    assert_same_state_dict_schema(oracle, ours)
    assert len(ours.controlnet_down_blocks) == 12  # conv_in + 4 stages × 2 layers + 3 downsamplers


@pytest.mark.parametrize(
    "options",
    [dict(), dict(conditioning_scale=0.6), dict(guess_mode=True), dict(guess_mode=True, conditioning_scale=0.3)],
    ids=["default", "scale", "guess", "guess-scale"],
)
def test_residuals_match_diffusers(pair, options):
    oracle, ours = pair
    assert residual_diff(oracle, ours, random_inputs(), 321, **options) < TOLERANCE


def test_residuals_match_with_per_image_timesteps_and_odd_sides(pair):
    oracle, ours = pair
    inputs = random_inputs(batch=3, height=5, width=7, seed=3)
    assert residual_diff(oracle, ours, inputs, torch.tensor([10, 500, 999]), conditioning_scale=1.7) < TOLERANCE


@pytest.mark.parametrize(
    "changes",
    [
        dict(controlnet_conditioning_channel_order="bgr", conditioning_channels=3),
        dict(global_pool_conditions=True),
        dict(mid_block_type="UNetMidBlock2D", use_linear_projection=True, transformer_layers_per_block=(2, 1)),
        dict(conditioning_channels=1, num_attention_heads=4, upcast_attention=True, only_cross_attention=(True, False)),
    ],
    ids=["bgr", "global-pool", "plain-mid", "heads-one-channel"],
)
def test_config_variants_match_diffusers(changes):
    oracle, ours = tiny_pair(seed=4, **changes)
    inputs = random_inputs(seed=5)
    channels = changes.get("conditioning_channels", 3)
    inputs["controlnet_cond"] = inputs["controlnet_cond"][:, :channels]
    assert residual_diff(oracle, ours, inputs, 77, guess_mode=True, conditioning_scale=0.8) < TOLERANCE


def test_shared_text_states_are_repeated_per_image(pair):
    _, ours = pair
    inputs = random_inputs(batch=4)
    per_video = inputs["encoder_hidden_states"][::2]  # [2, L, D]: two videos of two frames
    with torch.no_grad():
        shared = ours(timestep=5, **{**inputs, "encoder_hidden_states": per_video})
        repeated = ours(timestep=5, **{**inputs, "encoder_hidden_states": per_video.repeat_interleave(2, 0)})
    assert all(torch.equal(a, b) for a, b in zip([*shared[0], shared[1]], [*repeated[0], repeated[1]]))


def test_multi_controlnet_sums_like_diffusers():
    first, first_ours = tiny_pair(seed=0)
    second, second_ours = tiny_pair(seed=7, conditioning_channels=1)
    inputs = random_inputs(seed=9)
    conds = [inputs.pop("controlnet_cond"), torch.rand(2, 1, 32, 24, generator=torch.Generator().manual_seed(2))]
    ours = MultiControlNetModel([first_ours, second_ours])
    oracle = OracleMultiControlNet([first, second])
    with torch.no_grad():
        down, mid = ours(timestep=400, controlnet_cond=conds, conditioning_scale=[0.5, 1.2], guess_mode=True, **inputs)
        ref_down, ref_mid = oracle(
            timestep=400, controlnet_cond=conds, conditioning_scale=[0.5, 1.2], guess_mode=True, **inputs,
            return_dict=False,
        )
    assert max(max_abs_diff(a, b) for a, b in zip([*down, mid], [*ref_down, ref_mid])) < TOLERANCE
    with pytest.raises(ValueError, match="conditioning_scale"):
        ours(timestep=1, controlnet_cond=conds, conditioning_scale=[1.0], **inputs)


@pytest.mark.parametrize("global_pool", [False, True], ids=["full", "global-pool"])
def test_unet_fed_our_residuals_matches_diffusers_unet_fed_theirs(global_pool):
    oracle, ours = tiny_pair(seed=10, global_pool_conditions=global_pool)
    oracle_unet, unet = perturbed_pair(OracleUNet, UNet2DConditionModel, TINY_UNET, seed=11)
    inputs = random_inputs(seed=12)
    with torch.no_grad():
        down, mid = ours(timestep=250, **inputs, conditioning_scale=0.7)
        ref_down, ref_mid = oracle(timestep=250, **inputs, conditioning_scale=0.7, return_dict=False)
        context = dict(sample=inputs["sample"], timestep=250, encoder_hidden_states=inputs["encoder_hidden_states"])
        out = unet(**context, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        reference = oracle_unet(
            **context, down_block_additional_residuals=ref_down, mid_block_additional_residual=ref_mid
        ).sample
        plain = unet(**context)
    assert max_abs_diff(out, reference) < 1e-4
    assert max_abs_diff(out, plain) > 1e-3  # the residuals did change the UNet's output


def test_diffusers_saved_controlnet_loads_and_round_trips(pair, tmp_path):
    oracle, _ = pair
    ours, reloaded = diffusers_round_trip(oracle, ControlNetModel, tmp_path)
    inputs = random_inputs(seed=13)
    assert residual_diff(oracle, ours, inputs, 600, guess_mode=True) < TOLERANCE
    assert residual_diff(reloaded, ours, inputs, 600) < TOLERANCE


def test_from_unet_matches_diffusers():
    oracle_unet, unet = perturbed_pair(OracleUNet, UNet2DConditionModel, TINY_UNET, seed=14)
    oracle = OracleControlNet.from_unet(oracle_unet, conditioning_embedding_out_channels=(8, 16, 16)).eval()
    ours = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16)).eval()
    assert_same_state_dict_schema(oracle, ours)
    # Zero convs would hide every difference: give the parts not copied from the UNet non-zero weights,
    # the same in both, so what is compared is what from_unet copied.
    for name, seed in (("controlnet_cond_embedding", 15), ("controlnet_down_blocks", 16), ("controlnet_mid_block", 17)):
        part = perturb_(getattr(oracle, name), seed=seed)
        getattr(ours, name).load_state_dict(part.state_dict(), strict=True)
    assert residual_diff(oracle, ours, random_inputs(seed=18), 42) < TOLERANCE
    fresh = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16))
    with torch.no_grad():
        down, mid = fresh(timestep=42, **random_inputs(seed=18))
    assert all(torch.count_nonzero(r) == 0 for r in [*down, mid])  # zero convs: no effect until trained


def test_bad_inputs_name_the_argument(pair):
    _, ours = pair
    inputs = random_inputs()
    with pytest.raises(ValueError, match="controlnet_cond"):
        ours(timestep=1, **{**inputs, "controlnet_cond": inputs["controlnet_cond"][..., :-4]})
    with pytest.raises(ValueError, match="sample"):
        ours(timestep=1, **{**inputs, "sample": inputs["sample"][:, :3]})
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        ours(timestep=1, **{**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"][..., :16]})
    with pytest.raises(ConfigError, match="controlnet_conditioning_channel_order"):
        ControlNetModel.from_config({**TINY, "controlnet_conditioning_channel_order": "rbg"})
    with pytest.raises(ConfigError, match="class_embed_type"):
        ControlNetModel.from_config({**TINY, "class_embed_type": "timestep"})
    with pytest.raises(TypeError, match="unet"):
        ControlNetModel.from_unet(ours)


def test_check_fits_names_the_controlnet_that_does_not_fit(pair):
    _, ours = pair
    ours.check_fits(UNet2DConditionModel.from_config(TINY_UNET))  # same encoder: fits
    wider = UNet2DConditionModel.from_config({**TINY_UNET, "block_out_channels": (32, 96)})
    with pytest.raises(ValueError, match="controlnet_2 does not fit the UNet"):
        ours.check_fits(wider, name="controlnet_2")
    deeper = UNet2DConditionModel.from_config({**TINY_UNET, "layers_per_block": 1})
    with pytest.raises(ValueError, match="controlnet does not fit"):
        ours.check_fits(deeper)
    other_text = UNet2DConditionModel.from_config({**TINY_UNET, "cross_attention_dim": 16})
    with pytest.raises(ValueError, match="cross_attention_dim"):
        ours.check_fits(other_text)


def test_released_config_round_trips():
    raw = published_config("sd15_controlnet_canny.json")
    written = ControlNetModel.config_class.from_diffusers(raw).to_diffusers()
    keys = [k for k in raw if not k.startswith("_")]
    assert {k: written[k] for k in keys} == {k: raw[k] for k in keys}
    assert ControlNetModel.config_class.from_diffusers(raw).conditioning_downscale == 8  # 512 px → 64 latents


def test_loads_in_bfloat16_and_returns_that_dtype(pair, tmp_path):
    oracle, ours = pair
    oracle.save_pretrained(tmp_path)
    half = ControlNetModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    inputs = random_inputs(seed=19)  # float32 inputs: cast inside, as the UNet does
    with torch.no_grad():
        down, mid = half(timestep=300, **inputs)
        full_down, full_mid = ours(timestep=300, **inputs)
    assert all(r.dtype == torch.bfloat16 for r in [*down, mid])
    for got, full in zip([*down, mid], [*full_down, full_mid]):  # bfloat16 keeps ~3 significant digits
        assert max_abs_diff(got, full) < 0.03 * full.abs().max().item()


def test_motion_unet_fed_per_frame_residuals_matches_diffusers():
    """AnimateDiff + ControlNet: frames flattened into the ControlNet's batch, residuals into the motion UNet."""
    oracle, ours = tiny_pair(seed=20)
    torch.manual_seed(21)
    oracle_unet = perturb_(OracleUNet(**TINY_UNET), seed=22)
    adapter = perturb_(OracleAdapter(block_out_channels=(32, 64), motion_layers_per_block=2,
                                     motion_num_attention_heads=2, motion_norm_num_groups=8,
                                     motion_max_seq_length=8), seed=23)
    oracle_motion = OracleMotionUNet.from_unet2d(oracle_unet, adapter).eval()
    motion = UNetMotionModel.from_config(dict(oracle_motion.config)).eval()
    motion.load_state_dict(oracle_motion.state_dict(), strict=True)
    ours.check_fits(motion)
    frames = 3
    inputs = random_inputs(batch=frames, seed=24)  # [B·F, …] with B = 1
    video = inputs["sample"].unsqueeze(0).transpose(1, 2)  # [1, 4, F, h, w]
    with torch.no_grad():
        down, mid = ours(timestep=500, **inputs, guess_mode=True)
        ref_down, ref_mid = oracle(timestep=500, **inputs, guess_mode=True, return_dict=False)
        context = inputs["encoder_hidden_states"]  # one per frame, as diffusers' pipeline passes it
        out = motion(video, 500, context, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        reference = oracle_motion(
            video, 500, context, down_block_additional_residuals=ref_down, mid_block_additional_residual=ref_mid
        ).sample
        plain = motion(video, 500, context)
    assert max_abs_diff(out, reference) < 1e-4
    assert max_abs_diff(out, plain) > 1e-3


def test_multi_controlnet_folders_load_and_save_like_diffusers(tmp_path):
    first, _ = tiny_pair(seed=25)
    second, _ = tiny_pair(seed=26, controlnet_conditioning_channel_order="bgr")
    oracle = OracleMultiControlNet([first, second])
    oracle.save_pretrained(str(tmp_path / "controlnet"))
    ours = MultiControlNetModel.from_pretrained(tmp_path / "controlnet")
    assert len(ours.nets) == 2 and ours.nets[1].config.controlnet_conditioning_channel_order == "bgr"
    ours.save_pretrained(tmp_path / "again")
    reloaded = OracleMultiControlNet.from_pretrained(str(tmp_path / "again"))
    inputs = random_inputs(seed=27)
    conds = [inputs.pop("controlnet_cond")] * 2
    with torch.no_grad():
        down, mid = ours(timestep=100, controlnet_cond=conds, conditioning_scale=[1.0, 0.4], **inputs)
        for reference in (oracle, reloaded):  # ours read diffusers' folders; diffusers reads ours
            ref_down, ref_mid = reference(
                timestep=100, controlnet_cond=conds, conditioning_scale=[1.0, 0.4], **inputs, return_dict=False
            )
            assert max(max_abs_diff(a, b) for a, b in zip([*down, mid], [*ref_down, ref_mid])) < TOLERANCE
    with pytest.raises(FileNotFoundError, match="directory"):
        MultiControlNetModel.from_pretrained(tmp_path / "missing")
