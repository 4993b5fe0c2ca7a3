"""vidiff.pipelines.memory for Wan: the estimate from the released configs (no weights) and against a
measured CPU peak."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vidiff import loading
from vidiff.pipelines import memory, memory_wan
from vidiff.pipelines.wan import WanPipeline

WAN = Path(__file__).parent / "configs" / "wan"  # the released repositories' configs
GB = 1e9
# The benchmark run: Wan 2.1 T2V-1.3B, 81 frames of 480 × 832, bf16, guidance 5.
RUN = memory.RunSize(videos=1, num_frames=81, height=480, width=832, dtype=torch.bfloat16, guidance=True)


@pytest.fixture(scope="module")
def t2v_1_3b():
    """(configs, weight sizes) of Wan-AI/Wan2.1-T2V-1.3B-Diffusers, read from JSON and built on meta."""
    networks = memory.network_configs(WanPipeline, loading.Checkpoint.open(str(WAN / "Wan2.1-T2V-1.3B-Diffusers")))
    return memory.weight_sizes(networks)


def test_weights_are_the_released_parameter_counts(t2v_1_3b):
    configs, sizes = t2v_1_3b
    counts = json.loads((WAN / "param_counts.json").read_text())
    assert set(configs) == {"text_encoder", "vae", "transformer"}
    expected = 1_418_996_800 + 126_892_531 + 5_680_910_336  # transformer, Wan 2.1 VAE, UMT5-XXL (README)
    assert sizes.total == expected and sizes.largest_network == 5_680_910_336, counts
    assert memory.estimate_memory(configs, sizes, RUN).weights == 2 * expected


def test_the_benchmark_run_fits_a_24_gb_gpu_and_offload_helps(t2v_1_3b):
    estimate = memory.estimate_memory(*t2v_1_3b, RUN)
    assert 15 * GB < estimate.total("cuda") < 24 * GB  # 14.5 GB of bf16 weights + the working set
    assert estimate.denoiser_activations > estimate.latents > 0 and estimate.vae_decode > GB
    offloaded = memory.estimate_memory(*t2v_1_3b, RUN, memory.Levers(offload="model"))
    assert offloaded.total("cuda") < estimate.total("cuda") - 2 * GB  # UMT5 alone on the GPU at a time
    tiled = memory.estimate_memory(*t2v_1_3b, RUN, memory.Levers(vae_tiling=True))
    assert tiled.vae_decode < estimate.vae_decode / 2 and tiled.denoiser_activations == estimate.denoiser_activations
    chunked = memory.estimate_memory(*t2v_1_3b, RUN, memory.Levers(forward_chunking=True))
    assert chunked.denoiser_activations < estimate.denoiser_activations


def test_estimate_grows_with_every_size(t2v_1_3b):
    base = memory.estimate_memory(*t2v_1_3b, RUN)
    for change in (dict(num_frames=121), dict(height=720), dict(videos=2), dict(dtype=torch.float32)):
        assert memory.estimate_memory(*t2v_1_3b, dataclasses.replace(RUN, **change)).total() > base.total(), change
    unguided = memory.estimate_memory(*t2v_1_3b, dataclasses.replace(RUN, guidance=False))
    assert unguided.denoiser_activations * 2 == base.denoiser_activations  # both branches run as one batch


def test_context_windows_count_latent_frames(t2v_1_3b):
    """Windows of 7 latent frames over 161 frames (41 latent): the denoiser sees 7 at a time."""
    long = dataclasses.replace(RUN, num_frames=161)
    windowed = memory.estimate_memory(*t2v_1_3b, dataclasses.replace(long, window_frames=7))
    short = memory.estimate_memory(*t2v_1_3b, dataclasses.replace(RUN, num_frames=25))  # 7 latent frames
    assert windowed.denoiser_activations == short.denoiser_activations
    assert windowed.latents == memory.estimate_memory(*t2v_1_3b, long).latents


def test_wan_2_2_is_16x_and_has_no_size_minimum():
    configs = {name: json.loads((WAN / "Wan2.2-TI2V-5B-Diffusers" / name / "config.json").read_text())
               for name in ("transformer", "vae")}
    assert memory.vae_factor(configs["vae"]) == 16 and memory_wan.is_wan(configs)
    assert memory.vae_factor(json.loads((WAN / "Wan2.1-T2V-1.3B-Diffusers/vae/config.json").read_text())) == 8
    assert memory.too_small(configs, 32, 32) is None


def test_estimate_covers_the_measured_cpu_peak_of_a_small_run():
    """A fresh process runs a small Wan pipeline (VAE 32 wide: the decode dominates) at 5 × 160 × 160
    in float32; the estimate of the whole process (runtime + weights + working set) must cover its
    peak RSS, and not by more than 2×. Freed memory leaves the process at once (fixed mmap threshold)."""
    import os
    import subprocess
    import sys

    probe = Path(__file__).parent / "wan_memory_probe.py"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(probe), "5x160x160"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    size = memory.RunSize(videos=1, num_frames=5, height=160, width=160, dtype=torch.float32, guidance=True)
    weights = memory.WeightSizes(result["parameters"], result["parameters"], result["parameters"])
    estimate = memory.estimate_memory(result["configs"], weights, size)
    measured = result["peaks"][0]
    assert measured <= estimate.total("cpu") <= 2 * measured, (measured, estimate.as_dict())
    # The working set is most of the call's increase (not the runtime constant covering it).
    assert result["increases"][0] <= 1.25 * estimate.working


def test_memory_auto_picks_levers_for_a_16_gb_gpu(t2v_1_3b):
    """`--memory auto` on the benchmark run: a 24 GB GPU needs nothing, a 16 GB one the fewest levers
    that fit, a 4 GB one is refused with what would fit."""
    from vidiff.cli.errors import UsageError
    from vidiff.cli.memory_levers import choose

    cuda = torch.device("cuda")
    levers, line = choose(*t2v_1_3b, RUN, cuda, int(24 * GB), memory.Levers())
    assert levers == memory.Levers() and "no memory levers needed" in line
    levers, line = choose(*t2v_1_3b, RUN, cuda, int(16 * GB), memory.Levers())
    assert levers != memory.Levers() and memory.estimate_memory(*t2v_1_3b, RUN, levers).total(cuda) <= 16 * GB
    assert "enabling" in line
    with pytest.raises(UsageError, match="what fits"):
        choose(*t2v_1_3b, RUN, cuda, int(4 * GB), memory.Levers())
