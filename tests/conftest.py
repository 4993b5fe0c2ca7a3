"""Session-wide fixtures: tiny random checkpoints in the diffusers layout, built once per test run."""

from __future__ import annotations

import pytest

from tests.svd_checkpoint import save_tiny_svd


@pytest.fixture
def work(tmp_path):
    """A folder for a CLI run holding ``img.png``, an 80 × 56 random picture."""
    from tests.svd_checkpoint import random_image

    random_image(80, 56).save(tmp_path / "img.png")
    return tmp_path


@pytest.fixture(scope="session")
def tiny_svd(tmp_path_factory):
    """(folder, diffusers pipeline): a tiny random SVD checkpoint saved by diffusers, and the oracle itself."""
    folder = tmp_path_factory.mktemp("tiny-svd")
    oracle = save_tiny_svd(folder)
    return folder, oracle


@pytest.fixture(scope="session")
def vidiff_svd(tiny_svd):
    """The tiny SVD checkpoint loaded by vidiff (progress bars off); tests must not modify it."""
    from vidiff import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(tiny_svd[0])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_animatediff(tmp_path_factory):
    """(root, diffusers oracle): ``root/sd15`` (Stable Diffusion layout), ``root/motion_adapter`` and
    ``root/animatediff`` (a saved AnimateDiffPipeline), all written by diffusers."""
    from tests.animatediff_checkpoint import diffusers_pipeline, save_tiny_animatediff

    root = tmp_path_factory.mktemp("tiny-animatediff")
    save_tiny_animatediff(root)
    return root, diffusers_pipeline(root)


@pytest.fixture(scope="session")
def vidiff_animatediff(tiny_animatediff):
    """vidiff's pipeline loaded as the guide does: SD 1.5 folder + motion adapter, then DDIM with the
    guide's overrides (progress bars off); tests must not modify it."""
    from tests.animatediff_checkpoint import GUIDE_DDIM
    from vidiff import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    root = tiny_animatediff[0]
    adapter = MotionAdapter.from_pretrained(root / "motion_adapter")
    pipe = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=adapter)
    pipe.scheduler = DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_i2vgen_xl(tmp_path_factory):
    """(folder, diffusers oracle): a tiny random I2VGen-XL checkpoint saved by diffusers."""
    from tests.i2vgen_xl_checkpoint import save_tiny_i2vgen_xl

    folder = tmp_path_factory.mktemp("tiny-i2vgen-xl")
    return folder, save_tiny_i2vgen_xl(folder)


@pytest.fixture(scope="session")
def vidiff_i2vgen_xl(tiny_i2vgen_xl):
    """The tiny I2VGen-XL checkpoint loaded by vidiff (progress bars off); tests must not modify it."""
    from vidiff import I2VGenXLPipeline

    pipe = I2VGenXLPipeline.from_pretrained(tiny_i2vgen_xl[0])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory):
    """The demo's tiny random checkpoints (``.svd``, ``.wan``, ``.i2vgen_xl``, ``.sd15``, ``.motion_adapter``
    folders), built once per test run by vidiff itself; for the server, batch and job tests."""
    from vidiff.demo.checkpoints import ensure_demo_checkpoints

    return ensure_demo_checkpoints(tmp_path_factory.mktemp("demo-home"))
