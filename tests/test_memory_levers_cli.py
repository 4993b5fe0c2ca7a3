"""Issue 12: the memory levers on the command line (``--vae-tiling``, ``--forward-chunking``,
``--offload``, ``--compile``) and ``--memory auto``, which turns on the fewest levers whose estimate
fits the device's free memory. The choice is tested on the released SVD-XT configs against a given
(monkeypatched) free memory; CUDA is only a device *type* here, nothing runs on a GPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tests.test_cli import SMALL, ok, vidiff
from vidiff.cli import main as cli_main  # the function main(argv) -> exit status
from vidiff.cli import memory_levers, settings
from vidiff.cli.commands import SVD
from vidiff.cli.errors import UsageError
from vidiff.cli.parser import build_parser
from vidiff.pipelines import memory

CONFIGS = Path(__file__).parent / "configs"
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
NONE = memory.Levers()


def parse(*argv: str) -> dict:
    return vars(build_parser().parse_args(list(argv)))


@pytest.fixture(scope="module")
def svd_xt():
    """(configs, weight sizes) of SVD-XT, and a run whose VAE decode is its peak: 25 frames at
    576 × 1024 in fp16, decoded all at once."""
    from vidiff.pipelines.svd import StableVideoDiffusionPipeline as P

    names = {"unet": "svd_xt_unet", "vae": "svd_xt_vae", "image_encoder": "svd_xt_image_encoder"}
    networks = {k: (next(iter(P.components[k].values())), json.loads((CONFIGS / f"{n}.json").read_text())) for k, n in names.items()}
    configs, weights = memory.weight_sizes(networks)
    size = memory.RunSize(videos=1, num_frames=25, height=576, width=1024, dtype=torch.float16, guidance=True)
    return configs, weights, size


def total(svd_xt, levers: memory.Levers, device=CUDA) -> int:
    configs, weights, size = svd_xt
    return memory.estimate_memory(configs, weights, size, levers).total(device)


# ------------------------------------------------------------------------------ flags
def test_lever_flags_parse():
    parsed = parse("svd", "--vae-tiling", "--forward-chunking", "--offload", "sequential", "--compile", "--memory", "auto")
    assert (parsed["vae_tiling"], parsed["forward_chunking"], parsed["offload"], parsed["compile"], parsed["memory"]) == (
        True, True, "sequential", True, "auto")
    assert memory_levers.given_levers(parsed) == memory.Levers(True, True, "sequential")
    plain = settings.merge(SVD, parse("svd"))[0]
    assert (plain["memory"], plain["offload"], plain["vae_tiling"], plain["compile"]) == ("off", None, False, False)


@pytest.mark.parametrize("argv, message", [
    (["svd", "--offload", "gpu"], "argument --offload: invalid choice: 'gpu'"),
    (["svd", "--memory", "maybe"], "argument --memory: invalid choice: 'maybe'"),
])
def test_bad_lever_flags_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        parse(*argv)


class Recorder:
    """A stand-in pipeline that records which lever methods are called, with which arguments."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("enable_") or name == "compile":
            return lambda **kwargs: self.calls.append((name, kwargs))
        raise AttributeError(name)


def test_apply_calls_the_agreed_pipeline_methods():
    pipe = Recorder()
    memory_levers.apply(pipe, memory.Levers(True, True, "model"), True, CUDA)
    assert pipe.calls == [("enable_vae_tiling", {}), ("enable_forward_chunking", {}),
                          ("enable_model_cpu_offload", {"device": CUDA}), ("compile", {})]
    pipe = Recorder()
    memory_levers.apply(pipe, memory.Levers(offload="sequential"), False, CUDA)
    assert pipe.calls == [("enable_sequential_cpu_offload", {"device": CUDA})]


def test_offload_is_dropped_off_cuda():
    assert memory_levers.usable(memory.Levers(True, False, "model"), CPU) == memory.Levers(True, False, None)
    assert memory_levers.usable(memory.Levers(offload="model"), CUDA).offload == "model"


# ------------------------------------------------------------------------------ the estimate's levers
def test_each_lever_lowers_the_estimate(svd_xt):
    configs, weights, size = svd_xt
    plain = memory.estimate_memory(configs, weights, size)
    tiled = memory.estimate_memory(configs, weights, size, memory.Levers(vae_tiling=True))
    chunked = memory.estimate_memory(configs, weights, size, memory.Levers(forward_chunking=True))
    assert tiled.vae_decode < plain.vae_decode and tiled.denoiser_activations == plain.denoiser_activations
    assert chunked.denoiser_activations < plain.denoiser_activations and chunked.vae_decode == plain.vae_decode
    assert total(svd_xt, memory.Levers(vae_tiling=True)) < total(svd_xt, NONE)  # decoding is this run's peak
    model = total(svd_xt, memory.Levers(offload="model"))
    sequential = total(svd_xt, memory.Levers(offload="sequential"))
    assert sequential < model < total(svd_xt, NONE)
    # Offload frees GPU memory only: the CPU's total is unchanged.
    assert total(svd_xt, memory.Levers(offload="model"), CPU) == total(svd_xt, NONE, CPU)
    # Adding a lever to any set never raises the estimate.
    for levers in memory_levers.candidates(CUDA, NONE):
        for more in (dict(vae_tiling=True), dict(forward_chunking=True), dict(offload="sequential")):
            assert total(svd_xt, dataclasses.replace(levers, **more)) <= total(svd_xt, levers), (levers, more)


def test_weight_sizes_order(svd_xt):
    _, weights, _ = svd_xt
    assert 0 < weights.largest_layer < weights.largest_network < weights.total


# ------------------------------------------------------------------------------ --memory auto's choice
def test_auto_needs_no_lever_when_the_run_fits(svd_xt):
    configs, weights, size = svd_xt
    levers, line = memory_levers.choose(configs, weights, size, CUDA, total(svd_xt, NONE), NONE)
    assert levers == NONE and line.startswith("memory auto: estimated") and "no memory levers needed" in line


def test_auto_picks_the_cheapest_set_that_fits(svd_xt):
    configs, weights, size = svd_xt
    tiling = memory.Levers(vae_tiling=True)
    levers, line = memory_levers.choose(configs, weights, size, CUDA, total(svd_xt, tiling), NONE)
    assert levers == tiling
    assert line == (f"memory auto: estimated {memory_levers.gb(total(svd_xt, NONE))} > "
                    f"{memory_levers.gb(total(svd_xt, tiling))} free on cuda; enabling vae tiling "
                    f"(estimated {memory_levers.gb(total(svd_xt, tiling))})")
    # Just below tiling + chunking: an offload is needed, and model offload with tiling is the cheapest.
    target = memory.Levers(vae_tiling=True, offload="model")
    free = total(svd_xt, target)
    assert total(svd_xt, memory.Levers(True, True)) > free and total(svd_xt, memory.Levers(offload="model")) > free
    levers, line = memory_levers.choose(configs, weights, size, CUDA, free, NONE)
    assert levers == target and "enabling vae tiling, model offload" in line


def test_auto_keeps_the_levers_given(svd_xt):
    configs, weights, size = svd_xt
    given = memory.Levers(forward_chunking=True)
    levers, line = memory_levers.choose(configs, weights, size, CUDA, 10**15, given)
    assert levers == given and "no memory levers needed" in line


def test_auto_never_offloads_on_the_cpu(svd_xt):
    assert all(levers.offload is None for levers in memory_levers.candidates(CPU, NONE))
    assert [levers.names() for levers in memory_levers.candidates(CUDA, NONE)][:5] == [
        [], ["vae tiling"], ["forward chunking"], ["vae tiling", "forward chunking"], ["model offload"]]


def test_auto_refuses_when_even_every_lever_does_not_fit(svd_xt):
    configs, weights, size = svd_xt
    every = memory.Levers(True, True, "sequential")
    with pytest.raises(UsageError, match=r"--memory auto: this run needs about .* even with vae tiling, forward chunking, sequential offload"):
        memory_levers.choose(configs, weights, size, CUDA, total(svd_xt, every) - 1, NONE)


# ------------------------------------------------------------------------------ end to end (CPU)
def test_auto_on_the_cli_says_one_line_and_enables_the_levers(tiny_svd, work, monkeypatch, capsys):
    """In-process run on the tiny SVD with just the free memory VAE tiling needs: --memory auto turns
    it on, says so in one info line, the pipeline gets it, and the sidecar records it."""
    applied = []
    real_apply = memory_levers.apply

    def spy(pipe, levers, compile_blocks, device):
        # Recorded, not applied: which methods apply() calls is test_apply_calls_the_agreed_pipeline_methods';
        # here the run's output only has to exist, so the tiny model's decode stays untiled.
        assert callable(pipe.enable_vae_tiling)
        applied.append(levers)
        real_apply(pipe, dataclasses.replace(levers, vae_tiling=False), compile_blocks, device)

    real_choose = memory_levers.choose

    def tight(configs, weights, size, device, free, given):  # free: just what VAE tiling needs
        tiled = memory.estimate_memory(configs, weights, size, memory.Levers(vae_tiling=True)).total(device)
        assert memory.estimate_memory(configs, weights, size).total(device) > tiled  # the plain run does not fit
        return real_choose(configs, weights, size, device, tiled, given)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(work)
    monkeypatch.setattr(memory_levers, "apply", spy)
    monkeypatch.setattr(memory_levers, "choose", tight)
    status = cli_main(["svd", "img.png", "--model", str(tiny_svd[0]), *SMALL, "--seed", "1", "--memory", "auto",
                            "--device", "cpu", "-o", "auto.mp4"])
    err = capsys.readouterr().err
    assert status == 0, err
    lines = [line for line in err.splitlines() if "memory auto" in line]
    assert len(lines) == 1 and "enabling vae tiling (estimated" in lines[0], err
    assert applied == [memory.Levers(vae_tiling=True)]
    record = json.loads((work / "auto.mp4.json").read_text())
    assert record["arguments"]["memory"] == "auto" and record["arguments"]["vae_tiling"] is False
    assert record["resolved"]["levers"] == ["vae tiling"]


def test_lever_flags_are_recorded_and_replayed(tiny_svd, work):
    """--forward-chunking gives the plain run's frames (within one uint8 level: chunked kernels round
    differently at some thread counts); the sidecar records the flags and --from-json replays them
    (the same bytes)."""
    common = ["svd", "img.png", "--model", tiny_svd[0], *SMALL, "--seed", 2]
    ok(vidiff(*common, "-o", "plain", cwd=work))
    ok(vidiff(*common, "--forward-chunking", "-o", "chunked.mp4", "-o", "chunked", cwd=work))
    plain_frames, chunked_frames = sorted((work / "plain").glob("*.png")), sorted((work / "chunked").glob("*.png"))
    assert len(plain_frames) == len(chunked_frames) > 0
    for plain, chunked in zip(plain_frames, chunked_frames):
        a = np.asarray(PIL.Image.open(plain), dtype=np.int16)
        b = np.asarray(PIL.Image.open(chunked), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, (plain.name, np.abs(a - b).max())
    record = json.loads((work / "chunked.mp4.json").read_text())
    assert record["arguments"]["forward_chunking"] is True and record["arguments"]["offload"] is None
    assert record["resolved"]["levers"] == ["forward chunking"]
    ok(vidiff("svd", "--from-json", work / "chunked.mp4.json", "-o", "again.mp4", cwd=work))
    assert json.loads((work / "again.mp4.json").read_text())["resolved"]["levers"] == ["forward chunking"]
    assert (work / "again.mp4").read_bytes() == (work / "chunked.mp4").read_bytes()
