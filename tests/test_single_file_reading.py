"""Reading original single files: pickles only as tensors (never code), clear errors for bad input."""

from __future__ import annotations

import pathlib

import pytest
import torch

from vidiff.models.motion_adapter import MotionAdapter
from vidiff.models.single_file import RenameTable, convert_state_dict, describe_layout, read_single_file


class _Payload:
    """Unpickling this would create ``marker``: proof that code ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "mm_sd_v15_v2.ckpt"
    torch.save({"state_dict": {"down_blocks.0.motion_modules.0.norm.weight": torch.zeros(2), "x": _Payload(marker)}}, evil)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"Refusing to load .*weights_only"):
        MotionAdapter.from_single_file(evil)
    with pytest.raises(ValueError, match="Refusing"):
        read_single_file(evil)
    assert not marker.exists()
    # Guard: the payload does run when unpickled without weights_only, so the check above can fail.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_wrapped_training_checkpoint_is_unwrapped(tmp_path):
    path = tmp_path / "sd.ckpt"
    weight = torch.randn(3)
    torch.save({"state_dict": {"state_dict": {"a.weight": weight}}, "epoch": 2, "global_step": 10}, path)
    assert torch.equal(read_single_file(path)["a.weight"], weight)


def test_bad_paths_and_contents_are_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="path to a .safetensors"):
        read_single_file(3)
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        read_single_file(tmp_path / "absent.ckpt")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown suffix"):
        read_single_file(tmp_path / "weights.npz")
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        read_single_file(tmp_path / "cut.ckpt")
    torch.save({"a": 1}, tmp_path / "numbers.pt")
    with pytest.raises(ValueError, match="not named tensors: a"):
        read_single_file(tmp_path / "numbers.pt")


def test_tables_rename_in_order_drop_and_refuse_unknown_keys():
    first = RenameTable.of("outer", [(r"model\.(?P<rest>.+)", r"\g<rest>"), (r"skip\..*", None)], complete=True)
    second = RenameTable.of("inner", [(r"(?P<a>.+)\.old", r"\g<a>.new")])
    state = {"model.x.old": 1, "model.y": 2, "skip.me": 3}
    assert convert_state_dict(state, [first, second], source="f") == {"x.new": 1, "y": 2}
    with pytest.raises(ValueError, match=r"f: 1 key\(s\) match no rule of the outer conversion table: stray"):
        convert_state_dict({**state, "stray": 4}, [first], source="f")
    with pytest.raises(ValueError, match="model.y and model.model.y both convert to y"):
        convert_state_dict({"model.y": 1, "model.model.y": 2}, [RenameTable.of("t", [(r"(?:model\.)+(.+)", r"\1")])], source="f")


def test_layout_description_names_what_was_recognised():
    text = describe_layout(["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight"])
    assert "Stable Diffusion / SVD UNet" in text and "original VAE" in text and "2 tensors" in text
    assert "no known layout" in describe_layout(["foo"])
