"""ControlNetModel.from_single_file: original ControlNet files (v1.1 ``.pth`` and v1.0 ``control_model.`` layout)."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel as OracleControlNet

from tests.control_checkpoint import CONTROLNET
from tests.helpers import perturb_
from tests.single_file_layouts import save_both, unet_to_ldm
from vidiff.models.controlnet import ControlNetModel

# What no tensor shows: the tiny model's heads and groups (the release's are 8 and 32).
HIDDEN = dict(attention_head_dim=4, norm_num_groups=8)


@pytest.fixture(scope="module")
def controlnet_files(tmp_path_factory):
    oracle = perturb_(OracleControlNet(**CONTROLNET), seed=21).eval()
    folder = tmp_path_factory.mktemp("controlnet")
    oracle.save_pretrained(folder / "diffusers")
    ldm = unet_to_ldm(oracle.state_dict(), layers=2, attention=(True, False))
    v11 = save_both(ldm, folder, "control_v11p_sd15_tiny")
    # v1.0 files hold the whole SD model too; only control_model.* is the ControlNet.
    full = {**{f"control_model.{k}": v for k, v in ldm.items()},
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(3), "first_stage_model.x": torch.zeros(1)}
    v10 = save_both(full, folder, "control_sd15_tiny", wrap=True)
    return oracle, folder, v11 + v10


def _assert_same(ours: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    mine = ours.state_dict()
    assert sorted(mine) == sorted(reference)
    for key, tensor in reference.items():
        assert torch.equal(mine[key], tensor), key


def test_original_files_load_with_weights_identical_to_the_diffusers_folder(controlnet_files):
    oracle, folder, files = controlnet_files
    folder_load = ControlNetModel.from_pretrained(folder / "diffusers")
    for path in files:
        ours = ControlNetModel.from_single_file(path, config=HIDDEN)
        _assert_same(ours, oracle.state_dict())
        assert ours.config == folder_load.config, path.name


def test_diffusers_own_single_file_loader_agrees(controlnet_files):
    oracle, folder, files = controlnet_files
    for path in (files[0], files[2]):
        theirs = OracleControlNet.from_single_file(str(path), config=str(folder / "diffusers"))
        ours = ControlNetModel.from_single_file(path, config=folder / "diffusers")
        _assert_same(ours, theirs.state_dict())


def test_same_outputs_as_the_diffusers_folder(controlnet_files):
    oracle, _, files = controlnet_files
    ours = ControlNetModel.from_single_file(files[1], config=HIDDEN)
    sample, cond = torch.randn(2, 4, 8, 8), torch.rand(2, 3, 64, 64)
    context = torch.randn(2, 5, 32)
    with torch.no_grad():
        down, mid = ours(sample, 10, encoder_hidden_states=context, controlnet_cond=cond)
        expected = oracle(sample, 10, encoder_hidden_states=context, controlnet_cond=cond, return_dict=False)
    for mine, theirs in zip([*down, mid], [*expected[0], expected[1]]):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)


def test_wrong_or_damaged_files_are_clear_errors(controlnet_files, tmp_path):
    oracle, _, _ = controlnet_files
    ldm = unet_to_ldm(oracle.state_dict(), layers=2, attention=(True, False))
    save_both({"down_blocks.0.motion_modules.0.temporal_transformer.norm.weight": torch.zeros(2)}, tmp_path, "mm")
    with pytest.raises(ValueError, match=r"not an original ControlNet.*AnimateDiff motion module"):
        ControlNetModel.from_single_file(tmp_path / "mm.safetensors")
    save_both({**ldm, "label_emb.0.0.weight": torch.zeros(1)}, tmp_path, "stray")
    with pytest.raises(ValueError, match=r"match no rule of the ControlNet conversion table: label_emb\.0\.0\.weight"):
        ControlNetModel.from_single_file(tmp_path / "stray.safetensors", config=HIDDEN)
    # Inside a known block the strict load names the tensor (under its converted name).
    save_both({**ldm, "input_blocks.1.0.mystery.weight": torch.zeros(1)}, tmp_path, "inner")
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): down_blocks\.0\.resnets\.0\.mystery\.weight"):
        ControlNetModel.from_single_file(tmp_path / "inner.safetensors", config=HIDDEN)
    save_both({k: v for k, v in ldm.items() if not k.startswith("input_blocks.3.")}, tmp_path, "holey")
    with pytest.raises(ValueError, match=r"do not form an LDM UNet"):
        ControlNetModel.from_single_file(tmp_path / "holey.safetensors", config=HIDDEN)
