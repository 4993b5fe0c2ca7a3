"""Issue 10, "nothing lost, nothing hangs": what the command line refuses before loading anything.

Value checks run in-process (the parser, ``settings.merge``, ``cli.limits``); a few end-to-end cases
run ``vidiff`` concurrently on the tiny SVD checkpoint. More one-line refusals are in test_cli.BAD.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.svd_checkpoint import random_image
from tests.test_cli import vidiff
from vidiff.cli import limits, settings
from vidiff.cli.commands import ANIMATEDIFF, I2VGEN_XL, SVD
from vidiff.cli.errors import UsageError
from vidiff.cli.outputs import Target
from vidiff.cli.parser import build_parser


def parse(*argv: str) -> dict:
    return vars(build_parser().parse_args(list(argv)))


# ------------------------------------------------------------------------------ the parser
@pytest.mark.parametrize("argv, message", [
    (["svd", "--seed", "-1"], "argument --seed: expected an integer ≥ 0"),
    (["svd", "--torch-seed", str(2**64)], "argument --torch-seed: expected an integer in [0, 2**64 - 1]"),
    (["svd", "--torch-seed", "-5"], "argument --torch-seed"),
    (["svd", "--height", "80000"], "at most 16384; got 80000"),
    (["svd", "--width", "16392"], "at most 16384"),
    (["svd", "--num-frames", "10000"], "argument --num-frames: expected an integer ≥ 1 (frames), at most 4096"),
    (["svd", "--steps", "100000"], "argument --steps"),
    (["svd", "--num-videos", "100000"], "argument --num-videos"),
    (["svd", "--decode-chunk-size", "100000"], "argument --decode-chunk-size"),
    (["svd", "--min-guidance-scale", "inf"], "argument --min-guidance-scale: expected a finite number ≥ 0, got inf"),
    (["svd", "--max-guidance-scale", "nan"], "got nan"),
    (["svd", "--noise-aug-strength", "1e400"], "argument --noise-aug-strength"),
    (["svd", "--fps", "100000"], "argument --fps"),
    (["svd", "--motion-bucket-id", str(10**30)], "argument --motion-bucket-id"),
    (["i2vgen-xl", "--guidance-scale", "-inf"], "argument --guidance-scale"),
    (["i2vgen-xl", "--target-fps", "5000"], "argument --target-fps"),
    (["animatediff", "--fps", "inf"], "argument --fps: expected a finite positive number"),
    (["animatediff", "--fps", "1e9"], "at most 1000"),
])
def test_parser_refuses_nonsense(argv, message):
    with pytest.raises(UsageError, match=None) as caught:
        parse(*argv)
    assert message in str(caught.value)


def test_parser_accepts_the_edges():
    assert parse("svd", "--seed", "0")["seed"] == 0
    assert parse("svd", "--torch-seed", str(2**64 - 1))["torch_seed"] == 2**64 - 1
    assert parse("svd", "--height", "16384", "--num-frames", "4096")["height"] == 16384
    assert parse("animatediff", "--fps", "7.5")["export_fps"] == 7.5


# ------------------------------------------------------------------------------ --from-json
def sidecar(tmp_path: Path, command: str = "svd", seed: dict | None = None, **arguments) -> str:
    path = tmp_path / "run.mp4.json"
    record = {"command": command, "arguments": {"image": "img.png", **arguments}, "seed": seed or {"kind": "numpy", "value": 1}}
    path.write_text(json.dumps(record))
    return str(path)


def test_from_json_never_takes_output_or_overwrite(tmp_path):
    path = sidecar(tmp_path, output=[str(tmp_path / "precious")], overwrite=True, num_frames=5)
    merged, _ = settings.merge(SVD, {"from_json": path})
    assert "output" not in merged and "overwrite" not in merged and merged["num_frames"] == 5
    merged, _ = settings.merge(SVD, {"from_json": path, "output": ["keep.mp4"]})
    assert merged["output"] == ["keep.mp4"] and "overwrite" not in merged


@pytest.mark.parametrize("arguments, message", [
    ({"num_frames": "lots"}, "argument --num-frames: expected an integer ≥ 1 (frames), got 'lots'"),
    ({"num_frames": 2.5}, "argument --num-frames"),
    ({"num_frames": True}, "argument --num-frames: expected a single value"),
    ({"height": 80000}, "argument --height"),
    ({"max_guidance_scale": "Infinity"}, "argument --max-guidance-scale: expected a finite number"),
    ({"dtype": "fp64"}, "argument --dtype: invalid choice: 'fp64'"),
    ({"device": "tpu"}, "argument --device: invalid choice: 'tpu'"),
    ({"scheduler": "ddpm"}, "argument --scheduler: invalid choice: 'ddpm'"),
    ({"offline": "yes"}, "argument --offline: expected true or false"),
    ({"model": 7}, "argument --model: expected text"),
    ({"image": ["a.png"]}, "argument IMAGE: expected a single value"),
])
def test_from_json_values_go_through_the_flag_parsers(tmp_path, arguments, message):
    with pytest.raises(UsageError) as caught:
        settings.merge(SVD, {"from_json": sidecar(tmp_path, **arguments)})
    assert message in str(caught.value) and "--from-json" in str(caught.value)


def test_from_json_seed_is_checked_like_the_flag(tmp_path):
    with pytest.raises(UsageError, match="argument --torch-seed"):
        settings.merge(SVD, {"from_json": sidecar(tmp_path, seed={"kind": "torch", "value": 2**64})})
    merged, _ = settings.merge(SVD, {"from_json": sidecar(tmp_path, seed={"kind": "numpy", "value": 7}, num_frames=None)})
    assert merged["seed"] == 7 and merged["num_frames"] is None  # None: the pipeline's default


def test_from_json_drops_unknown_keys_with_a_warning(tmp_path, caplog):
    merged, _ = settings.merge(SVD, {"from_json": sidecar(tmp_path, future_option=3, motion_adapter=None)})
    assert "future_option" not in merged and "future_option" in caplog.text and "motion_adapter" not in caplog.text


# ------------------------------------------------------------------------------ cli.limits
@pytest.mark.parametrize("key, name", [("prompt", "PROMPT"), ("negative_prompt", "--negative-prompt")])
def test_prompts_must_be_utf8(key, name):
    bad = b"a cat \xff on a mat".decode("utf-8", "surrogateescape")  # what Linux argv holds
    with pytest.raises(UsageError, match=f"{name} is not valid UTF-8"):
        limits.check_text({key: bad})
    limits.check_text({key: "un chat sur un tapis — ok ✓"})


def test_unwritable_output_folder(tmp_path, monkeypatch):
    targets = [Target(tmp_path / "clip.mp4", "mp4", 0)]
    limits.check_writable(targets)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)  # root may write anywhere
    with pytest.raises(UsageError, match="is not writable"):
        limits.check_writable(targets)


@pytest.mark.parametrize("command, flag", [(SVD, "--fps"), (I2VGEN_XL, "--target-fps"), (ANIMATEDIFF, "--fps")])
def test_gif_rate(command, flag):
    gif, mp4 = Target(Path("a.gif"), "gif", 0), Target(Path("a.mp4"), "mp4", 0)
    limits.check_gif_rate(command, [mp4, gif], 100)
    limits.check_gif_rate(command, [mp4], 240)
    with pytest.raises(UsageError, match=f"{flag} 240: a .gif holds at most 100"):
        limits.check_gif_rate(command, [mp4, gif], 240)


def test_run_size_uses_settings_then_pipeline_then_model_defaults():
    import torch

    configs = {"unet": {"num_frames": 25, "sample_size": 64}, "vae": {"block_out_channels": [1, 2, 3, 4]}}
    size = limits.run_size(SVD, {"height": 64}, configs, torch.float16)
    assert (size.height, size.width, size.num_frames, size.decode_chunk_size, size.guidance) == (64, 1024, 25, 25, True)
    size = limits.run_size(ANIMATEDIFF, {"guidance_scale": 1.0}, configs, torch.float32)
    assert (size.height, size.num_frames, size.decode_chunk_size, size.guidance) == (512, 16, 16, False)


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def limit_runs(tiny_svd, tmp_path_factory):
    """The end-to-end cases, run concurrently in one folder that holds files that must survive."""
    work = tmp_path_factory.mktemp("limits")
    random_image(80, 56).save(work / "img.png")
    (work / "keep.mp4").write_bytes(b"keep me")
    (work / "precious").mkdir()
    (work / "precious" / "frame_0000.png").write_bytes(b"keep me too")
    model = str(tiny_svd[0])
    record = {"command": "svd", "seed": {"kind": "numpy", "value": 1},
              "arguments": {"image": "img.png", "model": model, "output": ["precious"], "overwrite": True}}
    (work / "replay.json").write_text(json.dumps(record))
    (work / "lots.json").write_text(json.dumps({**record, "arguments": {"image": "img.png", "model": model, "num_frames": "lots"}}))
    cases = {
        "recorded output and overwrite": ["svd", "--from-json", "replay.json", "-o", "keep.mp4"],
        "recorded value checked": ["svd", "--from-json", "lots.json", "-o", "new.mp4"],
        "below the model's minimum": ["svd", "img.png", "--model", model, "--height", "8", "--width", "8"],
        "clearly out of memory": ["svd", "img.png", "--model", model, "--height", "16384", "--width", "16384", "--num-frames", "4096"],
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(vidiff, *args, cwd=work) for name, args in cases.items()}
        prompt = pool.submit(
            subprocess.run, [sys.executable, "-m", "vidiff", "i2vgen-xl", b"img.png", b"a \xff cat", "--model", model],
            cwd=work, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, timeout=300,
        )
        results = {name: future.result() for name, future in futures.items()}
        raw = prompt.result()
    results["invalid UTF-8 prompt"] = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode())
    return results, work


@pytest.mark.parametrize("case, message", [
    ("recorded output and overwrite", "keep.mp4' already exists; pass --overwrite"),
    ("recorded value checked", "argument --num-frames: expected an integer ≥ 1 (frames), got 'lots'"),
    ("below the model's minimum", "8×8 pixels is too small for this model"),
    ("clearly out of memory", "needs about"),
    ("invalid UTF-8 prompt", "PROMPT is not valid UTF-8"),
])
def test_refused_before_loading_and_nothing_lost(limit_runs, case, message):
    results, work = limit_runs
    result = results[case]
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and message in lines[0] and "loading" not in result.stderr, result.stderr
    assert (work / "keep.mp4").read_bytes() == b"keep me"
    assert [p.name for p in (work / "precious").iterdir()] == ["frame_0000.png"]
    assert not (work / "new.mp4").exists()


def test_out_of_memory_message_says_what_fits(limit_runs):
    line = limit_runs[0]["clearly out of memory"].stderr
    assert "GB of memory (weights" in line and "this machine has" in line and "what fits:" in line


@pytest.mark.parametrize("name", ["DDIMScheduler", "LCMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_schedulers_bound_training_timesteps(name):
    """A trillion training timesteps would allocate the β table before failing: a ValueError instead,
    in Python and (through --scheduler-config) on the command line."""
    import vidiff

    cls = getattr(vidiff, name)
    with pytest.raises(ValueError, match=r"num_train_timesteps must be an int in \[\d, 100000\], got 1000000000000"):
        cls.from_config({}, num_train_timesteps=10**12)
    assert cls.from_config({}, num_train_timesteps=100_000).config.num_train_timesteps == 100_000
    with pytest.raises(UsageError, match="--scheduler-config for"):
        settings.scheduler_overrides(ANIMATEDIFF, {"scheduler": name, "scheduler_config": ["num_train_timesteps=1000000000000"]})
