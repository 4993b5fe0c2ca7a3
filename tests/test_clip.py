"""vidiff's CLIP vision tower against transformers' CLIPVisionModelWithProjection (the oracle)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from tests.helpers import assert_same_state_dict_schema, max_abs_diff, perturb_, published_config
from vidiff.models.clip import CLIPVisionConfig, CLIPVisionModelWithProjection

TINY = dict(
    hidden_size=32,
    intermediate_size=48,
    num_attention_heads=2,
    num_hidden_layers=2,
    image_size=224,
    patch_size=32,
    projection_dim=16,
    layer_norm_eps=1e-5,
)


def _tiny_oracle(hidden_act: str, seed: int = 0) -> transformers.CLIPVisionModelWithProjection:
    config = transformers.CLIPVisionConfig(**TINY, hidden_act=hidden_act)
    # Eager attention in the oracle, so the comparison does not hinge on both sides calling SDPA.
    model = transformers.CLIPVisionModelWithProjection._from_config(config, attn_implementation="eager")
    return perturb_(model.eval(), seed=seed)


def _pixels(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config_file", ["svd_xt_image_encoder.json", "i2vgenxl_image_encoder.json"])
def test_published_config_builds_transformers_state_dict(config_file):
    raw = published_config(config_file)
    with torch.device("meta"):
        ours = CLIPVisionModelWithProjection.from_config(raw)
        theirs = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig.from_dict(raw))
    assert_same_state_dict_schema(theirs, ours)
    assert "vision_model.pre_layrnorm.weight" in ours.state_dict()  # sic: the checkpoints' spelling
    assert ours.config == CLIPVisionConfig()  # the defaults are SVD-XT's image encoder


@pytest.mark.parametrize("hidden_act", ["gelu", "quick_gelu"])
def test_forward_matches_transformers(hidden_act):
    oracle = _tiny_oracle(hidden_act)
    ours = CLIPVisionModelWithProjection.from_config(oracle.config.to_dict()).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    pixels = _pixels()
    with torch.no_grad():
        expected = oracle(pixel_values=pixels)
        expected_pooled = oracle.vision_model(pixel_values=pixels).pooler_output
        got = ours.encode(pixels)
        embeds = ours(pixels)
    assert embeds.shape == (3, TINY["projection_dim"])
    assert max_abs_diff(embeds, expected.image_embeds) <= 1e-4
    assert max_abs_diff(got.image_embeds, expected.image_embeds) <= 1e-4
    assert max_abs_diff(got.pooled_output, expected_pooled) <= 1e-4
    assert max_abs_diff(got.last_hidden_state, expected.last_hidden_state) <= 1e-4


def test_activation_choice_changes_the_output():
    # Guards the parametrized parity test: gelu and quick_gelu must be distinguishable at this size.
    oracle = _tiny_oracle("gelu")
    wrong = CLIPVisionModelWithProjection.from_config(oracle.config.to_dict(), hidden_act="quick_gelu").eval()
    wrong.load_state_dict(oracle.state_dict(), strict=True)
    with torch.no_grad():
        assert max_abs_diff(wrong(_pixels()), oracle(pixel_values=_pixels()).image_embeds) > 1e-3


def test_from_pretrained_reads_a_transformers_save(tmp_path):
    oracle = _tiny_oracle("quick_gelu", seed=3)
    oracle.save_pretrained(tmp_path / "image_encoder")
    ours = CLIPVisionModelWithProjection.from_pretrained(tmp_path, subfolder="image_encoder")
    assert ours.config.hidden_act == "quick_gelu" and ours.config.projection_dim == TINY["projection_dim"]
    with torch.no_grad():
        assert max_abs_diff(ours(_pixels()), oracle(pixel_values=_pixels()).image_embeds) <= 1e-4


def test_old_checkpoints_with_position_ids_load_and_strays_do_not(tmp_path):
    oracle = _tiny_oracle("gelu", seed=4)
    folder = tmp_path / "image_encoder"
    oracle.save_pretrained(folder)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    num_positions = (TINY["image_size"] // TINY["patch_size"]) ** 2 + 1
    state["vision_model.embeddings.position_ids"] = torch.arange(num_positions)[None]
    save_file(state, weights)
    ours = CLIPVisionModelWithProjection.from_pretrained(tmp_path, subfolder="image_encoder")
    assert "vision_model.embeddings.position_ids" not in ours.state_dict()
    with torch.no_grad():
        assert max_abs_diff(ours(_pixels()), oracle(pixel_values=_pixels()).image_embeds) <= 1e-4

    state["vision_model.embeddings.stray"] = torch.zeros(1)
    save_file(state, weights)
    with pytest.raises(ValueError, match="vision_model.embeddings.stray"):
        CLIPVisionModelWithProjection.from_pretrained(tmp_path, subfolder="image_encoder")


def test_save_pretrained_is_readable_by_transformers(tmp_path):
    # Built from a bare dict (no transformers extras): the saved config must still name its model_type.
    ours = perturb_(CLIPVisionModelWithProjection.from_config(TINY, hidden_act="quick_gelu").eval(), seed=5)
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "clip_vision_model"
    reloaded = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path).eval()
    assert reloaded.config.hidden_act == "quick_gelu"
    with torch.no_grad():
        assert max_abs_diff(reloaded(pixel_values=_pixels()).image_embeds, ours(_pixels())) <= 1e-4


def test_bad_inputs_raise_clear_errors():
    model = CLIPVisionModelWithProjection.from_config(TINY)
    with pytest.raises(ValueError, match=r"\[N, 3, 224, 224\]"):
        model(torch.zeros(1, 3, 192, 192))
    with pytest.raises(TypeError, match="pixel_values"):
        model([[0.0]])
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPVisionModelWithProjection.from_config(TINY, hidden_act="sigmoidish")
    with pytest.raises(ValueError, match="num_attention_heads"):
        CLIPVisionModelWithProjection.from_config(TINY, num_attention_heads=3)
