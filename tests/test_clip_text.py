"""vidiff's CLIP text tower against transformers' CLIPTextModel (the oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from tests.helpers import assert_same_state_dict_schema, max_abs_diff, perturb_, published_config
from vidiff.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

VOCAB, LENGTH, LAYERS = 99, 16, 3
# CLIP's layout: words, then the start and end tokens; the ids after END stand for tokens added later
# (textual inversion), which the legacy pooling rule (argmax of the ids) mistakes for the end token.
START, END, ADDED = VOCAB - 3, VOCAB - 2, VOCAB - 1
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_attention_heads=4,
    num_hidden_layers=LAYERS,
    max_position_embeddings=LENGTH,
    projection_dim=24,
    layer_norm_eps=1e-5,
    hidden_act="quick_gelu",
    bos_token_id=START,
    pad_token_id=1,
)


def _tiny_oracle(model_class=transformers.CLIPTextModel, *, eos_token_id: int = 2, seed: int = 0, **changes):
    config = transformers.CLIPTextConfig(**{**TINY, **changes}, eos_token_id=eos_token_id)
    # Eager attention in the oracle, so the comparison does not hinge on both sides calling SDPA.
    model = model_class._from_config(config, attn_implementation="eager")
    return perturb_(model.eval(), seed=seed)


def _saved_and_loaded(oracle, folder: Path, vidiff_class=CLIPTextModel):
    oracle.save_pretrained(folder / "text_encoder")
    return vidiff_class.from_pretrained(folder, subfolder="text_encoder")


def _token_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenizer-shaped ids [3, LENGTH]: start, words, end, then the end token again as padding (as
    SD's tokenizer pads), and the matching attention mask; the last row has no padding, the first
    holds an added token."""
    ids = torch.randint(2, START, (3, LENGTH), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(3, LENGTH, dtype=torch.long)
    ids[:, 0] = START
    ids[0, 2] = ADDED
    for row, end in enumerate((6, 11, LENGTH - 1)):
        ids[row, end:] = END
        mask[row, end + 1 :] = 0
    return ids, mask


@pytest.mark.parametrize("config_file", ["sd15_text_encoder.json", "i2vgenxl_text_encoder.json"])
def test_published_config_builds_transformers_state_dict(config_file):
    raw = published_config(config_file)
    with torch.device("meta"):
        ours = CLIPTextModel.from_config(raw)
        theirs = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_dict(raw))
        ours_projected = CLIPTextModelWithProjection.from_config(raw)
        theirs_projected = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig.from_dict(raw))
    assert_same_state_dict_schema(theirs, ours)
    assert_same_state_dict_schema(theirs_projected, ours_projected)
    assert "text_model.final_layer_norm.weight" in ours.state_dict()
    if config_file.startswith("sd15"):
        assert ours.config == CLIPTextConfig()  # the defaults are SD 1.5's text encoder
    assert ours.config.to_diffusers()["model_type"] == "clip_text_model"


@pytest.mark.parametrize("eos_token_id", [2, END], ids=["legacy-eos-2", "real-eos"])
@pytest.mark.parametrize("use_mask", [False, True], ids=["no-mask", "mask"])
def test_hidden_states_pooled_and_every_clip_skip_match_transformers(tmp_path, eos_token_id, use_mask):
    oracle = _tiny_oracle(eos_token_id=eos_token_id)
    ours = _saved_and_loaded(oracle, tmp_path)
    ids, mask = _token_batch()
    mask = mask if use_mask else None
    with torch.no_grad():
        expected = oracle(ids, attention_mask=mask, output_hidden_states=True)
        got = ours.encode_with_pooled(ids, mask)
        assert max_abs_diff(ours(ids, mask), expected.last_hidden_state) <= 1e-4
        assert max_abs_diff(got.last_hidden_state, expected.last_hidden_state) <= 1e-4
        assert max_abs_diff(got.pooled_output, expected.pooler_output) <= 1e-4
        assert max_abs_diff(ours.encode(ids, mask), expected.last_hidden_state) <= 1e-4
        for clip_skip in range(LAYERS + 1):
            # diffusers' recipe: hidden_states[-(clip_skip + 1)], then the final layer norm.
            reference = oracle.text_model.final_layer_norm(expected.hidden_states[-(clip_skip + 1)])
            assert max_abs_diff(ours.encode(ids, mask, clip_skip=clip_skip), reference) <= 1e-4


def test_the_parametrized_cases_are_distinguishable(tmp_path):
    # Guards the test above: masks, clip-skip depths and the two pooling rules must all change outputs.
    legacy = _saved_and_loaded(_tiny_oracle(eos_token_id=2), tmp_path)
    real = CLIPTextModel.from_config(legacy.config, eos_token_id=END).eval()
    real.load_state_dict(legacy.state_dict(), strict=True)
    ids, mask = _token_batch()
    with torch.no_grad():
        assert max_abs_diff(legacy(ids, mask), legacy(ids)) > 1e-3
        depths = [legacy.encode(ids, clip_skip=k) for k in range(LAYERS + 1)]
        assert all(max_abs_diff(a, b) > 1e-3 for a, b in zip(depths, depths[1:]))
        legacy_pooled = legacy.encode_with_pooled(ids).pooled_output
        real_pooled = real.encode_with_pooled(ids).pooled_output
    # Row 0 holds an added token: the rules pick different positions there, the same one elsewhere.
    assert max_abs_diff(legacy_pooled[0], real_pooled[0]) > 1e-3
    assert max_abs_diff(legacy_pooled[1:], real_pooled[1:]) == 0.0


def test_left_padding_stays_finite_and_real_tokens_match(tmp_path):
    # Left padding leaves the first queries with no key to attend to; they must not turn into NaN.
    oracle = _tiny_oracle(seed=2)
    ours = _saved_and_loaded(oracle, tmp_path)
    ids, _ = _token_batch(seed=3)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        got = ours(ids, mask)
        expected = oracle(ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(got).all()
    real = mask.bool()
    assert max_abs_diff(got[real], expected[real]) <= 1e-4


def test_with_projection_matches_transformers(tmp_path):
    oracle = _tiny_oracle(transformers.CLIPTextModelWithProjection, eos_token_id=END, seed=4)
    ours = _saved_and_loaded(oracle, tmp_path, CLIPTextModelWithProjection)
    ids, mask = _token_batch(seed=5)
    with torch.no_grad():
        expected = oracle(ids, attention_mask=mask)
        embeds = ours(ids, mask)
        assert embeds.shape == (3, TINY["projection_dim"])
        assert max_abs_diff(embeds, expected.text_embeds) <= 1e-4
        assert max_abs_diff(ours.encode(ids, mask), expected.last_hidden_state) <= 1e-4


def test_old_checkpoints_with_position_ids_load_and_strays_do_not(tmp_path):
    oracle = _tiny_oracle(seed=6)
    folder = tmp_path / "text_encoder"
    oracle.save_pretrained(folder)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    assert "text_model.embeddings.position_ids" not in state  # transformers 5 no longer saves it
    # SD 1.5's text_encoder was saved by an older transformers and still holds it.
    state["text_model.embeddings.position_ids"] = torch.arange(LENGTH)[None]
    save_file(state, weights)
    ours = CLIPTextModel.from_pretrained(tmp_path, subfolder="text_encoder")
    assert "text_model.embeddings.position_ids" not in ours.state_dict()
    ids, _ = _token_batch()
    with torch.no_grad():
        assert max_abs_diff(ours(ids), oracle(ids).last_hidden_state) <= 1e-4

    state["text_model.embeddings.stray"] = torch.zeros(1)
    save_file(state, weights)
    with pytest.raises(ValueError, match="text_model.embeddings.stray"):
        CLIPTextModel.from_pretrained(tmp_path, subfolder="text_encoder")


def test_save_pretrained_is_readable_by_transformers(tmp_path):
    ours = perturb_(CLIPTextModel.from_config(TINY, eos_token_id=END).eval(), seed=7)
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "clip_text_model"
    reloaded = transformers.CLIPTextModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.eos_token_id == END
    ids, mask = _token_batch()
    with torch.no_grad():
        expected = reloaded(ids, attention_mask=mask)
        got = ours.encode_with_pooled(ids, mask)
    assert max_abs_diff(got.last_hidden_state, expected.last_hidden_state) <= 1e-4
    assert max_abs_diff(got.pooled_output, expected.pooler_output) <= 1e-4


def test_bad_inputs_raise_clear_errors():
    model = CLIPTextModel.from_config(TINY)
    ids, _ = _token_batch()
    with pytest.raises(TypeError, match="input_ids"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match="integer tensor"):
        model(ids.float())
    with pytest.raises(ValueError, match=f"1..{LENGTH}"):
        model(torch.ones(1, LENGTH + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=f"0..{VOCAB - 1}"):
        model(torch.full((1, 4), VOCAB))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, torch.ones(3, LENGTH - 1))
    with pytest.raises(ValueError, match="clip_skip"):
        model.encode(ids, clip_skip=LAYERS + 1)
    with pytest.raises(TypeError, match="clip_skip"):
        model.encode(ids, clip_skip=True)
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextModel.from_config(TINY, hidden_act="sigmoidish")
    with pytest.raises(ValueError, match="num_attention_heads"):
        CLIPTextModel.from_config(TINY, num_attention_heads=5)
