"""WanTransformer3DModel against diffusers 0.42.1's: tiny perturbed models saved by diffusers, loaded by
vidiff, same output; released configs built on ``meta`` with diffusers' exact keys, shapes and counts.

The oracle is always *reloaded from disk* after saving: ``perturb_`` also shifts the in-memory model's
non-persistent rotary tables (``rope.freqs_cos``/``freqs_sin``), which are not saved and which a
loaded model recomputes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel as OracleWan

from tests.helpers import assert_same_state_dict_schema, max_abs_diff, perturb_, published_config
from vidiff import WanTransformer3DModel
from vidiff.config import ConfigError
from vidiff.models.compute_levers import clear_forward_chunking, set_forward_chunking
from vidiff.models.wan_transformer import FLOAT32_PARTS, WanTransformer3DConfig
from vidiff.models.wan_transformer_blocks import WanAttention

TEXT_DIM, IMAGE_DIM, IMAGE_TOKENS = 16, 8, 5
# 2 heads of 12 channels: the rotary bands split 4 / 4 / 4 (frames / height / width).
T2V = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
    text_dim=TEXT_DIM, freq_dim=10, ffn_dim=32, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)
I2V = dict(T2V, in_channels=12, image_dim=IMAGE_DIM, added_kv_proj_dim=24)
# Wan 2.2 TI2V's shape of config (in = out channels, per-token timesteps), without cross-attention norm.
TI2V = dict(T2V, in_channels=6, out_channels=6, cross_attn_norm=False, freq_dim=8)
# Wan 2.1 FLF2V: a learned position table over the first and the last image's tokens.
FLF2V = dict(I2V, pos_embed_seq_len=2 * IMAGE_TOKENS)
# Held-out shapes: a temporal patch, a head of 16 (bands 8 / 4 / 4), out_channels from in_channels.
CUBE = dict(T2V, patch_size=(2, 2, 2), attention_head_dim=16, out_channels=None, eps=1e-5)
KINDS = dict(t2v=T2V, i2v=I2V, ti2v=TI2V, flf2v=FLF2V, cube=CUBE)


def _save_oracle(config: dict, folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    perturb_(OracleWan(**config), seed=seed + 1).save_pretrained(folder)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """kind → (folder written by diffusers, diffusers model reloaded from it, vidiff model loaded from it)."""
    out = {}
    for seed, (kind, config) in enumerate(KINDS.items()):
        folder = tmp_path_factory.mktemp(f"wan-{kind}")
        _save_oracle(config, folder, seed)
        out[kind] = (folder, OracleWan.from_pretrained(folder).eval(), WanTransformer3DModel.from_pretrained(folder))
    return out


def _inputs(config: dict, batch: int, frames: int, height: int, width: int, text_tokens: int = 7, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(
        hidden_states=torch.randn(batch, config["in_channels"], frames, height, width, generator=gen),
        timestep=torch.rand(batch, generator=gen) * 1000,
        encoder_hidden_states=torch.randn(batch, text_tokens, TEXT_DIM, generator=gen),
    )
    if config.get("image_dim"):
        per_video = 2 if config.get("pos_embed_seq_len") else 1
        inputs["encoder_hidden_states_image"] = torch.randn(per_video * batch, IMAGE_TOKENS, IMAGE_DIM, generator=gen)
        # diffusers' I2V attention takes the tokens before the last 512 as image tokens: 512 text tokens.
        inputs["encoder_hidden_states"] = torch.randn(batch, 512, TEXT_DIM, generator=gen)
    return inputs


@torch.no_grad()
def _both(saved: dict, kind: str, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    _, oracle, ours = saved[kind]
    expected = oracle(**inputs, return_dict=False)[0]
    got = ours(**inputs)
    assert isinstance(got, torch.Tensor)
    return expected, got


@pytest.mark.parametrize(
    ("kind", "batch", "frames", "height", "width"),
    [("t2v", 2, 3, 6, 6), ("t2v", 1, 5, 4, 10), ("i2v", 2, 2, 6, 4), ("ti2v", 1, 3, 8, 6), ("flf2v", 2, 2, 4, 4),
     ("cube", 2, 4, 6, 4)],
)
def test_forward_matches_diffusers(saved, kind, batch, frames, height, width):
    inputs = _inputs(KINDS[kind], batch, frames, height, width)
    expected, got = _both(saved, kind, inputs)
    out_channels = KINDS[kind]["out_channels"] or KINDS[kind]["in_channels"]
    assert got.shape == (batch, out_channels, frames, height, width)
    assert max_abs_diff(expected, got) < 1e-5


def test_integer_and_scalar_timesteps_match_diffusers(saved):
    inputs = _inputs(T2V, 2, 3, 6, 6, seed=1)
    expected, got = _both(saved, "t2v", {**inputs, "timestep": torch.tensor([999, 0])})
    assert max_abs_diff(expected, got) < 1e-5
    # a number is one timestep for every video, as diffusers' [1]-shaped timestep broadcasts
    expected, _ = _both(saved, "t2v", {**inputs, "timestep": torch.tensor([321.5])})
    with torch.no_grad():
        assert max_abs_diff(expected, saved["t2v"][2](**{**inputs, "timestep": 321.5})) < 1e-5


def test_per_token_timesteps_match_diffusers(saved):
    # Wan 2.2 TI2V's expand_timesteps: [B, tokens], the first latent frame's tokens at timestep 0.
    frames, height, width = 3, 8, 6
    inputs = _inputs(TI2V, 2, frames, height, width, seed=2)
    tokens = frames * (height // 2) * (width // 2)
    timestep = torch.full((2, tokens), 700.0)
    timestep[:, : tokens // frames] = 0
    timestep[1] = torch.linspace(0, 999, tokens)
    expected, got = _both(saved, "ti2v", {**inputs, "timestep": timestep})
    assert max_abs_diff(expected, got) < 1e-5
    # per-token timesteps that are all equal give the per-video result
    with torch.no_grad():
        uniform = saved["ti2v"][2](**{**inputs, "timestep": torch.full((2, tokens), 700.0)})
        per_video = saved["ti2v"][2](**{**inputs, "timestep": torch.full((2,), 700.0)})
    assert max_abs_diff(uniform, per_video) < 1e-5


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_half_precision_load_matches_diffusers(saved, kind):
    folder = saved[kind][0]
    oracle = OracleWan.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
    ours = WanTransformer3DModel.from_pretrained(folder, dtype=torch.bfloat16)
    # the same parameters stay float32 (time MLP, modulation tables, affine LayerNorms)
    oracle_float32 = {n for n, p in oracle.named_parameters() if p.dtype == torch.float32}
    assert oracle_float32 == {n for n, p in ours.named_parameters() if p.dtype == torch.float32}
    assert oracle_float32 and all(any(part in n.split(".") for part in FLOAT32_PARTS) for n in oracle_float32)
    assert ours.dtype == torch.bfloat16
    inputs = _inputs(KINDS[kind], 2, 3, 6, 6, seed=3)
    inputs = {k: v.bfloat16() if k != "timestep" else v for k, v in inputs.items()}
    with torch.no_grad():
        expected = oracle(**inputs, return_dict=False)[0]
        got = ours(**inputs)
    assert got.dtype == torch.bfloat16
    assert max_abs_diff(expected, got) <= 2e-2 * expected.abs().max().item()


def test_save_round_trips_with_diffusers(saved, tmp_path):
    folder, oracle, ours = saved["i2v"]
    ours.save_pretrained(tmp_path / "vidiff")
    reloaded_by_diffusers = OracleWan.from_pretrained(tmp_path / "vidiff").eval()
    written = json.loads((tmp_path / "vidiff" / "config.json").read_text())
    expected_keys = {k for k in dict(oracle.config) if not k.startswith("_")}
    assert {k for k in written if not k.startswith("_")} == expected_keys
    assert written["_class_name"] == "WanTransformer3DModel"
    inputs = _inputs(I2V, 1, 2, 4, 6, seed=4)
    with torch.no_grad():
        assert max_abs_diff(reloaded_by_diffusers(**inputs, return_dict=False)[0], ours(**inputs)) < 1e-5
    # and back: diffusers saves what vidiff wrote, vidiff loads it with the same weights
    reloaded_by_diffusers.save_pretrained(tmp_path / "diffusers")
    again = WanTransformer3DModel.from_pretrained(tmp_path / "diffusers")
    assert again.config == ours.config
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())


def test_old_checkpoints_with_norm_added_q_load(saved, tmp_path):
    # diffusers 0.33 wrote Wan 2.1 I2V files with an unused `attn2.norm_added_q`; 0.42.1 ignores it.
    from safetensors.torch import load_file, save_file

    folder, _, ours = saved["i2v"]
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    for index in range(I2V["num_layers"]):
        weights[f"blocks.{index}.attn2.norm_added_q.weight"] = torch.ones(24)
    save_file(weights, tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    loaded = WanTransformer3DModel.from_pretrained(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ours.state_dict().items())
    weights["blocks.0.attn2.norm_added_v.weight"] = torch.ones(24)  # anything else is still an error
    save_file(weights, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="norm_added_v"):
        WanTransformer3DModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("dim", [0, 1])
def test_forward_chunking_reaches_wan_layers_and_keeps_the_output(saved, dim):
    ours = saved["i2v"][2]
    inputs = _inputs(I2V, 2, 2, 6, 4, seed=5)
    with torch.no_grad():
        full = ours(**inputs)
        layers = set_forward_chunking(ours, 3, dim=dim)
        try:
            chunked = ours(**inputs)
        finally:
            clear_forward_chunking(ours)
    attentions = sum(isinstance(m, WanAttention) for m in ours.modules())
    assert attentions == 2 * I2V["num_layers"] and layers == attentions + I2V["num_layers"] + 1  # + block and image MLPs
    assert max_abs_diff(full, chunked) < 1e-5


# Every released transformer config (tests/configs, copied from /work/shared/configs/wan) → its
# parameter count as diffusers 0.42.1 builds it (/work/shared/configs/wan/param_counts.json). Wan 2.1
# I2V files written by diffusers 0.33 hold 40 × 5120 more (the ignored `norm_added_q`).
RELEASED = {
    "wan/Wan2.1-T2V-1.3B-Diffusers/transformer/config.json": 1_418_996_800,
    "wan/Wan2.1-T2V-14B-Diffusers/transformer/config.json": 14_288_491_584,
    "wan/Wan2.1-I2V-14B-480P-Diffusers/transformer/config.json": 16_394_878_784,
    "wan/Wan2.2-TI2V-5B-Diffusers/transformer/config.json": 4_999_787_712,
    "wan/Wan2.2-T2V-A14B-Diffusers/transformer/config.json": 14_288_491_584,
    "wan/Wan2.2-I2V-A14B-Diffusers/transformer/config.json": 14_288_901_184,
}


@pytest.mark.parametrize(("name", "parameters"), RELEASED.items())
def test_released_configs_build_diffusers_schema(name, parameters):
    raw = published_config(name)
    with torch.device("meta"):
        oracle = OracleWan.from_config(raw)
        ours = WanTransformer3DModel.from_config(raw)
    assert_same_state_dict_schema(oracle, ours)
    assert sum(p.numel() for p in ours.parameters()) == parameters
    written = ours.config.to_diffusers()
    oracle_config = {k: v for k, v in dict(oracle.config).items() if not k.startswith("_")}
    assert {k: written[k] for k in oracle_config} == json.loads(json.dumps(oracle_config))
    assert ours.config.patch_size == (1, 2, 2) and ours.config["in_channels"] == raw["in_channels"]


def test_unknown_config_keys_are_kept():
    config = WanTransformer3DConfig.from_diffusers({**T2V, "window_size": [-1, -1], "_diffusers_version": "0.33.0"})
    assert config.extra == {"window_size": [-1, -1], "_diffusers_version": "0.33.0"}
    assert config.to_diffusers()["window_size"] == [-1, -1] and config.output_channels == 4
    assert WanTransformer3DConfig.from_diffusers({**T2V, "out_channels": None}).output_channels == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(qk_norm="layer_norm"), "qk_norm"),
        (dict(qk_norm=None), "qk_norm"),
        (dict(attention_head_dim=7), "attention_head_dim"),
        (dict(added_kv_proj_dim=16), "added_kv_proj_dim"),
        (dict(patch_size=[1, 2]), "patch_size"),
        (dict(patch_size=[1, 0, 2]), "patch_size"),
        (dict(num_layers=0), "num_layers"),
        (dict(eps=0.0), "eps"),
        (dict(cross_attn_norm="yes"), "cross_attn_norm"),
        (dict(rope_max_seq_len=0), "rope_max_seq_len"),
    ],
)
def test_bad_config_values_name_the_option(change, message):
    with pytest.raises(ConfigError, match=message):
        WanTransformer3DConfig.from_diffusers({**T2V, **change})


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        ("t2v", dict(hidden_states=torch.zeros(1, 5, 3, 6, 6)), "in_channels=4"),
        ("t2v", dict(hidden_states=torch.zeros(1, 4, 3, 7, 6)), "height 7"),
        ("t2v", dict(hidden_states=torch.zeros(1, 4, 6, 6)), r"\[B, C, F, H, W\]"),
        ("t2v", dict(hidden_states=torch.zeros(1, 4, 33, 2, 2)), "rope_max_seq_len=32"),
        ("t2v", dict(timestep=torch.zeros(1, 5)), "per-token timestep"),
        ("t2v", dict(timestep=torch.zeros(3)), "timestep"),
        ("t2v", dict(encoder_hidden_states=torch.zeros(1, 7, 9)), "text_dim=16"),
        ("t2v", dict(encoder_hidden_states=torch.zeros(2, 7, 16)), "encoder_hidden_states has batch 2"),
        ("t2v", dict(encoder_hidden_states_image=torch.zeros(1, 5, 8)), "no image branch"),
        ("i2v", dict(encoder_hidden_states_image=torch.zeros(1, 5, 3)), "image_dim=8"),
        ("i2v", dict(encoder_hidden_states_image=torch.zeros(2, 5, 8)), "expected 1"),
    ],
)
def test_bad_inputs_name_the_argument(saved, kind, change, message):
    inputs = {**_inputs(KINDS[kind], 1, 3, 6, 6), **change}
    with pytest.raises(ValueError, match=message), torch.no_grad():
        saved[kind][2](**inputs)
