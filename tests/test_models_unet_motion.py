"""AnimateDiff's UNetMotionModel against diffusers: from_unet2d, from_pretrained, schema at full size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import MotionAdapter as OracleAdapter
from diffusers import UNet2DConditionModel as OracleUNet
from diffusers import UNetMotionModel as OracleMotionUNet

from tests.helpers import assert_same_state_dict_schema, max_abs_diff, perturb_, published_config
from vidiff.models.motion_adapter import MotionAdapter
from vidiff.models.unet_2d import UNet2DConditionModel
from vidiff.models.unet_motion import UNetMotionConfig, UNetMotionModel

TOLERANCE = 1e-4
FRAMES = 4

TINY_UNET = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=(2, 4),
    norm_num_groups=8,
    sample_size=16,
)
# motion_norm_num_groups differs from the UNet's on purpose: the motion UNet must use the UNet's.
TINY_ADAPTER = dict(
    block_out_channels=(32, 64),
    motion_layers_per_block=2,
    motion_num_attention_heads=2,
    motion_norm_num_groups=4,
    motion_max_seq_length=8,
)


def save_oracles(folder: Path, seed: int, unet_changes: dict, adapter_changes: dict) -> OracleMotionUNet:
    """Perturbed tiny diffusers UNet and adapter, their diffusers motion UNet; all saved under ``folder``."""
    torch.manual_seed(seed)
    unet = perturb_(OracleUNet(**{**TINY_UNET, **unet_changes}), seed=seed + 1).eval()
    adapter = perturb_(OracleAdapter(**{**TINY_ADAPTER, **adapter_changes}), seed=seed + 2).eval()
    unet.save_pretrained(folder / "unet")
    adapter.save_pretrained(folder / "adapter")
    motion = OracleMotionUNet.from_unet2d(unet, adapter).eval()
    motion.save_pretrained(folder / "motion_unet")
    return motion


def vidiff_routes(folder: Path) -> dict[str, UNetMotionModel]:
    """Ours, built from our loaded UNet and adapter, and loaded from diffusers' saved motion UNet."""
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    adapter = MotionAdapter.from_pretrained(folder / "adapter")
    return {
        "from_unet2d": UNetMotionModel.from_unet2d(unet, adapter),
        "from_pretrained": UNetMotionModel.from_pretrained(folder / "motion_unet"),
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[OracleMotionUNet, dict[str, UNetMotionModel]]:
    folder = tmp_path_factory.mktemp("tiny-motion")
    oracle = save_oracles(folder, seed=0, unet_changes={}, adapter_changes={})
    return oracle, vidiff_routes(folder)


def random_inputs(batch: int, height: int, width: int, seed: int = 0, channels: int = 4) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, channels, FRAMES, height, width, generator=gen),  # [B, C, F, H, W]
        encoder_hidden_states=torch.randn(batch, 7, 32, generator=gen),  # one context per video
    )


@torch.no_grad()
def oracle_forward(oracle: OracleMotionUNet, inputs: dict, timestep) -> torch.Tensor:
    # diffusers' motion UNet wants the context repeated per frame, as AnimateDiffPipeline passes it
    context = inputs["encoder_hidden_states"].repeat_interleave(inputs["sample"].shape[2], dim=0)
    return oracle(inputs["sample"], timestep, context).sample


def test_state_dict_equals_diffusers(models):
    oracle, ours = models
    expected = oracle.state_dict()
    for route, model in ours.items():
        got = model.state_dict()
        assert sorted(got) == sorted(expected), route
        assert max(max_abs_diff(got[k], expected[k]) for k in expected) == 0.0, route


@pytest.mark.parametrize("route", ["from_unet2d", "from_pretrained"])
@pytest.mark.parametrize("context", ["per_video", "per_frame"])
def test_forward_matches_diffusers_batch_timesteps_nonsquare(models, route, context):
    oracle, ours = models
    inputs = random_inputs(batch=2, height=16, width=12)
    timestep = torch.tensor([10, 981])
    reference = oracle_forward(oracle, inputs, timestep)
    if context == "per_frame":
        inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"].repeat_interleave(FRAMES, dim=0)
    with torch.no_grad():
        out = ours[route](timestep=timestep, **inputs)
    assert out.shape == (2, 4, FRAMES, 16, 12)
    diff = max_abs_diff(out, reference)
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("timestep", [torch.tensor(250), 999])
def test_scalar_timesteps_and_odd_sizes_match_diffusers(models, timestep):
    oracle, ours = models
    inputs = random_inputs(batch=1, height=9, width=7, seed=1)
    with torch.no_grad():
        out = ours["from_unet2d"](timestep=timestep, **inputs)
    diff = max_abs_diff(out, oracle_forward(oracle, inputs, timestep))
    assert diff <= TOLERANCE, diff


def test_motion_modules_are_used(models):
    # Guard for the parity tests: a change in one motion module must change the output.
    _, ours = models
    model = UNetMotionModel.from_config(ours["from_pretrained"].config).eval()
    model.load_state_dict(ours["from_pretrained"].state_dict())
    inputs = random_inputs(batch=1, height=8, width=8, seed=2)
    with torch.no_grad():
        before = model(timestep=5, **inputs)
        model.mid_block.motion_modules[0].proj_out.bias.add_(0.1)
        after = model(timestep=5, **inputs)
    assert max_abs_diff(before, after) > 1e-3


def test_adapter_variants_match_diffusers(tmp_path):
    # no motion mid block, deeper and per-stage motion modules, an input conv with extra channels
    adapter_changes = dict(
        use_motion_mid_block=False,
        motion_transformer_layers_per_block=2,
        motion_num_attention_heads=(2, 4),
        conv_in_channels=8,
    )
    unet_changes = dict(use_linear_projection=True)
    oracle = save_oracles(tmp_path, seed=3, unet_changes=unet_changes, adapter_changes=adapter_changes)
    inputs = random_inputs(batch=2, height=8, width=8, seed=3, channels=8)
    reference = oracle_forward(oracle, inputs, torch.tensor([3, 600]))
    for route, model in vidiff_routes(tmp_path).items():
        assert model.mid_block.motion_modules is None
        with torch.no_grad():
            out = model(timestep=torch.tensor([3, 600]), **inputs)
        diff = max_abs_diff(out, reference)
        assert diff <= TOLERANCE, (route, diff)


def test_from_unet2d_copies_weights_in_the_unets_dtype(models, tmp_path):
    oracle, _ = models
    unet = UNet2DConditionModel.from_config(TINY_UNET)
    unet.load_state_dict({k: v for k, v in oracle.state_dict().items() if "motion_modules" not in k})
    unet.to(torch.bfloat16)
    adapter = MotionAdapter.from_config(TINY_ADAPTER)  # float32: must follow the UNet
    motion = UNetMotionModel.from_unet2d(unet, adapter)
    assert {p.dtype for p in motion.parameters()} == {torch.bfloat16}
    assert motion.conv_in.weight.data_ptr() != unet.conv_in.weight.data_ptr()  # copies, not shared
    copied, original = motion.down_blocks[0].attentions[0], unet.down_blocks[0].attentions[0]
    assert torch.equal(copied.proj_in.weight, original.proj_in.weight)
    # without an adapter: the UNet's weights and randomly initialised motion modules
    bare = UNetMotionModel.from_unet2d(unet)
    assert bare.dtype == torch.bfloat16 and bare.config.use_motion_mid_block
    assert torch.equal(bare.conv_out.weight, unet.conv_out.weight)
    random_module, adapter_module = bare.up_blocks[1].motion_modules[0], motion.up_blocks[1].motion_modules[0]
    assert not torch.equal(random_module.proj_in.weight, adapter_module.proj_in.weight)


def test_released_configs_build_diffusers_schema_and_config():
    unet_raw = published_config("sd15_unet.json")
    adapter_raw = published_config("animatediff_motion_adapter_v1_5_2.json")
    with torch.device("meta"):
        oracle = OracleMotionUNet.from_unet2d(
            OracleUNet.from_config(unet_raw), OracleAdapter.from_config(adapter_raw), load_weights=False
        )
        ours = UNetMotionModel.from_unet2d(
            UNet2DConditionModel.from_config(unet_raw), MotionAdapter.from_config(adapter_raw), load_weights=False
        )
    assert_same_state_dict_schema(oracle, ours)
    written = ours.config.to_diffusers()
    oracle_config = {k: v for k, v in dict(oracle.config).items() if not k.startswith("_")}
    mismatched = {k: (written[k], v) for k, v in oracle_config.items() if _json(written[k]) != _json(v)}
    assert mismatched == {}


def _json(value):
    return json.loads(json.dumps(value))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(sample=torch.zeros(1, 4, 8, 8)), "sample"),
        (dict(sample=torch.zeros(1, 4, 9, 8, 8)), "motion_max_seq_length"),
        (dict(encoder_hidden_states=torch.zeros(3, 7, 32)), "encoder_hidden_states"),
        (dict(timestep=torch.zeros(2)), "timestep"),
    ],
)
def test_bad_inputs_name_the_argument(models, change, message):
    _, ours = models
    inputs = {**random_inputs(batch=1, height=8, width=8), "timestep": 5, **change}
    with pytest.raises(ValueError, match=message):
        ours["from_unet2d"](**inputs)


@pytest.mark.parametrize(
    ("unet_changes", "adapter_changes", "message"),
    [
        ({}, dict(motion_layers_per_block=1), "motion_layers_per_block"),
        ({}, dict(block_out_channels=(32, 64, 64), motion_layers_per_block=2), "stages"),
        (dict(only_cross_attention=True), {}, "only_cross_attention"),
        (dict(mid_block_type=None), {}, "mid_block_type"),
        (dict(flip_sin_to_cos=False), {}, "flip_sin_to_cos"),
    ],
)
def test_incompatible_unet_or_adapter_is_a_clear_error(unet_changes, adapter_changes, message):
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config({**TINY_UNET, **unet_changes})
        adapter = MotionAdapter.from_config({**TINY_ADAPTER, **adapter_changes})
    with pytest.raises(ValueError, match=message):
        UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(down_block_types=("CrossAttnDownBlock2D", "DownBlockMotion")), "down_block_types"),
        (dict(addition_embed_type="text_time"), "addition_embed_type"),
        (dict(motion_num_attention_heads=(2, 4, 8)), "motion_num_attention_heads"),
        (dict(norm_num_groups=12), "norm_num_groups"),
    ],
)
def test_bad_motion_config_names_the_option(change, message):
    base = dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        norm_num_groups=8,
    )
    with pytest.raises(ValueError, match=message):
        UNetMotionConfig.from_diffusers({**base, **change})
