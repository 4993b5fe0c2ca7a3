"""vidiff.pipelines.memory: the memory estimate of a run, from the released configs (no weights)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vidiff.pipelines import memory

CONFIGS = Path(__file__).parent / "configs"
GB = 1e9


def config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def svd_xt():
    """(configs, parameters) of stabilityai/stable-video-diffusion-img2vid-xt."""
    from vidiff.pipelines.svd import StableVideoDiffusionPipeline as P

    classes = {name: next(iter(P.components[name].values())) for name in ("unet", "vae", "image_encoder")}
    names = {"unet": "svd_xt_unet", "vae": "svd_xt_vae", "image_encoder": "svd_xt_image_encoder"}
    parameters = sum(memory.count_parameters(classes[k], config(n)) for k, n in names.items())
    return {"unet": config("svd_xt_unet"), "vae": config("svd_xt_vae")}, parameters


XT = memory.RunSize(videos=1, num_frames=25, height=576, width=1024, dtype=torch.float16, guidance=True, decode_chunk_size=8)


def test_weights_are_the_released_parameter_count(svd_xt):
    configs, parameters = svd_xt
    assert 2.2e9 < parameters < 2.3e9  # UNet 1.52 B + VAE 0.10 B + CLIP ViT-H 0.63 B
    assert memory.estimate_memory(configs, parameters, XT).weights == 2 * parameters


def test_svd_xt_on_a_24_gb_gpu_fits(svd_xt):
    """The usual real run must never be refused: SVD-XT, 25 frames at 576×1024, fp16, chunks of 8."""
    estimate = memory.estimate_memory(*svd_xt, XT)
    assert 8 * GB < estimate.total("cuda") < 24 * GB
    assert estimate.denoiser_activations > estimate.latents > 0
    # Decoding all 25 frames at once needs more (the reason for --decode-chunk-size), but is not
    # clearly beyond 24 GB (the CLI refuses only above twice the device's memory).
    everything = memory.estimate_memory(*svd_xt, dataclasses.replace(XT, decode_chunk_size=None))
    assert estimate.total("cuda") < everything.total("cuda") < 2 * 24 * GB


def test_estimate_grows_with_every_size(svd_xt):
    base = memory.estimate_memory(*svd_xt, XT)
    for change in (dict(num_frames=50), dict(height=1152), dict(videos=2), dict(dtype=torch.float32), dict(decode_chunk_size=16)):
        assert memory.estimate_memory(*svd_xt, dataclasses.replace(XT, **change)).total() > base.total(), change
    unguided = memory.estimate_memory(*svd_xt, dataclasses.replace(XT, guidance=False))
    assert unguided.denoiser_activations * 2 == base.denoiser_activations  # guidance doubles the batch


def test_context_windows_bound_the_denoiser_by_the_window(svd_xt):
    """A 100-frame run with 25-frame windows: the denoiser's activations are the 25-frame run's; the
    latents, the decode chunks and the output still grow with the video."""
    long = dataclasses.replace(XT, num_frames=100)
    windowed = memory.estimate_memory(*svd_xt, dataclasses.replace(long, window_frames=25))
    assert windowed.denoiser_activations == memory.estimate_memory(*svd_xt, XT).denoiser_activations
    assert windowed.denoiser_activations * 4 == memory.estimate_memory(*svd_xt, long).denoiser_activations
    assert windowed.latents == memory.estimate_memory(*svd_xt, long).latents
    # a window longer than the video is the whole video
    assert memory.estimate_memory(*svd_xt, dataclasses.replace(XT, window_frames=40)) == memory.estimate_memory(*svd_xt, XT)


def test_nonsense_runs_need_terabytes(svd_xt):
    frames = memory.estimate_memory(*svd_xt, dataclasses.replace(XT, num_frames=10000, decode_chunk_size=None))
    assert frames.total() > 1000 * GB
    huge = memory.estimate_memory(*svd_xt, dataclasses.replace(XT, height=16384, width=16384))
    assert huge.total() > 1000 * GB


def test_output_frames_are_float32_and_one_uint8_video(svd_xt):
    estimate = memory.estimate_memory(*svd_xt, dataclasses.replace(XT, videos=2))
    values = 2 * 25 * 576 * 1024 * 3
    assert estimate.output_frames == values * 8 + values // 2


def test_too_small_names_the_smallest_side():
    released = {"unet": config("svd_xt_unet"), "vae": config("svd_xt_vae")}
    assert memory.too_small(released, 8, 8) is None  # 512 channels / 32 groups: 16 values even at 1×1
    tiny = {"unet": {"block_out_channels": [32, 64]}, "vae": {"block_out_channels": [32, 32, 32, 32]}}
    message = memory.too_small(tiny, 8, 8)
    assert "8×8" in message and "at least 16" in message
    assert memory.too_small(tiny, 8, 16) is None


def test_available_memory_is_the_machine_or_its_cgroup():
    total = memory.available_memory("cpu")
    assert 0.5 * GB < total <= _meminfo_total()


def _meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 2**62


def test_read_networks_counts_what_the_pipeline_loads(tiny_svd):
    from vidiff import loading
    from vidiff.pipelines.svd import StableVideoDiffusionPipeline

    configs, parameters = memory.read_networks(StableVideoDiffusionPipeline, loading.Checkpoint.open(tiny_svd[0]))
    assert set(configs) == {"unet", "vae", "image_encoder"}
    pipe = tiny_svd[1]
    expected = sum(sum(p.numel() for p in module.parameters()) for module in (pipe.unet, pipe.vae, pipe.image_encoder))
    assert parameters == expected
