"""SVD's temporal-decoder VAE and the shared 2-D VAE parts against diffusers (the oracle)."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder as OracleVAE
from diffusers.models.autoencoders.vae import Decoder as OracleDecoder
from diffusers.models.autoencoders.vae import Encoder as OracleEncoder

from tests.helpers import (
    assert_same_state_dict_schema,
    diffusers_round_trip,
    max_abs_diff,
    perturb_,
    perturbed_pair,
    published_config,
)
from vidiff.models.vae import Decoder, Encoder, LatentDistribution
from vidiff.models.vae_temporal import AutoencoderKLTemporalDecoder, AutoencoderKLTemporalDecoderConfig

TOLERANCE = 1e-4

# layers_per_block=2: with 1, the decoder's mid-block attention exists but is never run.
TINY = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    layers_per_block=2,
    latent_channels=4,
)


def tiny_pair(seed: int = 0, **changes) -> tuple[OracleVAE, AutoencoderKLTemporalDecoder]:
    return perturbed_pair(OracleVAE, AutoencoderKLTemporalDecoder, {**TINY, **changes}, seed)


def test_released_config_builds_diffusers_state_dict_schema():
    raw = published_config("svd_xt_vae.json")
    with torch.device("meta"):
        oracle = OracleVAE.from_config(raw)
        ours = AutoencoderKLTemporalDecoder.from_config(raw)
    assert_same_state_dict_schema(oracle, ours)
    assert list(ours.buffers()) == []


def test_defaults_are_the_released_svd_xt_values():
    raw = published_config("svd_xt_vae.json")
    raw.pop("_class_name")
    assert AutoencoderKLTemporalDecoderConfig().to_diffusers() == raw


@pytest.mark.parametrize("layers_per_block", [1, 2])
def test_encode_matches_diffusers_latent_dist(layers_per_block):
    oracle, ours = tiny_pair(layers_per_block=layers_per_block)
    images = torch.randn(3, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = oracle.encode(images).latent_dist
        got = ours.encode(images)
    assert got.mean.shape == (3, 4, 8, 12)
    diff = max(max_abs_diff(got.mean, expected.mean), max_abs_diff(got.std, expected.std))
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("layers_per_block", [1, 2])
@pytest.mark.parametrize("num_frames", [1, 3])
def test_decode_matches_diffusers(num_frames, layers_per_block):
    oracle, ours = tiny_pair(seed=2, layers_per_block=layers_per_block)
    latents = torch.randn(6, 4, 6, 10, generator=torch.Generator().manual_seed(2))  # two videos of 3, or 6 of 1
    with torch.no_grad():
        got = ours.decode(latents, num_frames=num_frames)
        expected = oracle.decode(latents, num_frames=num_frames).sample
    assert got.shape == (6, 3, 12, 20)
    diff = max_abs_diff(got, expected)
    assert diff <= TOLERANCE, diff


def test_decode_mixes_frames_of_a_video_only():
    # Changing frame 0 of video 0 changes video 0's other frames (temporal layers), never video 1.
    _, ours = tiny_pair(seed=3)
    latents = torch.randn(6, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    edited = latents.clone()
    edited[0] += 1.0
    with torch.no_grad():
        before, after = ours.decode(latents, 3), ours.decode(edited, 3)
    assert max_abs_diff(before[1:3], after[1:3]) > 1e-3
    assert max_abs_diff(before[3:], after[3:]) == 0.0


def test_latent_distribution_sample_uses_callers_noise():
    _, ours = tiny_pair()
    with torch.no_grad():
        dist = ours.encode(torch.randn(2, 3, 8, 8))
    noise = torch.randn_like(dist.mean)
    assert torch.equal(dist.sample(noise), dist.mean + torch.exp(0.5 * dist.logvar) * noise)
    assert dist.mode() is dist.mean
    with pytest.raises(ValueError, match="noise"):
        dist.sample(torch.randn(1, 4, 4, 4))


def test_latent_distribution_clamps_logvar_like_diffusers():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = torch.randn(2, 8, 3, 3) * 40  # log-variances beyond [−30, 20]
    ours, theirs = LatentDistribution.from_moments(moments), DiagonalGaussianDistribution(moments)
    assert torch.equal(ours.logvar, theirs.logvar)
    assert torch.equal(ours.std, theirs.std)


def test_2d_encoder_and_decoder_match_diffusers():
    # The 2-D parts SD 1.5's AutoencoderKL reuses: other norm groups, no mid-block attention.
    torch.manual_seed(4)
    enc_kwargs = dict(in_channels=3, out_channels=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
    oracle_encoder = perturb_(OracleEncoder(down_block_types=("DownEncoderBlock2D",) * 2, **enc_kwargs)).eval()
    encoder = Encoder(**enc_kwargs).eval()
    encoder.load_state_dict(oracle_encoder.state_dict(), strict=True)
    dec_kwargs = dict(in_channels=4, out_channels=3, block_out_channels=(16, 32), layers_per_block=2,
                      norm_num_groups=8, mid_block_add_attention=False)
    oracle_decoder = perturb_(OracleDecoder(up_block_types=("UpDecoderBlock2D",) * 2, **dec_kwargs)).eval()
    decoder = Decoder(**dec_kwargs).eval()
    decoder.load_state_dict(oracle_decoder.state_dict(), strict=True)
    images, latents = torch.randn(2, 3, 12, 16), torch.randn(2, 4, 5, 7)
    with torch.no_grad():
        diff = max(
            max_abs_diff(encoder(images), oracle_encoder(images)),
            max_abs_diff(decoder(latents), oracle_decoder(latents)),
        )
    assert diff <= TOLERANCE, diff


def test_diffusers_checkpoint_round_trips_through_vidiff(tmp_path):
    oracle, _ = tiny_pair(seed=5)
    ours, reloaded = diffusers_round_trip(oracle, AutoencoderKLTemporalDecoder, tmp_path)
    latents = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        got = ours.decode(latents, 2)
        diff = max(
            max_abs_diff(got, oracle.decode(latents, num_frames=2).sample),
            max_abs_diff(got, reloaded.decode(latents, num_frames=2).sample),
        )
    assert diff <= TOLERANCE, diff


def test_parameters_are_float32_and_half_precision_runs_on_cpu():
    _, ours = tiny_pair()
    assert {p.dtype for p in ours.parameters()} == {torch.float32}
    for dtype in (torch.float16, torch.bfloat16):
        model = AutoencoderKLTemporalDecoder.from_config(TINY).eval()
        model.load_state_dict(ours.state_dict())
        model.to(dtype)
        with torch.no_grad():
            latents = model.encode(torch.rand(2, 3, 16, 16) * 2 - 1).mode()
            images = model.decode(latents, num_frames=2)
        assert latents.dtype == images.dtype == dtype
        assert torch.isfinite(latents).all() and torch.isfinite(images).all()


def test_bad_inputs_name_the_argument():
    _, ours = tiny_pair()
    with pytest.raises(ValueError, match="num_frames"):
        ours.decode(torch.zeros(4, 4, 4, 4), num_frames=3)
    with pytest.raises(ValueError, match="latents"):
        ours.decode(torch.zeros(4, 3, 4, 4), num_frames=2)
    with pytest.raises(ValueError, match="images"):
        ours.encode(torch.zeros(2, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="down_block_types"):
        AutoencoderKLTemporalDecoderConfig.from_diffusers({**TINY, "down_block_types": ("DownBlock2D",) * 2})
