"""The one video-VAE interface (vidiff.models.video_vae) over the 2-D VAE and SVD's temporal decoder.

References are written by hand here the way pipelines used to do it (permute to an image batch,
call the 4-D image API, permute back), so the interface must give bit-identical numbers; SVD's
chunking is also checked against diffusers' decoder run the way diffusers' pipeline runs it.
"""

from __future__ import annotations

import types

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder as OracleTemporalVAE

from tests.helpers import max_abs_diff, perturb_, perturbed_pair
from vidiff.models import video_vae
from vidiff.models.vae_kl import AutoencoderKL
from vidiff.models.vae_temporal import AutoencoderKLTemporalDecoder
from vidiff.models.video_vae import VideoVAE, float32_copy, upcast_if_forced
from vidiff.pipelines.base import Pipeline

KL_TINY = {
    "block_out_channels": (16, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "norm_num_groups": 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "sample_size": 16,
}
# layers_per_block=2: with 1 the temporal decoder's mid-block attention is never run.
TEMPORAL_TINY = {
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "layers_per_block": 2,
    "latent_channels": 4,
}
BATCH, FRAMES = 2, 3


def kl_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return perturb_(AutoencoderKL.from_config(KL_TINY), seed=seed + 1).eval()


def temporal_vae(seed: int = 0) -> AutoencoderKLTemporalDecoder:
    torch.manual_seed(seed)
    return perturb_(AutoencoderKLTemporalDecoder.from_config(TEMPORAL_TINY), seed=seed + 1).eval()


def video(seed: int = 0, height: int = 8, width: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, 3, FRAMES, height, width, generator=gen) * 2 - 1  # [B, 3, F, H, W]


def latents(seed: int = 1, height: int = 4, width: int = 6) -> torch.Tensor:
    return torch.randn(BATCH, 4, FRAMES, height, width, generator=torch.Generator().manual_seed(seed))


def to_images(videos: torch.Tensor) -> torch.Tensor:
    return videos.permute(0, 2, 1, 3, 4).flatten(0, 1)  # [B·F, C, H, W], as pipelines did by hand


def to_videos(images: torch.Tensor, num_frames: int) -> torch.Tensor:
    return images.unflatten(0, (-1, num_frames)).permute(0, 2, 1, 3, 4)


def hand_decode(decode_chunk, latents: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The pipelines' decode before the interface: flatten all frames, decode chunk by chunk."""
    flat = to_images(latents)
    pieces = [decode_chunk(flat[i : i + chunk_size]) for i in range(0, flat.shape[0], chunk_size)]
    return to_videos(torch.cat(pieces), latents.shape[2])


# ------------------------------------------------------------------ both VAEs vs hand references
@pytest.mark.parametrize("make", [kl_vae, temporal_vae], ids=["kl", "temporal"])
def test_encode_video_is_the_image_encoder_per_frame(make):
    vae = make()
    assert isinstance(vae, VideoVAE)
    clip = video()
    with torch.no_grad():
        got = vae.encode_video(clip)
        expected = vae.encode(to_images(clip))
        one_frame = vae.encode(clip[1, :, 2][None])  # video 1, frame 2 on its own
    assert got.mean.shape == (BATCH, *vae.latent_shape(FRAMES, 8, 12))
    assert torch.equal(got.mean, to_videos(expected.mean, FRAMES))
    assert torch.equal(got.logvar, to_videos(expected.logvar, FRAMES))
    torch.testing.assert_close(got.mean[1, :, 2], one_frame.mean[0])
    noise = torch.randn_like(got.mean)
    assert torch.equal(got.sample(noise), got.mean + got.std * noise)


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 6])
def test_kl_decode_video_matches_hand_loop(chunk_size):
    vae, z = kl_vae(), latents()
    with torch.no_grad():
        got = vae.decode_video(z, chunk_size)
        expected = hand_decode(vae.decode, z, chunk_size)
    assert got.shape == (BATCH, 3, FRAMES, 8, 12)
    assert torch.equal(got, expected)


def test_kl_decode_video_one_frame_per_chunk_is_a_per_frame_loop():
    vae, z = kl_vae(), latents()
    with torch.no_grad():
        got = vae.decode_video(z, chunk_size=1)
        frames = [[vae.decode(z[b, :, f][None])[0] for f in range(FRAMES)] for b in range(BATCH)]
    expected = torch.stack([torch.stack(row, dim=1) for row in frames])  # [B, 3, F, H, W]
    assert torch.equal(got, expected)


def test_kl_chunked_decode_does_not_depend_on_chunk_size():
    vae, z = kl_vae(seed=3), latents(seed=3)
    with torch.no_grad():
        outputs = [vae.decode_video(z, chunk) for chunk in (None, 1, 2, 4, 5)]
    assert max_abs_diff(outputs[0], vae.decode(to_images(z)).unflatten(0, (BATCH, FRAMES)).transpose(1, 2)) == 0
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 4, 6])
def test_temporal_decode_video_keeps_todays_chunking(chunk_size):
    vae, z = temporal_vae(seed=2), latents(seed=2)
    window = FRAMES if chunk_size is None else chunk_size  # None: each video one window
    with torch.no_grad():
        got = vae.decode_video(z, chunk_size)
        expected = hand_decode(lambda chunk: vae.decode(chunk, num_frames=chunk.shape[0]), z, window)
    assert got.shape == (BATCH, 3, FRAMES, 8, 12)
    assert torch.equal(got, expected)


def test_temporal_chunks_span_videos_like_diffusers_pipeline():
    # diffusers' SVD decode_latents: [B, F, C, h, w] flattened to one sequence, chunks of
    # decode_chunk_size frames, each decoded with num_frames = the chunk's length.
    oracle, ours = perturbed_pair(OracleTemporalVAE, AutoencoderKLTemporalDecoder, TEMPORAL_TINY, seed=4)
    z = latents(seed=4)
    flat = z.permute(0, 2, 1, 3, 4).flatten(0, 1)
    results = {}
    with torch.no_grad():
        for chunk in (2, 3, 4):
            pieces = [oracle.decode(flat[i : i + chunk], num_frames=flat[i : i + chunk].shape[0]).sample for i in range(0, flat.shape[0], chunk)]
            expected = torch.cat(pieces).unflatten(0, (BATCH, FRAMES)).permute(0, 2, 1, 3, 4)
            results[chunk] = ours.decode_video(z, chunk)
            assert max_abs_diff(results[chunk], expected) <= 1e-4
    # The quirk is real: the windows change the frames.
    assert max_abs_diff(results[2], results[3]) > 1e-3
    assert max_abs_diff(results[4], results[3]) > 1e-3


def test_progress_wraps_the_chunk_starts():
    vae, z = kl_vae(), latents()
    seen = []

    def progress(starts):
        seen.append(list(starts))
        return starts

    with torch.no_grad():
        vae.decode_video(z, 4, progress=progress)
    assert seen == [[0, 4]]


def test_pipeline_decode_scales_casts_and_labels_the_bar():
    vae, z = kl_vae(), latents()
    bars = []

    def progress_bar(iterable, total=None, **kwargs):
        bars.append((list(iterable), total, kwargs))
        return iterable

    fake = types.SimpleNamespace(vae=vae.to(torch.bfloat16), progress_bar=progress_bar)
    with torch.no_grad():
        got = Pipeline._decode(fake, z, 2)
        expected = vae.decode_video(z / vae.config.scaling_factor, 2).float()
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert bars == [([0, 2, 4], 3, {"desc": "decoding"})]


# ------------------------------------------------------------------ shapes and factors
def test_scale_factors_and_latent_shape():
    with torch.device("meta"):
        released_kl, released_svd = AutoencoderKL.from_config({}), AutoencoderKLTemporalDecoder.from_config({})
    for vae in (released_kl, released_svd):
        assert (vae.spatial_scale_factor, vae.temporal_scale_factor) == (8, 1)
        assert vae.latent_shape(14, 576, 1024) == (4, 14, 72, 128)
    assert kl_vae().spatial_scale_factor == temporal_vae().spatial_scale_factor == 2
    assert kl_vae().latent_shape(5, 16, 20) == (4, 5, 8, 10)


def test_latent_shape_of_a_time_compressing_vae():
    # Wan's causal VAE: 16 channels, 8× in space, 4× in time after a first frame of its own.
    assert video_vae.latent_shape(16, 8, 4, 81, 480, 832) == (16, 21, 60, 104)
    assert video_vae.latent_shape(16, 8, 4, 1, 64, 64) == (16, 1, 8, 8)
    with pytest.raises(ValueError, match=r"num_frames must be 4·k \+ 1.*e\.g\. 81"):
        video_vae.latent_shape(16, 8, 4, 82, 480, 832)
    with pytest.raises(ValueError, match="height"):
        video_vae.latent_shape(4, 8, 1, 3, 0, 64)


# ------------------------------------------------------------------ upcasting without mutation
@pytest.mark.parametrize("make", [kl_vae, temporal_vae], ids=["kl", "temporal"])
def test_forced_upcast_never_changes_the_shared_module(make):
    half = make().to(torch.float16)
    assert half.config.force_upcast
    before = [(name, tensor, tensor.dtype) for name, tensor in half.state_dict(keep_vars=True).items()]
    reference = make()  # float32 twin: the same fp16-representable weights, cast exactly
    reference.load_state_dict(half.state_dict())
    during = []

    def watch(module, args):
        # Runs inside the float32 copy's forward (hooks travel with the copy): the shared module,
        # seen from here, must still hold its own float16 tensors.
        now = half.state_dict(keep_vars=True)
        during.append(
            module is not half.encoder
            and module.conv_in.weight.dtype == torch.float32
            and all(now[name] is tensor and tensor.dtype == dtype for name, tensor, dtype in before)
        )

    half.encoder.register_forward_pre_hook(watch)
    clip = video()
    with torch.no_grad():
        upcast = upcast_if_forced(half)
        got = upcast.encode_video(clip).mode()
        expected = reference.encode_video(clip).mode()
    assert upcast is not half and upcast.dtype == torch.float32
    assert during == [True]
    assert torch.equal(got, expected)
    after = half.state_dict(keep_vars=True)
    assert all(after[name] is tensor and tensor.dtype == dtype == torch.float16 for name, tensor, dtype in before)


def test_interrupted_upcast_leaves_the_module_as_it_was():
    half = kl_vae().to(torch.float16)
    weights = list(half.parameters())

    def fail(module, args):
        raise KeyboardInterrupt

    half.encoder.register_forward_pre_hook(fail)
    with pytest.raises(KeyboardInterrupt), torch.no_grad():
        upcast_if_forced(half).encode(torch.zeros(1, 3, 8, 8))
    assert all(a is b and a.dtype == torch.float16 for a, b in zip(half.parameters(), weights))


def test_upcast_only_when_forced_and_float16():
    vae = kl_vae()
    assert upcast_if_forced(vae) is vae  # float32 already
    unforced = AutoencoderKL.from_config({**KL_TINY, "force_upcast": False}).to(torch.float16)
    assert upcast_if_forced(unforced) is unforced
    assert upcast_if_forced(vae.to(torch.bfloat16)) is vae  # diffusers upcasts float16 only


def test_float32_copy_keeps_tied_weights_tied_and_shares_nothing():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)).half()
    net[1].weight = net[0].weight
    net.register_buffer("steps", torch.tensor(3))
    copy = float32_copy(net)
    assert copy[1].weight is copy[0].weight and copy[0].weight.dtype == torch.float32
    assert copy.steps.dtype == torch.int64 and copy.steps is not net.steps
    assert net[0].weight.dtype == torch.float16
    assert copy[0].weight.data_ptr() != net[0].weight.data_ptr()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make", [kl_vae, temporal_vae], ids=["kl", "temporal"])
def test_wrong_ranks_and_channels_are_clear_value_errors(make):
    vae = make()
    with pytest.raises(ValueError, match=r"video must be \[B, 3, F, H, W\].*use encode/decode"):
        vae.encode_video(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"video must be \[B, 3, F, H, W\], got \(1, 4, 2, 8, 8\)"):
        vae.encode_video(torch.zeros(1, 4, 2, 8, 8))
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, F, H, W\]"):
        vae.decode_video(torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, F, H, W\], got \(1, 3, 2, 4, 4\)"):
        vae.decode_video(torch.zeros(1, 3, 2, 4, 4))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            vae.decode_video(torch.zeros(1, 4, 2, 4, 4), bad)
    with pytest.raises(TypeError, match="video must be a torch.Tensor"):
        vae.encode_video([[0.0]])
