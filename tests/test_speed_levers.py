"""Compute levers: forward chunking gives the unchunked result; regional compile keeps parity.

Chunked layers compute the same math on fewer rows, but matrix-multiply and attention kernels pick
their blocking (and so their float32 summation order) by row count, so a slice can round differently
from the whole: bit-identical in most shapes measured, ≤ 1.2e-7 apart otherwise. Layers are held to
1e-6; whole videos, where guidance and the steps amplify rounding, to 1e-4 of their largest latent.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import max_abs_diff, perturbed_pair
from tests.i2vgen_xl_checkpoint import SMALL_CALL as I2V_CALL
from tests.svd_checkpoint import SMALL_CALL as SVD_CALL
from tests.svd_checkpoint import random_image
from vidiff.layers.attention import Attention, FeedForward
from vidiff.layers.chunking import Chunking
from vidiff.models import compute_levers

LAYER_TOLERANCE = 1e-6
# Of the video's largest latent: the parity tests' 1e-4 (vidiff against diffusers), relative.
PIPELINE_TOLERANCE = 1e-4
COMPILE_TOLERANCE = 1e-4


# ------------------------------------------------------------------ layers
def _layers(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {
        "feed_forward": FeedForward(32, activation_fn="geglu"),
        "self_attention": Attention(32, heads=2, dim_head=16),
        "cross_attention": Attention(32, cross_attention_dim=24, heads=2, dim_head=16),
    }


@pytest.mark.parametrize("name", ["feed_forward", "self_attention", "cross_attention"])
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("size", [1, 3, 6])  # 3 does not divide 5 sequences or 77 tokens
@torch.no_grad()
def test_chunked_layer_equals_unchunked(name, dim, size):
    layer = _layers()[name]
    tokens = torch.randn(5, 77, 32, generator=torch.Generator().manual_seed(1))  # [N, L, C]
    context = torch.randn(5, 9, 24, generator=torch.Generator().manual_seed(2))  # [N, L_ctx, D]
    args = (tokens, context) if name == "cross_attention" else (tokens,)
    plain = layer(*args)
    calls = []
    projection = layer.net[2] if name == "feed_forward" else layer.to_q
    projection.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[dim]))
    layer.chunking = Chunking(size, dim)
    chunked = layer(*args)
    # It really ran in slices: ceil(rows / size) calls of at most `size` rows each.
    rows = tokens.shape[dim]
    assert len(calls) == -(-rows // size) and max(calls) == min(size, rows)
    assert max_abs_diff(chunked, plain) <= LAYER_TOLERANCE


@pytest.mark.parametrize(
    "chunking, message",
    [(dict(size=0), "chunk_size"), (dict(size=2.0), "chunk_size"), (dict(size=True), "chunk_size"), (dict(dim=2), "dim")],
)
def test_bad_chunking_names_the_argument(chunking, message):
    with pytest.raises(ValueError, match=message):
        Chunking(**chunking)


def test_image_form_attention_chunks_too():
    """The VAE-style attention on ``[N, C, H, W]`` goes through the same token path."""
    torch.manual_seed(0)
    layer = Attention(32, heads=1, dim_head=32, norm_num_groups=8, residual_connection=True, bias=True)
    images = torch.randn(2, 32, 6, 5)
    with torch.no_grad():
        plain = layer(images)
        layer.chunking = Chunking(4, 1)
        chunked = layer(images)
    assert chunked.shape == images.shape
    assert max_abs_diff(chunked, plain) <= LAYER_TOLERANCE


@pytest.mark.parametrize("context_length", [1, 9])  # 1: the single-key shortcut (SVD's image embedding)
@pytest.mark.parametrize("chunking", [None, Chunking(2, 0), Chunking(7, 1)])
@torch.no_grad()
def test_context_per_video_equals_context_repeated_per_frame(context_length, chunking):
    """Cross-attention given one context per video (its keys/values projected once) equals the same
    context repeated for each of the video's frames, as diffusers passes it."""
    layer = _layers()["cross_attention"]
    layer.chunking = chunking
    frames = 3
    tokens = torch.randn(2 * frames, 20, 32, generator=torch.Generator().manual_seed(1))  # [(B·F), L, C]
    context = torch.randn(2, context_length, 24, generator=torch.Generator().manual_seed(2))  # [B, L_ctx, D]
    shared = layer(tokens, context)
    repeated = layer(tokens, context.repeat_interleave(frames, dim=0))
    assert max_abs_diff(shared, repeated) <= LAYER_TOLERANCE
    with pytest.raises(ValueError, match="divide"):
        layer(tokens, torch.randn(4, context_length, 24))


# ------------------------------------------------------------------ pipelines
def _svd(folders):
    from vidiff import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(folders["svd"])
    return pipe, lambda seed: pipe(random_image(), **{**SVD_CALL, "output_type": "latent"},
                                   generator=torch.Generator().manual_seed(seed)).frames


def _i2vgen_xl(folders):
    from vidiff import I2VGenXLPipeline

    pipe = I2VGenXLPipeline.from_pretrained(folders["i2vgen_xl"])
    call = {**I2V_CALL, "output_type": "latent", "prompt": "a red kite", "negative_prompt": "blurry"}
    return pipe, lambda seed: pipe(image=random_image(), **call, generator=torch.Generator().manual_seed(seed)).frames


def _animatediff(folders):
    from tests.animatediff_checkpoint import GUIDE_DDIM
    from tests.animatediff_checkpoint import SMALL_CALL as AD_CALL
    from vidiff import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    root = folders["animatediff"]
    pipe = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=MotionAdapter.from_pretrained(root / "motion_adapter"))
    pipe.scheduler = DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
    call = {**AD_CALL, "output_type": "latent", "prompt": "a rocket", "negative_prompt": "blurry"}
    return pipe, lambda seed: pipe(**call, generator=torch.Generator().manual_seed(seed)).frames


PIPELINES = {"svd": _svd, "i2vgen_xl": _i2vgen_xl, "animatediff": _animatediff}


@pytest.fixture(scope="module")
def folders(tiny_svd, tiny_i2vgen_xl, tiny_animatediff):
    return {"svd": tiny_svd[0], "i2vgen_xl": tiny_i2vgen_xl[0], "animatediff": tiny_animatediff[0]}


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_forward_chunking_keeps_the_video(folders, family):
    pipe, run = PIPELINES[family](folders)
    pipe.set_progress_bar_config(disable=True)
    plain = run(3)
    pipe.enable_forward_chunking()  # chunk_size=None: one sequence per slice, along the batch
    layers = [m for m in pipe.unet.modules() if isinstance(m, (Attention, FeedForward))]
    assert layers and all(m.chunking == Chunking(1, 0) for m in layers)
    # Slices may differ from the whole by float32 rounding per layer (≤ 1e-6, above); guidance and
    # the steps amplify that (SVD, dim 0: 6e-5 on latents up to 3.2, measured).
    tolerance = PIPELINE_TOLERANCE * plain.abs().max().item()
    assert max_abs_diff(run(3), plain) <= tolerance
    pipe.enable_forward_chunking(chunk_size=5, dim=1)
    assert max_abs_diff(run(3), plain) <= tolerance
    pipe.disable_forward_chunking()
    assert all(m.chunking is None for m in layers)
    assert torch.equal(run(3), plain)


def test_enable_forward_chunking_rejects_bad_arguments(vidiff_svd):
    with pytest.raises(ValueError, match="chunk_size"):
        vidiff_svd.enable_forward_chunking(chunk_size=0)
    with pytest.raises(ValueError, match="dim"):
        vidiff_svd.enable_forward_chunking(dim=-1)
    assert all(getattr(m, "chunking", None) is None for m in vidiff_svd.unet.modules())


# ------------------------------------------------------------------ regional compile
def _tiny_svd_unet():
    from diffusers import UNetSpatioTemporalConditionModel as OracleUNet

    from tests.test_models_svd import TINY, random_inputs
    from vidiff.models.unet_svd import UNetSpatioTemporalConditionModel

    _, ours = perturbed_pair(OracleUNet, UNetSpatioTemporalConditionModel, TINY)
    return ours, random_inputs(2, 3, 8, 10)


@torch.no_grad()
def test_regional_compile_keeps_parity_and_schema():
    """Every repeated block traces as one graph (fullgraph) and the compiled UNet equals the eager one.

    ``aot_eager`` runs dynamo's trace and AOT autograd's decompositions without generating C++, so the
    test stays fast on CPU; inductor's code generation was measured separately (see the report).
    """
    torch._dynamo.reset()
    unet, inputs = _tiny_svd_unet()
    eager = unet(timestep=0.7, **inputs)
    keys = list(unet.state_dict())
    count = compute_levers.compile_repeated_blocks(unet, backend="aot_eager", fullgraph=True)
    blocks = list(compute_levers.repeated_blocks(unet))
    assert count == len(blocks) > 0
    assert all(block._compiled_call_impl is not None for block in blocks)
    compiled = unet(timestep=0.7, **inputs)
    assert max_abs_diff(compiled, eager) <= COMPILE_TOLERANCE
    assert list(unet.state_dict()) == keys
    # chunking is read inside the compiled blocks: switching it on re-traces and still agrees
    compute_levers.set_forward_chunking(unet, 2, 0)
    assert max_abs_diff(unet(timestep=0.7, **inputs), eager) <= COMPILE_TOLERANCE
    torch._dynamo.reset()


def test_pipeline_compile_rejects_unknown_options(vidiff_svd):
    with pytest.raises(TypeError, match="unknown option"):
        vidiff_svd.compile(mdoe="max-autotune")


def test_repeated_blocks_are_the_outermost(vidiff_animatediff, vidiff_svd, vidiff_i2vgen_xl):
    """An outer block (SVD's spatio-temporal resnet) is compiled whole, its inner resnets not again."""
    for pipe in (vidiff_animatediff, vidiff_svd, vidiff_i2vgen_xl):
        blocks = list(compute_levers.repeated_blocks(pipe.unet))
        assert blocks
        inner = {id(m) for block in blocks for m in block.modules() if m is not block}
        assert not inner & {id(block) for block in blocks}
