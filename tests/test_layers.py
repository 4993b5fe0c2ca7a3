"""vidiff.layers against diffusers' building blocks, in the configurations later models will use."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock as OracleBlock
from diffusers.models.attention import FeedForward as OracleFeedForward
from diffusers.models.attention import TemporalBasicTransformerBlock as OracleTemporalBlock
from diffusers.models.attention_processor import Attention as OracleAttention
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D as OracleResBlock

from tests.helpers import max_abs_diff, perturb_
from vidiff.layers import frames
from vidiff.layers.attention import Attention, FeedForward
from vidiff.layers.embeddings import sinusoidal_embedding
from vidiff.layers.resnet import ResBlock2D
from vidiff.layers.temporal import TemporalBasicTransformerBlock
from vidiff.layers.transformer import BasicTransformerBlock

TOLERANCE = 1e-5


def copy_of(oracle: torch.nn.Module, ours: torch.nn.Module) -> torch.nn.Module:
    perturb_(oracle.eval())
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return ours.eval()


def test_frame_reshapes_are_inverse_and_keep_each_video_together():
    video = torch.randn(2, 3, 4, 5, 6)  # [B, C, F, H, W]
    images = frames.video_to_images(video)
    assert torch.equal(images[1 * 4 + 2], video[1, :, 2])  # video 1, frame 2
    assert torch.equal(frames.images_to_video(images, 4), video)
    tokens = frames.images_to_tokens(images)  # [(B·F), H·W, C]
    assert torch.equal(tokens[5, 2 * 6 + 3], images[5, :, 2, 3])
    assert torch.equal(frames.tokens_to_images(tokens, 5, 6), images)
    sequences = frames.tokens_to_frame_sequences(tokens, 4)  # [(B·S), F, C]
    assert torch.equal(sequences[1 * 30 + 7, 2], tokens[1 * 4 + 2, 7])
    assert torch.equal(frames.frame_sequences_to_tokens(sequences, 30), tokens)
    per_video = frames.split_frames(images, 4)  # [B, F, C, H, W]
    assert torch.equal(per_video[1, 2], video[1, :, 2])
    assert torch.equal(frames.merge_frames(per_video), images)
    with pytest.raises(ValueError, match="num_frames"):
        frames.split_frames(images, 3)


@pytest.mark.parametrize(
    ("dim", "flip", "shift"), [(320, True, 0.0), (33, False, 1.0), (256, True, 1.0)]
)
def test_sinusoidal_embedding_matches_diffusers(dim, flip, shift):
    positions = torch.tensor([0.0, 1.0, 999.0, -0.37, 127.0])
    got = sinusoidal_embedding(positions, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    expected = get_timestep_embedding(positions, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert max_abs_diff(got, expected) == 0.0


@pytest.mark.parametrize("context_len", [None, 1, 7])
def test_attention_matches_diffusers(context_len):
    cross = None if context_len is None else 24
    oracle = OracleAttention(32, cross_attention_dim=cross, heads=4, dim_head=8)
    ours = copy_of(oracle, Attention(32, cross_attention_dim=cross, heads=4, dim_head=8))
    tokens = torch.randn(3, 10, 32)
    context = None if context_len is None else torch.randn(3, context_len, 24)
    with torch.no_grad():
        diff = max_abs_diff(ours(tokens, context), oracle(tokens, encoder_hidden_states=context))
    assert diff <= TOLERANCE, diff


def test_vae_style_attention_on_images_matches_diffusers():
    kwargs = dict(heads=1, dim_head=32, bias=True, norm_num_groups=8, eps=1e-6, residual_connection=True)
    oracle = OracleAttention(32, **kwargs)
    ours = copy_of(oracle, Attention(32, **kwargs))
    images = torch.randn(2, 32, 5, 7)
    with torch.no_grad():
        got = ours(images)
        diff = max_abs_diff(got, oracle(images))
    assert got.is_contiguous()
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(cross_attention_dim=24),
        dict(cross_attention_dim=None, double_self_attention=True, activation_fn="gelu"),
        dict(cross_attention_dim=None, attention_bias=True, activation_fn="gelu-approximate", norm_eps=1e-6),
    ],
)
def test_transformer_block_matches_diffusers(kwargs):
    oracle = OracleBlock(32, 4, 8, **kwargs)
    ours = copy_of(oracle, BasicTransformerBlock(32, 4, 8, **kwargs))
    tokens = torch.randn(2, 9, 32)
    context = torch.randn(2, 5, 24) if kwargs.get("cross_attention_dim") else None
    with torch.no_grad():
        diff = max_abs_diff(ours(tokens, context), oracle(tokens, encoder_hidden_states=context))
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("context_len", [1, 3])
def test_temporal_transformer_block_matches_diffusers(context_len):
    # (dim ≠ inner is not testable: diffusers' own block fails on it.)
    dim = inner = 32
    oracle = OracleTemporalBlock(dim, inner, 4, inner // 4, cross_attention_dim=24)
    ours = copy_of(oracle, TemporalBasicTransformerBlock(dim, inner, 4, inner // 4, cross_attention_dim=24))
    tokens = torch.randn(2 * 3, 10, dim)  # [(B·F), S, C]
    context = torch.randn(2, context_len, 24)  # ours: one per video [B, L, D]
    per_pixel_context = context.repeat_interleave(10, dim=0)  # diffusers': [(B·S), L, D]
    with torch.no_grad():
        got = ours(tokens, 3, context)
        diff = max_abs_diff(got, oracle(tokens, num_frames=3, encoder_hidden_states=per_pixel_context))
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("temb", [None, 12])
def test_resblock_matches_diffusers(temb):
    kwargs = dict(in_channels=16, out_channels=24, temb_channels=temb, groups=8, eps=1e-6)
    oracle = OracleResBlock(**kwargs, output_scale_factor=2.0)
    ours = copy_of(oracle, ResBlock2D(**kwargs, output_scale_factor=2.0))
    images = torch.randn(2, 16, 6, 5)
    emb = torch.randn(2, 12) if temb else None
    with torch.no_grad():
        diff = max_abs_diff(ours(images, emb), oracle(images, emb))
    assert diff <= TOLERANCE, diff


def test_feed_forward_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation_fn"):
        FeedForward(8, activation_fn="relu")
    oracle = OracleFeedForward(8, dim_out=12, activation_fn="geglu")
    ours = copy_of(oracle, FeedForward(8, dim_out=12, activation_fn="geglu"))
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert max_abs_diff(ours(x), oracle(x)) <= TOLERANCE
