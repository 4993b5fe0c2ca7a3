"""AnimateDiff's MotionAdapter and motion modules against diffusers (the oracle)."""

from __future__ import annotations

import pytest
import torch
from diffusers import MotionAdapter as OracleAdapter

from tests.helpers import assert_same_state_dict_schema, max_abs_diff, perturb_, published_config
from vidiff.layers.motion import MotionModule
from vidiff.layers.transformer import BasicTransformerBlock
from vidiff.models.motion_adapter import MotionAdapter, MotionAdapterConfig

TOLERANCE = 1e-4
RELEASED = "animatediff_motion_adapter_v1_5_2.json"

TINY = dict(
    block_out_channels=(32, 64),
    motion_layers_per_block=2,
    motion_num_attention_heads=2,
    motion_norm_num_groups=8,
    motion_max_seq_length=32,
)


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory) -> tuple[OracleAdapter, MotionAdapter]:
    """A perturbed diffusers adapter saved by diffusers, and vidiff's strict load of that folder."""
    folder = tmp_path_factory.mktemp("tiny-motion-adapter")
    torch.manual_seed(0)
    oracle = perturb_(OracleAdapter(**TINY), seed=1).eval()
    oracle.save_pretrained(folder)
    return oracle, MotionAdapter.from_pretrained(folder)


def paired_modules(oracle: OracleAdapter, ours: MotionAdapter) -> list[tuple[str, torch.nn.Module, MotionModule]]:
    names = [name for name, module in ours.named_modules() if isinstance(module, MotionModule)]
    oracle_modules = dict(oracle.named_modules())
    return [(name, oracle_modules[name], ours.get_submodule(name)) for name in names]


def test_diffusers_folder_loads_with_identical_state_dict(saved_pair):
    oracle, ours = saved_pair
    expected, got = oracle.state_dict(), ours.state_dict()
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key
    # the position tables are checkpoint tensors, and were perturbed like every other one
    assert any(key.endswith("pos_embed.pe") for key in got)
    assert ours.config.block_out_channels == (32, 64) and ours.config.motion_norm_num_groups == 8


def test_module_layout_matches_unet_stages(saved_pair):
    _, ours = saved_pair
    assert [len(b.motion_modules) for b in ours.down_blocks] == [2, 2]
    assert [len(b.motion_modules) for b in ours.up_blocks] == [3, 3]  # layers_per_block + 1
    assert [b.motion_modules[0].in_channels for b in ours.up_blocks] == [64, 32]  # reversed channels
    assert len(ours.mid_block.motion_modules) == 1 and ours.conv_in is None


@pytest.mark.parametrize("num_frames, height, width", [(1, 2, 2), (5, 3, 4), (32, 1, 3)])
def test_every_motion_module_matches_diffusers(saved_pair, num_frames, height, width):
    oracle, ours = saved_pair
    pairs = paired_modules(oracle, ours)
    assert len(pairs) == 2 * 2 + 1 + 2 * 3
    gen = torch.Generator().manual_seed(num_frames)
    worst = 0.0
    for name, oracle_module, our_module in pairs:
        channels = our_module.in_channels
        images = torch.randn(2 * num_frames, channels, height, width, generator=gen)  # [(B·F), C, H, W]
        with torch.no_grad():
            expected = oracle_module(images, num_frames=num_frames)
            got = our_module(images, num_frames)
        expected = getattr(expected, "sample", expected)
        assert got.shape == images.shape, name
        worst = max(worst, max_abs_diff(got, expected))
        # the module must change its input (the residual alone would match a broken transformer poorly)
        assert max_abs_diff(got, images) > 1e-3, name
    assert worst <= TOLERANCE, f"max abs diff {worst:.3g}"


def test_fresh_position_table_equals_diffusers():
    torch.manual_seed(0)
    oracle = OracleAdapter(**TINY)
    ours = MotionAdapter.from_config(TINY)
    key = "up_blocks.0.motion_modules.2.transformer_blocks.0.pos_embed.pe"
    expected, got = oracle.state_dict()[key], ours.state_dict()[key]
    assert got.shape == expected.shape == (1, 32, 64)
    assert max_abs_diff(got, expected) <= 1e-5


def test_loads_cast_to_requested_dtype(saved_pair, tmp_path):
    oracle, _ = saved_pair
    oracle.save_pretrained(tmp_path)
    half = MotionAdapter.from_pretrained(tmp_path, dtype=torch.float16)
    assert {t.dtype for t in half.state_dict().values()} == {torch.float16}


def test_released_config_builds_diffusers_state_dict_schema():
    raw = published_config(RELEASED)
    with torch.device("meta"):
        oracle = OracleAdapter.from_config(raw)
        ours = MotionAdapter.from_config(raw)
    assert_same_state_dict_schema(oracle, ours)
    # legacy keys diffusers ignores are kept for the round trip, not modelled
    assert ours.config.extra["motion_activation_fn"] == "geglu"
    assert ours.config.to_diffusers()["motion_cross_attention_dim"] is None


@pytest.mark.parametrize(
    "changes",
    [
        dict(conv_in_channels=4, use_motion_mid_block=False),
        dict(
            motion_num_attention_heads=(2, 4),
            motion_layers_per_block=(1, 2),
            motion_transformer_layers_per_block=(2, 1),
            motion_mid_block_layers_per_block=2,
            motion_transformer_layers_per_mid_block=(1, 3),
        ),
    ],
)
def test_config_variants_build_diffusers_state_dict_schema(changes):
    config = {**TINY, **changes}
    with torch.device("meta"):
        oracle, ours = OracleAdapter(**config), MotionAdapter.from_config(config)
    assert_same_state_dict_schema(oracle, ours)


def test_too_many_frames_is_a_clear_error(saved_pair):
    module = saved_pair[1].down_blocks[0].motion_modules[0]
    with pytest.raises(ValueError, match="num_frames=33 exceeds .*max_seq_length=32"):
        module(torch.zeros(33, 32, 2, 2), 33)
    with pytest.raises(ValueError, match="num_frames=4"):
        module(torch.zeros(6, 32, 2, 2), 4)
    with pytest.raises(ValueError, match="hidden_states must be"):
        module(torch.zeros(4, 16, 2, 2), 2)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(motion_norm_num_groups=12), "motion_norm_num_groups=12 must divide"),
        (dict(motion_num_attention_heads=(2, 2, 2)), "motion_num_attention_heads must be an int or have one"),
        (dict(motion_transformer_layers_per_mid_block=(1, 1)), "motion_transformer_layers_per_mid_block"),
        (dict(motion_transformer_layers_per_block=((1, 1), 1)), "transformer-layer counts"),
    ],
)
def test_bad_config_is_a_clear_error(changes, message):
    with pytest.raises(ValueError, match=message):
        MotionAdapter.from_config({**TINY, **changes})


def test_bad_module_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="norm_num_groups=32 must divide .*in_channels=48"):
        MotionModule(48, num_attention_heads=2)
    with pytest.raises(ValueError, match="positional_embeddings must be None or 'sinusoidal'"):
        BasicTransformerBlock(8, 2, 4, positional_embeddings="learned", num_positional_embeddings=4)


def test_adapter_has_no_forward(saved_pair):
    with pytest.raises(NotImplementedError, match="from_unet2d"):
        saved_pair[1](torch.zeros(1))


def test_motion_adapter_config_defaults_are_the_released_adapter():
    released = MotionAdapterConfig.from_diffusers(published_config(RELEASED))
    legacy = {k: v for k, v in released.extra.items() if not k.startswith("_")}
    assert released.to_diffusers() == {**MotionAdapterConfig().to_diffusers(), **legacy}
