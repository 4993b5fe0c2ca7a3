"""MotionAdapter.from_single_file: AnimateDiff's original motion-module files (v1, v2, v3), against diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers import MotionAdapter as OracleAdapter

from tests.helpers import perturb_
from tests.single_file_layouts import motion_adapter_to_original, save_both
from vidiff.models.motion_adapter import MotionAdapter

TINY = dict(block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=2, motion_norm_num_groups=8)
# What distinguishes the releases (diffusers' single-file detection: mid block, position-table length).
VERSIONS = {
    "v1": dict(use_motion_mid_block=False, motion_max_seq_length=24),
    "v2": dict(use_motion_mid_block=True, motion_max_seq_length=32),
    "v3": dict(use_motion_mid_block=False, motion_max_seq_length=32),
}
# Not visible in any tensor: the tiny model's heads and groups (the releases' 8 and 32 are the defaults).
HIDDEN = dict(motion_num_attention_heads=2, motion_norm_num_groups=8)


def _oracle(version: str, seed: int) -> OracleAdapter:
    adapter = OracleAdapter(**TINY, **VERSIONS[version])
    tables = {k: v.clone() for k, v in adapter.state_dict().items() if k.endswith("pos_embed.pe")}
    perturb_(adapter, seed=seed)
    # The position tables stay the sinusoid the releases store (diffusers recomputes them on load).
    adapter.load_state_dict(tables, strict=False)
    return adapter


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def version_files(request, tmp_path_factory):
    version = request.param
    oracle = _oracle(version, seed=len(version) + ord(version[-1]))
    folder = tmp_path_factory.mktemp(f"mm-{version}")
    oracle.save_pretrained(folder / "diffusers")
    files = save_both(motion_adapter_to_original(oracle.state_dict()), folder, f"mm_sd_v15_{version}", wrap=version == "v2")
    return version, oracle, folder, files


def _assert_same(ours: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    mine = ours.state_dict()
    assert sorted(mine) == sorted(reference)
    for key, tensor in reference.items():
        assert torch.equal(mine[key], tensor), key


def test_original_files_load_with_weights_identical_to_the_diffusers_folder(version_files):
    version, oracle, folder, files = version_files
    folder_load = MotionAdapter.from_pretrained(folder / "diffusers")
    for path in files:  # .safetensors and .ckpt (v2's wrapped in {"state_dict": …} like Lightning's)
        ours = MotionAdapter.from_single_file(path, config=HIDDEN)
        _assert_same(ours, oracle.state_dict())
        assert ours.config == folder_load.config
        assert ours.config.use_motion_mid_block == VERSIONS[version]["use_motion_mid_block"]


def test_diffusers_own_single_file_loader_agrees(version_files):
    """diffusers reads the same file (offline, its config from the saved folder) into the same weights."""
    _, oracle, folder, (safe, _) = version_files
    theirs = OracleAdapter.from_single_file(str(safe), config=str(folder / "diffusers"))
    ours = MotionAdapter.from_single_file(safe, config=folder / "diffusers" / "config.json")
    _assert_same(ours, theirs.state_dict())


def test_release_defaults_fill_what_no_tensor_shows(version_files):
    """Without config=, the heads are the releases' 8 (no tensor's shape depends on them); the
    structure still comes from the file."""
    version, _, _, (safe, _) = version_files
    ours = MotionAdapter.from_single_file(safe, config={"motion_norm_num_groups": 8})
    assert ours.config.motion_num_attention_heads == 8
    assert ours.config.motion_max_seq_length == VERSIONS[version]["motion_max_seq_length"]


def test_diffusers_layout_single_file_loads_as_is(tmp_path):
    oracle = _oracle("v2", seed=3)
    save_both(oracle.state_dict(), tmp_path, "diffusers_adapter")
    ours = MotionAdapter.from_single_file(tmp_path / "diffusers_adapter.safetensors", config=HIDDEN)
    _assert_same(ours, oracle.state_dict())


def test_unknown_key_and_wrong_file_are_clear_errors(tmp_path):
    original = motion_adapter_to_original(_oracle("v3", seed=4).state_dict())
    stray = {**original, "down_blocks.0.motion_modules.0.temporal_transformer.extra.weight": torch.zeros(2)}
    save_both(stray, tmp_path, "stray")
    with pytest.raises(ValueError, match=r"match no rule.*temporal_transformer\.extra\.weight"):
        MotionAdapter.from_single_file(tmp_path / "stray.safetensors", config=HIDDEN)
    save_both({"model.diffusion_model.conv_in.weight": torch.zeros(2, 2, 3, 3)}, tmp_path, "sd")
    with pytest.raises(ValueError, match=r"not an AnimateDiff motion module.*model\.diffusion_model"):
        MotionAdapter.from_single_file(tmp_path / "sd.ckpt")
    missing = {k: v for k, v in original.items() if "up_blocks.0" not in k}
    save_both(missing, tmp_path, "cut")
    with pytest.raises(ValueError, match=r"missing keys.*up_blocks\.0"):
        MotionAdapter.from_single_file(tmp_path / "cut.safetensors", config=HIDDEN)


def test_dtype_and_device_apply(version_files):
    _, oracle, _, (safe, pickled) = version_files
    half = MotionAdapter.from_single_file(pickled, config=HIDDEN, torch_dtype=torch.float16, device="cpu")
    assert half.dtype == torch.float16
    assert torch.equal(half.state_dict()["up_blocks.0.motion_modules.0.proj_in.weight"],
                       oracle.state_dict()["up_blocks.0.motion_modules.0.proj_in.weight"].half())
