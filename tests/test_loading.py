"""Checkpoint files: save/load round trips, weight-file choice, strict loading and the Hub cache (offline)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import RepositoryNotFoundError
from torch import nn

from tests.helpers import max_abs_diff, perturb_
from vidiff import loading
from vidiff.loading import Checkpoint, CheckpointNotFoundError

WEIGHTS = "diffusion_pytorch_model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Tiny(nn.Module):
    """Linear + LayerNorm + a float and an integer persistent buffer."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, width), nn.LayerNorm(width), nn.Linear(width, 3))
        self.register_buffer("scale", torch.ones(3))
        self.register_buffer("step", torch.zeros(2, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale + self.step.sum()


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = perturb_(Tiny(), seed=seed)
    model.step.fill_(seed + 3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test may reach the network: offline mode on, and the default cache points into tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "default-cache"))


def go_online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)


# ---------------------------------------------------------------- save / load round trips


def test_round_trip_single_file(tmp_path):
    state = tiny_state()
    loading.save_component(tmp_path / "unet", {"b": 1, "a": [2]}, state, weights_name=WEIGHTS)
    assert sorted(p.name for p in (tmp_path / "unet").iterdir()) == ["config.json", f"{WEIGHTS}.safetensors"]
    assert (tmp_path / "unet/config.json").read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    checkpoint = Checkpoint.open(tmp_path)
    assert checkpoint.read_json("unet/config.json") == {"a": [2], "b": 1}
    assert_same(checkpoint.load_state_dict("unet"), state)


def test_round_trip_sharded(tmp_path):
    state = tiny_state()
    loading.save_component(tmp_path / "unet", {}, state, weights_name=WEIGHTS, max_shard_size=100)
    index = json.loads((tmp_path / f"unet/{WEIGHTS}.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"{WEIGHTS}-00001-of-{len(shards):05d}.safetensors"
    assert index["weight_map"].keys() == state.keys()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    assert not (tmp_path / f"unet/{WEIGHTS}.safetensors").exists()
    assert_same(Checkpoint.open(tmp_path).load_state_dict("unet"), state)
    # Saving again unsharded removes the stale index and shards, so the single file is what loads.
    other = tiny_state(seed=1)
    loading.save_component(tmp_path / "unet", {}, other, weights_name=WEIGHTS)
    assert sorted(p.name for p in (tmp_path / "unet").iterdir()) == ["config.json", f"{WEIGHTS}.safetensors"]
    assert_same(Checkpoint.open(tmp_path).load_state_dict("unet"), other)


def test_variant_is_chosen_and_named_like_diffusers(tmp_path):
    state = tiny_state()
    half = {k: v.half() if v.is_floating_point() else v for k, v in tiny_state(seed=1).items()}
    loading.save_component(tmp_path / "unet", {}, state, weights_name=WEIGHTS)
    loading.save_component(tmp_path / "unet", {}, half, weights_name=WEIGHTS, variant="fp16", max_shard_size=100)
    names = {p.name for p in (tmp_path / "unet").iterdir()}
    assert f"{WEIGHTS}.safetensors.index.fp16.json" in names
    assert f"{WEIGHTS}.fp16-00001-of-00003.safetensors" in names  # 198 bytes of fp16, 100-byte shards
    assert f"{WEIGHTS}.safetensors" in names  # the variant save leaves the default weights alone
    checkpoint = Checkpoint.open(tmp_path)
    assert_same(checkpoint.load_state_dict("unet", variant="fp16"), half)
    assert_same(checkpoint.load_state_dict("unet"), state)


def test_missing_variant_falls_back_with_warning(tmp_path, caplog):
    state = tiny_state()
    loading.save_component(tmp_path / "unet", {}, state, weights_name=WEIGHTS)
    with caplog.at_level(logging.WARNING):
        loaded = Checkpoint.open(tmp_path).load_state_dict("unet", variant="fp16")
    assert_same(loaded, state)
    assert any("'fp16'" in r.getMessage() and f"{WEIGHTS}.safetensors" in r.getMessage() for r in caplog.records)


def test_only_variant_weights_need_the_variant(tmp_path):
    loading.save_component(tmp_path / "vae", {}, tiny_state(), weights_name=WEIGHTS, variant="fp16")
    with pytest.raises(FileNotFoundError, match=r"variant='fp16'") as error:
        Checkpoint.open(tmp_path).load_state_dict("vae")
    assert f"{WEIGHTS}.fp16.safetensors" in str(error.value)


def test_no_weights_names_folder_and_expected_files(tmp_path):
    (tmp_path / "unet").mkdir()
    loading.write_json(tmp_path / "unet/config.json", {})
    with pytest.raises(FileNotFoundError) as error:
        Checkpoint.open(tmp_path).load_state_dict("unet")
    message = str(error.value)
    assert str(tmp_path / "unet") in message and f"{WEIGHTS}.safetensors" in message and "config.json" in message


def test_bin_is_read_with_weights_only_and_safetensors_win(tmp_path):
    state, other = tiny_state(), tiny_state(seed=1)
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")  # transformers' pickle name beside model.safetensors
    checkpoint = Checkpoint.open(tmp_path)
    assert_same(checkpoint.load_state_dict("text_encoder", weights_name="model"), state)
    loading.save_component(folder, {}, other, weights_name="model")
    assert_same(checkpoint.load_state_dict("text_encoder", weights_name="model"), other)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["VIDIFF_TEST_MARKER"]),))


def test_pickle_with_objects_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("VIDIFF_TEST_MARKER", str(marker))
    (tmp_path / "unet").mkdir()
    torch.save({"weight": torch.ones(2), "extra": _Payload()}, tmp_path / f"unet/{WEIGHTS}.bin")
    with pytest.raises(ValueError, match="Refusing to load"):
        Checkpoint.open(tmp_path).load_state_dict("unet")
    assert not marker.exists()


def test_save_handles_shared_storage_and_leaves_no_temp_files(tmp_path):
    weight = torch.randn(4, 4)
    state = {"a": weight, "tied": weight, "row": weight[1], "t": weight.t()}
    loading.save_component(tmp_path, {}, state, weights_name="model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = Checkpoint.open(tmp_path).load_state_dict(None, weights_name="model")
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key


def test_save_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        loading.save_component(tmp_path, {}, tiny_state(), weights_name=WEIGHTS, variant="fp.16")
    with pytest.raises(ValueError, match="max_shard_size"):
        loading.save_component(tmp_path, {}, tiny_state(), weights_name=WEIGHTS, max_shard_size=0)
    with pytest.raises(ValueError, match="meta"):
        loading.save_component(tmp_path, {}, {"w": torch.empty(2, device="meta")}, weights_name=WEIGHTS)


# ---------------------------------------------------------------- parity of file names with diffusers / transformers


@pytest.mark.parametrize("safe", [True, False])
def test_reads_diffusers_sharded_variant_saves_and_diffusers_reads_ours(tmp_path, safe):
    from diffusers import AutoencoderKL

    config = dict(block_out_channels=(8,), norm_num_groups=4, latent_channels=2, layers_per_block=1)
    model = perturb_(AutoencoderKL(**config))
    model.save_pretrained(tmp_path / "theirs", variant="fp16", max_shard_size=2000, safe_serialization=safe)
    loaded = Checkpoint.open(tmp_path).load_state_dict("theirs", variant="fp16")
    assert loaded.keys() == model.state_dict().keys()
    assert max(max_abs_diff(loaded[k], v) for k, v in model.state_dict().items()) == 0.0

    loading.save_component(
        tmp_path / "ours", dict(model.config), model.state_dict(), weights_name=WEIGHTS, variant="fp16",
        max_shard_size=2000,
    )
    assert len(list((tmp_path / "ours").glob("*.safetensors"))) > 1
    again = AutoencoderKL.from_pretrained(tmp_path / "ours", variant="fp16")
    assert max(max_abs_diff(again.state_dict()[k], v) for k, v in model.state_dict().items()) == 0.0


def test_reads_transformers_sharded_variant_saves(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=8,
        patch_size=4, projection_dim=4,
    )
    model = perturb_(CLIPVisionModelWithProjection(config))
    model.save_pretrained(tmp_path / "image_encoder", variant="fp16", max_shard_size=3000)
    names = {p.name for p in (tmp_path / "image_encoder").iterdir()}
    assert "model.safetensors.index.fp16.json" in names
    loaded = Checkpoint.open(tmp_path).load_state_dict("image_encoder", variant="fp16", weights_name="model")
    expected = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert max(max_abs_diff(v, expected[k]) for k, v in loaded.items()) == 0.0


# ---------------------------------------------------------------- strict loading onto meta-built models


def meta_tiny() -> Tiny:
    with torch.device("meta"):
        return Tiny()


def test_strict_load_matches_source_model_and_leaves_nothing_on_meta():
    state = tiny_state()
    source = Tiny()
    source.load_state_dict(state)
    model = meta_tiny()
    loading.load_state_dict_strict(model, state)
    assert all(not t.is_meta and t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())
    x = torch.randn(5, 4)
    assert max_abs_diff(model(x), source(x)) == 0.0


def test_strict_load_casts_only_floating_tensors():
    state = tiny_state()
    model = meta_tiny()
    loading.load_state_dict_strict(model, state, dtype=torch.float16, device="cpu")
    assert model.net[0].weight.dtype == torch.float16 and model.scale.dtype == torch.float16
    assert model.step.dtype == torch.int64 and torch.equal(model.step, state["step"])
    assert torch.equal(model.net[1].bias, state["net.1.bias"].half())


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s.pop("net.1.weight"), r"missing keys \(1\): net\.1\.weight"),
        (lambda s: s.update({"extra.thing": torch.ones(1)}), r"unexpected keys \(1\): extra\.thing"),
        (lambda s: s.update({"net.0.weight": torch.ones(8, 5)}), r"net\.0\.weight: checkpoint \(8, 5\) vs model \(8, 4\)"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_strict_load_names_the_offending_key(edit, expected):
    state = tiny_state()
    edit(state)
    with pytest.raises(ValueError, match=expected) as error:
        loading.load_state_dict_strict(meta_tiny(), state)
    assert "Tiny" in str(error.value)


def test_strict_load_reports_everything_at_once_and_ignores_patterns():
    state = tiny_state()
    state.pop("scale")
    state["old.position_ids"] = torch.arange(3)
    with pytest.raises(ValueError) as error:
        loading.load_state_dict_strict(meta_tiny(), state)
    assert "scale" in str(error.value) and "old.position_ids" in str(error.value)
    state = tiny_state()
    state["old.position_ids"] = torch.arange(3)
    model = meta_tiny()
    loading.load_state_dict_strict(model, state, ignore_unexpected=[r"position_ids$"])
    assert torch.equal(model.scale, state["scale"])


def test_strict_load_refuses_tensors_left_on_meta():
    class WithHiddenBuffer(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.zeros(3), persistent=False)

    with torch.device("meta"):
        model = WithHiddenBuffer()
    with pytest.raises(ValueError, match="meta device.*table"):
        loading.load_state_dict_strict(model, tiny_state())


def test_strict_load_rejects_bad_device():
    with pytest.raises(ValueError, match="device"):
        loading.load_state_dict_strict(meta_tiny(), tiny_state(), device="toaster")


# ---------------------------------------------------------------- the Hugging Face cache, offline


def fake_hub_cache(cache: Path, repo_id: str, state: dict, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay out ``cache`` like huggingface_hub does: blobs by hash, snapshot files as relative symlinks."""
    staging = cache.parent / "staging"
    staging.mkdir(parents=True)
    loading.write_json(staging / "model_index.json", {"x": 1})
    loading.save_component(staging / "unet", {"in_channels": 4}, state, weights_name=WEIGHTS)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for file in sorted(p for p in staging.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(staging)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(COMMIT)
    return snapshot


def test_offline_hub_id_reads_the_cache(tmp_path):
    state = tiny_state()
    cache = tmp_path / "cache"
    fake_hub_cache(cache, "org/name", state, refs=("main", "v1"))
    for revision in (None, "v1", COMMIT):
        checkpoint = Checkpoint.open("org/name", cache_dir=cache, revision=revision)
        assert checkpoint.name == "org/name"
        assert checkpoint.read_json("model_index.json") == {"x": 1}
        assert checkpoint.has_file("unet/config.json") and not checkpoint.has_file("vae/config.json")
        assert_same(checkpoint.load_state_dict("unet"), state)
    with pytest.raises(FileNotFoundError, match="vae/config.json.*cached snapshot"):
        checkpoint.read_json("vae/config.json")
    with pytest.raises(CheckpointNotFoundError, match="'org/name' at revision 'v2'"):
        Checkpoint.open("org/name", cache_dir=cache, revision="v2")


def test_uncached_hub_id_gives_one_clear_error(tmp_path):
    cache = tmp_path / "cache"
    fake_hub_cache(cache, "org/name", tiny_state())
    with pytest.raises(CheckpointNotFoundError) as error:
        Checkpoint.open("org/other", cache_dir=cache)
    message = str(error.value)
    assert isinstance(error.value, OSError)
    for part in ("'org/other'", str(cache), "HF_HUB_OFFLINE", "hf download org/other", "local checkpoint folder"):
        assert part in message, part


def test_local_files_only_never_lists_the_repo(tmp_path, monkeypatch):
    go_online(monkeypatch)
    monkeypatch.setattr(loading, "list_repo_files", lambda *a, **k: pytest.fail("network used"))
    state = tiny_state()
    fake_hub_cache(tmp_path / "cache", "org/name", state)
    checkpoint = Checkpoint.open("org/name", cache_dir=tmp_path / "cache", local_files_only=True)
    assert_same(checkpoint.load_state_dict("unet"), state)
    with pytest.raises(CheckpointNotFoundError, match="local_files_only=True"):
        Checkpoint.open("org/missing", cache_dir=tmp_path / "cache", local_files_only=True)


def test_default_cache_follows_hf_home_in_a_fresh_process(tmp_path):
    state = tiny_state()
    fake_hub_cache(tmp_path / "hf" / "hub", "org/name", state)
    torch.save(state, tmp_path / "expected.pt")
    script = (
        "import sys, torch; from vidiff.loading import Checkpoint\n"
        "got = Checkpoint.open('org/name').load_state_dict('unet')\n"
        "want = torch.load(sys.argv[1], weights_only=True)\n"
        "assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "expected.pt")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the Hub, online (served from a local folder)


def serve_folder(monkeypatch, folder: Path) -> list[str]:
    """Answer list_repo_files / hf_hub_download from ``folder``; returns the log of downloaded files."""
    downloads: list[str] = []

    def download(repo_id, filename, *, revision=None, cache_dir=None):
        downloads.append(filename)
        return str(folder / filename)

    listing = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    monkeypatch.setattr(loading, "list_repo_files", lambda repo_id, revision=None: listing)
    monkeypatch.setattr(loading, "hf_hub_download", download)
    return downloads


def test_online_downloads_only_the_needed_files(tmp_path, monkeypatch):
    go_online(monkeypatch)
    state = tiny_state()
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    repo = tmp_path / "repo"
    repo.mkdir()
    loading.write_json(repo / "model_index.json", {})
    loading.save_component(repo / "unet", {}, state, weights_name=WEIGHTS)
    loading.save_component(repo / "unet", {}, half, weights_name=WEIGHTS, variant="fp16", max_shard_size=100)
    torch.save(state, repo / f"unet/{WEIGHTS}.fp16.bin")
    loading.save_component(repo / "vae", {}, state, weights_name=WEIGHTS)
    downloads = serve_folder(monkeypatch, repo)

    checkpoint = Checkpoint.open("org/name")
    assert checkpoint.has_file("vae/config.json") and downloads == []
    assert_same(checkpoint.load_state_dict("unet", variant="fp16"), half)
    index = f"unet/{WEIGHTS}.safetensors.index.fp16.json"
    shards = sorted(f"unet/{s}" for s in set(json.loads((repo / index).read_text())["weight_map"].values()))
    assert downloads == [index, *shards]


def test_unreachable_hub_falls_back_to_the_cache(tmp_path, monkeypatch):
    go_online(monkeypatch)

    def unreachable(*args, **kwargs):
        raise httpx.ConnectError("no route to host")

    monkeypatch.setattr(loading, "list_repo_files", unreachable)
    state = tiny_state()
    fake_hub_cache(tmp_path / "cache", "org/name", state)
    assert_same(Checkpoint.open("org/name", cache_dir=tmp_path / "cache").load_state_dict("unet"), state)
    with pytest.raises(CheckpointNotFoundError, match="could not be reached.*no route to host"):
        Checkpoint.open("org/absent", cache_dir=tmp_path / "cache")


def test_unknown_repo_is_reported(monkeypatch):
    go_online(monkeypatch)
    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/org/nope"))

    def not_found(*args, **kwargs):
        raise RepositoryNotFoundError("404 Repository Not Found", response=response)

    monkeypatch.setattr(loading, "list_repo_files", not_found)
    with pytest.raises(CheckpointNotFoundError, match="'org/nope' was not found"):
        Checkpoint.open("org/nope")


# ---------------------------------------------------------------- opening, JSON, small helpers


def test_open_rejects_paths_that_are_neither_folders_nor_repo_ids(tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        Checkpoint.open(missing)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        Checkpoint.open("./nothing-here")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="is a file"):
        Checkpoint.open(tmp_path / "file.json")
    with pytest.raises(TypeError, match="name_or_path"):
        Checkpoint.open(42)


def test_read_json_errors_name_the_file(tmp_path):
    checkpoint = Checkpoint.open(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        checkpoint.read_json("unet/config.json")
    assert f"{tmp_path} has no unet/config.json" in str(error.value)
    assert "model_index.json and one subfolder per component" in str(error.value)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="model_index.json .*not valid JSON"):
        checkpoint.read_json("model_index.json")
    (tmp_path / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="model_index.json .*not a JSON object"):
        checkpoint.read_json("model_index.json")
    assert not checkpoint.has_file("model_index.jso")
    assert checkpoint.local_path("model_index.json") == tmp_path / "model_index.json"
    with pytest.raises(FileNotFoundError, match="tokenizer/vocab.json"):
        checkpoint.local_path("tokenizer/vocab.json")


def test_pick_dtype():
    assert loading.pick_dtype(None, None) is torch.float32  # as diffusers: float32 unless asked otherwise
    assert loading.pick_dtype(torch.float16, None) is torch.float16
    assert loading.pick_dtype(None, torch.bfloat16) is torch.bfloat16
    assert loading.pick_dtype(torch.float16, torch.float16) is torch.float16
    with pytest.raises(ValueError, match="disagree"):
        loading.pick_dtype(torch.float16, torch.float32)
    with pytest.raises(TypeError, match="torch_dtype"):
        loading.pick_dtype(None, "float16")
    with pytest.raises(TypeError, match="^dtype"):
        loading.pick_dtype(16, None)
    with pytest.raises(ValueError, match="floating-point"):
        loading.pick_dtype(torch.int8, None)


def test_join():
    assert loading.join("unet", "config.json") == "unet/config.json"
    assert loading.join(None, "config.json") == "config.json"
    assert loading.join("", "config.json") == "config.json"
    assert loading.join("unet/", "config.json") == "unet/config.json"


def test_offline_flag_read_at_import_is_enough(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE set when huggingface_hub was imported (env var since removed) still means offline."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(loading, "list_repo_files", lambda *a, **k: pytest.fail("network used"))
    state = tiny_state()
    fake_hub_cache(tmp_path / "cache", "org/name", state)
    assert_same(Checkpoint.open("org/name", cache_dir=tmp_path / "cache").load_state_dict("unet"), state)


def test_saved_weights_get_the_usual_file_permissions(tmp_path):
    """safetensors creates owner-only files; saved checkpoints must be readable like any file."""
    import os
    import stat

    from vidiff import AutoencoderKL

    mask = os.umask(0o022)
    try:
        AutoencoderKL.from_config({"block_out_channels": [8], "norm_num_groups": 4, "latent_channels": 4,
                                   "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"]}).save_pretrained(tmp_path)
    finally:
        os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"config.json": 0o644, "diffusion_pytorch_model.safetensors": 0o644}
