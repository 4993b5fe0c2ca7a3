"""Tiled VAE decoding (and encoding) for every pipeline, including SVD's temporal decoder.

diffusers has no tiling for ``AutoencoderKLTemporalDecoder`` (its issue 9958), so there is no oracle:
these tests check the properties tiling promises instead.

* Seams: on a network that works pixel by pixel, tiling must give the untiled result to float
  rounding, for any tile size and overlap (:class:`AlignedTileLayout`), so every output pixel is
  where it belongs and the cross-fade weights sum to one.
* Tolerance: on a real (tiny, random, perturbed) temporal VAE each tile sees only its window, so
  frames differ from untiled ones. Measured on the fixture below (4 levels of 32 channels, two
  videos of 3 frames, a 16 × 24 latent, 64-pixel tiles, overlap 0.25): mean |Δ| 0.16, max |Δ| 1.6,
  against an untiled output of standard deviation 0.36 (diffusers' own 2-D tiling of an
  AutoencoderKL of the same widths differs from its untiled output by mean 0.38 / max 3.9 at a std
  of 0.6: random VAEs are far less smooth than trained ones). The test bounds mean |Δ| by
  :data:`MEAN_TOLERANCE` and max |Δ| by :data:`MAX_TOLERANCE`. Pipelines' frames (in [0, 1]) are
  bounded per pipeline by :data:`PIPELINE_TOLERANCES` (mean and 99th percentile, measured there).
* Frames are mixed only within a decode chunk, exactly as untiled; inputs no larger than a tile
  and switched-off tiling are bit-identical to the plain path.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.helpers import perturb_
from tests.svd_checkpoint import random_image
from vidiff.models.vae_temporal import AutoencoderKLTemporalDecoder, AutoencoderKLTemporalDecoderConfig
from vidiff.models.vae_tiling import AlignedTileLayout, TileLayout, map_tiles

# Measured on the fixture (see the module docstring): mean 0.16, max 1.6.
MEAN_TOLERANCE = 0.25
MAX_TOLERANCE = 2.5
# Pipelines' frames in [0, 1], 64 × 96, 3 frames, 32-pixel tiles (4 latent pixels), overlap 0.25.
# Measured (mean |Δ|, 99th percentile of |Δ|): SVD 0.12 / 0.44, I2VGen-XL 0.22 / 0.78, AnimateDiff
# 0.09 / 0.39 (untiled frames' std 0.19–0.26). The bounds are those with about 1.3× headroom; a max
# bound would say nothing here (frames are clipped to [0, 1]).
PIPELINE_TOLERANCES = {  # fixture: (mean |Δ|, 99th percentile of |Δ|)
    "vidiff_svd": (0.16, 0.6),
    "vidiff_i2vgen_xl": (0.3, 0.95),
    "vidiff_animatediff": (0.12, 0.55),
}


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLTemporalDecoder:
    config = AutoencoderKLTemporalDecoderConfig(
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, sample_size=32
    )
    torch.manual_seed(0)
    return perturb_(AutoencoderKLTemporalDecoder(config), seed=2).eval()


@pytest.fixture
def fresh_vae(vae) -> AutoencoderKLTemporalDecoder:
    """A copy whose tiling state a test may change."""
    return copy.deepcopy(vae)


def latents(frames: int = 6, height: int = 16, width: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(frames, 4, height, width, generator=torch.Generator().manual_seed(seed))


def pixelwise_decoder(tile: torch.Tensor) -> torch.Tensor:
    # [N, C, h, w] → [N, C, 8h, 8w]: each output pixel depends on one latent pixel only.
    return F.interpolate(torch.tanh(tile) * 3.0, scale_factor=8, mode="nearest")


# ------------------------------------------------------------------------------------------ seams
@pytest.mark.parametrize("tile, overlap", [(8, 0.25), (6, 0.25), (5, 0.4), (7, 0.5), (4, 0.0), (3, 0.25)])
def test_aligned_seams_are_exact_for_a_pixelwise_network(tile, overlap):
    z = torch.randn(2, 3, 13, 22, generator=torch.Generator().manual_seed(0))
    expected = pixelwise_decoder(z)
    got = map_tiles(pixelwise_decoder, z, AlignedTileLayout.for_scale(tile, overlap, 8, decode=True))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    images = torch.randn(1, 3, 8 * 13, 8 * 22, generator=torch.Generator().manual_seed(1))
    got = map_tiles(lambda x: F.avg_pool2d(x, 8), images, AlignedTileLayout.for_scale(tile, overlap, 8, decode=False))
    torch.testing.assert_close(got, F.avg_pool2d(images, 8), rtol=0, atol=1e-6)


def test_diffusers_layout_misplaces_seams_where_the_aligned_one_does_not():
    # Why the temporal VAE has its own layout: diffusers' rounding grows the image at a 6-latent tile.
    z = torch.randn(1, 3, 13, 22)
    assert map_tiles(pixelwise_decoder, z, TileLayout(6, 48, 0.25)).shape != pixelwise_decoder(z).shape


# ---------------------------------------------------------------------------- the temporal decoder
def test_tiled_decode_is_within_the_stated_tolerance(fresh_vae):
    z = latents()
    with torch.no_grad():
        expected = fresh_vae.decode(z, num_frames=3)
        fresh_vae.enable_tiling(tile_sample_min_size=64)
        got = fresh_vae.decode(z, num_frames=3)
    assert got.shape == expected.shape == (6, 3, 128, 192)
    difference = (got - expected).abs()
    assert difference.max() > 1e-3  # tiling really ran
    assert difference.mean() <= MEAN_TOLERANCE, difference.mean()
    assert difference.max() <= MAX_TOLERANCE, difference.max()


@pytest.mark.parametrize("height, width", [(8, 8), (8, 5), (3, 8)])
def test_latents_within_one_tile_decode_bit_identically(fresh_vae, height, width):
    z = latents(3, height, width)
    with torch.no_grad():
        expected = fresh_vae.decode(z, num_frames=3)
        fresh_vae.enable_tiling(tile_latent_min_size=8)
        got = fresh_vae.decode(z, num_frames=3)
    assert torch.equal(got, expected)


def test_disable_tiling_restores_bit_identical_frames(fresh_vae):
    z = latents()
    with torch.no_grad():
        expected = fresh_vae.decode(z, num_frames=3)
        fresh_vae.enable_tiling(tile_sample_min_size=64)
        fresh_vae.decode(z, num_frames=3)
        fresh_vae.disable_tiling()
        assert torch.equal(fresh_vae.decode(z, num_frames=3), expected)


def test_frames_are_mixed_only_within_a_decode_chunk(fresh_vae):
    video = torch.randn(1, 4, 5, 16, 24, generator=torch.Generator().manual_seed(4))  # [B, C, F, h, w]
    fresh_vae.enable_tiling(tile_sample_min_size=64)
    with torch.no_grad():
        chunked = fresh_vae.decode_video(video, chunk_size=2)  # chunks: frames 0-1, 2-3, 4
        alone = fresh_vae.decode_video(video[:, :, 2:4], chunk_size=2)
        whole = fresh_vae.decode_video(video)  # one chunk of 5 frames
    assert torch.equal(chunked[:, :, 2:4], alone)
    # The temporal layers do mix frames inside a tiled chunk: a longer chunk changes them.
    assert (whole[:, :, 2:4] - alone).abs().max() > 1e-3


def test_tiles_span_every_frame_of_the_chunk(fresh_vae):
    # Each tile runs the decoder on all frames at once, so a tiled chunk equals, tile for tile, the
    # untiled decoder run on that window of every frame (here: the top-left tile's kept block).
    z = latents(3)
    fresh_vae.enable_tiling(tile_latent_min_size=8)
    with torch.no_grad():
        tiled = fresh_vae.decode(z, num_frames=3)
        window = fresh_vae.decoder(z[:, :, :8, :8], 3)
    keep = 8 * 6  # one step (6 latent pixels) of output, before the next tile fades in
    assert torch.equal(tiled[:, :, :keep, :keep], window[:, :, :keep, :keep])


def test_tiled_encode_is_close_and_small_images_are_untouched(fresh_vae):
    images = torch.randn(2, 3, 128, 192, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    small = images[:, :, :64, :64]
    with torch.no_grad():
        expected, expected_small = fresh_vae.encode(images).mean, fresh_vae.encode(small).mean
        fresh_vae.enable_tiling(tile_sample_min_size=64)
        got, got_small = fresh_vae.encode(images).mean, fresh_vae.encode(small).mean
    assert got.shape == expected.shape == (2, 4, 16, 24)
    assert torch.equal(got_small, expected_small)
    difference = (got - expected).abs()
    assert 1e-4 < difference.max() <= MAX_TOLERANCE and difference.mean() <= MEAN_TOLERANCE


def test_slicing_gives_the_same_frames(fresh_vae):
    z = latents()
    with torch.no_grad():
        expected = fresh_vae.decode(z, num_frames=3)
        fresh_vae.enable_slicing()
        got = fresh_vae.decode(z, num_frames=3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sample_size, tile", [(768, 384), (200, 96), (100, 64), (8, 64)])
def test_default_tile_is_half_the_sample_size_in_whole_latent_pixels(sample_size, tile):
    with torch.device("meta"):
        model = AutoencoderKLTemporalDecoder(AutoencoderKLTemporalDecoderConfig(sample_size=sample_size))
    model.enable_tiling()
    assert (model.tile_sample_min_size, model.tile_latent_min_size, model.tile_overlap_factor) == (tile, tile // 8, 0.25)


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(tile_overlap_factor=1.0), ValueError, "tile_overlap_factor"),
        (dict(tile_overlap_factor=-0.1), ValueError, "tile_overlap_factor"),
        (dict(tile_overlap_factor="0.25"), TypeError, "tile_overlap_factor"),
        (dict(tile_overlap_factor=0.9, tile_latent_min_size=4), ValueError, "tile_overlap_factor"),
        (dict(tile_sample_min_size=0), ValueError, "tile_sample_min_size"),
        (dict(tile_sample_min_size=64.0), ValueError, "tile_sample_min_size"),
        (dict(tile_sample_min_size=True), ValueError, "tile_sample_min_size"),
        (dict(tile_sample_min_size=100), ValueError, "multiple of 8"),
        (dict(tile_latent_min_size=-2), ValueError, "tile_latent_min_size"),
        (dict(tile_sample_min_size=64, tile_latent_min_size=4), ValueError, "tile_latent_min_size"),
    ],
)
def test_bad_tile_options_name_the_argument(fresh_vae, options, error, match):
    with pytest.raises(error, match=match):
        fresh_vae.enable_tiling(**options)
    assert not fresh_vae.use_tiling


# ----------------------------------------------------------------------------- the pipeline switch
def _fresh(pipe):
    """The session pipeline's components with a private copy of its VAE (whose state the test changes)."""
    return type(pipe)(**{**{name: getattr(pipe, name) for name in pipe.components}, "vae": copy.deepcopy(pipe.vae)})


def _call(pipe):
    image = random_image(96, 64)
    arguments = dict(height=64, width=96, num_frames=3, num_inference_steps=2, output_type="np")
    kind = type(pipe).__name__
    if kind == "AnimateDiffPipeline":
        arguments["prompt"] = "a rocket"
    elif kind == "I2VGenXLPipeline":
        arguments.update(prompt="a rocket", image=image)
    else:  # StableVideoDiffusionPipeline
        arguments["image"] = image
    return np.asarray(pipe(**arguments, generator=torch.Generator().manual_seed(0)).frames)


@pytest.mark.parametrize("name", ["vidiff_svd", "vidiff_i2vgen_xl", "vidiff_animatediff"])
def test_pipeline_switch(request, name):
    pipe = _fresh(request.getfixturevalue(name))
    plain = _call(pipe)
    pipe.enable_vae_tiling(tile_sample_min_size=32)
    assert pipe.vae.use_tiling and pipe.vae.tile_sample_min_size == 32
    tiled = _call(pipe)
    pipe.disable_vae_tiling()
    again = _call(pipe)
    difference = np.abs(tiled - plain)
    mean_bound, percentile_bound = PIPELINE_TOLERANCES[name]
    assert tiled.shape == plain.shape
    assert difference.max() > 1e-4  # the decoder really ran in tiles
    assert difference.mean() <= mean_bound, difference.mean()
    assert np.quantile(difference, 0.99) <= percentile_bound, np.quantile(difference, 0.99)
    assert np.array_equal(again, plain)


def test_pipeline_slicing_switch(vidiff_svd):
    pipe = _fresh(vidiff_svd)
    pipe.enable_vae_slicing()
    assert pipe.vae.use_slicing
    pipe.disable_vae_slicing()
    assert not pipe.vae.use_slicing


def test_pipeline_rejects_bad_tile_options(vidiff_animatediff):
    pipe = _fresh(vidiff_animatediff)
    with pytest.raises(ValueError, match="tile_overlap_factor"):
        pipe.enable_vae_tiling(tile_overlap_factor=1.5)
    assert not pipe.vae.use_tiling
