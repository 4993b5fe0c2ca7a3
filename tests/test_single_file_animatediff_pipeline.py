"""AnimateDiffPipeline.from_single_file: an original SD 1.x file + a motion adapter, against diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.animatediff_checkpoint import SMALL_CALL, build_parts, save_sd15_layout
from tests.single_file_layouts import save_both, stable_diffusion_to_original
from vidiff.models.motion_adapter import MotionAdapter
from vidiff.pipelines.animatediff import AnimateDiffPipeline
from vidiff.schedulers import PNDMScheduler


@pytest.fixture(scope="module")
def sd_file(tmp_path_factory):
    parts = build_parts(seed=41)
    folder = tmp_path_factory.mktemp("sd15-pipeline")
    save_sd15_layout(folder / "sd15", parts)
    parts["motion_adapter"].save_pretrained(folder / "motion_adapter")
    original = stable_diffusion_to_original(parts["unet"], parts["vae"], parts["text_encoder"], layers=2, attention=(True, False))
    safe, _ = save_both(original, folder, "tiny-sd15")
    return folder, safe


def test_single_file_pipeline_equals_the_folder_pipeline(sd_file):
    folder, safe = sd_file
    adapter = MotionAdapter.from_pretrained(folder / "motion_adapter")
    ours = AnimateDiffPipeline.from_single_file(safe, motion_adapter=adapter, config=folder / "sd15")
    reference = AnimateDiffPipeline.from_pretrained(folder / "sd15", motion_adapter=adapter)
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(ours, name).state_dict(), getattr(reference, name).state_dict()
        assert sorted(mine) == sorted(theirs), name
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name
    assert type(ours.scheduler) is type(reference.scheduler) and ours.scheduler.config == reference.scheduler.config
    call = dict(prompt="a cat", generator=torch.Generator().manual_seed(0), **{**SMALL_CALL, "num_inference_steps": 2})
    frames = ours(**call).frames
    call["generator"] = torch.Generator().manual_seed(0)
    np.testing.assert_array_equal(frames, reference(**call).frames)


def test_given_components_are_used_and_defaults_are_the_release(sd_file):
    folder, safe = sd_file
    adapter = MotionAdapter.from_pretrained(folder / "motion_adapter")
    reference = AnimateDiffPipeline.from_pretrained(folder / "sd15", motion_adapter=adapter)
    config = {"unet": {"attention_head_dim": 4, "norm_num_groups": 8}, "vae": {"norm_num_groups": 8},
              "text_encoder": {"num_attention_heads": 4}}
    ours = AnimateDiffPipeline.from_single_file(
        safe, motion_adapter=adapter, config=config, tokenizer=reference.tokenizer, vae=reference.vae
    )
    assert ours.vae is reference.vae and ours.tokenizer is reference.tokenizer
    assert isinstance(ours.scheduler, PNDMScheduler) and ours.scheduler.config.steps_offset == 1
    with pytest.raises(TypeError, match="unknown argument"):
        AnimateDiffPipeline.from_single_file(safe, motion_adapter=adapter, safety_checker=None)


def test_missing_tokenizer_offline_says_what_to_pass(sd_file, tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder, safe = sd_file
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to fall back on
    adapter = MotionAdapter.from_pretrained(folder / "motion_adapter")
    config = {"unet": {"attention_head_dim": 4, "norm_num_groups": 8}, "vae": {"norm_num_groups": 8},
              "text_encoder": {"num_attention_heads": 4}}
    with pytest.raises(FileNotFoundError, match=r"holds no tokenizer.*Pass tokenizer="):
        AnimateDiffPipeline.from_single_file(safe, motion_adapter=adapter, config=config, local_files_only=True)
