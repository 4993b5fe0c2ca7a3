"""Issue 14, the command line: ``vidiff animatediff`` with ``--video`` (video-to-video), ``--controlnet``
(+ ``--control-video``, ``--control-preprocess``, ``--control-scale``…) and ``--sparsectrl``
(+ ``--control-image FRAME:PATH``).

The runs go through ``vidiff``'s entry point in this process on the tiny AnimateDiff checkpoint plus
a tiny ControlNet and SparseCtrl written here by diffusers; PNG frames are compared bit for bit with
the same run through the Python API, and each sidecar is replayed with ``--from-json``.
"""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import PIL.Image
import pytest

from tests.helpers import perturb_
from tests.test_cli import api_frames, read_mp4, read_pngs

SIZE = ["--height", "32", "--width", "48", "--steps", "2"]


# ------------------------------------------------------------------------------ fixtures
def blocky_frames(count: int, seed: int) -> list[PIL.Image.Image]:
    """Frames of sharp-edged colour blocks (so Canny finds edges), 56 × 40."""
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize((56, 40), PIL.Image.Resampling.NEAREST)
            for _ in range(count)]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """``dance.mp4`` (5 frames), ``short.gif`` (2 frames), ``first.png``, ``last.png`` and ``notes.txt``."""
    from vidiff import export_to_gif, export_to_video

    folder = tmp_path_factory.mktemp("media")
    export_to_video(blocky_frames(5, 0), folder / "dance.mp4", fps=8)
    export_to_gif(blocky_frames(2, 1), folder / "short.gif", fps=8)
    first, last = blocky_frames(2, 2)
    first.save(folder / "first.png")
    last.save(folder / "last.png")
    (folder / "notes.txt").write_text("not a video\n")
    return folder


@pytest.fixture(scope="module")
def control_models(tmp_path_factory):
    """Tiny random (perturbed) models written by diffusers: a ControlNet and a second one that fit the
    tiny UNet, a scribble SparseCtrl, and a ControlNet of the wrong width."""
    import diffusers

    folder = tmp_path_factory.mktemp("control-models")
    net = dict(block_out_channels=(32, 64), layers_per_block=2, in_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, conditioning_embedding_out_channels=(8, 16, 16, 32))
    for name, seed in (("cn", 7), ("cn2", 8)):
        perturb_(diffusers.ControlNetModel(**net), seed=seed).save_pretrained(folder / name)
    diffusers.ControlNetModel(**{**net, "cross_attention_dim": 16}).save_pretrained(folder / "misfit")
    sparse = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"), layers_per_block=2,
                  cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, motion_num_attention_heads=2,
                  motion_max_seq_length=32, conditioning_embedding_out_channels=(8, 16, 16, 32), conditioning_channels=3,
                  use_simplified_condition_embedding=False)
    perturb_(diffusers.SparseControlNetModel(**sparse), seed=9).save_pretrained(folder / "scribble")
    return folder


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """Run ``vidiff`` in this process in ``tmp_path``; returns (status, stderr). Restores what it configures."""
    from vidiff.cli.main import main

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger("vidiff")
    handlers, level, propagate = root.handlers[:], root.level, root.propagate

    def run(capsys, *argv) -> tuple[int, str]:
        status = main([str(a) for a in argv])
        return status, capsys.readouterr().err

    yield run
    root.handlers[:], root.level, root.propagate = handlers, level, propagate


def base_args(tiny_animatediff) -> list:
    root = tiny_animatediff[0]
    return ["--model", root / "sd15", "--motion-adapter", root / "motion_adapter"]


def api_pipeline(cls, tiny_animatediff, **components):
    from vidiff import MotionAdapter

    root = tiny_animatediff[0]
    pipe = cls.from_pretrained(root / "sd15", motion_adapter=MotionAdapter.from_pretrained(root / "motion_adapter"), **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def numpy_generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


# ------------------------------------------------------------------------------ the three command lines
def test_video_to_video(cli, capsys, tiny_animatediff, media, tmp_path):
    from vidiff import AnimateDiffVideoToVideoPipeline, load_video

    args = ["animatediff", "a marble statue dancing", *base_args(tiny_animatediff), "--video", media / "dance.mp4",
            "--strength", "0.6", "--height", 32, "--width", 48, "--steps", 3, "--seed", 3]
    status, err = cli(capsys, *args, "-o", "statue.mp4", "-o", "frames")
    assert status == 0, err
    assert read_mp4(tmp_path / "statue.mp4")[0].shape == (5, 32, 48, 3)  # the video's frame count
    record = json.loads((tmp_path / "frames.json").read_text())
    arguments, resolved = record["arguments"], record["resolved"]
    assert arguments["video"] == str((media / "dance.mp4").resolve()) and arguments["strength"] == 0.6
    assert arguments["num_frames"] is None and arguments["controlnet"] == [] and arguments["sparsectrl"] is None
    assert resolved["pipeline"] == "AnimateDiffVideoToVideoPipeline"
    assert resolved["control"]["num_frames"] == 5 and len(resolved["control"]["video"]["sha256"]) == 64

    assert resolved["scheduler"] == "PNDMScheduler"  # the checkpoint's own, cut as diffusers cuts it

    pipe = api_pipeline(AnimateDiffVideoToVideoPipeline, tiny_animatediff)
    expected = api_frames(pipe, numpy_generator(3), video=load_video(str(media / "dance.mp4")), prompt="a marble statue dancing",
                          strength=0.6, height=32, width=48, num_inference_steps=3)
    # 0.6 of 3 steps runs 1, the default 0.8 would run 2: --strength reached the pipeline
    assert np.array_equal(read_pngs(tmp_path / "frames"), expected[0])

    status, err = cli(capsys, "animatediff", "--from-json", tmp_path / "frames.json", "-o", "again")
    assert status == 0, err
    assert np.array_equal(read_pngs(tmp_path / "again"), read_pngs(tmp_path / "frames"))
    # --num-frames keeps the video's first frames
    status, err = cli(capsys, *args, "--num-frames", 3, "-o", "three")
    assert status == 0, err
    assert read_pngs(tmp_path / "three").shape == (3, 32, 48, 3)
    assert json.loads((tmp_path / "three.json").read_text())["arguments"]["num_frames"] == 3


def test_controlnet_with_canny_control_video(cli, capsys, tiny_animatediff, media, control_models, tmp_path):
    from vidiff import (
        AnimateDiffControlNetPipeline,
        ControlNetModel,
        canny_frames,
        load_video,
    )

    args = ["animatediff", "a dancer", *base_args(tiny_animatediff), "--controlnet", control_models / "cn",
            "--control-video", media / "dance.mp4", "--control-scale", "0.8", *SIZE, "--torch-seed", 5]
    status, err = cli(capsys, *args, "--control-preprocess", "canny", "-o", "out.mp4", "-o", "canny")
    assert status == 0, err
    assert read_mp4(tmp_path / "out.mp4")[0].shape == (5, 32, 48, 3)  # the control video's frame count
    record = json.loads((tmp_path / "canny.json").read_text())
    assert record["resolved"]["pipeline"] == "AnimateDiffControlNetPipeline"
    assert record["arguments"]["control_preprocess"] == ["canny"] and record["arguments"]["control_scale"] == [0.8]
    (net,) = record["resolved"]["control"]["controlnets"]
    assert (net["preprocess"], net["scale"], net["start"], net["end"]) == ("canny", 0.8, 0.0, 1.0)
    assert record["resolved"]["control"]["canny"] == {"low_threshold": 100, "high_threshold": 200}

    import torch

    pipe = api_pipeline(AnimateDiffControlNetPipeline, tiny_animatediff, controlnet=ControlNetModel.from_pretrained(control_models / "cn"))
    expected = api_frames(pipe, torch.Generator().manual_seed(5), prompt="a dancer", num_frames=5, height=32, width=48,
                          num_inference_steps=2, conditioning_frames=canny_frames(load_video(str(media / "dance.mp4"))),
                          controlnet_conditioning_scale=0.8)
    assert np.array_equal(read_pngs(tmp_path / "canny"), expected[0])

    status, err = cli(capsys, *args, "--control-preprocess", "none", "-o", "plain")
    assert status == 0, err
    assert not np.array_equal(read_pngs(tmp_path / "plain"), read_pngs(tmp_path / "canny"))  # canny changed what it saw

    status, err = cli(capsys, "animatediff", "--from-json", tmp_path / "canny.json", "-o", "again")
    assert status == 0, err
    assert np.array_equal(read_pngs(tmp_path / "again"), read_pngs(tmp_path / "canny"))


def test_sparsectrl_key_frames(cli, capsys, tiny_animatediff, media, control_models, tmp_path):
    from vidiff import (
        AnimateDiffSparseControlNetPipeline,
        SparseControlNetModel,
        load_image,
    )

    args = ["animatediff", "a cat", *base_args(tiny_animatediff), "--sparsectrl", control_models / "scribble",
            "--control-image", f"3:{media / 'last.png'}", "--control-image", f"0:{media / 'first.png'}",
            "--num-frames", 4, "--guess-mode", *SIZE, "--seed", 8]
    status, err = cli(capsys, *args, "-o", "out.mp4", "-o", "frames")
    assert status == 0, err
    assert read_mp4(tmp_path / "out.mp4")[0].shape == (4, 32, 48, 3)
    record = json.loads((tmp_path / "frames.json").read_text())
    assert record["resolved"]["pipeline"] == "AnimateDiffSparseControlNetPipeline"
    assert record["arguments"]["control_image"] == [f"3:{media / 'last.png'}", f"0:{media / 'first.png'}"]
    assert [k["frame"] for k in record["resolved"]["control"]["sparsectrl"]["key_frames"]] == [3, 0]  # the order given

    pipe = api_pipeline(AnimateDiffSparseControlNetPipeline, tiny_animatediff,
                        controlnet=SparseControlNetModel.from_pretrained(control_models / "scribble"))
    expected = api_frames(pipe, numpy_generator(8), prompt="a cat", num_frames=4, height=32, width=48, num_inference_steps=2,
                          conditioning_frames=[load_image(str(media / "last.png")), load_image(str(media / "first.png"))],
                          controlnet_frame_indices=[3, 0], guess_mode=True)
    assert np.array_equal(read_pngs(tmp_path / "frames"), expected[0])

    status, err = cli(capsys, "animatediff", "--from-json", tmp_path / "frames.json", "-o", "again")
    assert status == 0, err
    assert np.array_equal(read_pngs(tmp_path / "again"), read_pngs(tmp_path / "frames"))


def test_video_to_video_with_two_controlnets_and_free_noise(cli, capsys, tiny_animatediff, media, control_models, tmp_path):
    from vidiff import AnimateDiffVideoToVideoControlNetPipeline, ControlNetModel, load_video

    args = ["animatediff", "a robot", *base_args(tiny_animatediff), "--video", media / "dance.mp4", "--strength", "0.7",
            "--controlnet", control_models / "cn", "--controlnet", control_models / "cn2",
            "--control-scale", "0.5", "--control-scale", "1.2", "--control-end", "1.0", "--control-end", "0.5",
            "--free-noise", "--context-length", 4, "--context-stride", 1, *SIZE, "--seed", 2]
    status, err = cli(capsys, *args, "-o", "frames")
    assert status == 0, err
    record = json.loads((tmp_path / "frames.json").read_text())
    assert record["resolved"]["pipeline"] == "AnimateDiffVideoToVideoControlNetPipeline"
    assert [n["control_video"] for n in record["resolved"]["control"]["controlnets"]] == [str(media / "dance.mp4")] * 2

    nets = [ControlNetModel.from_pretrained(control_models / name) for name in ("cn", "cn2")]
    pipe = api_pipeline(AnimateDiffVideoToVideoControlNetPipeline, tiny_animatediff, controlnet=nets)
    pipe.enable_free_noise(context_length=4, context_stride=1)
    video = load_video(str(media / "dance.mp4"))
    expected = api_frames(pipe, numpy_generator(2), video=video, prompt="a robot", strength=0.7, height=32, width=48,
                          num_inference_steps=2, conditioning_frames=[video, video], controlnet_conditioning_scale=[0.5, 1.2],
                          control_guidance_end=[1.0, 0.5])
    assert np.array_equal(read_pngs(tmp_path / "frames"), expected[0])


# ------------------------------------------------------------------------------ bad combinations
def _bad_cases(media_folder: str) -> dict:
    video = f"{media_folder}/dance.mp4"
    return {
        "strength without video": (["--strength", "0.5"], "--strength needs --video"),
        "enforce without video": (["--enforce-steps"], "--enforce-steps needs --video"),
        "strength zero": (["--video", video, "--strength", "0"], "argument --strength: expected a number in (0, 1]"),
        "sparsectrl with video": (["--sparsectrl", "s", "--control-image", "0:a.png", "--video", video], "--sparsectrl cannot be combined with --video"),
        "sparsectrl with controlnet": (["--sparsectrl", "s", "--control-image", "0:a.png", "--controlnet", "c", "--control-video", video],
                                       "--sparsectrl cannot be combined with --controlnet"),
        "sparsectrl without images": (["--sparsectrl", "s"], "--sparsectrl needs at least one --control-image"),
        "control image without sparsectrl": (["--control-image", "0:a.png"], "--control-image needs --sparsectrl"),
        "control image outside": (["--sparsectrl", "s", "--control-image", "16:a.png"], "--control-image '16:a.png': frame 16 is outside the video"),
        "control image twice": (["--sparsectrl", "s", "--control-image", "1:a.png", "--control-image", "1:b.png"], "frame 1 already has an image"),
        "control image malformed": (["--sparsectrl", "s", "--control-image", "a.png"], "argument --control-image: expected FRAME:PATH"),
        "control video without controlnet": (["--control-video", video], "--control-video needs --controlnet"),
        "controlnet without frames": (["--controlnet", "c"], "--controlnet needs --control-video PATH"),
        "control videos count": (["--controlnet", "c", "--control-video", video, "--control-video", video],
                                 "--control-video is given 2 times for 1 --controlnet"),
        "scale count": (["--controlnet", "c", "--controlnet", "d", "--video", video, "--control-scale", "1", "--control-scale", "1",
                         "--control-scale", "1"], "--control-scale is given 3 times; give one for all or one per --controlnet (2)"),
        "scale without model": (["--control-scale", "0.5"], "--control-scale needs --controlnet or --sparsectrl"),
        "guess mode without model": (["--guess-mode"], "--guess-mode needs --controlnet or --sparsectrl"),
        "start with sparsectrl": (["--sparsectrl", "s", "--control-image", "0:a.png", "--control-start", "0.2"], "--control-start needs --controlnet"),
        "start after end": (["--controlnet", "c", "--video", video, "--control-start", "0.6", "--control-end", "0.4"],
                            "--control-start 0.6 must be smaller than --control-end 0.4"),
        "canny thresholds without canny": (["--controlnet", "c", "--video", video, "--canny-low", "5"], "--canny-low needs --control-preprocess canny"),
        "canny low above high": (["--controlnet", "c", "--video", video, "--control-preprocess", "canny", "--canny-low", "300"],
                                 "--canny-low 300 must not exceed --canny-high 200"),
        "stride without video": (["--video-stride", "2"], "--video-stride needs --video or --control-video"),
        "video missing": (["--video", "absent.mp4"], "--video 'absent.mp4' does not exist"),
        "video not a video": (["--video", f"{media_folder}/notes.txt"], "cannot be read as a video"),
        "more frames than the video": (["--video", video, "--num-frames", "6"], "has 5 frames, fewer than --num-frames 6"),
        "control video shorter than video": (["--video", video, "--controlnet", "c", "--control-video", f"{media_folder}/short.gif"],
                                             "--control-video", ),
    }


BAD = sorted(_bad_cases("M"))


@pytest.mark.parametrize("case", BAD)
def test_bad_combinations_exit_2_naming_the_flag_before_loading(cli, capsys, media, tmp_path, case):
    argv, *message = _bad_cases(str(media))[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    status, err = cli(capsys, "animatediff", "a cat", *argv, "--model", "absent-model", "-o", "clip.mp4")
    lines = err.splitlines()
    assert status == 2, err  # an absent --model would be status 1: refused before opening it
    assert len(lines) == 1 and lines[0].startswith("vidiff: error: ") and "Traceback" not in err, err
    if message:
        assert message[0] in lines[0], lines[0]
    if case == "control video shorter than video":
        assert "has 2 frames, fewer than the 5 frames of --video" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("command, argv", [("svd", ["img.png", "--video", "x.mp4"]), ("i2vgen-xl", ["img.png", "a cat", "--controlnet", "c"])])
def test_video_and_control_flags_belong_to_animatediff(cli, capsys, command, argv):
    status, err = cli(capsys, command, *argv, "--model", "absent-model")
    assert status == 2 and err.splitlines() == [
        f"vidiff: error: {argv[-2]} does not apply to `vidiff {command}`: video input and control are AnimateDiff's (`vidiff animatediff`)"]


def test_controlnet_that_does_not_fit_the_unet_is_refused_before_loading(cli, capsys, tiny_animatediff, media, control_models):
    status, err = cli(capsys, "animatediff", "a cat", *base_args(tiny_animatediff), "--controlnet", control_models / "misfit",
                      "--video", media / "dance.mp4", *SIZE, "-o", "clip.mp4")
    lines = err.splitlines()
    assert status == 2 and lines[-1].startswith(f"vidiff: error: --controlnet '{control_models / 'misfit'}' does not fit --model's UNet")
    assert not any(line.startswith("vidiff: loading") for line in lines)
