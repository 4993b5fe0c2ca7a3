"""SD's UNet2DConditionModel against diffusers (the oracle): schema at full size, outputs on tiny random weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel as OracleUNet

from tests.helpers import (
    assert_same_state_dict_schema,
    diffusers_round_trip,
    max_abs_diff,
    perturbed_pair,
    published_config,
)
from vidiff.models.unet_2d import UNet2DConditionConfig, UNet2DConditionModel

TOLERANCE = 1e-4

# SD 1.5's architecture shrunk: one attention stage and one plain stage, 8 norm groups, 2 and 4 heads.
TINY = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=(2, 4),
    norm_num_groups=8,
    sample_size=16,
)


def tiny_pair(seed: int = 0, **changes) -> tuple[OracleUNet, UNet2DConditionModel]:
    """A perturbed random diffusers UNet and ours holding the same weights (strict load)."""
    return perturbed_pair(OracleUNet, UNet2DConditionModel, {**TINY, **changes}, seed)


@pytest.fixture(scope="module")
def pair() -> tuple[OracleUNet, UNet2DConditionModel]:
    return tiny_pair()


def random_inputs(batch: int, height: int, width: int, seed: int = 0, channels: int = 4) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, channels, height, width, generator=gen),
        encoder_hidden_states=torch.randn(batch, 7, 32, generator=gen),  # [B, L, cross_attention_dim]
    )


@torch.no_grad()
def compare(oracle: OracleUNet, ours: UNet2DConditionModel, inputs: dict, timestep, **extra) -> float:
    out = ours(timestep=timestep, **inputs, **extra)
    reference = oracle(timestep=timestep, **inputs, **extra).sample
    assert out.shape == reference.shape
    return max_abs_diff(out, reference)


def test_released_config_builds_diffusers_state_dict_schema():
    raw = published_config("sd15_unet.json")
    with torch.device("meta"):
        oracle = OracleUNet.from_config(raw)
        ours = UNet2DConditionModel.from_config(raw)
    assert_same_state_dict_schema(oracle, ours)
    assert all(p.is_meta for p in ours.parameters())


def test_released_config_round_trips_and_reads_legacy_heads():
    raw = published_config("sd15_unet.json")
    config = UNet2DConditionConfig.from_diffusers(raw)
    written = config.to_diffusers()
    keys = [k for k in raw if not k.startswith("_")]
    assert {k: written[k] for k in keys} == {k: raw[k] for k in keys}
    # SD 1.5's attention_head_dim=8 is the head count: 8 heads of 40 channels at 320 channels
    layout = config.layout()
    assert layout.down[0].attention.num_attention_heads == 8
    assert layout.down[3].attention is None and layout.up[0].attention is None


def test_no_non_persistent_buffers(pair):
    _, ours = pair
    assert list(ours.buffers()) == []


def test_forward_matches_diffusers_batch_timesteps_nonsquare(pair):
    oracle, ours = pair
    inputs = random_inputs(batch=2, height=16, width=12)
    diff = compare(oracle, ours, inputs, torch.tensor([10, 981]))
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("timestep", [999, 500.5, "tensor0d"])
def test_scalar_timesteps_match_diffusers(pair, timestep):
    oracle, ours = pair
    timestep = torch.tensor(321) if timestep == "tensor0d" else timestep
    inputs = random_inputs(batch=2, height=8, width=8, seed=1)
    diff = compare(oracle, ours, inputs, timestep)
    assert diff <= TOLERANCE, diff


def test_odd_latent_size_matches_diffusers_forced_upsample_size(pair):
    # 9×7 is not a multiple of 2: the up stages must upsample to the skip sizes, not by 2.
    oracle, ours = pair
    inputs = random_inputs(batch=1, height=9, width=7, seed=2)
    diff = compare(oracle, ours, inputs, 250)
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize(
    "changes",
    [
        # SD 2.x style: linear projections, per-stage options, deeper transformers, LCM's time condition
        dict(
            use_linear_projection=True,
            upcast_attention=True,
            only_cross_attention=(True, False),
            transformer_layers_per_block=(2, 1),
            layers_per_block=(1, 2),
            cross_attention_dim=(32, 32),
            time_cond_proj_dim=16,
        ),
        # rarer options: no mid block, other time features, centred input, 1×1/5×5 in/out convs, 3 stages
        dict(
            mid_block_type=None,
            flip_sin_to_cos=False,
            freq_shift=1,
            center_input_sample=True,
            conv_in_kernel=1,
            conv_out_kernel=5,
            mid_block_scale_factor=1.5,
            downsample_padding=0,
            time_embedding_dim=96,
            block_out_channels=(32, 32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4, 4),
            layers_per_block=1,
        ),
    ],
    ids=["sd2-style", "rare-options"],
)
def test_config_options_match_diffusers(changes):
    oracle, ours = tiny_pair(seed=3, **changes)
    inputs = random_inputs(batch=2, height=8, width=12, seed=3)
    extra = {}
    if changes.get("time_cond_proj_dim"):
        extra["timestep_cond"] = torch.randn(2, 16, generator=torch.Generator().manual_seed(5))
    diff = compare(oracle, ours, inputs, torch.tensor([3, 700]), **extra)
    assert diff <= TOLERANCE, diff


def test_nested_transformer_layers_with_reverse_match_diffusers():
    # per-layer transformer depths (SDXL-refiner style), which need the up stages' reverse list
    changes = dict(
        layers_per_block=1,
        transformer_layers_per_block=((2,), (1,)),
        reverse_transformer_layers_per_block=((1, 1), (1, 2)),
    )
    oracle, ours = tiny_pair(seed=6, **changes)
    diff = compare(oracle, ours, random_inputs(batch=1, height=8, width=8, seed=6), 400)
    assert diff <= TOLERANCE, diff


def test_diffusers_checkpoint_round_trips_through_vidiff(tmp_path):
    oracle, _ = tiny_pair(seed=4)
    ours, reloaded = diffusers_round_trip(oracle, UNet2DConditionModel, tmp_path)
    assert ours.config.attention_head_dim == (2, 4)
    inputs = random_inputs(batch=1, height=8, width=8, seed=4)
    diff = max(compare(oracle, ours, inputs, 10), compare(reloaded, ours, inputs, 10))
    assert diff <= TOLERANCE, diff


def test_bfloat16_parameters_give_bfloat16_output(pair):
    _, ours = pair
    model = UNet2DConditionModel.from_config(TINY).eval()
    model.load_state_dict(ours.state_dict())
    model.to(torch.bfloat16)
    inputs = random_inputs(batch=1, height=8, width=8)
    with torch.no_grad():
        out = model(timestep=5, **inputs)
        reference = ours(timestep=5, **inputs)
    assert out.dtype == torch.bfloat16
    # loose: only that reduced precision computes the same function
    assert max_abs_diff(out.float(), reference) < 0.1 * reference.abs().max().item()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(sample=torch.zeros(1, 3, 8, 8)), "sample"),
        (dict(sample=torch.zeros(1, 4, 2, 8, 8)), "sample"),
        (dict(encoder_hidden_states=torch.zeros(2, 7, 32)), "encoder_hidden_states"),
        (dict(encoder_hidden_states=torch.zeros(1, 7, 16)), "encoder_hidden_states"),
        (dict(timestep=torch.zeros(3)), "timestep"),
        (dict(timestep_cond=torch.zeros(1, 16)), "timestep_cond"),
    ],
)
def test_bad_inputs_name_the_argument(pair, change, message):
    _, ours = pair
    inputs = {**random_inputs(batch=1, height=8, width=8), "timestep": 5, **change}
    with pytest.raises(ValueError, match=message):
        ours(**inputs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(down_block_types=("AttnDownBlock2D", "DownBlock2D")), "down_block_types"),
        (dict(up_block_types=("UpBlock2D", "SimpleCrossAttnUpBlock2D")), "up_block_types"),
        (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), "mid_block_type"),
        (dict(block_out_channels=(32, 64, 64)), "block_out_channels"),
        (dict(attention_head_dim=(2, 4, 8)), "attention_head_dim"),
        (dict(num_attention_heads=8), "num_attention_heads"),
        (dict(class_embed_type="timestep"), "class_embed_type"),
        (dict(addition_embed_type="text_time"), "addition_embed_type"),
        (dict(time_embedding_type="fourier"), "time_embedding_type"),
        (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift"),
        (dict(encoder_hid_dim=64), "encoder_hid_dim"),
        (dict(norm_num_groups=12), "norm_num_groups"),
        (dict(transformer_layers_per_block=((1, 1), (1, 1))), "reverse_transformer_layers_per_block"),
    ],
)
def test_unsupported_or_bad_config_names_the_option(change, message):
    with pytest.raises(ValueError, match=message):
        UNet2DConditionConfig.from_diffusers({**TINY, **change})
