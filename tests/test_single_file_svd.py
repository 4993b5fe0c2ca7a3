"""StableVideoDiffusionPipeline.from_single_file: original ``svd_xt.safetensors``-layout files.

diffusers 0.42.1 has no single-file loader for SVD, so the reference is the diffusers folder the file
was made from (weights identical, and the same frames as the folder pipeline).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.single_file_layouts import save_both, svd_to_original
from tests.svd_checkpoint import SMALL_CALL, build_diffusers_svd
from vidiff.models.single_file_components import load_components
from vidiff.pipelines.svd import StableVideoDiffusionPipeline

# The tiny UNet has 1 layer per stage and attention in its first stage only; its heads (2, 4) are
# not 64 channels wide, and the tiny CLIP tower has 4 heads: no tensor shows either.
HIDDEN = {"unet": {"num_attention_heads": [2, 4], "num_frames": 3}, "image_encoder": {"num_attention_heads": 4}}


@pytest.fixture(scope="module")
def svd_files(tmp_path_factory):
    pipe = build_diffusers_svd(seed=61)
    folder = tmp_path_factory.mktemp("svd-single")
    pipe.save_pretrained(folder / "diffusers")
    parts = pipe.unet, pipe.vae, pipe.image_encoder
    files = save_both(svd_to_original(*parts, layers=1, attention=(True, False)), folder, "svd_xt_tiny")
    older = save_both(svd_to_original(*parts, layers=1, attention=(True, False), encoder_in_conditioner=False), folder, "svd_plain")
    return pipe, folder, files + older


def _assert_same(ours: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    mine = ours.state_dict()
    reference = {k: v for k, v in reference.items() if not k.endswith("position_ids")}
    assert sorted(mine) == sorted(reference)
    for key, tensor in reference.items():
        assert torch.equal(mine[key], tensor), key


def test_components_load_with_weights_identical_to_the_diffusers_folder(svd_files):
    pipe, _, files = svd_files
    for path in files:
        models = load_components(path, config=HIDDEN, family="svd")
        for name in ("unet", "vae", "image_encoder"):
            _assert_same(models[name], getattr(pipe, name).state_dict())


def test_pipeline_from_single_file_equals_the_folder_pipeline(svd_files):
    _, folder, (safe, *_) = svd_files
    ours = StableVideoDiffusionPipeline.from_single_file(safe, config=folder / "diffusers")
    reference = StableVideoDiffusionPipeline.from_pretrained(folder / "diffusers")
    for name in ("unet", "vae", "image_encoder"):
        assert getattr(ours, name).config == getattr(reference, name).config, name
    image = torch.rand(3, 32, 48)
    call = dict(image=image, generator=torch.Generator().manual_seed(0), **SMALL_CALL)
    frames = ours(**call).frames
    call["generator"] = torch.Generator().manual_seed(0)
    np.testing.assert_array_equal(frames, reference(**call).frames)


def test_release_defaults_and_clear_errors(svd_files, tmp_path):
    pipe, _, (safe, *_) = svd_files
    ours = StableVideoDiffusionPipeline.from_single_file(safe, config=HIDDEN)
    assert ours.unet.config.num_frames == 3 and ours.scheduler.config.use_karras_sigmas
    assert ours.vae.config.force_upcast  # the release's, as no tensor shows it
    original = svd_to_original(pipe.unet, pipe.vae, pipe.image_encoder, layers=1, attention=(True, False))
    save_both({**original, "conditioner.embedders.1.mystery": torch.zeros(1)}, tmp_path, "stray")
    with pytest.raises(ValueError, match=r"match no rule of the SVD components conversion table: conditioner\.embedders\.1\.mystery"):
        load_components(tmp_path / "stray.safetensors", config=HIDDEN, family="svd")
    save_both({k: v for k, v in original.items() if "open_clip" not in k}, tmp_path, "no-clip")
    with pytest.raises(ValueError, match=r"not an original Stable Video Diffusion checkpoint.*model\.diffusion_model"):
        StableVideoDiffusionPipeline.from_single_file(tmp_path / "no-clip.safetensors")
