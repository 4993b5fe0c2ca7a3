"""vidiff's UMT5 encoder and T5 tokenizer against transformers 5.5.4 (the oracle), as Wan uses them."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from tests.helpers import max_abs_diff, perturb_, published_config, state_dict_shapes
from vidiff import T5TokenizerFast, UMT5EncoderModel
from vidiff.config import ConfigError
from vidiff.demo.umt5_tokenizer import write_tiny_umt5_tokenizer
from vidiff.models import umt5_layers
from vidiff.models.umt5_layers import relative_position_buckets

UMT5_XXL_PARAMETERS = 5_680_910_336
LENGTH = 24  # longer than max_distance below: exact, log-spaced and saturated buckets all occur
TINY = dict(
    vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.0,
)
# Prompts as Wan feeds them (after its cleaning), one longer than the padded length below.
PROMPTS = [
    "A cat walks on the grass, realistic",
    "blurry, static",
    "",
    "an astronaut riding a horse in space, flying rocket, the sun and the sea, low quality video " * 2,
]
WAN_CALL = dict(
    padding="max_length", max_length=LENGTH, truncation=True, add_special_tokens=True,
    return_attention_mask=True, return_tensors="pt",
)


def _oracle(seed: int = 0, **changes) -> transformers.UMT5EncoderModel:
    torch.manual_seed(seed)
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(**{**TINY, **changes})).eval()
    return perturb_(model, seed=seed, scale=0.2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, oracle): ``folder/plain`` as transformers 5 saves it (no ``encoder.embed_tokens``),
    ``folder/with_alias`` holding the tied alias too, ``folder/alias_only`` holding only the alias."""
    root = tmp_path_factory.mktemp("umt5")
    oracle = _oracle()
    oracle.save_pretrained(root / "plain")
    state = load_file(root / "plain" / "model.safetensors")
    for name, keep_shared in (("with_alias", True), ("alias_only", False)):
        (root / name).mkdir()
        (root / name / "config.json").write_text((root / "plain" / "config.json").read_text())
        variant = dict(state) if keep_shared else {k: v for k, v in state.items() if k != "shared.weight"}
        variant["encoder.embed_tokens.weight"] = state["shared.weight"].clone()
        save_file(variant, str(root / name / "model.safetensors"), metadata={"format": "pt"})
    return root, oracle


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("umt5-tokenizer")
    write_tiny_umt5_tokenizer(root / "tokenizer")
    return root


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [4, LENGTH] shaped like Wan's: words, ``</s>`` (1), ``<pad>`` (0); one row unpadded."""
    ids = torch.randint(3, TINY["vocab_size"], (4, LENGTH), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(4, LENGTH, dtype=torch.long)
    for row, length in enumerate((5, 13, 1, LENGTH)):
        ids[row, length - 1] = 1
        ids[row, length:] = 0
        mask[row, length:] = 0
    return ids, mask


def test_transformers_5_saves_only_the_shared_table(saved):
    root, _ = saved
    keys = set(load_file(root / "plain" / "model.safetensors"))
    assert "shared.weight" in keys and "encoder.embed_tokens.weight" not in keys


@pytest.mark.parametrize("layout", ["plain", "with_alias", "alias_only"])
def test_padded_batches_match_transformers(saved, layout):
    root, oracle = saved
    ours = UMT5EncoderModel.from_pretrained(root / layout)
    ids, mask = _batch()
    with torch.no_grad():
        for attention_mask in (mask, None):
            expected = oracle(ids, attention_mask).last_hidden_state
            got = ours(ids, attention_mask).last_hidden_state
            assert got.shape == (4, LENGTH, TINY["d_model"])
            assert max_abs_diff(got, expected) <= 1e-5
            assert torch.equal(ours.encode(ids, attention_mask), got)
        # The mask matters here (so the comparison above checks it), and real tokens never see padding.
        assert max_abs_diff(ours(ids, mask).last_hidden_state[0, :5], ours(ids).last_hidden_state[0, :5]) > 1e-3
        alone = ours(ids[:1, :5], mask[:1, :5]).last_hidden_state
        assert max_abs_diff(alone, ours(ids, mask).last_hidden_state[:1, :5]) <= 1e-5


def test_every_layer_has_its_own_relative_bias(saved):
    # UMT5, unlike T5, gives each layer a bias table; all of them must be loaded and used.
    root, oracle = saved
    ours = UMT5EncoderModel.from_pretrained(root / "plain")
    tables = [block.layer[0].SelfAttention.relative_attention_bias.weight for block in ours.encoder.block]
    assert len(tables) == TINY["num_layers"] and max_abs_diff(tables[0], tables[1]) > 0.1
    ids, mask = _batch(seed=2)
    with torch.no_grad():
        tables[1].copy_(tables[0])
        assert max_abs_diff(ours(ids, mask).last_hidden_state, oracle(ids, mask).last_hidden_state) > 1e-3


def test_buckets_match_transformers_and_cover_every_branch(saved):
    _, oracle = saved
    count = TINY["relative_attention_num_buckets"]
    buckets = relative_position_buckets(LENGTH, count, TINY["relative_attention_max_distance"], torch.device("cpu"))
    positions = torch.arange(LENGTH)
    attention = oracle.encoder.block[0].layer[0].SelfAttention
    expected = attention._relative_position_bucket(positions[None, :] - positions[:, None])
    assert torch.equal(buckets, expected)
    # The test length reaches the exact, the log-spaced and the saturated buckets, in both directions
    # (bucket count // 2 would be "after the query, distance 0": it never occurs).
    assert set(buckets.unique().tolist()) == set(range(count)) - {count // 2}


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-silu"])
def test_other_feed_forward_kinds_match_transformers(tmp_path, feed_forward_proj):
    oracle = _oracle(seed=3, feed_forward_proj=feed_forward_proj)
    oracle.save_pretrained(tmp_path)
    ours = UMT5EncoderModel.from_pretrained(tmp_path)
    ids, mask = _batch(seed=3)
    with torch.no_grad():
        assert max_abs_diff(ours(ids, mask).last_hidden_state, oracle(ids, mask).last_hidden_state) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loads_match_transformers(saved, dtype):
    root, _ = saved
    oracle = transformers.UMT5EncoderModel.from_pretrained(root / "plain", dtype=dtype).eval()
    ours = UMT5EncoderModel.from_pretrained(root / "with_alias", dtype=dtype)
    theirs_dtypes = {name: p.dtype for name, p in oracle.named_parameters()}
    ours_dtypes = {name: p.dtype for name, p in ours.named_parameters()}
    # transformers keeps `wo` in float32 for float16 (not for bfloat16); vidiff does the same.
    assert ours_dtypes == {name: theirs_dtypes[name] for name in ours_dtypes}
    wo_dtype = ours_dtypes["encoder.block.0.layer.1.DenseReluDense.wo.weight"]
    assert (wo_dtype == torch.float32) == (dtype == torch.float16)
    ids, mask = _batch(seed=4)
    with torch.no_grad():
        expected = oracle(ids, mask).last_hidden_state
        got = ours(ids, mask).last_hidden_state
    assert got.dtype == expected.dtype == dtype
    assert max_abs_diff(got, expected) <= 1e-5


def test_float16_clamps_like_transformers(saved, monkeypatch):
    # A whole-float16 model (`.half()` casts `wo` too): an embedding at float16's maximum plus a large
    # attention output overflows the residual stream; both clamp it back the same way (unclamped: inf).
    root, _ = saved
    oracle = transformers.UMT5EncoderModel.from_pretrained(root / "plain").eval().half()
    ours = UMT5EncoderModel.from_pretrained(root / "plain").half()
    ids, mask = _batch(seed=5)
    ids[:, 0] = 7
    with torch.no_grad():
        for model in (oracle, ours):
            model.shared.weight[7].fill_(torch.finfo(torch.float16).max)
            model.encoder.block[0].layer[0].SelfAttention.o.weight.mul_(300)
        expected = oracle(ids, mask).last_hidden_state
        got = ours(ids, mask).last_hidden_state
        monkeypatch.setattr(umt5_layers, "clamp_float16", lambda hidden_states: hidden_states)
        unclamped = ours(ids, mask).last_hidden_state
    assert torch.isfinite(expected).all() and not torch.isfinite(unclamped).all()
    assert max_abs_diff(got, expected) <= 1e-5


def test_sharded_save_loads_and_transformers_reads_ours(saved, tmp_path):
    root, oracle = saved
    ours = UMT5EncoderModel.from_pretrained(root / "plain")
    ours.save_pretrained(tmp_path / "sharded", max_shard_size=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    reloaded = UMT5EncoderModel.from_pretrained(tmp_path / "sharded", dtype=torch.bfloat16)
    by_transformers = transformers.UMT5EncoderModel.from_pretrained(tmp_path / "sharded").eval()
    ids, mask = _batch(seed=6)
    with torch.no_grad():
        expected = oracle(ids, mask).last_hidden_state
        assert max_abs_diff(by_transformers(ids, mask).last_hidden_state, expected) <= 1e-5
        halved = transformers.UMT5EncoderModel.from_pretrained(tmp_path / "sharded", dtype=torch.bfloat16).eval()
        assert max_abs_diff(reloaded(ids, mask).last_hidden_state, halved(ids, mask).last_hidden_state) <= 1e-5


def test_wan_config_on_meta_has_transformers_keys_and_shapes():
    raw = published_config("wan/Wan2.1-T2V-1.3B-Diffusers/text_encoder/config.json")  # every Wan repository's text encoder
    with torch.device("meta"):
        ours = UMT5EncoderModel.from_config(raw)
        theirs = transformers.UMT5EncoderModel(transformers.UMT5Config.from_dict(raw))
    # transformers' state dict also lists the tied alias, which it does not save.
    expected = {k: s for k, s in state_dict_shapes(theirs).items() if k not in theirs._tied_weights_keys}
    assert state_dict_shapes(ours) == expected
    assert sum(p.numel() for p in ours.parameters()) == theirs.num_parameters() == UMT5_XXL_PARAMETERS
    assert ours.config.activation == "gelu_new" and ours.config.is_gated_act
    assert ours.config == type(ours.config)()  # the defaults are umt5-xxl


def test_bad_inputs_and_configs_raise_clear_errors(saved):
    root, _ = saved
    ours = UMT5EncoderModel.from_pretrained(root / "plain")
    ids, mask = _batch()
    with pytest.raises(TypeError, match="input_ids"):
        ours([[1, 2]])
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        ours(ids.float())
    with pytest.raises(ValueError, match="vocab_size=300"):
        ours(ids + 300)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        ours(ids, mask[:, :5])
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        UMT5EncoderModel.from_config(TINY, feed_forward_proj="gelu-gated")
    with pytest.raises(ConfigError, match="hidden_act"):
        UMT5EncoderModel.from_config(TINY, feed_forward_proj="gated-nonsense")
    state = load_file(root / "plain" / "model.safetensors")
    del state["encoder.final_layer_norm.weight"]
    save_file(state, str(root / "broken.safetensors"))
    with pytest.raises(ValueError, match="missing keys.*final_layer_norm"):
        UMT5EncoderModel.from_state(TINY, load_file(root / "broken.safetensors"), source="broken")


# ---------------------------------------------------------------- the tokenizer


def test_tokenizer_matches_transformers_as_wan_calls_it(tokenizer_folder):
    ours = T5TokenizerFast.from_pretrained(tokenizer_folder)
    folder = tokenizer_folder / "tokenizer"
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    oracles = (transformers.T5TokenizerFast.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder))
    for oracle in oracles:
        got, expected = ours(PROMPTS, **WAN_CALL), oracle(PROMPTS, **WAN_CALL)
        assert torch.equal(got.input_ids, expected.input_ids)
        assert torch.equal(got.attention_mask, expected.attention_mask)
        assert len(ours) == len(oracle)
    ids, mask = got.input_ids, got.attention_mask
    lengths = mask.sum(dim=1).tolist()
    assert lengths[0] >= 6 and lengths[2] == 1 and lengths[3] == LENGTH  # several pieces; "" is "</s>"; cut
    for row, length in enumerate(lengths):
        # The pieces, then "</s>" (1), then "<pad>" (0); no start token. A cut prompt ends with a piece.
        assert ids[row, length:].eq(0).all() and mask[row, length:].eq(0).all()
        if length < LENGTH:
            assert ids[row, length - 1] == 1 == ours.eos_token_id and ours.pad_token_id == 0
            assert raw.encode(PROMPTS[row]).ids == ids[row, :length].tolist()  # the file alone agrees
    assert ids.max() < len(ours) <= 300  # fits a tiny text encoder
    assert ours.batch_decode(ids[:1], skip_special_tokens=True) == [PROMPTS[0]]


def test_tokenizer_save_round_trip_and_errors(tokenizer_folder, tmp_path):
    ours = T5TokenizerFast.from_pretrained(tokenizer_folder)
    ours.save_pretrained(tmp_path / "saved")
    expected = ours(PROMPTS, **WAN_CALL).input_ids
    for reloaded in (
        T5TokenizerFast.from_pretrained(tmp_path / "saved", subfolder=None),
        transformers.T5TokenizerFast.from_pretrained(tmp_path / "saved"),
    ):
        assert torch.equal(reloaded(PROMPTS, **WAN_CALL).input_ids, expected)
    assert repr(ours).startswith("T5TokenizerFast(vocab_size=")
    with pytest.raises(FileNotFoundError, match="no T5 tokenizer"):
        T5TokenizerFast.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="transformers.T5TokenizerFast"):
        T5TokenizerFast("not a tokenizer")
    with pytest.raises(TypeError, match="text must be a str or a list of str"):
        ours(["fine", 3])


def test_tokenizer_and_encoder_together_match_transformers(saved, tokenizer_folder):
    # Wan's text path end to end: transformers' tokenizer and encoder vs vidiff's, on the same files.
    root, oracle = saved
    tokens = T5TokenizerFast.from_pretrained(tokenizer_folder)(PROMPTS, **WAN_CALL)
    expected_tokens = transformers.AutoTokenizer.from_pretrained(tokenizer_folder / "tokenizer")(PROMPTS, **WAN_CALL)
    ours = UMT5EncoderModel.from_pretrained(root / "plain")
    with torch.no_grad():
        got = ours(tokens.input_ids, tokens.attention_mask).last_hidden_state
        expected = oracle(expected_tokens.input_ids, expected_tokens.attention_mask).last_hidden_state
    assert max_abs_diff(got, expected) <= 1e-5
