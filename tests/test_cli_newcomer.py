"""A newcomer's papercuts (issue 10, items 19–21): messages in the command line's own words, and
warnings for what is probably a mistake. The demo's own messages are checked in test_cli.py."""

from __future__ import annotations

import logging

import torch

from tests.svd_checkpoint import random_image
from tests.test_cli import vidiff


def test_offline_default_model_speaks_the_clis_language(tmp_path):
    """No --model given, --offline, nothing cached: the message names the default model as such and
    the flags and variables a shell user has, not Python's `local_files_only` / `cache_dir`."""
    random_image(80, 56).save(tmp_path / "img.png")
    result = vidiff("svd", "img.png", "--offline", cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf")})
    line = result.stderr.strip()
    assert result.returncode == 1 and len(line.splitlines()) == 1, result.stderr
    assert "the default model 'stabilityai/stable-video-diffusion-img2vid-xt'" in line
    assert "--offline" in line and "HF_HOME" in line and "--model FOLDER" in line
    for python_name in ("local_files_only", "cache_dir", "--model '"):
        assert python_name not in line


def test_offline_named_model_and_adapter(tmp_path):
    result = vidiff("animatediff", "a cat", "--model", "someone/absent", cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf")})
    line = result.stderr.strip()
    assert result.returncode == 1 and "--model 'someone/absent'" in line and "HF_HUB_OFFLINE" in line, result.stderr
    assert "local_files_only" not in line and "cache_dir" not in line


def test_prompt_that_names_an_image_file_warns(tmp_path):
    random_image(80, 56).save(tmp_path / "input.png")
    # The run stops at the (absent) model: the warning comes before anything loads.
    result = vidiff("animatediff", "input.png", "--model", "absent-folder", cwd=tmp_path)
    assert "PROMPT 'input.png' is the name of an image file" in result.stderr and "vidiff svd IMAGE" in result.stderr
    plain = vidiff("animatediff", "a cat on a mat", "--model", "absent-folder", cwd=tmp_path)
    assert "image file" not in plain.stderr


def test_half_precision_on_the_cpu_says_it_is_slower(caplog):
    from vidiff.cli.settings import pick_dtype

    with caplog.at_level(logging.WARNING, logger="vidiff"):
        assert pick_dtype("fp32", torch.device("cpu")) == torch.float32
        assert pick_dtype("auto", torch.device("cpu")) == torch.float32
        assert not caplog.records
        assert pick_dtype("fp16", torch.device("cpu")) == torch.float16
        assert pick_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    assert len(caplog.records) == 1 and "slower than fp32" in caplog.records[0].getMessage()
