"""Weight-file names of pickled checkpoints: transformers' ``pytorch_model*`` beside ``model.safetensors``.

transformers writes safetensors as ``model.safetensors`` but pickles as ``pytorch_model.bin``
(variant ``pytorch_model.fp16.bin``; sharded through ``pytorch_model.bin.index.json``, variant
``pytorch_model.bin.index.fp16.json``); diffusers uses ``diffusion_pytorch_model`` for both.
Pickles are read only through ``torch.load(weights_only=True)`` (see test_loading.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import perturb_
from vidiff import loading, weight_files
from vidiff.loading import Checkpoint

TRANSFORMERS = "model"  # the weights stem of vidiff's CLIP towers


def _state(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    layer = perturb_(torch.nn.Linear(3, 4), seed=seed)
    state = {f"tower.{k}": v.detach().clone().to(dtype) for k, v in layer.state_dict().items()}
    state["tower.position_ids"] = torch.arange(5)[None]
    return state


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _save_shards(folder: Path, state: dict[str, torch.Tensor], shard_names: list[str], index_name: str) -> None:
    keys = sorted(state)
    weight_map = {}
    for i, name in enumerate(shard_names):
        part = {k: state[k] for k in keys[i::len(shard_names)]}
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / index_name).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def test_candidates_name_transformers_pickles_and_keep_diffusers_names():
    assert weight_files.candidates(TRANSFORMERS, "fp16")[:4] == [
        "model.fp16.safetensors", "model.safetensors.index.fp16.json",
        "pytorch_model.fp16.bin", "pytorch_model.bin.index.fp16.json",
    ]
    assert weight_files.candidates("diffusion_pytorch_model", None)[:4] == [
        "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json",
    ]


@pytest.mark.parametrize("shard_style", ["variant-before-number", "variant-before-suffix"])
def test_sharded_pickles_with_and_without_variant(tmp_path, shard_style):
    """Default: pytorch_model.bin.index.json; fp16: pytorch_model.bin.index.fp16.json, whose shards are
    named either way transformers has written them (found through the index, never guessed)."""
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    full, half = _state(0), _state(1, torch.float16)
    _save_shards(folder, full, [f"pytorch_model-0000{i}-of-00002.bin" for i in (1, 2)], "pytorch_model.bin.index.json")
    if shard_style == "variant-before-number":
        shards = [f"pytorch_model.fp16-0000{i}-of-00002.bin" for i in (1, 2)]
    else:
        shards = [f"pytorch_model-0000{i}-of-00002.fp16.bin" for i in (1, 2)]
    _save_shards(folder, half, shards, "pytorch_model.bin.index.fp16.json")
    checkpoint = Checkpoint.open(tmp_path)
    _assert_same(checkpoint.load_state_dict("text_encoder", weights_name=TRANSFORMERS), full)
    _assert_same(checkpoint.load_state_dict("text_encoder", variant="fp16", weights_name=TRANSFORMERS), half)
    assert "2 weight shards" in checkpoint.weights_source("text_encoder", variant="fp16", weights_name=TRANSFORMERS)


def test_single_pickles_with_variant_and_safetensors_first(tmp_path):
    folder = tmp_path / "image_encoder"
    folder.mkdir()
    full, half = _state(2), _state(3, torch.float16)
    torch.save(full, folder / "pytorch_model.bin")
    torch.save(half, folder / "pytorch_model.fp16.bin")
    checkpoint = Checkpoint.open(tmp_path)
    _assert_same(checkpoint.load_state_dict("image_encoder", weights_name=TRANSFORMERS), full)
    _assert_same(checkpoint.load_state_dict("image_encoder", variant="fp16", weights_name=TRANSFORMERS), half)
    safe_half = _state(4, torch.float16)
    loading.save_component(folder, {}, safe_half, weights_name=TRANSFORMERS, variant="fp16")
    _assert_same(checkpoint.load_state_dict("image_encoder", variant="fp16", weights_name=TRANSFORMERS), safe_half)


def test_only_variant_pickles_ask_for_the_variant(tmp_path):
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    torch.save(_state(5, torch.float16), folder / "pytorch_model.fp16.bin")
    with pytest.raises(FileNotFoundError, match=r"variant='fp16'"):
        Checkpoint.open(tmp_path).load_state_dict("text_encoder", weights_name=TRANSFORMERS)


def test_names_no_tool_writes_are_not_weights(tmp_path):
    """``model.bin`` is neither transformers' nor diffusers' name: the error lists what would be read."""
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    torch.save(_state(6), folder / "model.bin")
    with pytest.raises(FileNotFoundError) as error:
        Checkpoint.open(tmp_path).load_state_dict("text_encoder", weights_name=TRANSFORMERS)
    message = str(error.value)
    assert "model.safetensors" in message and "pytorch_model.bin" in message and "found: model.bin" in message
