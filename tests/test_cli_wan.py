"""`vidiff wan`: the issue's two command lines on tiny Wan checkpoints (saved by diffusers, every
parameter perturbed), run in-process through the CLI's ``main``.

PNG-frame outputs are compared bit for bit with the same run through the Python API (so every flag
reaches its pipeline argument); ``--from-json`` replays a sidecar to the same frames; bad flags
exit 2 with one line naming the flag.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch

from tests.wan_checkpoint import save_tiny_wan
from vidiff.cli.main import main
from vidiff.image_loading import load_image
from vidiff.pipelines.wan import WanPipeline
from vidiff.pipelines.wan_i2v import WanImageToVideoPipeline
from vidiff.schedulers import FlowMatchEulerDiscreteScheduler

SMALL = ["--height", "32", "--width", "32", "--steps", "2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wan")
    return {kind: save_tiny_wan(kind, root)[0] for kind in ("t2v", "ti2v", "i2v", "a14b")}


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "cat.png")
    PIL.Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "end.png")
    return tmp_path


def run(capsys, *args) -> tuple[int, str]:
    """``vidiff ARGS`` in this process: (exit status, stderr)."""
    status = main([str(arg) for arg in args])
    return status, capsys.readouterr().err


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)]), float(stream.average_rate)


def read_pngs(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(PIL.Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


def api_frames(pipe, seed: int, **call) -> np.ndarray:
    """uint8 frames [F, H, W, 3] of the same run through the Python API (the CLI's numpy seed)."""
    pipe.set_progress_bar_config(disable=True)
    generator = np.random.Generator(np.random.PCG64(seed))
    frames = pipe(**call, generator=generator, output_type="np").frames[0]
    return np.round(frames * 255).astype(np.uint8)


def test_text_to_video_matches_the_api_and_replays(checkpoints, work, capsys):
    model = checkpoints["t2v"]
    status, err = run(capsys, "wan", "A cat walks on the grass", "--model", model, *SMALL, "--num-frames", 9,
                      "--negative-prompt", "blurry", "--max-sequence-length", 16, "--seed", 7, "-o", "cat.mp4", "-o", "frames")
    assert status == 0, err
    frames, fps = read_mp4(work / "cat.mp4")
    assert frames.shape == (9, 32, 32, 3) and fps == 16  # Wan's export rate
    record = json.loads((work / "cat.mp4.json").read_text())
    assert record["command"] == "wan" and record["resolved"]["pipeline"] == "WanPipeline"
    assert record["arguments"]["guidance_scale"] == 5.0 and record["arguments"]["image"] is None  # defaults recorded
    pipe = WanPipeline.from_pretrained(model)
    expected = api_frames(pipe, 7, prompt="A cat walks on the grass", negative_prompt="blurry", height=32, width=32,
                          num_frames=9, num_inference_steps=2, max_sequence_length=16)
    np.testing.assert_array_equal(read_pngs(work / "frames"), expected)
    # The sidecar replays the run; a flag typed now overrides it (and changes the video).
    status, err = run(capsys, "wan", "--from-json", "cat.mp4.json", "-o", "again")
    assert status == 0, err
    np.testing.assert_array_equal(read_pngs(work / "again"), expected)
    status, err = run(capsys, "wan", "--from-json", "cat.mp4.json", "--max-sequence-length", 512, "-o", "longer")
    assert status == 0, err
    assert not np.array_equal(read_pngs(work / "longer"), expected)  # zero-padded states reach the video


def test_image_to_video_matches_the_api_and_replays(checkpoints, work, capsys):
    model = checkpoints["ti2v"]  # Wan 2.2 TI2V: the second command line
    status, err = run(capsys, "wan", "the cat turns its head", "--image", "cat.png", "--model", model, *SMALL,
                      "--num-frames", 7, "--guidance-scale", 3.5, "--seed", 2, "-o", "cat.mp4", "-o", "frames")
    assert status == 0, err
    assert "rounding 7 down to 5" in err  # Wan's 4k + 1 frames, as diffusers
    assert read_mp4(work / "cat.mp4")[0].shape == (5, 32, 32, 3)
    record = json.loads((work / "cat.mp4.json").read_text())
    assert record["resolved"]["pipeline"] == "WanImageToVideoPipeline"
    assert record["arguments"]["image"] == str((work / "cat.png").resolve()) and len(record["resolved"]["image_sha256"]) == 64
    pipe = WanImageToVideoPipeline.from_pretrained(model)
    expected = api_frames(pipe, 2, image=load_image(str(work / "cat.png")), prompt="the cat turns its head",
                          height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=3.5)
    np.testing.assert_array_equal(read_pngs(work / "frames"), expected)
    (work / "elsewhere").mkdir()
    status, err = run(capsys, "wan", "--from-json", str(work / "cat.mp4.json"), "-o", str(work / "again"))
    assert status == 0, err
    np.testing.assert_array_equal(read_pngs(work / "again"), expected)


def test_first_and_last_frame_with_flow_euler(checkpoints, work, capsys):
    """Wan 2.1 I2V (CLIP branch) with --last-image; --scheduler flow-euler carries flow_shift as shift."""
    model = checkpoints["i2v"]
    status, err = run(capsys, "wan", "a cat", "--image", "cat.png", "--last-image", "end.png", "--model", model, *SMALL,
                      "--num-frames", 5, "--scheduler", "flow-euler", "--torch-seed", 4, "-o", "frames")
    assert status == 0, err
    record = json.loads((work / "frames.json").read_text())
    assert record["resolved"]["scheduler"] == "FlowMatchEulerDiscreteScheduler" and "last_image_sha256" in record["resolved"]
    pipe = WanImageToVideoPipeline.from_pretrained(model)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=3.0)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(image=load_image("cat.png"), last_image=load_image("end.png"), prompt="a cat", height=32,
                  width=32, num_frames=5, num_inference_steps=2, generator=torch.Generator().manual_seed(4), output_type="np").frames[0]
    np.testing.assert_array_equal(read_pngs(work / "frames"), np.round(frames * 255).astype(np.uint8))


def test_two_experts_take_guidance_scale_2_and_memory_levers(checkpoints, work, capsys):
    status, err = run(capsys, "wan", "a cat", "--model", checkpoints["a14b"], *SMALL, "--num-frames", 5, "--guidance-scale-2", 2,
                      "--vae-tiling", "--forward-chunking", "--memory", "auto", "--seed", 1, "-o", "frames")
    assert status == 0, err
    record = json.loads((work / "frames.json").read_text())
    assert record["arguments"]["guidance_scale_2"] == 2 and record["resolved"]["levers"] == ["vae tiling", "forward chunking"]
    pipe = WanPipeline.from_pretrained(checkpoints["a14b"])
    expected = api_frames(pipe, 1, prompt="a cat", height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale_2=2.0)
    np.testing.assert_array_equal(read_pngs(work / "frames"), expected)  # chunking: same numbers; tiles ≥ 32 px: untiled


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--last-image", "end.png"], "--last-image needs --image"),
        (["--guidance-scale-2", "2"], "--guidance-scale-2"),
        (["--height", "40"], "argument --height"),
        (["--image", "missing.png"], "--image 'missing.png' does not exist"),
        (["--image", "cat.png", "--model", "t2v"], "--image: --model"),
        (["--model", "i2v"], "give the first frame with --image"),
        (["--free-init", "2"], "--free-init does not apply"),
        (["--context-length", "5", "--num-frames", "9"], "--context-length 5"),
        (["--max-sequence-length", "0"], "argument --max-sequence-length"),
        (["--scheduler", "ddim"], "argument --scheduler"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(checkpoints, work, capsys, args, flag):
    if "--model" in args:
        args = [checkpoints[a] if a in checkpoints else a for a in args]
    else:
        args = [*args, "--model", checkpoints["i2v" if "--image" in args else "t2v"]]
    status, err = run(capsys, "wan", "a cat", *SMALL, "--num-frames", 5, *args, "-o", "x.mp4")
    assert status == 2, err
    assert flag in err and len(err.strip().splitlines()) == 1 and not (work / "x.mp4").exists()


def test_a_pipeline_error_is_one_line_exit_2(checkpoints, work, capsys):
    """Wan 2.2 TI2V needs multiples of 32: the pipeline's ValueError, as one line naming the argument."""
    status, err = run(capsys, "wan", "a cat", "--model", checkpoints["ti2v"], "--height", 48, "--width", 32,
                      "--num-frames", 5, "--steps", 1, "-o", "x.mp4")
    assert status == 2 and "`height` must be a multiple of 32" in err and "nearest valid: 32 or 64" in err
    assert not (work / "x.mp4").exists()


def test_switching_flow_schedulers_keeps_the_shift():
    """UniPC (flow form, shift 5) → flow-Euler gets shift 5, and back to a flow UniPC with shift 5;
    an explicit --scheduler-config value wins."""
    from vidiff.cli.wan import scheduler_options
    from vidiff.schedulers import UniPCMultistepScheduler

    unipc = UniPCMultistepScheduler.from_config(dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0))
    euler_options = scheduler_options(FlowMatchEulerDiscreteScheduler, unipc.config, {})
    euler = FlowMatchEulerDiscreteScheduler.from_config(unipc.config, **euler_options)
    assert euler.config.shift == 5.0 and FlowMatchEulerDiscreteScheduler.from_config(unipc.config).config.shift == 1.0
    back = UniPCMultistepScheduler.from_config(euler.config, **scheduler_options(UniPCMultistepScheduler, euler.config, {}))
    assert (back.config.prediction_type, back.config.use_flow_sigmas, back.config.flow_shift) == ("flow_prediction", True, 5.0)
    assert scheduler_options(FlowMatchEulerDiscreteScheduler, unipc.config, {"shift": 2.0}) == {}


def test_wan_defaults_to_bf16_on_cuda_and_full_weight_files():
    """`--dtype auto` is bf16 for Wan on CUDA (fp16 for the others); `--variant auto` asks for no
    fp16 files (no Wan repository has them); explicit choices pass through."""
    from vidiff.cli.commands import ANIMATEDIFF, WAN
    from vidiff.cli.wan import dtype_name, variant_name

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert dtype_name(WAN, "auto", cuda) == "bf16" and dtype_name(WAN, "auto", cpu) == "auto"
    assert dtype_name(WAN, "fp16", cuda) == "fp16" and dtype_name(ANIMATEDIFF, "auto", cuda) == "auto"
    assert variant_name(WAN, "auto") == "none" and variant_name(WAN, "fp16") == "fp16" and variant_name(ANIMATEDIFF, "auto") == "auto"


def test_context_windows_count_latent_frames_and_match_the_api(checkpoints, work, capsys):
    """13 frames are 4 latent frames; windows of 2 with overlap 1 run as pipe.enable_context_windows."""
    model = checkpoints["t2v"]
    status, err = run(capsys, "wan", "a cat", "--model", model, *SMALL, "--num-frames", 13, "--context-length", 2,
                      "--context-overlap", 1, "--seed", 5, "-o", "frames")
    assert status == 0, err
    record = json.loads((work / "frames.json").read_text())
    assert record["resolved"]["long_video"]["enable_context_windows"]["context_length"] == 2
    pipe = WanPipeline.from_pretrained(model)
    pipe.enable_context_windows(context_length=2, context_overlap=1)
    expected = api_frames(pipe, 5, prompt="a cat", height=32, width=32, num_frames=13, num_inference_steps=2)
    np.testing.assert_array_equal(read_pngs(work / "frames"), expected)
    plain = api_frames(WanPipeline.from_pretrained(model), 5, prompt="a cat", height=32, width=32, num_frames=13, num_inference_steps=2)
    assert not np.array_equal(plain, expected)  # the windows change the video: the flags reached the pipeline
