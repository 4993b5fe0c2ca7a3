"""Issue 15, the command line: ``--lora ID_OR_FILE[:SCALE]``, ``--ip-adapter`` (+ ``--ip-adapter-image``,
``--ip-adapter-scale``), and single files as ``--model`` (+ ``--model-config``) and ``--motion-adapter``.

The runs go through ``vidiff``'s entry point in this process on the tiny AnimateDiff / SVD checkpoints
plus tiny LoRA, IP-Adapter and original-layout files written here; PNG frames are compared bit for bit
with the same run through the Python API, and each sidecar is replayed with ``--from-json``.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
from safetensors.torch import save_file

from tests import test_cli_video_control as video_cli
from tests.lora_fixtures import MOTION_TARGETS, SD_TARGETS, TEXT_TARGETS, layer_paths, random_lora, to_kohya, to_motion_lora_repo
from tests.test_cli import api_frames, read_pngs
from tests.test_cli_video_control import api_pipeline, base_args, numpy_generator

# The fixtures of the issue-14 CLI tests: `cli` (run vidiff in this process) and `media` (short videos).
cli, media = video_cli.cli, video_cli.media

SIZE = ["--height", "32", "--width", "48", "--num-frames", "3", "--steps", "2"]
CALL = dict(prompt="a cat", height=32, width=48, num_frames=3, num_inference_steps=2)


@pytest.fixture(scope="module")
def adapter_files(tiny_animatediff, tmp_path_factory):
    """``style.safetensors`` (a diffusers-format UNet + text-encoder LoRA), ``te_kohya.safetensors`` (a
    kohya text-encoder LoRA), ``zoom/diffusion_pytorch_model.safetensors`` (a motion LoRA as the Hub
    repos spell it), ``ip/models/`` (tiny IP-Adapters and their image encoder) and ``face.png``."""
    from tests.ip_adapter_checkpoint import write_tiny_ip_adapter

    oracle = tiny_animatediff[1]
    folder = tmp_path_factory.mktemp("adapters")
    unet = random_lora(oracle.unet, "unet", layer_paths(oracle.unet, SD_TARGETS, motion=False), 4, seed=1)
    text = random_lora(oracle.text_encoder, "text_encoder", layer_paths(oracle.text_encoder, TEXT_TARGETS), 4, seed=2)
    save_file({**unet, **text}, folder / "style.safetensors")
    save_file(to_kohya(random_lora(oracle.text_encoder, "text_encoder", layer_paths(oracle.text_encoder, TEXT_TARGETS), 2, seed=3),
                       alpha=2.0), folder / "te_kohya.safetensors")
    motion = random_lora(oracle.unet, "unet", layer_paths(oracle.unet, MOTION_TARGETS, motion=True), 4, seed=4)
    (folder / "zoom").mkdir()
    save_file(to_motion_lora_repo(motion), folder / "zoom" / "diffusion_pytorch_model.safetensors")
    write_tiny_ip_adapter(folder / "ip", oracle.unet, seed=5)
    rng = np.random.default_rng(6)
    PIL.Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / "face.png")
    return folder


def _run_and_replay(cli, capsys, tmp_path, args) -> tuple[np.ndarray, dict]:
    """Run ``args`` into ``out/``, replay its sidecar into ``again/``; both frame sets must be equal."""
    status, err = cli(capsys, *args, "-o", "out")
    assert status == 0, err
    record = json.loads((tmp_path / "out.json").read_text())
    status, err = cli(capsys, "animatediff", "--from-json", tmp_path / "out.json", "-o", "again")
    assert status == 0, err
    frames = read_pngs(tmp_path / "out")
    assert np.array_equal(read_pngs(tmp_path / "again"), frames)
    return frames, record


# ------------------------------------------------------------------------------ --lora
def test_lora_flags_equal_load_lora_weights_and_set_adapters(cli, capsys, tiny_animatediff, adapter_files, tmp_path):
    from vidiff import AnimateDiffPipeline

    args = ["animatediff", "a cat", *base_args(tiny_animatediff), *SIZE, "--seed", 5,
            "--lora", f"{adapter_files / 'style.safetensors'}:0.7", "--lora", adapter_files / "zoom",
            "--lora", f"{adapter_files / 'te_kohya.safetensors'}:-0.5"]
    frames, record = _run_and_replay(cli, capsys, tmp_path, args)

    pipe = api_pipeline(AnimateDiffPipeline, tiny_animatediff)
    plain = api_frames(pipe, numpy_generator(5), **CALL)[0]
    pipe.load_lora_weights(str(adapter_files / "style.safetensors"), adapter_name="style")
    pipe.load_lora_weights(str(adapter_files / "zoom"), adapter_name="zoom")
    pipe.load_lora_weights(str(adapter_files / "te_kohya.safetensors"), adapter_name="te_kohya")
    pipe.set_adapters(["style", "zoom", "te_kohya"], adapter_weights=[0.7, 1.0, -0.5])
    expected = api_frames(pipe, numpy_generator(5), **CALL)[0]
    assert not np.array_equal(expected, plain)  # the LoRAs change the video: the comparison below can fail
    assert np.array_equal(frames, expected)

    resolved = record["resolved"]["adapters"]["lora"]
    assert [(r["adapter_name"], r["weight"]) for r in resolved] == [("style", 0.7), ("zoom", 1.0), ("te_kohya", -0.5)]
    assert resolved[0]["size"] == (adapter_files / "style.safetensors").stat().st_size and "size" not in resolved[1]
    assert record["arguments"]["lora"][1] == str((adapter_files / "zoom").resolve())
    assert record["arguments"]["lora"][2] == f"{(adapter_files / 'te_kohya.safetensors').resolve()}:-0.5"


def test_repeated_lora_sources_get_unique_names(cli, capsys, tiny_animatediff, adapter_files, tmp_path):
    lora = adapter_files / "te_kohya.safetensors"
    args = ["animatediff", "a cat", *base_args(tiny_animatediff), *SIZE, "--seed", 1, "--lora", f"{lora}:0.5", "--lora", f"{lora}:0.5"]
    status, err = cli(capsys, *args, "-o", "twice")
    assert status == 0, err
    resolved = json.loads((tmp_path / "twice.json").read_text())["resolved"]["adapters"]["lora"]
    assert [r["adapter_name"] for r in resolved] == ["te_kohya", "te_kohya_2"]
    status, err = cli(capsys, *args[:-4], "--lora", f"{lora}:1.0", "-o", "once")  # 0.5 + 0.5 of one LoRA = 1.0 of it
    assert status == 0, err
    np.testing.assert_allclose(read_pngs(tmp_path / "twice"), read_pngs(tmp_path / "once"), atol=1)


# ------------------------------------------------------------------------------ --ip-adapter
@pytest.mark.parametrize("scale", [None, "0.6"])
def test_ip_adapter_flags_equal_load_ip_adapter(cli, capsys, tiny_animatediff, adapter_files, tmp_path, scale):
    from tests.ip_adapter_checkpoint import BASE_FILE
    from vidiff import AnimateDiffPipeline, load_image

    weights, face = adapter_files / "ip" / "models" / BASE_FILE, adapter_files / "face.png"
    args = ["animatediff", "a cat", *base_args(tiny_animatediff), *SIZE, "--seed", 2, "--ip-adapter", weights,
            "--ip-adapter-image", face] + (["--ip-adapter-scale", scale] if scale else [])
    frames, record = _run_and_replay(cli, capsys, tmp_path, args)

    pipe = api_pipeline(AnimateDiffPipeline, tiny_animatediff)
    pipe.load_ip_adapter(str(adapter_files / "ip"), subfolder="models", weight_name=BASE_FILE)
    pipe.set_ip_adapter_scale(float(scale or 1.0))
    expected = api_frames(pipe, numpy_generator(2), ip_adapter_image=load_image(str(face)), **CALL)[0]
    assert np.array_equal(frames, expected)
    pipe.set_ip_adapter_scale(0.0)
    assert not np.array_equal(api_frames(pipe, numpy_generator(2), ip_adapter_image=load_image(str(face)), **CALL)[0], expected)

    resolved = record["resolved"]["adapters"]["ip_adapter"]
    assert resolved["scale"] == float(scale or 1.0) and resolved["path"] == str(weights.resolve())
    assert len(resolved["image_sha256"]) == 64 and record["arguments"]["ip_adapter_image"] == str(face.resolve())


# ------------------------------------------------------------------------------ single files
@pytest.fixture(scope="module")
def single_files(tiny_animatediff, tmp_path_factory):
    """The tiny SD 1.5 checkpoint and motion adapter as original single files (.safetensors and .ckpt)."""
    import diffusers

    from tests.single_file_layouts import motion_adapter_to_original, save_both, stable_diffusion_to_original

    root, oracle = tiny_animatediff
    folder = tmp_path_factory.mktemp("single-files")
    unet = diffusers.UNet2DConditionModel.from_pretrained(root / "sd15", subfolder="unet")
    sd = save_both(stable_diffusion_to_original(unet, oracle.vae, oracle.text_encoder, layers=2, attention=(True, False)),
                   folder, "tiny-sd15")
    adapter = diffusers.MotionAdapter.from_pretrained(root / "motion_adapter")
    mm = save_both(motion_adapter_to_original(adapter.state_dict()), folder, "mm_tiny")
    return sd, mm


@pytest.mark.parametrize("kind", [0, 1], ids=["safetensors", "ckpt"])
def test_single_file_model_and_motion_adapter_equal_from_single_file(cli, capsys, tiny_animatediff, single_files, tmp_path, kind):
    from vidiff import AnimateDiffPipeline, MotionAdapter

    root = tiny_animatediff[0]
    sd, mm = single_files[0][kind], single_files[1][kind]
    args = ["animatediff", "a cat", "--model", sd, "--model-config", root / "sd15", "--motion-adapter", mm, *SIZE, "--seed", 4,
            "--offline"]
    frames, record = _run_and_replay(cli, capsys, tmp_path, args)

    pipe = AnimateDiffPipeline.from_single_file(sd, motion_adapter=MotionAdapter.from_single_file(mm), config=root / "sd15")
    pipe.set_progress_bar_config(disable=True)
    assert np.array_equal(frames, api_frames(pipe, numpy_generator(4), **CALL)[0])
    stamps = record["resolved"]["single_files"]
    assert stamps["model"] == {"path": str(sd.resolve()), "size": sd.stat().st_size, "mtime_ns": sd.stat().st_mtime_ns}
    assert stamps["motion_adapter"]["path"] == str(mm.resolve())
    assert record["arguments"]["model_config"] == str((root / "sd15").resolve())


def test_single_file_model_with_video_uses_the_video_to_video_pipeline(cli, capsys, tiny_animatediff, single_files, media, tmp_path):
    from vidiff import AnimateDiffVideoToVideoPipeline, MotionAdapter, load_video

    root, (sd, _), (mm, _) = tiny_animatediff[0], *single_files
    status, err = cli(capsys, "animatediff", "a cat", "--model", sd, "--model-config", root / "sd15", "--motion-adapter", mm,
                      "--video", media / "short.gif", "--height", 32, "--width", 48, "--steps", 3, "--seed", 6, "-o", "out")
    assert status == 0, err
    assert json.loads((tmp_path / "out.json").read_text())["resolved"]["pipeline"] == "AnimateDiffVideoToVideoPipeline"
    pipe = AnimateDiffVideoToVideoPipeline.from_single_file(sd, motion_adapter=MotionAdapter.from_single_file(mm), config=root / "sd15")
    pipe.set_progress_bar_config(disable=True)
    expected = api_frames(pipe, numpy_generator(6), video=load_video(str(media / "short.gif")), prompt="a cat", height=32,
                          width=48, num_inference_steps=3)
    assert np.array_equal(read_pngs(tmp_path / "out"), expected[0])


def test_single_file_svd_equals_from_single_file(cli, capsys, tiny_svd, tmp_path):
    from tests.single_file_layouts import save_both, svd_to_original
    from vidiff import StableVideoDiffusionPipeline

    folder, oracle = tiny_svd
    safe, _ = save_both(svd_to_original(oracle.unet, oracle.vae, oracle.image_encoder, layers=1, attention=(True, False)),
                        tmp_path / "files", "svd_xt_tiny")
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "rocket.png")
    status, err = cli(capsys, "svd", "rocket.png", "--model", safe, "--model-config", folder, *SIZE, "--seed", 3, "-o", "out")
    assert status == 0, err
    pipe = StableVideoDiffusionPipeline.from_single_file(safe, config=folder)
    pipe.set_progress_bar_config(disable=True)
    expected = api_frames(pipe, numpy_generator(3), image=PIL.Image.open(tmp_path / "rocket.png"), height=32, width=48,
                          num_frames=3, num_inference_steps=2)
    assert np.array_equal(read_pngs(tmp_path / "out"), expected[0])


# ------------------------------------------------------------------------------ refused from the flags alone
@pytest.mark.parametrize(("extra", "message"), [
    (["--ip-adapter-image", "{files}/face.png"], "--ip-adapter-image needs --ip-adapter"),
    (["--ip-adapter-scale", "0.5"], "--ip-adapter-scale needs --ip-adapter"),
    (["--ip-adapter", "{files}/ip/models/ip-adapter_sd15.safetensors"], "--ip-adapter needs --ip-adapter-image"),
    (["--ip-adapter", "{files}/ip/models", "--ip-adapter-image", "{files}/face.png"], "name the weight file"),
    (["--ip-adapter", "h94/IP-Adapter", "--ip-adapter-image", "{files}/face.png"], "name the weight file"),
    (["--ip-adapter", "{files}/ip/models/ip-adapter_sd15.safetensors", "--ip-adapter-image", "{files}/nope.png"],
     "--ip-adapter-image .* does not exist"),
    (["--lora", "missing.safetensors:0.5"], "--lora 'missing.safetensors' does not exist"),
    (["--lora", "{files}/style.safetensors:nan"], "argument --lora: expected a finite LoRA scale"),
    (["--model-config", "{files}"], "--model-config needs --model to be a single checkpoint file"),
])
def test_bad_adapter_flags_exit_2_naming_the_flag(cli, capsys, tiny_animatediff, adapter_files, extra, message):
    extra = [str(item).format(files=adapter_files) for item in extra]
    status, err = cli(capsys, "animatediff", "a cat", *base_args(tiny_animatediff), *SIZE, *extra)
    assert status == 2, err
    assert __import__("re").search(message, err), err


def test_single_file_and_other_commands_refusals(cli, capsys, tiny_animatediff, adapter_files, single_files, tmp_path):
    sd = single_files[0][0]
    cases = [
        (["svd", "img.png", "--lora", adapter_files / "style.safetensors"], "--lora does not apply to `vidiff svd`"),
        (["i2vgen-xl", "img.png", "a cat", "--model", sd], "`vidiff i2vgen-xl` reads diffusers folders or Hub ids only"),
        (["animatediff", "a cat", "--model", sd, "--variant", "fp16"], "--variant picks weight files"),
        (["animatediff", "a cat", "--model", sd, "--revision", "main"], "--revision names a Hub version"),
        (["animatediff", "a cat", "--model", sd, "--model-config", adapter_files / "face.png"], "--model-config .* is not a folder"),
    ]
    for argv, message in cases:
        status, err = cli(capsys, *argv)
        assert status == 2 and __import__("re").search(message, err), (argv, err)


def test_lora_scale_is_the_text_after_the_last_colon_only_when_a_number():
    from vidiff.cli.adapters import source_of, split_lora

    assert split_lora("guoyww/animatediff-motion-lora-zoom-in") == ("guoyww/animatediff-motion-lora-zoom-in", None)
    assert split_lora("style.safetensors:0.7") == ("style.safetensors", 0.7)
    assert split_lora("odd:name/style.safetensors:-1e-1") == ("odd:name/style.safetensors", -0.1)
    assert split_lora("odd:name/style.safetensors") == ("odd:name/style.safetensors", None)
    hub = source_of("h94/IP-Adapter/models/ip-adapter_sd15.safetensors", "--ip-adapter", 3)
    assert (hub.location, hub.subfolder, hub.weight_name, hub.local) == ("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors", False)
    assert source_of("owner/repo/file.safetensors", "--lora", 3).subfolder is None


def test_hub_sources_become_the_python_calls_a_user_would_make(adapter_files):
    """Hub ids and Hub file paths (not reachable offline) reach load_lora_weights / load_ip_adapter split
    into repository, subfolder and weight name; a recording stand-in for the pipeline shows the calls."""
    from vidiff.cli.adapters import apply, check_flags
    from vidiff.cli.commands import ANIMATEDIFF

    class Recorder:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *args, **kwargs: self.calls.append((name, args, kwargs))

    settings = {"lora": ["guoyww/animatediff-motion-lora-zoom-in", "owner/repo/sub/dir/style.safetensors:0.5"],
                "ip_adapter": "h94/IP-Adapter/models/ip-adapter_sd15.safetensors",
                "ip_adapter_image": str(adapter_files / "face.png"), "ip_adapter_scale": 0.6}
    pipe = Recorder()
    record = apply(pipe, check_flags(ANIMATEDIFF, settings), offline=True)
    assert pipe.calls == [
        ("load_lora_weights", ("guoyww/animatediff-motion-lora-zoom-in",),
         dict(adapter_name="animatediff-motion-lora-zoom-in", local_files_only=True, weight_name=None, subfolder=None)),
        ("load_lora_weights", ("owner/repo",), dict(adapter_name="style", local_files_only=True, weight_name="style.safetensors",
                                                    subfolder="sub/dir")),
        ("set_adapters", (["animatediff-motion-lora-zoom-in", "style"],), dict(adapter_weights=[1.0, 0.5])),
        ("load_ip_adapter", ("h94/IP-Adapter",), dict(subfolder="models", weight_name="ip-adapter_sd15.safetensors",
                                                       local_files_only=True)),
        ("set_ip_adapter_scale", (0.6,), {}),
    ]
    assert record["ip_adapter"]["repo_id"] == "h94/IP-Adapter" and record["lora"][1]["subfolder"] == "sub/dir"


def test_a_single_file_of_another_layout_fails_before_loading(cli, capsys, tiny_animatediff, adapter_files):
    """A LoRA file given as --model or --motion-adapter: its header is read, its layout refused (exit 1, naming the flag)."""
    lora = adapter_files / "style.safetensors"
    status, err = cli(capsys, "animatediff", "a cat", "--model", lora, "--motion-adapter", tiny_animatediff[0] / "motion_adapter", *SIZE)
    assert status == 1 and "cannot load --model" in err and "style.safetensors" in err, err
    status, err = cli(capsys, "animatediff", "a cat", *base_args(tiny_animatediff)[:2], "--motion-adapter", lora, *SIZE)
    assert status == 1 and "cannot load --motion-adapter" in err, err
