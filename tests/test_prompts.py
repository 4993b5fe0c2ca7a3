"""Prompt encoding and the tokenizer component against diffusers' ``encode_prompt`` (the oracle).

diffusers' ``AnimateDiffPipeline.encode_prompt`` (Stable Diffusion's, copied) and
``I2VGenXLPipeline.encode_prompt`` are called as plain functions on an object that carries only a
transformers tokenizer and text encoder; vidiff's side loads the same files with its own classes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import diffusers
import pytest
import torch
import transformers

from tests.helpers import max_abs_diff, perturb_
from tests.tokenizer_fixture import tiny_clip_vocab, write_tiny_clip_tokenizer
from vidiff.models.clip_text import CLIPTextModel
from vidiff.pipelines import prompts
from vidiff.tokenizer import CLIPTokenizer

LAYERS = 3
SHORT = "a cat and the dog are flying"
# Over 77 tokens: most characters are single byte-level tokens; the tail is what truncation drops.
LONG = "a rocket in space with a bright light on the sun " * 5 + "zebra quilt marmalade"


def _oracle_text_encoder(folder: Path, seed: int, **extra) -> transformers.CLIPTextModel:
    config = transformers.CLIPTextConfig(
        vocab_size=len(tiny_clip_vocab()),
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_hidden_layers=LAYERS,
        max_position_embeddings=77,
        eos_token_id=2,  # Stable Diffusion 1.5's legacy value
        **extra,
    )
    # Eager attention in the oracle, so the comparison does not hinge on both sides calling SDPA.
    model = perturb_(transformers.CLIPTextModel._from_config(config, attn_implementation="eager").eval(), seed=seed)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def text_stack(tmp_path_factory):
    """(vidiff tokenizer, vidiff text encoder, diffusers-style pipeline object) on the same files."""
    root = tmp_path_factory.mktemp("tiny-text")
    write_tiny_clip_tokenizer(root / "tokenizer")
    oracle = SimpleNamespace(
        tokenizer=transformers.CLIPTokenizer.from_pretrained(root / "tokenizer"),
        text_encoder=_oracle_text_encoder(root / "text_encoder", seed=0),
        do_classifier_free_guidance=True,  # read by I2VGen-XL's encode_prompt
    )
    ours = CLIPTextModel.from_pretrained(root, subfolder="text_encoder")
    return CLIPTokenizer.from_pretrained(root), ours, oracle


def _animatediff_oracle(oracle, prompt, negative_prompt=None, clip_skip=None):
    with torch.no_grad():
        return diffusers.AnimateDiffPipeline.encode_prompt(
            oracle, prompt, "cpu", 1, True, negative_prompt=negative_prompt, clip_skip=clip_skip
        )


def _ours(tokenizer, encoder, prompt, negative_prompt=None, clip_skip=None, negative_clip_skip=None):
    prompt_list = prompts.as_prompt_list(prompt)
    negatives = prompts.negative_prompt_list(negative_prompt, len(prompt_list), prompt)
    with torch.no_grad():
        embeds = prompts.encode_prompts(tokenizer, encoder, prompt_list, clip_skip=clip_skip)
        negative_embeds = prompts.encode_prompts(
            tokenizer, encoder, negatives, clip_skip=negative_clip_skip, max_length=embeds.shape[1]
        )
    return embeds, negative_embeds


def test_short_prompt_matches_diffusers(text_stack):
    tokenizer, encoder, oracle = text_stack
    expected, expected_negative = _animatediff_oracle(oracle, SHORT)
    got, got_negative = _ours(tokenizer, encoder, SHORT)
    assert got.shape == (1, 77, 32) and got.dtype == torch.float32
    assert max_abs_diff(got, expected) <= 1e-4
    assert max_abs_diff(got_negative, expected_negative) <= 1e-4


@pytest.mark.parametrize("clip_skip", [None, 1, 2])
def test_prompt_lists_negative_prompts_and_clip_skip_match_diffusers(text_stack, clip_skip):
    tokenizer, encoder, oracle = text_stack
    batch, negatives = ["a rocket in space", SHORT, "light"], ["blurry", "", "the sun"]
    expected, expected_negative = _animatediff_oracle(oracle, batch, negatives, clip_skip)
    # Stable Diffusion / AnimateDiff encode the negative prompts without clip_skip.
    got, got_negative = _ours(tokenizer, encoder, batch, negatives, clip_skip)
    assert got.shape == (3, 77, 32)
    assert max_abs_diff(got, expected) <= 1e-4
    assert max_abs_diff(got_negative, expected_negative) <= 1e-4


def test_clip_skip_applies_to_negatives_as_in_i2vgen_xl(text_stack):
    tokenizer, encoder, oracle = text_stack
    with torch.no_grad():
        expected, expected_negative = diffusers.I2VGenXLPipeline.encode_prompt(
            oracle, SHORT, "cpu", 1, negative_prompt="blurry", clip_skip=1
        )
    got, got_negative = _ours(tokenizer, encoder, SHORT, "blurry", clip_skip=1, negative_clip_skip=1)
    assert max_abs_diff(got, expected) <= 1e-4
    assert max_abs_diff(got_negative, expected_negative) <= 1e-4
    # Guard: the clip-skipped negative really differs from the full-depth one.
    assert max_abs_diff(got_negative, _ours(tokenizer, encoder, SHORT, "blurry")[1]) > 1e-3


def test_long_prompt_is_truncated_like_diffusers_and_the_dropped_text_is_logged(text_stack, caplog):
    tokenizer, encoder, oracle = text_stack
    assert len(tokenizer(LONG).input_ids) > 77 + 5
    diffusers_logger = logging.getLogger("diffusers")  # diffusers' loggers do not propagate to the root
    diffusers_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            expected, _ = _animatediff_oracle(oracle, LONG)
    finally:
        diffusers_logger.removeHandler(caplog.handler)
    (diffusers_message,) = [r.getMessage() for r in caplog.records if r.name.startswith("diffusers")]
    removed_by_diffusers = diffusers_message.split("tokens: ", 1)[1]  # "['...']"
    assert "zebra quilt marmalade" in removed_by_diffusers
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        got, _ = _ours(tokenizer, encoder, LONG)
    (ours_message,) = [r.getMessage() for r in caplog.records if r.name == "vidiff.pipelines.prompts"]
    assert removed_by_diffusers in ours_message and "77" in ours_message
    assert max_abs_diff(got, expected) <= 1e-4


def test_mixed_batch_names_only_the_truncated_prompt(text_stack, caplog):
    tokenizer, encoder, oracle = text_stack
    expected, _ = _animatediff_oracle(oracle, [SHORT, LONG])
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        got, _ = _ours(tokenizer, encoder, [SHORT, LONG])
    assert max_abs_diff(got, expected) <= 1e-4
    (message,) = [r.getMessage() for r in caplog.records if r.name == "vidiff.pipelines.prompts"]
    assert "zebra quilt marmalade" in message and "<|endoftext|>" not in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        _ours(tokenizer, encoder, [SHORT])
    assert not [r for r in caplog.records if r.name == "vidiff.pipelines.prompts"]


def test_use_attention_mask_from_config_is_honoured(tmp_path, text_stack):
    tokenizer, _, oracle = text_stack
    masked_oracle = SimpleNamespace(
        tokenizer=oracle.tokenizer,
        text_encoder=_oracle_text_encoder(tmp_path / "text_encoder", seed=1, use_attention_mask=True),
    )
    ours = CLIPTextModel.from_pretrained(tmp_path, subfolder="text_encoder")
    assert ours.config.extra["use_attention_mask"] is True
    batch = [SHORT, "light"]
    expected, expected_negative = _animatediff_oracle(masked_oracle, batch)
    got, got_negative = _ours(tokenizer, ours, batch)
    assert max_abs_diff(got, expected) <= 1e-4
    assert max_abs_diff(got_negative, expected_negative) <= 1e-4
    # Guard: without the mask the padded positions come out differently.
    unmasked = CLIPTextModel.from_config(ours.config.to_diffusers() | {"use_attention_mask": False}).eval()
    unmasked.load_state_dict(ours.state_dict())
    assert max_abs_diff(_ours(tokenizer, unmasked, batch)[0], got) > 1e-3


def test_output_follows_the_text_encoder_dtype_and_device(text_stack):
    tokenizer, encoder, _ = text_stack
    wide = CLIPTextModel.from_config(encoder.config).to(torch.float64).eval()
    wide.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        got = prompts.encode_prompts(tokenizer, wide, [SHORT], device="cpu", max_length=20)
    assert got.dtype == torch.float64 and got.device.type == "cpu" and got.shape == (1, 20, 32)


def test_negative_prompt_rules_match_diffusers(text_stack):
    _, _, oracle = text_stack
    assert prompts.negative_prompt_list(None, 2) == ["", ""]
    assert prompts.negative_prompt_list("blurry", 3) == ["blurry"] * 3  # prompt_embeds given, no prompt
    assert prompts.negative_prompt_list(["x", "y"], 2, ["a", "b"]) == ["x", "y"]
    with pytest.raises(ValueError, match=r"`negative_prompt` has 1 entries but there are 2 prompts"):
        prompts.negative_prompt_list(["x"], 2, ["a", "b"])
    with pytest.raises(ValueError):
        _animatediff_oracle(oracle, ["a", "b"], ["x"])
    with pytest.raises(TypeError, match="same type as `prompt`"):
        prompts.negative_prompt_list("x", 2, ["a", "b"])
    with pytest.raises(TypeError):
        _animatediff_oracle(oracle, ["a", "b"], "x")
    with pytest.raises(TypeError, match="negative_prompt"):
        prompts.negative_prompt_list(3, 1)


def test_prompt_argument_checks():
    embeds = torch.zeros(2, 77, 32)
    prompts.check_prompt_arguments("a cat", None)
    prompts.check_prompt_arguments(None, embeds, None, torch.ones(2, 77, 32))
    with pytest.raises(ValueError, match="exactly one of `prompt` and `prompt_embeds`; got both"):
        prompts.check_prompt_arguments("a cat", embeds)
    with pytest.raises(ValueError, match="got neither"):
        prompts.check_prompt_arguments(None, None)
    with pytest.raises(TypeError, match="`prompt` must be a str or a list of str"):
        prompts.check_prompt_arguments(["a", 3], None)
    with pytest.raises(ValueError, match="`prompt` is an empty list"):
        prompts.check_prompt_arguments([], None)
    with pytest.raises(ValueError, match=r"`prompt_embeds` must have shape \[N, L, D\]"):
        prompts.check_prompt_arguments(None, torch.zeros(77, 32))
    with pytest.raises(ValueError, match="at most one of `negative_prompt` and `negative_prompt_embeds`"):
        prompts.check_prompt_arguments("a", None, "b", embeds)
    with pytest.raises(ValueError, match=r"\[2, 77, 32\] and `negative_prompt_embeds` \[1, 77, 32\]"):
        prompts.check_prompt_arguments(None, embeds, None, torch.zeros(1, 77, 32))


def test_encode_prompts_rejects_bad_arguments(text_stack):
    tokenizer, encoder, _ = text_stack
    with pytest.raises(ValueError, match="max_length"):
        prompts.encode_prompts(tokenizer, encoder, [SHORT], max_length=1)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        prompts.encode_prompts(tokenizer, encoder, [SHORT], max_length=78)
    with pytest.raises(ValueError, match="clip_skip"):
        prompts.encode_prompts(tokenizer, encoder, [SHORT], clip_skip=LAYERS + 1)


# ---------------------------------------------------------------------------------- the tokenizer component
def test_tiny_tokenizer_fixture_has_clip_layout(tmp_path):
    write_tiny_clip_tokenizer(tmp_path)
    vocab = tiny_clip_vocab()
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    assert len(vocab) <= 600 and len(hf) == len(vocab) and hf.model_max_length == 77
    assert (tmp_path / "merges.txt").read_text().startswith("#version")
    assert hf.pad_token == hf.eos_token == "<|endoftext|>" and hf.bos_token == "<|startoftext|>"
    assert len(hf("marmalade").input_ids) > 3  # a word the merges do not cover splits into pieces
    start, end = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert hf("the dog").input_ids == [start, vocab["the</w>"], vocab["dog</w>"], end]


def test_tokenizer_component_matches_transformers(text_stack):
    tokenizer, _, oracle = text_stack
    assert tokenizer.model_max_length == 77 and len(tokenizer) == len(oracle.tokenizer)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        oracle.tokenizer.pad_token_id,
        oracle.tokenizer.bos_token_id,
        oracle.tokenizer.eos_token_id,
    )
    options = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ours, theirs = tokenizer([SHORT, LONG], **options), oracle.tokenizer([SHORT, LONG], **options)
    assert torch.equal(ours.input_ids, theirs.input_ids)
    assert torch.equal(ours.attention_mask, theirs.attention_mask)
    assert tokenizer.batch_decode(ours.input_ids) == oracle.tokenizer.batch_decode(theirs.input_ids)
    assert tokenizer.decode(ours.input_ids[0], skip_special_tokens=True) == SHORT
    with pytest.raises(TypeError, match="text must be a str or a list of str"):
        tokenizer([SHORT, 3])
    with pytest.raises(TypeError, match="transformers tokenizer"):
        CLIPTokenizer("not a tokenizer")


def test_tokenizer_save_and_load_round_trip(tmp_path, text_stack):
    tokenizer, _, _ = text_stack
    tokenizer.save_pretrained(tmp_path / "saved")
    saved = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= set(saved)
    expected = tokenizer([SHORT, LONG], padding="max_length", max_length=77, truncation=True).input_ids
    by_transformers = transformers.CLIPTokenizer.from_pretrained(tmp_path / "saved")
    assert by_transformers([SHORT, LONG], padding="max_length", max_length=77, truncation=True).input_ids == expected
    reloaded = CLIPTokenizer.from_pretrained(tmp_path, subfolder="saved")
    assert reloaded([SHORT, LONG], padding="max_length", max_length=77, truncation=True).input_ids == expected
    assert reloaded.model_max_length == 77

    # tokenizer.json alone is enough when the vocab/merges pair is missing.
    shutil.copytree(tmp_path / "saved", tmp_path / "json_only")
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "json_only" / name).unlink()
    json_only = CLIPTokenizer.from_pretrained(tmp_path / "json_only", subfolder=None)
    assert json_only([SHORT, LONG], padding="max_length", max_length=77, truncation=True).input_ids == expected


def test_tokenizer_prefers_vocab_and_merges_and_reports_missing_files(tmp_path):
    write_tiny_clip_tokenizer(tmp_path / "tokenizer")
    # A broken tokenizer.json beside the original files: only vocab.json + merges.txt may be read.
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{ not json")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert tokenizer("the dog").input_ids[1:3] == [tiny_clip_vocab()["the</w>"], tiny_clip_vocab()["dog</w>"]]
    (tmp_path / "empty" / "tokenizer").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"vocab\.json \+ merges\.txt or tokenizer\.json"):
        CLIPTokenizer.from_pretrained(tmp_path / "empty")


def test_the_truncation_warning_of_a_huge_prompt_stays_short(text_stack, caplog):
    tokenizer, encoder, _ = text_stack
    essay = " ".join(["zebra quilt marmalade"] * 2000)  # ~42,000 characters
    with caplog.at_level(logging.WARNING, logger="vidiff"):
        _ours(tokenizer, encoder, essay)
    (message,) = [r.getMessage() for r in caplog.records if r.name == "vidiff.pipelines.prompts"]
    assert "zebra quilt marmalade" in message and "more characters" in message and len(message) < 500
