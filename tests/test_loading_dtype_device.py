"""Issue 12: weights load straight into the target dtype and device, one tensor at a time.

Safetensors files are opened, not read: each tensor's shape and dtype come from the header (so the
strict checks run before any data is read), then each tensor is read as stored, cast, placed and
dropped before the next. A float16 file loaded in float16 is never widened to float32, and no second
copy of the whole file exists while loading.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import safetensors.torch
import torch

from vidiff import loading, weight_files
from vidiff.models.vae_kl import AutoencoderKL

WEIGHTS = "diffusion_pytorch_model"
CONFIG = dict(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, float32 state dict): a small VAE saved with float32 default weights and a float16 variant."""
    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    model = AutoencoderKL.from_config(CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)  # not the init values: a wrong copy shows
    model.save_pretrained(folder)
    model.half().save_pretrained(folder, variant="fp16")
    return folder, safetensors.torch.load_file(str(folder / f"{WEIGHTS}.safetensors"))


def test_open_reads_headers_only(saved):
    folder, state = saved
    stored = weight_files.read_lazily(folder / f"{WEIGHTS}.fp16.safetensors")
    assert stored.keys() == state.keys()
    for key, handle in stored.items():
        assert isinstance(handle, weight_files.StoredTensor)
        assert handle.shape == state[key].shape and handle.dtype == torch.float16 and handle.is_floating_point()
    one = next(iter(stored))
    assert torch.equal(stored[one].load(), state[one].half())


@pytest.mark.parametrize("variant, dtype", [(None, torch.float32), ("fp16", torch.float16), ("fp16", torch.float32),
                                            (None, torch.bfloat16)])
def test_loaded_weights_are_the_file_cast_once(saved, variant, dtype):
    folder, state = saved
    model = AutoencoderKL.from_pretrained(folder, variant=variant, dtype=dtype)
    stored = {k: (v.half() if variant else v) for k, v in state.items()}
    for key, tensor in model.state_dict().items():
        assert tensor.dtype == dtype and tensor.device.type == "cpu"
        assert torch.equal(tensor, stored[key].to(dtype)), key  # one cast from the stored dtype


def test_tensors_are_read_one_at_a_time_and_never_widened(saved, monkeypatch):
    """Spy on every read: each returns the stored float16 tensor, and the previous read (cast to
    float32 and placed) is already freed when the next read happens."""
    folder, _ = saved
    reads, alive_at_next_read = [], []
    real_load = weight_files.StoredTensor.load

    def spy(self):
        gc.collect()
        alive_at_next_read.extend(ref() is not None for ref in reads[-1:])
        tensor = real_load(self)
        assert tensor.dtype == torch.float16 and tensor.device.type == "cpu"
        reads.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(weight_files.StoredTensor, "load", spy)
    model = AutoencoderKL.from_pretrained(folder, variant="fp16", dtype=torch.float32)
    assert len(reads) == len(model.state_dict()) and not any(alive_at_next_read)


def test_float16_in_float16_keeps_the_read_tensor(saved, monkeypatch):
    """No cast needed: the tensor read from the file is the parameter itself (no copy at all)."""
    folder, _ = saved
    read = {}
    real_load = weight_files.StoredTensor.load
    monkeypatch.setattr(weight_files.StoredTensor, "load", lambda self: read.setdefault(self.key, real_load(self)))
    model = AutoencoderKL.from_pretrained(folder, variant="fp16", dtype=torch.float16)
    for key, tensor in model.state_dict().items():
        assert tensor.data_ptr() == read[key].data_ptr(), key


def test_shape_mismatch_is_found_before_any_read(saved, tmp_path, monkeypatch):
    folder, state = saved
    for name in ("config.json", f"{WEIGHTS}.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    key = next(k for k in state if k.endswith("conv_in.weight"))
    safetensors.torch.save_file({**state, key: torch.zeros(1, 2, 3)}, str(tmp_path / f"{WEIGHTS}.safetensors"))
    monkeypatch.setattr(weight_files.StoredTensor, "load", lambda self: pytest.fail(f"{self.key} was read"))
    with pytest.raises(ValueError, match=r"wrongly shaped keys \(1\): .*conv_in\.weight: checkpoint \(1, 2, 3\)"):
        AutoencoderKL.from_pretrained(tmp_path)


def test_truncated_safetensors_is_one_plain_error(saved, tmp_path):
    folder, _ = saved
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    data = (folder / f"{WEIGHTS}.safetensors").read_bytes()
    (tmp_path / f"{WEIGHTS}.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        AutoencoderKL.from_pretrained(tmp_path)


def test_eager_state_dict_is_unchanged(saved):
    folder, state = saved
    read = loading.Checkpoint.open(folder).load_state_dict(None)
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
