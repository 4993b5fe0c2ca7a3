"""SD's image VAE (AutoencoderKL) against diffusers (the oracle): schema, encode/decode, slicing, tiling."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import AutoencoderKL as OracleVAE
from safetensors.torch import load_file, save_file

from tests.helpers import assert_same_state_dict_schema, max_abs_diff, perturbed_pair, published_config
from vidiff.models.vae_kl import AutoencoderKL, AutoencoderKLConfig

TOLERANCE = 1e-4
# Tiling must visibly change the output, or a test could pass with tiling silently off.
TILING_EFFECT = 1e-2

# Two narrow stages (latents at 1/2 size) keep this file fast on 2 cores; sample_size 16 → 16-pixel /
# 8-latent tiles, so a 24×32 image and its 12×16 latents are really tiled.
TINY = dict(
    block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=4,
    latent_channels=4,
    layers_per_block=2,
    sample_size=16,
)


def tiny_pair(seed: int = 0, **changes) -> tuple[OracleVAE, AutoencoderKL]:
    """A perturbed random diffusers VAE and ours holding the same weights (strict load)."""
    return perturbed_pair(OracleVAE, AutoencoderKL, {**TINY, **changes}, seed)


@pytest.fixture(scope="module")
def pair() -> tuple[OracleVAE, AutoencoderKL]:
    return tiny_pair()


@pytest.fixture
def fresh_pair() -> tuple[OracleVAE, AutoencoderKL]:
    """For tests that switch slicing / tiling on (state the module fixture must not keep)."""
    return tiny_pair(seed=7)


def images(batch: int = 2, height: int = 24, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(batch: int = 2, height: int = 12, width: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed))


def encode_diff(oracle: OracleVAE, ours: AutoencoderKL, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected, got = oracle.encode(x).latent_dist, ours.encode(x)
    return max(max_abs_diff(got.mean, expected.mean), max_abs_diff(got.std, expected.std))


def decode_diff(oracle: OracleVAE, ours: AutoencoderKL, z: torch.Tensor) -> float:
    with torch.no_grad():
        return max_abs_diff(ours.decode(z), oracle.decode(z).sample)


@pytest.mark.parametrize("name", ["sd15_vae.json", "i2vgenxl_vae.json"])
def test_released_configs_build_diffusers_state_dict_schema(name):
    raw = published_config(name)
    with torch.device("meta"):
        oracle = OracleVAE.from_config(raw)
        ours = AutoencoderKL.from_config(raw)
    assert_same_state_dict_schema(oracle, ours)
    assert list(ours.buffers()) == []
    assert (ours.tile_sample_min_size, ours.tile_latent_min_size) == (
        oracle.tile_sample_min_size,
        oracle.tile_latent_min_size,
    )


def test_defaults_are_sd15_values_and_diffusers_defaults_elsewhere():
    # diffusers fills the keys SD 1.5's config.json lacks (shift_factor, use_quant_conv...) with its defaults.
    raw = published_config("sd15_vae.json")
    with torch.device("meta"):
        oracle_config = OracleVAE.from_config(raw).config
    expected = {k: v for k, v in oracle_config.items() if not k.startswith("_")}
    got = AutoencoderKLConfig().to_diffusers()
    assert json.loads(json.dumps(got)) == json.loads(json.dumps(expected))


@pytest.mark.parametrize("layers_per_block", [1, 2])
def test_encode_matches_diffusers(layers_per_block):
    oracle, ours = tiny_pair(seed=1, layers_per_block=layers_per_block)
    x = images(batch=3, height=24, width=40)
    with torch.no_grad():
        assert ours.encode(x).mean.shape == (3, 4, 12, 20)
    diff = encode_diff(oracle, ours, x)
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("layers_per_block", [1, 2])
def test_decode_matches_diffusers(layers_per_block):
    oracle, ours = tiny_pair(seed=2, layers_per_block=layers_per_block)
    z = latents(batch=3, height=10, width=6)
    with torch.no_grad():
        assert ours.decode(z).shape == (3, 3, 20, 12)
    diff = decode_diff(oracle, ours, z)
    assert diff <= TOLERANCE, diff


def test_without_quant_convs_or_mid_block_attention_matches_diffusers():
    oracle, ours = tiny_pair(seed=3, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)
    assert ours.quant_conv is None and ours.post_quant_conv is None
    diff = max(encode_diff(oracle, ours, images(height=16, width=24)), decode_diff(oracle, ours, latents(2, 8, 12)))
    assert diff <= TOLERANCE, diff


def test_forward_matches_diffusers(pair):
    oracle, ours = pair
    x = images(height=16, width=24)
    with torch.no_grad():
        mode_diff = max_abs_diff(ours(x), oracle(x).sample)
        noise = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(5))
        expected = oracle(x, sample_posterior=True, generator=torch.Generator().manual_seed(5)).sample
        sample_diff = max_abs_diff(ours(x, sample_posterior=True, noise=noise), expected)
    assert max(mode_diff, sample_diff) <= TOLERANCE, (mode_diff, sample_diff)
    assert max_abs_diff(expected, oracle(x).sample) > TILING_EFFECT  # the noise mattered


def test_legacy_attention_names_load(pair, tmp_path):
    oracle, _ = pair
    oracle.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, tensor in load_file(weights).items():
        for new, old in old_names.items():
            if ".mid_block.attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = tensor
    assert sum(".query." in k or ".proj_attn." in k for k in legacy) == 8  # encoder + decoder, weight + bias
    save_file(legacy, weights)

    ours = AutoencoderKL.from_pretrained(tmp_path)
    reference = OracleVAE.from_pretrained(tmp_path).eval()  # diffusers renames them the same way
    x, z = images(height=16, width=16), latents(2, 8, 8)
    diff = max(encode_diff(oracle, ours, x), decode_diff(oracle, ours, z), decode_diff(reference, ours, z))
    assert diff <= TOLERANCE, diff


def test_legacy_and_current_name_together_is_an_error(pair):
    _, ours = pair
    state = dict(ours.state_dict())
    state["encoder.mid_block.attentions.0.query.weight"] = state["encoder.mid_block.attentions.0.to_q.weight"]
    with pytest.raises(ValueError, match="query.weight"):
        AutoencoderKL.rename_legacy_keys(state)


def test_slicing_matches_whole_batch_and_diffusers(fresh_pair):
    oracle, ours = fresh_pair
    x, z = images(batch=3, height=16, width=24), latents(batch=3, height=8, width=12)
    with torch.no_grad():
        whole_mean, whole_images = ours.encode(x).mean, ours.decode(z)
        ours.enable_slicing()
        oracle.enable_slicing()
        assert ours.use_slicing
        sliced_diff = max(max_abs_diff(ours.encode(x).mean, whole_mean), max_abs_diff(ours.decode(z), whole_images))
    diff = max(encode_diff(oracle, ours, x), decode_diff(oracle, ours, z), sliced_diff)
    assert diff <= TOLERANCE, diff
    ours.disable_slicing()
    assert not ours.use_slicing


def test_tiled_encode_matches_diffusers(fresh_pair):
    oracle, ours = fresh_pair
    x = images()  # 24×32 > 16-pixel tiles
    with torch.no_grad():
        untiled_oracle, untiled_ours = oracle.encode(x).latent_dist.mean, ours.encode(x).mean
        oracle.enable_tiling()
        ours.enable_tiling()
        assert ours.use_tiling and (ours.tile_sample_min_size, ours.tile_latent_min_size) == (16, 8)
        tiled_oracle, tiled_ours = oracle.encode(x).latent_dist.mean, ours.encode(x).mean
    assert tiled_ours.shape == (2, 4, 12, 16)
    assert max_abs_diff(tiled_oracle, untiled_oracle) > TILING_EFFECT
    assert max_abs_diff(tiled_ours, untiled_ours) > TILING_EFFECT
    diff = encode_diff(oracle, ours, x)
    assert diff <= TOLERANCE, diff


def test_tiled_decode_matches_diffusers(fresh_pair):
    oracle, ours = fresh_pair
    z = latents()  # 12×16 > 8-latent tiles
    with torch.no_grad():
        untiled_oracle, untiled_ours = oracle.decode(z).sample, ours.decode(z)
        oracle.enable_tiling()
        ours.enable_tiling()
        tiled_oracle, tiled_ours = oracle.decode(z).sample, ours.decode(z)
    assert tiled_ours.shape == (2, 3, 24, 32)
    assert max_abs_diff(tiled_oracle, untiled_oracle) > TILING_EFFECT
    assert max_abs_diff(tiled_ours, untiled_ours) > TILING_EFFECT
    diff = decode_diff(oracle, ours, z)
    assert diff <= TOLERANCE, diff
    ours.disable_tiling()
    with torch.no_grad():
        assert torch.equal(ours.decode(z), untiled_ours)


def test_tiling_with_slicing_matches_diffusers(fresh_pair):
    oracle, ours = fresh_pair
    for model in (oracle, ours):
        model.enable_tiling()
        model.enable_slicing()
    diff = max(encode_diff(oracle, ours, images(batch=3)), decode_diff(oracle, ours, latents(batch=3)))
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize(
    "sample_tile, overlap, size",
    [(12, 0.5, (24, 32)), (16, 0.25, (20, 28)), (8, 0.0, (20, 12))],
)
def test_other_tile_sizes_and_overlaps_match_diffusers(fresh_pair, sample_tile, overlap, size):
    oracle, ours = fresh_pair
    ours.enable_tiling(tile_sample_min_size=sample_tile, tile_overlap_factor=overlap)
    oracle.enable_tiling()
    oracle.tile_sample_min_size, oracle.tile_latent_min_size = sample_tile, sample_tile // 2
    oracle.tile_overlap_factor = overlap
    assert ours.tile_latent_min_size == sample_tile // 2
    x, z = images(height=size[0], width=size[1]), latents(height=size[0] // 2, width=size[1] // 2)
    diff = max(encode_diff(oracle, ours, x), decode_diff(oracle, ours, z))
    assert diff <= TOLERANCE, diff


def test_tiling_leaves_inputs_within_one_tile_alone(fresh_pair):
    _, ours = fresh_pair
    x, z = images(height=16, width=12), latents(height=8, width=6)
    with torch.no_grad():
        plain = ours.encode(x).mean, ours.decode(z)
        ours.enable_tiling()
        tiled = ours.encode(x).mean, ours.decode(z)
    assert torch.equal(plain[0], tiled[0]) and torch.equal(plain[1], tiled[1])


def test_tiles_bound_what_the_networks_see(fresh_pair):
    # Peak memory follows the largest input the encoder / decoder run on: with tiling, one tile.
    _, ours = fresh_pair
    seen: dict[str, list[tuple[int, ...]]] = {"encoder": [], "decoder": []}
    for name in seen:
        getattr(ours, name).register_forward_pre_hook(lambda _, args, name=name: seen[name].append(args[0].shape))
    ours.enable_tiling()
    with torch.no_grad():
        ours.encode(images(height=40, width=36))
        ours.decode(latents(height=20, width=18))
    assert len(seen["encoder"]) == 12 and len(seen["decoder"]) == 12  # 4 rows × 3 columns of windows each
    assert max(max(shape[-2:]) for shape in seen["encoder"]) == 16
    assert max(max(shape[-2:]) for shape in seen["decoder"]) == 8


def test_fp16_variant_round_trip_with_diffusers(pair, tmp_path):
    oracle, _ = pair
    half = copy.deepcopy(oracle).half()
    half.save_pretrained(tmp_path / "diffusers", variant="fp16")
    # Without dtype both libraries upcast the fp16 files to float32; dtype=float16 keeps them half.
    assert AutoencoderKL.from_pretrained(tmp_path / "diffusers", variant="fp16").dtype == torch.float32
    assert OracleVAE.from_pretrained(tmp_path / "diffusers", variant="fp16").dtype == torch.float32
    ours = AutoencoderKL.from_pretrained(tmp_path / "diffusers", variant="fp16", dtype=torch.float16)
    assert ours.dtype == torch.float16
    ours.save_pretrained(tmp_path / "vidiff", variant="fp16")
    assert (tmp_path / "vidiff" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    reloaded = OracleVAE.from_pretrained(tmp_path / "vidiff", variant="fp16")
    expected = half.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in reloaded.state_dict().items())
    # The fp16 weights, computed in float32 by both libraries.
    ours_fp32 = AutoencoderKL.from_pretrained(tmp_path / "diffusers", variant="fp16", dtype=torch.float32)
    oracle_fp32 = half.float().eval()
    diff = max(
        encode_diff(oracle_fp32, ours_fp32, images(height=16, width=16)),
        decode_diff(oracle_fp32, ours_fp32, latents(2, 8, 8)),
    )
    assert diff <= TOLERANCE, diff


def test_bad_inputs_name_the_argument(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="images"):
        ours.encode(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="latents"):
        ours.decode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="noise"):
        ours(images(height=8, width=8), noise=torch.zeros(2, 4, 4, 4))
    fresh = AutoencoderKL.from_config(TINY)
    with pytest.raises(ValueError, match="tile_overlap_factor"):
        fresh.enable_tiling(tile_overlap_factor=1.0)
    with pytest.raises(ValueError, match="tile_sample_min_size"):
        fresh.enable_tiling(tile_sample_min_size=0)
    with pytest.raises(ValueError, match="tile_latent_min_size"):
        fresh.enable_tiling(tile_sample_min_size=1)
    assert not fresh.use_tiling


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(act_fn="gelu"), "act_fn"),
        (dict(down_block_types=("DownBlock2D",) * 2), "down_block_types"),
        (dict(up_block_types=("UpDecoderBlock2D",) * 3), "block_out_channels"),
        (dict(norm_num_groups=12), "norm_num_groups"),
        (dict(latents_mean=(0.0, 1.0)), "latents_mean"),
    ],
)
def test_unsupported_config_values_name_the_key(change, key):
    with pytest.raises(ValueError, match=key):
        AutoencoderKLConfig.from_diffusers({**TINY, **change})
