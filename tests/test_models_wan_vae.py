"""Wan 2.1 / 2.2's causal video VAE against diffusers' AutoencoderKLWan (the oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan as OracleVAE
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify as oracle_unpatchify

from tests.helpers import assert_same_state_dict_schema, max_abs_diff, perturb_
from vidiff import AutoencoderKLWan
from vidiff.config import ConfigError
from vidiff.models.video_vae import VideoVAE
from vidiff.models.wan_vae import AutoencoderKLWanConfig
from vidiff.models.wan_vae_blocks import WanFrameAttention

WAN_CONFIGS = Path(__file__).parent / "configs" / "wan"  # copies of /work/shared/configs/wan
TOLERANCE = 1e-5
# Four stages (8× spatial, two temporal halvings) as released, at a few channels.
WAN21 = dict(
    base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
    latents_mean=[0.1, -0.2, 0.3, -0.4], latents_std=[1.5, 0.5, 2.0, 1.0],
)  # fmt: skip
# Wan 2.2's shape: residual stages, a wider decoder, 2 × 2 patches (12 channels in and out), 16× spatial.
WAN22 = dict(
    WAN21, base_dim=8, decoder_base_dim=12, z_dim=6, latents_mean=[0.0] * 6, latents_std=[1.0] * 6,
    is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
)  # fmt: skip
VARIANTS = {"wan21": (WAN21, (16, 24)), "wan22": (WAN22, (32, 48))}  # config, (H, W) of test videos


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict:
    """Per variant: a perturbed diffusers VAE and vidiff's load of what diffusers saved."""
    built = {}
    for seed, (name, (config, _)) in enumerate(VARIANTS.items()):
        torch.manual_seed(seed)
        oracle = perturb_(OracleVAE(**config), seed=seed + 1).eval()
        folder = tmp_path_factory.mktemp(name)
        oracle.save_pretrained(folder)
        built[name] = (oracle, AutoencoderKLWan.from_pretrained(folder), folder)
    return built


def video(batch: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents_for(oracle: OracleVAE, batch: int, frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    shape = (batch, oracle.config.z_dim, frames, height, width)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def oracle_raw_decode(oracle: OracleVAE, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' decoded frames before its clamp: the decoder's outputs, caught by a hook, unpatchified."""
    outputs: list[torch.Tensor] = []
    handle = oracle.decoder.register_forward_hook(lambda module, args, out: outputs.append(out))
    try:
        oracle.decode(latents)
    finally:
        handle.remove()
    return oracle_unpatchify(torch.cat(outputs, dim=2), oracle.config.patch_size or 1)


# ---- real configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("repository", sorted(p.parent.parent.name for p in WAN_CONFIGS.glob("*/vae/config.json")))
def test_released_configs_build_diffusers_schema(repository):
    raw = json.loads((WAN_CONFIGS / repository / "vae" / "config.json").read_text())
    with torch.device("meta"):
        oracle = OracleVAE.from_config(raw)
        ours = AutoencoderKLWan.from_config(raw)
    assert_same_state_dict_schema(oracle, ours)
    assert list(ours.buffers()) == []
    counts = json.loads((WAN_CONFIGS / "param_counts.json").read_text())
    expected = counts[f"/tmp/wancfg/_regenerated_diffusers_0.42.1/{repository}/vae"]["params"]
    assert sum(p.numel() for p in ours.parameters()) == expected
    # What vidiff writes holds every key diffusers 0.42.1 writes, with its values.
    written = ours.config.to_diffusers()
    oracle_config = {k: v for k, v in dict(oracle.config).items() if not k.startswith("_")}
    assert {k: written[k] for k in oracle_config} == json.loads(json.dumps(oracle_config))
    wan22 = raw.get("is_residual", False)
    assert (ours.spatial_scale_factor, ours.temporal_scale_factor) == ((16, 4) if wan22 else (8, 4))
    assert ours.config.z_dim == (48 if wan22 else 16) and ours.video_channels == 3
    assert list(ours.config.latents_mean) == raw["latents_mean"]


def test_defaults_are_wan21_and_clip_output_is_carried():
    raw = json.loads((WAN_CONFIGS / "Wan2.1-T2V-1.3B-Diffusers" / "vae" / "config.json").read_text())
    assert AutoencoderKLWanConfig.from_diffusers(raw) == AutoencoderKLWanConfig()
    raw22 = json.loads((WAN_CONFIGS / "Wan2.2-TI2V-5B-Diffusers" / "vae" / "config.json").read_text())
    config = AutoencoderKLWanConfig.from_diffusers(raw22)
    assert config["clip_output"] is False and config.to_diffusers()["clip_output"] is False


def test_save_pretrained_round_trips_through_diffusers(pairs, tmp_path):
    oracle, ours, folder = pairs["wan22"]
    ours.save_pretrained(tmp_path)
    reloaded = OracleVAE.from_pretrained(tmp_path)
    for key, tensor in oracle.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key
    saved = json.loads((folder / "config.json").read_text())
    written = json.loads((tmp_path / "config.json").read_text())
    assert {k: v for k, v in written.items() if not k.startswith("_")} == {
        k: v for k, v in saved.items() if not k.startswith("_")
    }


# ---- parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_frames", [1, 5, 9])
def test_encode_matches_diffusers(pairs, variant, num_frames):
    oracle, ours, _ = pairs[variant]
    height, width = VARIANTS[variant][1]
    videos = video(1, num_frames, height, width, seed=num_frames)
    with torch.no_grad():
        expected = oracle.encode(videos).latent_dist
        got = ours.encode(videos).latent_dist
        via_interface = ours.encode_video(videos)
    scale = ours.spatial_scale_factor
    assert got.mean.shape == (1, oracle.config.z_dim, (num_frames - 1) // 4 + 1, height // scale, width // scale)
    assert max_abs_diff(got.mean, expected.mean) <= TOLERANCE
    assert max_abs_diff(got.std, expected.std) <= TOLERANCE
    assert torch.equal(via_interface.mean, got.mean) and torch.equal(via_interface.mode(), got.mean)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("latent_frames", [1, 2, 3])
def test_decode_matches_diffusers(pairs, variant, latent_frames):
    oracle, ours, _ = pairs[variant]
    latents = latents_for(oracle, 1, latent_frames, 2, 3, seed=latent_frames)
    with torch.no_grad():
        expected = oracle.decode(latents).sample
        expected_raw = oracle_raw_decode(oracle, latents)
        got = ours.decode(latents).sample
        got_raw = ours.decode_video(latents)
    scale = ours.spatial_scale_factor
    assert got_raw.shape == (1, 3, 4 * (latent_frames - 1) + 1, 2 * scale, 3 * scale)
    assert max_abs_diff(got, expected) <= TOLERANCE
    assert max_abs_diff(got_raw, expected_raw) <= TOLERANCE
    if latent_frames > 1:  # decode_video is unclamped: some values of these weights leave [-1, 1]
        assert got_raw.abs().max() > 1.0 and torch.equal(got_raw.clamp(-1, 1), got)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_matches_diffusers_bit_for_bit(pairs, variant):
    # The same operations in the same order and memory layouts, so half precision rounds alike too.
    folder = pairs[variant][2]
    oracle = OracleVAE.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
    ours = AutoencoderKLWan.from_pretrained(folder, dtype=torch.bfloat16)
    height, width = (16, 24) if variant == "wan21" else (32, 96)  # wide enough for overlapping tiles below
    videos = video(1, 5, height, width, seed=13)
    with torch.no_grad():
        got = ours.encode_video(videos).mean
        assert got.dtype == torch.bfloat16 and torch.equal(got, oracle.encode(videos.bfloat16()).latent_dist.mean)
        frames = ours.decode_video(got)
        assert frames.dtype == torch.bfloat16 and torch.equal(frames.clamp(-1, 1), oracle.decode(got).sample)
        # Tiled, diffusers runs the quant convs per chunk / per latent frame, which rounds differently.
        tiles = (8, 16, 8, 8) if variant == "wan21" else (16, 48, 16, 32)
        oracle.enable_tiling(*tiles)
        ours.enable_tiling(*tiles)
        tiled = ours.encode(videos).latent_dist.mean
        assert not torch.equal(tiled, got) and torch.equal(tiled, oracle.encode(videos.bfloat16()).latent_dist.mean)
        assert torch.equal(ours.decode(tiled).sample, oracle.decode(tiled).sample)


def test_encode_ignores_frames_after_the_last_chunk_as_diffusers_does(pairs):
    oracle, ours, _ = pairs["wan21"]
    videos = video(1, 7, 16, 24, seed=7)
    with torch.no_grad():
        got = ours.encode(videos).latent_dist.mean
        assert max_abs_diff(got, oracle.encode(videos).latent_dist.mean) <= TOLERANCE
        assert torch.equal(got, ours.encode(videos[:, :, :5]).latent_dist.mean)
    with pytest.raises(ValueError, match="num_frames must be 4·k \\+ 1"):
        ours.encode_video(videos)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiled_encode_and_decode_match_diffusers(pairs, variant):
    oracle, ours, _ = pairs[variant]
    # Unequal height / width tiles and overlaps (8 and 16 pixels), so a swapped axis shows.
    tiles = dict(
        tile_sample_min_height=32, tile_sample_min_width=48, tile_sample_stride_height=24, tile_sample_stride_width=32
    )
    height, width = (48, 80) if variant == "wan21" else (64, 96)
    videos = video(1, 5, height, width, seed=3)
    try:
        with torch.no_grad():
            latents = oracle.encode(videos).latent_dist.mean
            untiled_latents = ours.encode(videos).latent_dist.mean
            untiled = ours.decode_video(latents)
            oracle.enable_tiling(**tiles)
            ours.enable_tiling(**tiles)
            expected_latents = oracle.encode(videos).latent_dist.mean
            expected = oracle.decode(latents).sample
            got_latents = ours.encode(videos).latent_dist.mean
            got = ours.decode(latents).sample
            got_raw = ours.decode_video(latents)
    finally:
        oracle.disable_tiling()
        ours.disable_tiling()
    assert got_latents.shape == untiled_latents.shape and got.shape == untiled.shape
    assert max_abs_diff(got_latents, untiled_latents) > 1e-3  # tiling really happened
    assert max_abs_diff(got_raw, untiled) > 1e-2
    assert max_abs_diff(got_latents, expected_latents) <= TOLERANCE
    assert max_abs_diff(got, expected) <= TOLERANCE
    assert torch.equal(got_raw.clamp(-1, 1), got)


@pytest.mark.parametrize("variant", VARIANTS)
def test_slicing_matches_diffusers_and_the_whole_batch(pairs, variant):
    oracle, ours, _ = pairs[variant]
    height, width = VARIANTS[variant][1]
    videos = video(2, 5, height, width, seed=5)
    latents = latents_for(oracle, 2, 2, 2, 3, seed=5)
    try:
        with torch.no_grad():
            whole = ours.encode(videos).latent_dist.mean, ours.decode_video(latents)
            oracle.enable_slicing()
            ours.enable_slicing()
            expected = oracle.encode(videos).latent_dist.mean, oracle.decode(latents).sample
            got = ours.encode(videos).latent_dist.mean, ours.decode(latents).sample
            sliced_raw = ours.decode_video(latents)
    finally:
        oracle.disable_slicing()
        ours.disable_slicing()
    assert max_abs_diff(got[0], expected[0]) <= TOLERANCE and max_abs_diff(got[1], expected[1]) <= TOLERANCE
    assert max_abs_diff(got[0], whole[0]) <= TOLERANCE and max_abs_diff(sliced_raw, whole[1]) <= TOLERANCE


# ---- the video-VAE interface ------------------------------------------------------------------------


def test_video_interface(pairs):
    for variant, (oracle, ours, _) in pairs.items():
        assert isinstance(ours, VideoVAE) and ours.dtype == torch.float32
        scale = 16 if variant == "wan22" else 8
        assert ours.spatial_scale_factor == ours.config.scale_factor_spatial == scale
        assert ours.temporal_scale_factor == ours.config.scale_factor_temporal == 4
        assert ours.latent_shape(9, 2 * scale, 3 * scale) == (oracle.config.z_dim, 3, 2, 3)
        with pytest.raises(ValueError, match="num_frames"):
            ours.latent_shape(8, 2 * scale, 3 * scale)


def test_decode_video_chunk_size_and_progress(pairs):
    oracle, ours, _ = pairs["wan21"]
    latents = latents_for(oracle, 1, 3, 2, 3, seed=9)
    seen: list[list[int]] = []

    def progress(steps):
        seen.append(list(steps))
        return iter(seen[-1])

    with torch.no_grad():
        plain = ours.decode_video(latents)
        chunked = ours.decode_video(latents, chunk_size=1, progress=progress)
        ours.enable_tiling(
            tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8, tile_sample_stride_width=8
        )
        try:
            ours.decode_video(latents, chunk_size=2, progress=progress)
        finally:
            ours.disable_tiling()
    assert torch.equal(plain, chunked)
    assert seen == [list(range(3)), list(range(3 * 2 * 3))]  # latent frames × (2 × 3 tiles, one step per cell)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            ours.decode_video(latents, chunk_size=bad)


def test_return_dict_false_and_forward_reconstruct_like_diffusers(pairs):
    oracle, ours, _ = pairs["wan21"]
    videos = video(1, 5, 16, 24, seed=19)
    with torch.no_grad():
        (posterior,) = ours.encode(videos, return_dict=False)
        (frames,) = ours.decode(posterior.mode(), return_dict=False)
        assert torch.equal(frames, ours(videos).sample)
        assert max_abs_diff(frames, oracle(videos).sample) <= TOLERANCE
        noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(2))
        sampled = ours(videos, sample_posterior=True, noise=noise).sample
        assert torch.equal(sampled, ours.decode(posterior.mean + posterior.std * noise).sample)


# ---- bad input ------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_clearly(pairs):
    _, ours21, _ = pairs["wan21"]
    oracle22, ours22, _ = pairs["wan22"]
    with pytest.raises(ValueError, match="4 channels"):
        ours21.decode(torch.zeros(1, 5, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        ours21.encode(torch.zeros(1, 4, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        ours21.encode_video(torch.zeros(3, 16, 16))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ours21.decode([[0.0]])
    with pytest.raises(ValueError, match="empty"):
        ours21.encode(torch.zeros(1, 3, 0, 16, 16))
    # Wan 2.2 needs sides the 2 × 2 patches and three pixel-shuffle halvings divide: 16·k.
    with pytest.raises(ValueError, match=r"height 40.*nearest valid: \[32, 48\]"):
        ours22.encode(torch.zeros(1, 3, 1, 40, 32))
    with pytest.raises(RuntimeError):  # diffusers fails on it too, deep inside torch
        oracle22.encode(torch.zeros(1, 3, 1, 40, 32))
    # Wan 2.1 pads before each stride-2 conv: any side of at least 8 pixels here (three halvings).
    with pytest.raises(ValueError, match=r"width 4.*nearest valid: \[8, 9\]"):
        ours21.encode(torch.zeros(1, 3, 1, 16, 4))
    odd = video(1, 1, 20, 9, seed=11)
    with torch.no_grad():
        got = ours21.encode(odd).latent_dist.mean
        assert got.shape == (1, 4, 1, 2, 1)
        assert max_abs_diff(got, pairs["wan21"][0].encode(odd).latent_dist.mean) <= TOLERANCE
    bad_tiles = (dict(tile_sample_stride_height=300), dict(tile_sample_min_width=-8), dict(tile_sample_stride_width=4))
    for options in bad_tiles:
        with pytest.raises(ValueError, match="tile_sample"):
            ours21.enable_tiling(**options)
    assert not ours21.use_tiling


def test_bad_configs_are_refused_clearly():
    with pytest.raises(ConfigError, match="latents_mean must have z_dim=4 entries"):
        AutoencoderKLWan.from_config({**WAN21, "latents_mean": [0.0] * 16})
    with pytest.raises(ConfigError, match="temperal_downsample"):
        AutoencoderKLWan.from_config({**WAN21, "temperal_downsample": [False, True]})
    with pytest.raises(ConfigError, match="patch_size"):
        AutoencoderKLWan.from_config({**WAN22, "in_channels": 3})
    with pytest.raises(ConfigError, match="z_dim"):
        AutoencoderKLWan.from_config({**WAN21, "z_dim": 0})


def test_encoder_attention_scales_load_and_run():
    # attn_scales puts a per-frame attention after the encoder resnets at those scales. diffusers
    # 0.42.1 builds them (same keys here) but its encode passes the feature cache to them and fails.
    config = {**WAN21, "attn_scales": [0.5]}
    torch.manual_seed(0)
    oracle = perturb_(OracleVAE(**config), seed=3).eval()
    ours = AutoencoderKLWan.from_config(config).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    videos = video(1, 5, 16, 24, seed=17)
    with pytest.raises(TypeError):
        oracle.encode(videos)
    attention = ours.encoder.down_blocks[3]  # resnet, downsample, resnet, attention (at scale ½), …
    assert isinstance(attention, WanFrameAttention)
    with torch.no_grad():
        got = ours.encode(videos).latent_dist.mean
        attention.proj.weight.zero_()  # the block becomes the identity
        attention.proj.bias.zero_()
        assert max_abs_diff(ours.encode(videos).latent_dist.mean, got) > 1e-4
        latents = latents_for(oracle, 1, 2, 2, 3)
        assert max_abs_diff(ours.decode(latents).sample, oracle.decode(latents).sample) <= TOLERANCE
    assert got.shape == (1, 4, 2, 2, 3) and torch.isfinite(got).all()
