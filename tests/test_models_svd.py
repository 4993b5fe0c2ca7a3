"""SVD's UNet against diffusers (the oracle): checkpoint schema at full size, outputs on tiny random weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel as OracleUNet

from tests.helpers import (
    assert_same_state_dict_schema,
    diffusers_round_trip,
    max_abs_diff,
    perturbed_pair,
    published_config,
)
from vidiff.models.unet_svd import UNetSpatioTemporalConditionConfig, UNetSpatioTemporalConditionModel

TOLERANCE = 1e-4

# diffusers' own tiny SVD test model, with 8 input channels (4 noise + 4 image latents) like SVD
# and fewer heads so head_dim > 1. GroupNorm(32) is hard-wired, hence 32-channel multiples.
TINY = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    cross_attention_dim=32,
    num_attention_heads=(2, 4),
    in_channels=8,
    out_channels=4,
    layers_per_block=2,
    sample_size=16,
    addition_time_embed_dim=32,
    projection_class_embeddings_input_dim=96,
    num_frames=3,
)


@pytest.fixture(scope="module")
def pair() -> tuple[OracleUNet, UNetSpatioTemporalConditionModel]:
    return tiny_pair()


def tiny_pair(seed: int = 0, **changes) -> tuple[OracleUNet, UNetSpatioTemporalConditionModel]:
    """A perturbed random diffusers UNet and ours holding the same weights (strict load)."""
    return perturbed_pair(OracleUNet, UNetSpatioTemporalConditionModel, {**TINY, **changes}, seed)


def random_inputs(batch: int, frames: int, height: int, width: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, TINY["in_channels"], frames, height, width, generator=gen),  # [B, C, F, H, W]
        encoder_hidden_states=torch.randn(batch, 1, 32, generator=gen),
        # (fps − 1, motion bucket, noise augmentation) as SVD passes them
        added_time_ids=torch.tensor([[6.0, 127.0, 0.02], [4.0, 30.0, 0.3]])[:batch],
    )


@torch.no_grad()
def oracle_forward(oracle: OracleUNet, inputs: dict, timestep) -> torch.Tensor:
    sample = inputs["sample"].transpose(1, 2)  # diffusers wants [B, F, C, H, W]
    out = oracle(sample, timestep, inputs["encoder_hidden_states"], inputs["added_time_ids"]).sample
    return out.transpose(1, 2)


def test_released_config_builds_diffusers_state_dict_schema():
    raw = published_config("svd_xt_unet.json")
    with torch.device("meta"):
        oracle = OracleUNet.from_config(raw)
        ours = UNetSpatioTemporalConditionModel.from_config(raw)
    assert_same_state_dict_schema(oracle, ours)
    assert all(p.is_meta for p in ours.parameters())


def test_defaults_are_the_released_svd_xt_values():
    raw = published_config("svd_xt_unet.json")
    raw.pop("_class_name")
    assert UNetSpatioTemporalConditionConfig().to_diffusers() == raw


def test_no_non_persistent_buffers(pair):
    _, ours = pair
    assert list(ours.buffers()) == []


def test_forward_matches_diffusers_batch_timesteps_nonsquare(pair):
    oracle, ours = pair
    inputs = random_inputs(batch=2, frames=3, height=8, width=12)
    timestep = torch.tensor([0.25 * 2.3, 0.25 * -1.6])  # SVD's 0.25·ln σ, one per video
    with torch.no_grad():
        out = ours(timestep=timestep, **inputs)
    assert out.shape == (2, 4, 3, 8, 12)
    diff = max_abs_diff(out, oracle_forward(oracle, inputs, timestep))
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("timestep", [0.7, 3, "tensor0d"])
def test_scalar_timesteps_match_diffusers(pair, timestep):
    oracle, ours = pair
    timestep = torch.tensor(-0.4) if timestep == "tensor0d" else timestep
    inputs = random_inputs(batch=2, frames=2, height=8, width=8, seed=1)
    with torch.no_grad():
        out = ours(timestep=timestep, **inputs)
    diff = max_abs_diff(out, oracle_forward(oracle, inputs, timestep))
    assert diff <= TOLERANCE, diff


def test_odd_latent_size_matches_diffusers_forced_upsample_size(pair):
    # 9×7 is not a multiple of 2: the up stages must upsample to the skip sizes, not by 2.
    oracle, ours = pair
    inputs = random_inputs(batch=1, frames=2, height=9, width=7, seed=2)
    with torch.no_grad():
        out = ours(timestep=0.3, **inputs)
    assert out.shape == (1, 4, 2, 9, 7)
    diff = max_abs_diff(out, oracle_forward(oracle, inputs, 0.3))
    assert diff <= TOLERANCE, diff


def test_per_block_options_match_diffusers():
    changes = dict(
        num_attention_heads=(4, 8),
        cross_attention_dim=(32, 32),
        transformer_layers_per_block=(2, 1),
        layers_per_block=(1, 2),
    )
    oracle, ours = tiny_pair(seed=3, **changes)
    inputs = random_inputs(batch=2, frames=2, height=8, width=8, seed=3)
    with torch.no_grad():
        out = ours(timestep=torch.tensor([0.1, 0.9]), **inputs)
    diff = max_abs_diff(out, oracle_forward(oracle, inputs, torch.tensor([0.1, 0.9])))
    assert diff <= TOLERANCE, diff


def test_diffusers_checkpoint_round_trips_through_vidiff(tmp_path):
    oracle, _ = tiny_pair(seed=4)
    ours, reloaded = diffusers_round_trip(oracle, UNetSpatioTemporalConditionModel, tmp_path)
    assert ours.config.num_attention_heads == (2, 4)
    inputs = random_inputs(batch=1, frames=2, height=8, width=8, seed=4)
    with torch.no_grad():
        out = ours(timestep=0.5, **inputs)
    diff = max(
        max_abs_diff(out, oracle_forward(oracle, inputs, 0.5)),
        max_abs_diff(out, oracle_forward(reloaded, inputs, 0.5)),
    )
    assert diff <= TOLERANCE, diff


def test_parameters_are_float32_and_half_precision_runs_on_cpu(pair):
    _, ours = pair
    assert {p.dtype for p in ours.parameters()} == {torch.float32}
    inputs = random_inputs(batch=1, frames=2, height=8, width=8)
    for dtype in (torch.float16, torch.bfloat16):
        model = UNetSpatioTemporalConditionModel.from_config(TINY).eval()
        model.load_state_dict(ours.state_dict())
        model.to(dtype)
        with torch.no_grad():
            out = model(timestep=0.5, **inputs)
            reference = ours(timestep=0.5, **inputs)
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
        # loose: only that reduced precision computes the same function
        assert max_abs_diff(out.float(), reference) < 0.1 * reference.abs().max().item()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(sample=torch.zeros(1, 4, 2, 8, 8)), "sample"),
        (dict(sample=torch.zeros(1, 8, 8, 8)), "sample"),
        (dict(added_time_ids=torch.zeros(1, 2)), "added_time_ids"),
        (dict(encoder_hidden_states=torch.zeros(2, 1, 32)), "encoder_hidden_states"),
        (dict(timestep=torch.zeros(3)), "timestep"),
    ],
)
def test_bad_inputs_name_the_argument(pair, change, message):
    _, ours = pair
    inputs = {**random_inputs(batch=1, frames=2, height=8, width=8), "timestep": 0.5, **change}
    with pytest.raises(ValueError, match=message):
        ours(**inputs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(down_block_types=("CrossAttnDownBlock2D", "DownBlockSpatioTemporal")), "down_block_types"),
        (dict(block_out_channels=(32, 64, 64)), "block_out_channels"),
        (dict(num_attention_heads=(2, 4, 8)), "num_attention_heads"),
        (dict(projection_class_embeddings_input_dim=100), "projection_class_embeddings_input_dim"),
    ],
)
def test_bad_config_names_the_option(change, message):
    with pytest.raises(ValueError, match=message):
        UNetSpatioTemporalConditionConfig.from_diffusers({**TINY, **change})
