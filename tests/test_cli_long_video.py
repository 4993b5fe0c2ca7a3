"""Issue 13, part 6: the command line for long videos (``--prompt-at``, ``--free-noise``,
``--context-*``, ``--weighting``, ``--noise-type``, ``--free-init*``).

Parsing and validation run in-process and load nothing; the bad-input suite
(``tests.bad_inputs.CLI_LONG_VIDEO``) goes through ``vidiff``'s entry point; end-to-end runs use the
tiny checkpoints and compare PNG frames bit for bit with the same run through the Python API.
"""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import PIL.Image
import pytest

from tests.bad_inputs import CLI_LONG_VIDEO, IMAGE, MODEL
from tests.test_cli import api_frames, ok, read_mp4, read_pngs, vidiff
from vidiff.cli import long_video, settings
from vidiff.cli.commands import ANIMATEDIFF, I2VGEN_XL, SVD
from vidiff.cli.errors import UsageError
from vidiff.cli.parser import build_parser


def parse(*argv: str) -> dict:
    return vars(build_parser().parse_args(list(argv)))


def plan(command, *argv: str) -> long_video.LongVideo:
    explicit = parse(command.name, *argv)
    explicit.pop("command")
    merged, _ = settings.merge(command, explicit)
    return long_video.plan(command, merged)


# ------------------------------------------------------------------------------ flags → enable_*() calls
def test_no_long_video_flags_change_nothing():
    for command in (SVD, I2VGEN_XL, ANIMATEDIFF):
        nothing = plan(command)
        assert nothing.calls() == [] and nothing.prompt("a cat") == "a cat"


def test_free_noise_defaults_are_diffusers_and_flags_reach_them():
    assert plan(ANIMATEDIFF, "--free-noise").calls() == [("--free-noise", "enable_free_noise", dict(
        context_length=16, context_stride=4, weighting_scheme="pyramid", noise_type="shuffle_context"))]
    given = plan(ANIMATEDIFF, "--free-noise", "--num-frames", "40", "--context-length", "8", "--context-stride", "2",
                 "--weighting", "delayed_reverse_sawtooth", "--noise-type", "repeat_context")
    assert given.free_noise == dict(context_length=8, context_stride=2, weighting_scheme="delayed_reverse_sawtooth",
                                    noise_type="repeat_context")
    assert given.context_windows is None  # --context-length is FreeNoise's here


def test_context_length_without_free_noise_turns_on_context_windows():
    windows = plan(SVD, "--num-frames", "100", "--context-length", "25", "--context-overlap", "6")
    assert windows.calls() == [("--context-length", "enable_context_windows", dict(
        context_length=25, context_overlap=6, schedule="uniform", closed_loop=False, fuse="pyramid"))]
    looped = plan(ANIMATEDIFF, "--num-frames", "32", "--context-length", "16", "--context-schedule", "static",
                  "--closed-loop", "--weighting", "flat")
    # overlap defaults to a quarter of the window
    assert looped.context_windows == dict(context_length=16, context_overlap=4, schedule="static", closed_loop=True, fuse="flat")
    assert looped.free_noise is None


def test_free_init_on_every_pipeline():
    for command, extra in ((SVD, ()), (I2VGEN_XL, ()), (ANIMATEDIFF, ("--free-noise",))):
        chosen = plan(command, *extra, "--free-init", "3")
        assert chosen.free_init == dict(num_iters=3, use_fast_sampling=False, method="butterworth")
    fast = plan(SVD, "--free-init", "2", "--free-init-method", "gaussian", "--free-init-fast")
    assert fast.calls() == [("--free-init", "enable_free_init", dict(num_iters=2, use_fast_sampling=True, method="gaussian"))]


def test_prompt_at_builds_the_prompt_dict_with_prompt_at_frame_0():
    chosen = plan(ANIMATEDIFF, "--num-frames", "96", "--prompt-at", "80:a butterfly", "--prompt-at", "40:a cocoon: asleep")
    assert chosen.prompt("a caterpillar") == {0: "a caterpillar", 40: "a cocoon: asleep", 80: "a butterfly"}
    assert list(chosen.prompt("x")) == [0, 40, 80]  # key frames in order, whatever the flags' order
    assert parse("animatediff", "--prompt-at", "007:x")["prompt_at"] == ["7:x"]  # recorded plainly


@pytest.mark.parametrize("argv", [["--prompt-at", "nine:x"], ["--prompt-at", "9"], ["--prompt-at", "9:"], ["--prompt-at", "1.5:x"]])
def test_malformed_prompt_at_is_a_usage_error_naming_the_flag(argv):
    with pytest.raises(UsageError, match="argument --prompt-at: expected FRAME:TEXT"):
        parse("animatediff", *argv)


def test_svd_video_length_from_the_model_is_checked_after_reading_its_config():
    # SVD's default length is the UNet's num_frames, unknown before the config is read: plan() defers.
    chosen = plan(SVD, "--context-length", "30")
    with pytest.raises(UsageError, match=r"--context-length 30 is longer than the video \(25 frames by default; set --num-frames\)"):
        long_video.check_frames(chosen, 25, given=False)
    long_video.check_frames(chosen, 30, given=False)  # a window as long as the video is fine


# ------------------------------------------------------------------------------ sidecar values
def _sidecar(tmp_path, command: str, **arguments) -> str:
    path = tmp_path / "run.mp4.json"
    path.write_text(json.dumps({"command": command, "arguments": {"prompt": "a cat", **arguments},
                                "seed": {"kind": "numpy", "value": 1}}))
    return str(path)


def test_from_json_replays_long_video_settings_and_flags_override(tmp_path):
    path = _sidecar(tmp_path, "animatediff", num_frames=24, prompt_at=["8:a dog", "16:a cow"], free_noise=True,
                    context_length=8, context_stride=2, weighting="flat", noise_type="random", free_init=2,
                    free_init_method="ideal", free_init_fast=True, context_overlap=None, closed_loop=False)
    merged, _ = settings.merge(ANIMATEDIFF, {"from_json": path})
    replay = long_video.plan(ANIMATEDIFF, merged)
    assert replay.prompt("a cat") == {0: "a cat", 8: "a dog", 16: "a cow"}
    assert replay.free_noise == dict(context_length=8, context_stride=2, weighting_scheme="flat", noise_type="random")
    assert replay.free_init == dict(num_iters=2, use_fast_sampling=True, method="ideal")
    typed = parse("animatediff", "--from-json", path, "--prompt-at", "4:a bird", "--context-length", "12")
    typed.pop("command")
    merged, _ = settings.merge(ANIMATEDIFF, typed)
    replay = long_video.plan(ANIMATEDIFF, merged)
    assert replay.prompt("a cat") == {0: "a cat", 4: "a bird"} and replay.free_noise["context_length"] == 12


@pytest.mark.parametrize("arguments, message", [
    (dict(prompt_at="8:a dog"), "argument --prompt-at: expected a list"),
    (dict(prompt_at=["eight:a dog"]), "argument --prompt-at: expected FRAME:TEXT"),
    (dict(free_noise="yes"), "argument --free-noise: expected true or false"),
    (dict(weighting="triangle"), "argument --weighting: invalid choice: 'triangle'"),
    (dict(free_init=0), "argument --free-init: expected an integer ≥ 1"),
])
def test_from_json_values_go_through_the_flags_checks(tmp_path, arguments, message):
    with pytest.raises(UsageError, match=None) as caught:
        settings.merge(ANIMATEDIFF, {"from_json": _sidecar(tmp_path, "animatediff", **arguments)})
    assert message in str(caught.value)


def test_defaults_record_every_long_video_setting_as_off():
    assert settings.defaults(ANIMATEDIFF)["free_noise"] is False and settings.defaults(ANIMATEDIFF)["prompt_at"] == []
    assert "free_noise" not in settings.defaults(SVD) and settings.defaults(SVD)["context_length"] is None


def test_help_hides_animatediff_only_flags_elsewhere():
    from vidiff.cli.parser import subcommand_actions

    for name in ("svd", "i2vgen-xl"):
        help_text = build_parser()._subparsers._group_actions[0].choices[name].format_help()
        assert "--context-length" in help_text and "--free-init" in help_text and "--free-noise" not in help_text
        assert "free_noise" in subcommand_actions(name)  # still parsed, so using it is a clear error
    help_text = build_parser()._subparsers._group_actions[0].choices["animatediff"].format_help()
    assert "--prompt-at FRAME:TEXT" in help_text and "--noise-type" in help_text


# ------------------------------------------------------------------------------ the bad-input suite
@pytest.fixture
def in_process_cli(monkeypatch):
    """``vidiff.cli.main.main`` run in this process; restores what it configures (warnings, logging)."""
    from vidiff.cli.main import main

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    root = logging.getLogger("vidiff")
    handlers, level, propagate = root.handlers[:], root.level, root.propagate
    yield main
    root.handlers[:], root.level, root.propagate = handlers, level, propagate


def _argv(argv: list[str]) -> list[str]:
    return [{IMAGE: "img.png", MODEL: "absent-model"}.get(a, a) for a in argv] + ["--model", "absent-model"]


@pytest.mark.parametrize("case", CLI_LONG_VIDEO)
def test_bad_long_video_flags_are_one_line_exit_2_before_loading(in_process_cli, work, monkeypatch, capsys, case):
    argv, message = CLI_LONG_VIDEO[case]
    monkeypatch.chdir(work)
    before = sorted(p.name for p in work.iterdir())
    status = in_process_cli(_argv(argv) + ["-o", "clip.mp4"])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2, captured.err  # an absent --model would be status 1: refused before opening it
    assert len(lines) == 1 and lines[0].startswith("vidiff: error: ") and message in lines[0], captured.err
    assert captured.out == "" and "Traceback" not in captured.err
    assert sorted(p.name for p in work.iterdir()) == before


def test_bad_long_video_flag_through_the_real_entry_point(work):
    # Two cases as separate processes: the same one line from `python -m vidiff`.
    for case in ("free-noise on svd", "prompt-at frame twice"):
        argv, message = CLI_LONG_VIDEO[case]
        result = vidiff(*_argv(argv), cwd=work)
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
        assert len(lines) == 1 and lines[0].startswith("vidiff: error: ") and message in lines[0], result.stderr


def test_svd_window_longer_than_the_models_default_length_is_refused_before_loading(in_process_cli, tiny_svd, work, monkeypatch, capsys):
    # The tiny SVD UNet is configured for 3 frames: the default video is 3 frames long.
    monkeypatch.chdir(work)
    status = in_process_cli(["svd", "img.png", "--model", str(tiny_svd[0]), "--context-length", "4", "-o", "clip.mp4"])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and lines[-1] == ("vidiff: error: --context-length 4 is longer than the video (3 frames by default; "
                                         "set --num-frames); give --context-length 3 or less, or more frames")
    assert sorted(p.name for p in work.iterdir()) == ["img.png"]


@pytest.mark.parametrize("model, argv, message", [
    ("sd15", ["--num-frames", "40"], ("--num-frames 40 is more frames than the motion modules take at once (motion_max_seq_length "
                                      "32 in the motion_adapter's config); for a longer video add --free-noise or --context-length N")),
    ("sd15", ["--num-frames", "48", "--free-noise", "--context-length", "40"], "--context-length 40 is more frames than the motion modules take"),
    ("animatediff", ["--num-frames", "48", "--context-length", "33"], ("--context-length 33 is more frames than the motion modules "
                                                                       "take (motion_max_seq_length 32 in the unet's config); give --context-length 32 or less")),
])
def test_animatediff_windows_beyond_the_motion_modules_are_refused_before_loading(
        in_process_cli, tiny_animatediff, work, monkeypatch, capsys, model, argv, message):
    root = tiny_animatediff[0]
    monkeypatch.chdir(work)
    adapter = ["--motion-adapter", str(root / "motion_adapter")] if model == "sd15" else []
    status = in_process_cli(["animatediff", "a cat", "--model", str(root / model), *adapter, *argv, "-o", "clip.mp4"])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and lines[-1].startswith("vidiff: error: ") and message in lines[-1], lines
    assert not any(line.startswith("vidiff: loading") for line in lines)  # refused from the configs, before any weights
    assert sorted(p.name for p in work.iterdir()) == ["img.png"]


# ------------------------------------------------------------------------------ end to end
def test_animatediff_prompt_travel_free_noise_and_free_init(tiny_animatediff, work):
    from vidiff import AnimateDiffPipeline, MotionAdapter

    root = tiny_animatediff[0]
    args = ["animatediff", "a cat", "--model", root / "sd15", "--motion-adapter", root / "motion_adapter", "--height", 32,
            "--width", 48, "--num-frames", 8, "--steps", 2, "--seed", 3, "--prompt-at", "5:a dog", "--free-noise",
            "--context-length", 4, "--context-stride", 2, "--free-init", 2]
    ok(vidiff(*args, "-o", "clip.mp4", "-o", "frames", cwd=work))
    assert read_mp4(work / "clip.mp4")[0].shape == (8, 32, 48, 3)
    record = json.loads((work / "frames.json").read_text())
    recorded = record["arguments"]
    assert recorded["prompt"] == "a cat" and recorded["prompt_at"] == ["5:a dog"] and recorded["free_noise"] is True
    assert (recorded["context_length"], recorded["context_stride"], recorded["free_init"]) == (4, 2, 2)
    assert record["resolved"]["long_video"]["enable_free_noise"] == dict(
        context_length=4, context_stride=2, weighting_scheme="pyramid", noise_type="shuffle_context", prompt_interpolation_callback=None)
    assert record["resolved"]["long_video"]["enable_free_init"] == dict(
        num_iters=2, use_fast_sampling=False, method="butterworth", order=4, spatial_stop_frequency=0.25, temporal_stop_frequency=0.25)

    pipe = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=MotionAdapter.from_pretrained(root / "motion_adapter"))
    pipe.set_progress_bar_config(disable=True)
    call = dict(height=32, width=48, num_frames=8, num_inference_steps=2)
    pipe.enable_free_noise(context_length=4, context_stride=2)
    pipe.enable_free_init(num_iters=2)
    expected = api_frames(pipe, np.random.Generator(np.random.PCG64(3)), prompt={0: "a cat", 5: "a dog"}, **call)
    assert np.array_equal(read_pngs(work / "frames"), expected[0])
    pipe.disable_free_noise(), pipe.disable_free_init()
    plain = api_frames(pipe, np.random.Generator(np.random.PCG64(3)), prompt="a cat", **call)
    assert not np.array_equal(plain, expected)  # the flags changed the video

    ok(vidiff("animatediff", "--from-json", work / "frames.json", "-o", "again", cwd=work))
    assert np.array_equal(read_pngs(work / "again"), read_pngs(work / "frames"))


def test_svd_context_windows_longer_than_trained(tiny_svd, work):
    from vidiff import StableVideoDiffusionPipeline

    args = ["svd", "img.png", "--model", tiny_svd[0], "--height", 32, "--width", 48, "--num-frames", 8, "--steps", 2,
            "--seed", 5, "--context-length", 4, "--context-overlap", 1]
    ok(vidiff(*args, "-o", "clip.mp4", "-o", "frames", cwd=work))
    assert read_mp4(work / "clip.mp4")[0].shape == (8, 32, 48, 3)  # the tiny UNet is configured for 3 frames
    record = json.loads((work / "clip.mp4.json").read_text())
    assert (record["arguments"]["context_length"], record["arguments"]["context_overlap"]) == (4, 1)
    assert record["resolved"]["long_video"] == {"enable_context_windows": dict(
        context_length=4, context_overlap=1, schedule="uniform", closed_loop=False, fuse="pyramid")}

    pipe = StableVideoDiffusionPipeline.from_pretrained(tiny_svd[0])
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_context_windows(context_length=4, context_overlap=1)
    call = dict(image=PIL.Image.open(work / "img.png"), height=32, width=48, num_frames=8, num_inference_steps=2)
    expected = api_frames(pipe, np.random.Generator(np.random.PCG64(5)), **call)
    assert np.array_equal(read_pngs(work / "frames"), expected[0])
    pipe.disable_context_windows()
    assert not np.array_equal(api_frames(pipe, np.random.Generator(np.random.PCG64(5)), **call), expected)

    ok(vidiff("svd", "--from-json", work / "clip.mp4.json", "-o", "again", "-o", "again.mp4", cwd=work))
    assert np.array_equal(read_pngs(work / "again"), read_pngs(work / "frames"))
    assert (work / "again.mp4").read_bytes() == (work / "clip.mp4").read_bytes()
