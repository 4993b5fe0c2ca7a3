"""The demo checkpoints vidiff builds for ``vidiff demo``: real diffusers layout, cached, deterministic.

Built once per module into a temporary home. Each folder must load with vidiff's ``from_pretrained``
and run its pipeline with ``DEMO_CALLS``, and load with diffusers too and give the same frames (the
proof that the layout is the real one, not something only vidiff reads).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import vidiff
from tests.helpers import max_abs_diff
from vidiff.demo import checkpoints as demo

PROMPT = "a rocket flying into space"
TOLERANCE = 1e-4
# A smooth random image of another aspect ratio than the demo frames, so resizing/cropping matters.
rng = np.random.default_rng(0)
IMAGE = PIL.Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((80, 56), PIL.Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("vidiff-home")
    demo.ensure_demo_checkpoints(home)
    return home


@pytest.fixture(scope="module")
def checkpoints(home) -> demo.DemoCheckpoints:
    return demo.ensure_demo_checkpoints(home)


def _pipeline(library, checkpoints: demo.DemoCheckpoints, name: str):
    """``name``'s demo pipeline loaded by ``library`` (the vidiff or diffusers module: same class names)."""
    if name == "svd":
        pipe = library.StableVideoDiffusionPipeline.from_pretrained(checkpoints.svd)
    elif name == "i2vgen-xl":
        pipe = library.I2VGenXLPipeline.from_pretrained(checkpoints.i2vgen_xl)
    elif name == "wan":
        pipe = _wan_class(library).from_pretrained(checkpoints.wan)
    else:
        adapter = library.MotionAdapter.from_pretrained(checkpoints.motion_adapter)
        pipe = library.AnimateDiffPipeline.from_pretrained(checkpoints.sd15, motion_adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _wan_class(library):
    """WanPipeline of ``library`` (vidiff's from its module: the package export is the lead's to add)."""
    if library is vidiff:
        from vidiff.pipelines.wan import WanPipeline

        return WanPipeline
    return library.WanPipeline


def _vidiff_pipeline(checkpoints: demo.DemoCheckpoints, name: str):
    return _pipeline(vidiff, checkpoints, name)


def _diffusers_pipeline(checkpoints: demo.DemoCheckpoints, name: str):
    import diffusers

    return _pipeline(diffusers, checkpoints, name)


def _inputs(name: str) -> dict:
    return {"svd": dict(image=IMAGE), "i2vgen-xl": dict(image=IMAGE, prompt=PROMPT), "animatediff": dict(prompt=PROMPT),
            "wan": dict(prompt=PROMPT)}[name]


def _generators(name: str, seed: int, call: dict) -> tuple[torch.Generator, torch.Generator]:
    """(vidiff's, diffusers') generators that make both draw the same numbers.

    diffusers' I2VGen-XL draws the image's VAE latent from torch's global RNG and the rest from the
    generator; vidiff draws that latent first from the generator. So diffusers gets the global seed
    plus a generator already past that first draw (see tests/test_pipeline_i2vgen_xl_parity.py).
    """
    ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    if name == "i2vgen-xl":
        torch.randn((1, 4, call["height"] // 8, call["width"] // 8), generator=theirs)
        torch.manual_seed(seed)
    return ours, theirs


@pytest.mark.parametrize("name", sorted(demo.DEMO_CALLS))
def test_vidiff_loads_and_runs_each_demo_checkpoint(checkpoints, name):
    call = demo.DEMO_CALLS[name]
    pipe = _vidiff_pipeline(checkpoints, name)
    frames = pipe(**_inputs(name), **call, generator=torch.Generator().manual_seed(0), output_type="np").frames
    assert frames.shape == (1, call["num_frames"], call["height"], call["width"], 3)
    assert np.isfinite(frames).all()
    # The jittered random weights give structured colour, not one flat grey.
    assert frames.std() > 0.02


@pytest.mark.parametrize("name", sorted(demo.DEMO_CALLS))
def test_diffusers_loads_each_demo_checkpoint_and_agrees(checkpoints, name):
    # Fewer frames than the demo: one small call is enough to prove the layout. (Not fewer steps:
    # SVD's 2-step Karras schedule jumps from σ = 700 to 0 at once, amplifying float32 rounding to ~8e-5.)
    frames = 5 if name == "wan" else 4  # Wan makes 4k + 1 frames
    call = {**demo.DEMO_CALLS[name], "num_frames": frames}
    ours_generator, theirs_generator = _generators(name, 3, call)
    theirs = _diffusers_pipeline(checkpoints, name)(**_inputs(name), **call, generator=theirs_generator, output_type="np").frames
    ours = _vidiff_pipeline(checkpoints, name)(**_inputs(name), **call, generator=ours_generator, output_type="np").frames
    assert ours.shape == theirs.shape == (1, frames, call["height"], call["width"], 3)
    assert max_abs_diff(ours, theirs) <= TOLERANCE


def test_schedulers_carry_the_release_settings(checkpoints):
    svd = vidiff.EulerDiscreteScheduler.from_pretrained(checkpoints.svd).config
    assert (svd.prediction_type, svd.use_karras_sigmas, svd.sigma_max, svd.timestep_type) == ("v_prediction", True, 700.0, "continuous")
    i2v = vidiff.DDIMScheduler.from_pretrained(checkpoints.i2vgen_xl).config
    assert (i2v.beta_schedule, i2v.rescale_betas_zero_snr, i2v.prediction_type) == ("squaredcos_cap_v2", True, "v_prediction")
    sd = vidiff.DDIMScheduler.from_pretrained(checkpoints.sd15).config
    assert (sd.beta_schedule, sd.timestep_spacing, sd.clip_sample, sd.steps_offset) == ("linear", "linspace", False, 1)
    assert vidiff.AutoencoderKL.from_pretrained(checkpoints.i2vgen_xl, "vae").config.scaling_factor == 0.18125


def test_second_call_reuses_the_cache(home, checkpoints):
    manifest = checkpoints.svd.parent / demo.MANIFEST
    before = {path: path.stat().st_mtime_ns for path in [manifest, *checkpoints.svd.rglob("*")]}
    started = time.perf_counter()
    again = demo.ensure_demo_checkpoints(home)
    assert time.perf_counter() - started < 0.5
    assert again == checkpoints
    assert {path: path.stat().st_mtime_ns for path in before} == before
    # Nothing left behind: only the published version folder.
    assert [p.name for p in (home / "demo-checkpoints").iterdir()] == [vidiff.__version__]


def test_build_is_deterministic_and_keeps_the_callers_rng(checkpoints, tmp_path):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    demo.build_demo_checkpoints(tmp_path)
    assert torch.equal(torch.get_rng_state(), state)
    for component in ["svd/unet", "i2vgen-xl/image_encoder", "sd15/text_encoder", "wan/transformer", "wan/text_encoder"]:
        name = "model.safetensors" if "encoder" in component else "diffusion_pytorch_model.safetensors"
        assert (tmp_path / component / name).read_bytes() == (checkpoints.svd.parent / component / name).read_bytes()
    assert (tmp_path / "motion-adapter/diffusion_pytorch_model.safetensors").read_bytes() == (
        checkpoints.motion_adapter / "diffusion_pytorch_model.safetensors"
    ).read_bytes()


def test_vidiff_home_is_honoured(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDIFF_HOME", str(tmp_path / "elsewhere"))
    assert demo.demo_home() == tmp_path / "elsewhere"
    monkeypatch.delenv("VIDIFF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert demo.demo_home() == tmp_path / "user" / ".cache" / "vidiff"


def test_interrupted_build_is_not_taken_as_complete(checkpoints, tmp_path):
    parent = tmp_path / "demo-checkpoints"
    # A builder that died mid-way long ago left its temporary folder; one that died just now too.
    old = parent / f".{vidiff.__version__}.building-old"
    (old / "svd").mkdir(parents=True)
    os.utime(old, (time.time() - 2 * demo.STALE_BUILD_AGE,) * 2)
    fresh = parent / f".{vidiff.__version__}.building-fresh"
    (fresh / "svd").mkdir(parents=True)
    # And a folder at the final place without the manifest (e.g. copied by hand, half-way).
    (parent / vidiff.__version__ / "svd").mkdir(parents=True)
    built = demo.ensure_demo_checkpoints(tmp_path)
    assert built == demo.DemoCheckpoints.under(parent / vidiff.__version__)
    assert (built.svd / "model_index.json").is_file() and (built.svd.parent / demo.MANIFEST).is_file()
    assert not old.exists()  # stale: removed
    assert fresh.exists()  # may still be running elsewhere: left alone
    assert vidiff.StableVideoDiffusionPipeline.from_pretrained(built.svd).unet is not None


def test_losing_the_publish_race_keeps_the_winners_folder(tmp_path):
    """Two builders: the second finds the folder already published and keeps that one, no error."""
    final = tmp_path / "final"
    first, second = tmp_path / "first", tmp_path / "second"
    demo.build_demo_checkpoints(first)
    demo.build_demo_checkpoints(second)
    demo._publish(first, final)
    demo._publish(second, final)
    assert demo._is_complete(final) and not first.exists()


def test_home_must_be_a_path():
    with pytest.raises(TypeError, match="home"):
        demo.ensure_demo_checkpoints(42)


@pytest.mark.parametrize("damage", ["truncated weights", "flipped byte", "missing config", "old manifest"])
def test_damaged_cache_is_detected_and_rebuilt(checkpoints, tmp_path, damage, caplog):
    """A cache whose files were changed after the build (a disk error, a half-finished copy, an edit)
    is rebuilt, not loaded and failed on every run."""
    import json
    import shutil

    final = tmp_path / "demo-checkpoints" / vidiff.__version__
    shutil.copytree(checkpoints.svd.parent, final)
    weights = final / "svd" / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF  # inside a tensor: the file still parses, its values are wrong
        weights.write_bytes(bytes(data))
    elif damage == "missing config":
        (final / "svd" / "vae" / "config.json").unlink()
    else:  # a manifest of the earlier format, which listed no files
        manifest = json.loads((final / demo.MANIFEST).read_text())
        del manifest["files"]
        (final / demo.MANIFEST).write_text(json.dumps(manifest))
    assert not demo._is_complete(final)
    with caplog.at_level("WARNING", logger="vidiff"):
        built = demo.ensure_demo_checkpoints(tmp_path)
    assert "rebuilding" in caplog.text and str(final) in caplog.text
    assert demo._is_complete(final)
    assert weights.read_bytes() == (checkpoints.svd / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert vidiff.StableVideoDiffusionPipeline.from_pretrained(built.svd).unet is not None


def test_a_cache_that_cannot_be_rebuilt_names_the_folder_to_delete(tmp_path, monkeypatch):
    def fail(root):
        raise PermissionError(13, "Permission denied", str(root))

    monkeypatch.setattr(demo, "build_demo_checkpoints", fail)
    with pytest.raises(OSError, match="delete that folder") as error:
        demo.ensure_demo_checkpoints(tmp_path)
    assert str(tmp_path / "demo-checkpoints" / vidiff.__version__) in str(error.value)
