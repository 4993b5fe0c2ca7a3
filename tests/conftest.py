"""Session-wide fixtures: tiny random checkpoints in the diffusers layout, built once per test run."""

from __future__ import annotations

import pytest

from tests.svd_checkpoint import save_tiny_svd


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
