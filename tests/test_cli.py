"""The `vidiff` command line, driven as a subprocess on the tiny checkpoints of the parity tests.

Outputs are read back with PyAV and PIL; PNG-frame outputs are compared bit for bit with the same
run through the Python API, so every flag is shown to reach its pipeline argument.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch

from tests.svd_checkpoint import random_image

SMALL = ["--height", "32", "--width", "48", "--num-frames", "3", "--steps", "2"]


def vidiff(*args, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m vidiff ARGS`` in ``cwd``, never touching the network."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vidiff", *map(str, args)], cwd=cwd, env=environment,
        capture_output=True, text=True, timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, float(stream.average_rate)


def read_gif(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as gif:
        frames = []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB")))
    return np.stack(frames)


def read_pngs(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(PIL.Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


def api_frames(pipe, generator, **call) -> np.ndarray:
    """uint8 frames [B, F, H, W, 3] of the same run through the Python API."""
    frames = pipe(**call, generator=generator, output_type="np").frames
    return np.round(frames * 255).astype(np.uint8)


# ------------------------------------------------------------------------------ the three pipelines
def test_svd_mp4_sidecar_and_from_json(tiny_svd, vidiff_svd, work):
    result = ok(vidiff("svd", "img.png", "--model", tiny_svd[0], *SMALL, "--seed", 3, "--fps", 6, "-o", "clip.mp4", "-o", "frames", cwd=work))
    assert result.stdout.split() == ["clip.mp4", "frames"]
    frames, fps = read_mp4(work / "clip.mp4")
    assert frames.shape == (3, 32, 48, 3) and fps == 6
    record = json.loads((work / "clip.mp4.json").read_text())
    assert record["command"] == "svd" and record["seed"] == {"kind": "numpy", "value": 3}
    assert record["arguments"]["fps"] == 6 and record["arguments"]["motion_bucket_id"] == 127  # defaults recorded
    assert record["arguments"]["model"] == str(Path(tiny_svd[0]).resolve())
    assert record["versions"]["torch"] == torch.__version__ and len(record["resolved"]["image_sha256"]) == 64
    expected = api_frames(vidiff_svd, np.random.Generator(np.random.PCG64(3)), image=PIL.Image.open(work / "img.png"),
                          height=32, width=48, num_frames=3, num_inference_steps=2, fps=6)
    assert np.array_equal(read_pngs(work / "frames"), expected[0])
    # The sidecar repeats the run from another folder, to the byte.
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    ok(vidiff("svd", "--from-json", work / "clip.mp4.json", "-o", "again.mp4", cwd=elsewhere))
    assert (elsewhere / "again.mp4").read_bytes() == (work / "clip.mp4").read_bytes()


def test_i2vgen_xl_gifs_numbered_and_torch_seed(tiny_i2vgen_xl, vidiff_i2vgen_xl, work):
    args = ["i2vgen-xl", "img.png", "a cat on a mat", "--model", tiny_i2vgen_xl[0], *SMALL, "--num-videos", 2,
            "--torch-seed", 5, "--negative-prompt", "blurry", "--target-fps", 10, "--guidance-scale", 4]
    ok(vidiff(*args, "-o", "clip.gif", "-o", "frames", cwd=work))
    gifs = [read_gif(work / f"clip-{i}.gif") for i in (1, 2)]
    assert all(g.shape == (3, 32, 48, 3) for g in gifs) and not np.array_equal(gifs[0], gifs[1])
    records = [json.loads((work / f"clip-{i}.gif.json").read_text()) for i in (1, 2)]
    assert [r["output"]["video_index"] for r in records] == [0, 1]
    assert records[0]["seed"] == {"kind": "torch", "value": 5} and records[0]["output"]["fps"] == 10
    expected = api_frames(vidiff_i2vgen_xl, torch.Generator().manual_seed(5), image=PIL.Image.open(work / "img.png"),
                          prompt="a cat on a mat", negative_prompt="blurry", height=32, width=48, num_frames=3,
                          num_inference_steps=2, num_videos_per_prompt=2, target_fps=10, guidance_scale=4.0)
    for index in (0, 1):
        assert np.array_equal(read_pngs(work / f"frames-{index + 1}"), expected[index])
    ok(vidiff("i2vgen-xl", "--from-json", work / "frames-2.json", "-o", "again", cwd=work))
    assert np.array_equal(read_pngs(work / "again-2"), expected[1])


def test_animatediff_adapter_scheduler_and_export_fps(tiny_animatediff, vidiff_animatediff, work):
    from vidiff import EulerDiscreteScheduler

    root = tiny_animatediff[0]
    args = ["animatediff", "a rocket flying into space", "--model", root / "sd15", "--motion-adapter", root / "motion_adapter",
            "--height", 32, "--width", 48, "--num-frames", 4, "--steps", 3, "--seed", 11, "--fps", 12,
            "--scheduler", "euler", "--scheduler-config", "timestep_spacing=trailing", "--progress"]
    result = ok(vidiff(*args, "-o", "clip.mp4", "-o", "frames", cwd=work))
    assert "denoising" in result.stderr and "decoding" in result.stderr  # --progress: bars on a pipe too
    frames, fps = read_mp4(work / "clip.mp4")
    assert frames.shape == (4, 32, 48, 3) and fps == 12
    record = json.loads((work / "frames.json").read_text())
    assert record["resolved"]["scheduler"] == "EulerDiscreteScheduler"
    assert record["arguments"]["scheduler_config"] == {"timestep_spacing": "trailing"}
    pipe = vidiff_animatediff
    euler = type(pipe)(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                       scheduler=EulerDiscreteScheduler.from_pretrained(root / "sd15", subfolder="scheduler", timestep_spacing="trailing"))
    euler.set_progress_bar_config(disable=True)
    expected = api_frames(euler, np.random.Generator(np.random.PCG64(11)), prompt="a rocket flying into space",
                          height=32, width=48, num_frames=4, num_inference_steps=3)
    assert np.array_equal(read_pngs(work / "frames"), expected[0])


def test_quiet_run_prints_only_the_output_paths(tiny_svd, work):
    result = ok(vidiff("svd", "img.png", "--model", tiny_svd[0], *SMALL, "-q", "-o", "a.gif", cwd=work))
    assert result.stdout == "a.gif\n" and result.stderr == ""


def test_info_lines_say_what_loads_and_where(tiny_svd, work):
    result = ok(vidiff("svd", "img.png", "--model", tiny_svd[0], *SMALL, "-o", "a.gif", cwd=work))
    assert "device cpu, dtype float32" in result.stderr and f"loading unet (UNetSpatioTemporalConditionModel) from {tiny_svd[0]}" in result.stderr
    assert "denoising" not in result.stderr  # no bars when stderr is not a terminal


def test_console_script_and_help(work):
    script = Path(sys.executable).parent / "vidiff"
    version = ok(subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120))
    assert version.stdout.startswith("vidiff ")
    help_text = ok(vidiff("i2vgen-xl", "--help", cwd=work)).stdout
    assert "--target-fps N" in help_text and "(default: 16)" in help_text and "(default: 9.0)" in help_text


# ------------------------------------------------------------------------------------ bad input
MODEL = "<the tiny SVD checkpoint>"  # replaced by its folder
ABSENT_DEVICE = "mps" if not torch.backends.mps.is_available() else "cuda"
BAD = {
    "missing image": (["svd", "missing.png", "--model", MODEL], 2, "IMAGE 'missing.png' does not exist"),
    "unreadable image": (["svd", "broken.png", "--model", MODEL], 2, "cannot be read as an image"),
    "image is a folder": (["svd", "empty", "--model", MODEL], 2, "is a folder"),
    "prompt where image needed": (["svd", "a cat on a mat", "--model", MODEL], 2, "takes no prompt"),
    "i2vgen-xl arguments swapped": (["i2vgen-xl", "a cat", "img.png"], 2, "IMAGE then PROMPT"),
    "missing prompt": (["animatediff"], 2, "needs PROMPT"),
    "height not multiple of 8": (["svd", "img.png", "--height", "30", "--model", MODEL], 2, "multiple of 8"),
    "width not multiple of 8": (["svd", "img.png", "--width", "100", "--model", MODEL], 2, "try 96 or 104"),
    "zero frames": (["svd", "img.png", "--num-frames", "0", "--model", MODEL], 2, "--num-frames: expected an integer ≥ 1"),
    "unknown scheduler": (["svd", "img.png", "--scheduler", "ddpm", "--model", MODEL], 2, "invalid choice: 'ddpm'"),
    "unknown scheduler option": (["svd", "img.png", "--scheduler-config", "bogus=1", "--model", MODEL], 2, "unknown option(s) ['bogus']"),
    "bad scheduler option value": (["svd", "img.png", "--scheduler-config", "timestep_spacing=weird", "--model", MODEL], 2, "timestep_spacing"),
    "infinite scheduler option": (["svd", "img.png", "--scheduler-config", "sigma_max=Infinity", "--model", MODEL], 2, "sigma_max=Infinity is not valid: expected a finite number"),
    "unknown flag": (["svd", "img.png", "--frames", "3", "--model", MODEL], 2, "unrecognized arguments: --frames"),
    "no command": ([], 2, "choose a command"),
    "absent device": (["svd", "img.png", "--device", ABSENT_DEVICE, "--model", MODEL], 2, f"--device {ABSENT_DEVICE}"),
    "folder is not a checkpoint": (["svd", "img.png", "--model", "empty"], 1, "has no model_index.json"),
    "offline hub id not cached": (["svd", "img.png", "--model", "someone/not-cached"], 1, "not in the local Hugging Face cache"),
    "output folder missing": (["svd", "img.png", "--model", MODEL, "-o", "nowhere/clip.mp4"], 2, "does not exist; create it first"),
    "output extension unknown": (["svd", "img.png", "--model", MODEL, "-o", "clip.avi"], 2, "unknown extension '.avi'"),
    "output exists": (["svd", "img.png", "--model", MODEL, "-o", "existing.mp4"], 2, "already exists; pass --overwrite"),
    "from-json missing": (["svd", "--from-json", "nothing.json"], 2, "does not exist"),
    "negative seed": (["svd", "img.png", "--seed", "-1", "--model", MODEL], 2, "--seed: expected an integer ≥ 0"),
    "infinite guidance": (["svd", "img.png", "--max-guidance-scale", "inf", "--model", MODEL], 2, "expected a finite number ≥ 0, got inf"),
    "height beyond any video": (["svd", "img.png", "--height", "80000", "--model", MODEL], 2, "at most 16384"),
    "gif fps above 100": (["svd", "img.png", "--fps", "120", "--model", MODEL, "-o", "clip.gif"], 2, "a .gif holds at most 100"),
}


@pytest.fixture(scope="module")
def bad_runs(tiny_svd, tmp_path_factory):
    """Every bad command line, run concurrently (each pays Python's and torch's start-up), in one
    folder holding an image, a non-image, an empty folder and an output that must survive."""
    work = tmp_path_factory.mktemp("bad-input")
    random_image(80, 56).save(work / "img.png")
    (work / "broken.png").write_bytes(b"not a png at all")
    (work / "existing.mp4").write_bytes(b"keep me")
    (work / "empty").mkdir()
    before = sorted(p.name for p in work.iterdir())
    env = {"HF_HOME": str(work.parent / "empty-hf-home")}  # an empty Hugging Face cache
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(vidiff, *[str(tiny_svd[0]) if a == MODEL else a for a in args], cwd=work, env=env)
            for name, (args, _, _) in BAD.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    return results, before, sorted(p.name for p in work.iterdir()), work


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_with_status_and_writes_nothing(bad_runs, case):
    results, before, after, work = bad_runs
    _, status, message = BAD[case]
    result = results[case]
    lines = result.stderr.splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("vidiff: error: ") and message in lines[0], result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert after == before and (work / "existing.mp4").read_bytes() == b"keep me"


def test_debug_shows_the_traceback(work):
    result = vidiff("svd", "img.png", "--model", "empty-folder-that-is-absent", "--debug", cwd=work)
    assert result.returncode == 1 and "Traceback" in result.stderr


@pytest.mark.parametrize("signal_number, status, message", [
    (signal.SIGINT, 130, "vidiff: interrupted; no partial output was left behind"),
    (signal.SIGTERM, 143, "vidiff: terminated (SIGTERM); no partial output was left behind"),
])
def test_ctrl_c_and_sigterm_leave_no_partial_output(tiny_svd, work, signal_number, status, message):
    process = subprocess.Popen(
        [sys.executable, "-m", "vidiff", "svd", "img.png", "--model", str(tiny_svd[0]), "--height", "32", "--width", "48",
         "--num-frames", "3", "--steps", "2000", "-o", "clip.mp4", "-o", "frames"],
        cwd=work, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    for line in process.stderr:  # wait until denoising has started
        if "generating" in line:
            break
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status and stderr.splitlines() == [message], stderr
    assert sorted(p.name for p in work.iterdir()) == ["img.png"]


# ------------------------------------------------------------------------------------------ demo
def test_demo_writes_an_mp4_and_a_gif_per_pipeline(tmp_path):
    from vidiff.demo.checkpoints import DEMO_CALLS

    env = {"VIDIFF_HOME": str(tmp_path / "home")}
    result = ok(vidiff("demo", cwd=tmp_path, env=env))
    assert "RANDOM" in result.stderr and "vidiff svd rocket.png" in result.stderr  # says so, shows the real use
    assert "vidiff: vidiff" not in result.stderr
    # 4 mp4 + 4 gif (SVD, I2VGen-XL, AnimateDiff, Wan) + their 8 sidecars + input.png, as counted on disk
    assert "wrote 17 files" in result.stderr and len(list((tmp_path / "vidiff-demo").iterdir())) == 17
    # The exact command of the demo's SVD run, with the real checkpoint path under $VIDIFF_HOME: it runs.
    command = next(line.strip() for line in result.stderr.splitlines() if line.strip().startswith("vidiff svd vidiff-demo"))
    assert str(tmp_path / "home" / "demo-checkpoints") in command
    ok(vidiff(*shlex.split(command)[1:], cwd=tmp_path, env=env))
    assert read_mp4(tmp_path / "my.mp4")[0].shape == read_mp4(tmp_path / "vidiff-demo" / "svd.mp4")[0].shape
    (tmp_path / "my.mp4").unlink(), (tmp_path / "my.mp4.json").unlink()
    folder = tmp_path / "vidiff-demo"
    for name, call in DEMO_CALLS.items():
        frames, _ = read_mp4(folder / f"{name}.mp4")
        assert frames.shape == (call["num_frames"], call["height"], call["width"], 3)
        assert read_gif(folder / f"{name}.gif").shape == frames.shape
        assert frames.std() > 1.0  # noise, but not a blank video
    assert (tmp_path / "home" / "demo-checkpoints").is_dir()
    # A second demo refuses to replace the videos unless asked, and reuses the checkpoints.
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = vidiff("demo", cwd=tmp_path, env=env)
    assert again.returncode == 2 and "--overwrite" in again.stderr.splitlines()[-1]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    replaced = ok(vidiff("demo", "--overwrite", "-q", cwd=tmp_path, env=env))
    assert "building" not in replaced.stderr and "RANDOM" in replaced.stderr


def test_hub_id_from_the_offline_cache_is_recorded_with_its_commit(tiny_svd, work):
    """A Hub id whose snapshot is in the Hugging Face cache loads offline; the log says it came from
    the cache, and the sidecar records the snapshot's commit."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = work / "hf-home" / "hub" / "models--someone--tiny-svd"
    shutil.copytree(tiny_svd[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    result = ok(vidiff("svd", "img.png", "--model", "someone/tiny-svd", *SMALL, "-o", "a.gif", cwd=work,
                       env={"HF_HOME": str(work / "hf-home")}))
    assert "cached snapshot" in result.stderr
    record = json.loads((work / "a.gif.json").read_text())
    assert record["arguments"]["model"] == "someone/tiny-svd" and record["resolved"]["model_commit"] == commit


def test_from_json_warns_when_the_image_changed(tiny_svd, work):
    ok(vidiff("svd", "img.png", "--model", tiny_svd[0], *SMALL, "-o", "a.gif", cwd=work))
    random_image(80, 56, seed=9).save(work / "img.png")
    result = ok(vidiff("svd", "--from-json", "a.gif.json", "-o", "b.gif", cwd=work))
    assert "is not the file the recorded run used" in result.stderr
