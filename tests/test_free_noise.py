"""FreeNoise's windows: layer-level checks (windows, weights, diffusers' count trap) and exact errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidiff.diffusion.windows import window_weights
from vidiff.layers.chunking import Chunking
from vidiff.layers.free_noise import FreeNoiseWindows, windowed_block
from vidiff.layers.motion import MotionModule
from vidiff.layers.transformer import BasicTransformerBlock
from vidiff.pipelines.free_noise import FreeNoiseSettings, free_noise_latents


def _windows(length: int, stride: int, scheme: str = "pyramid") -> FreeNoiseWindows:
    return FreeNoiseWindows(length, stride, tuple(window_weights(length, scheme)))


@pytest.mark.parametrize(
    ("num_frames", "length", "stride", "expected"),
    [
        (25, 16, 4, [(0, 16), (4, 20), (8, 24), (9, 25)]),  # diffusers' docstring example
        (24, 16, 4, [(0, 16), (4, 20), (8, 24)]),  # the last regular window ends on the last frame
        (8, 8, 2, [(0, 8)]),
        (15, 8, 4, [(0, 8), (4, 12), (7, 15)]),
    ],
)
def test_windows_start_every_stride_and_a_trailing_one_ends_the_video(num_frames, length, stride, expected):
    assert _windows(length, stride).windows(num_frames) == expected


class _RecordingBlock:
    """Stands in for a transformer block: the attention half returns the window's number + 1 in
    every entry and records the frames it saw; the MLP half is the identity."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def attention_half(self, sequences: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        self.seen.append(sequences.clone())
        return torch.full_like(sequences, float(len(self.seen)))

    def mlp_half(self, sequences: torch.Tensor) -> torch.Tensor:
        return sequences


def test_each_window_sees_its_frames_and_trailing_frames_keep_diffusers_count_slip():
    block = _RecordingBlock()
    # frame f holds the value f, so the recording shows which frames each window saw
    sequences = torch.arange(15.0).view(1, 15, 1).expand(2, 15, 3).contiguous()
    out = windowed_block(block, sequences, None, _windows(8, 4))  # pyramid [1, 2, 3, 4, 4, 3, 2, 1]
    assert [s[0, :, 0].tolist() for s in block.seen] == [list(range(0, 8)), list(range(4, 12)), list(range(7, 15))]
    values = out[0, :, 0].tolist()
    assert values[:4] == [1.0] * 4  # window 1 only
    # frame 5: window 1 (weight 3, value 1) and window 2 (weight 2, value 2) → 7 / 5
    assert values[5] == pytest.approx(7 / 5)
    assert values[8:12] == [2.0] * 4  # window 2 only: the trailing window adds nothing there
    # frames 12, 13, 14 come from the trailing window alone, with weights 3, 2, 1; diffusers counts
    # the single weight w[8 - 3] = 3 for each of them instead: 3·3/3, 2·3/3, 1·3/3
    assert values[12:] == pytest.approx([3.0, 2.0, 1.0])


def test_windowed_block_matches_diffusers_free_noise_block():
    from diffusers.models.attention import FreeNoiseTransformerBlock

    torch.manual_seed(0)
    ours = BasicTransformerBlock(
        16, 2, 8, double_self_attention=True, positional_embeddings="sinusoidal", num_positional_embeddings=12
    ).eval()
    for scheme, stride in (("flat", 3), ("pyramid", 4), ("delayed_reverse_sawtooth", 2)):
        reference = FreeNoiseTransformerBlock(
            16, 2, 8, double_self_attention=True, positional_embeddings="sinusoidal",
            num_positional_embeddings=12, context_length=6, context_stride=stride, weighting_scheme=scheme,
        ).eval()
        reference.load_state_dict(ours.state_dict(), strict=True)
        sequences = torch.randn(5, 17, 16)
        with torch.no_grad():
            expected = reference(sequences)
            got = windowed_block(ours, sequences, None, _windows(6, stride, scheme))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _motion_module() -> MotionModule:
    torch.manual_seed(1)
    module = MotionModule(16, num_attention_heads=2, norm_num_groups=4, max_seq_length=8).eval()
    torch.nn.init.normal_(module.proj_out.weight, std=0.1)  # not the identity it starts as
    return module


def test_motion_module_takes_long_videos_only_with_windows_that_fit_its_position_table():
    module = _motion_module()
    images = torch.randn(2 * 12, 16, 3, 2)  # two videos of 12 frames
    with pytest.raises(ValueError, match="max_seq_length=8"):
        module(images, 12)
    module.frame_windows = _windows(8, 2)
    assert module(images, 12).shape == images.shape
    with pytest.raises(ValueError, match="num_frames=6 is less than the FreeNoise context_length=8"):
        module(torch.randn(12, 16, 3, 2), 6)
    module.frame_windows = _windows(10, 2)
    with pytest.raises(ValueError, match="context_length=10 exceeds the motion module's max_seq_length=8"):
        module(images, 12)


def test_sequence_chunking_gives_the_unchunked_motion_module_output():
    module = _motion_module()
    module.frame_windows = _windows(8, 3)
    images = torch.randn(2 * 11, 16, 3, 2)
    with torch.no_grad():
        whole = module(images, 11)
        module.sequence_chunking = Chunking(size=4, dim=0)  # 2·3·2 = 12 sequences → 3 slices
        sliced = module(images, 11)
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=1e-6)


def test_windows_settings_are_checked():
    with pytest.raises(ValueError, match="`weights` must hold one weight per frame of a window \\(4\\), got 5"):
        FreeNoiseWindows(4, 2, (1.0,) * 5)
    with pytest.raises(ValueError, match="`context_stride` must be a positive int, got 0"):
        FreeNoiseWindows(4, 0, (1.0,) * 4)
    with pytest.raises(ValueError, match="`context_stride`=5 must not exceed `context_length`=4"):
        FreeNoiseWindows(4, 5, (1.0,) * 4)


# ---------------------------------------------------------------- initial latents
def test_shuffle_context_repeats_earlier_frames_in_a_new_order_with_a_numpy_generator():
    settings = FreeNoiseSettings(4, 2, "pyramid", "shuffle_context")
    shape = (1, 2, 9, 3, 3)
    noise = free_noise_latents(settings, shape, None, np.random.default_rng(0), torch.device("cpu"), torch.float32)
    fresh = torch.from_numpy(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    torch.testing.assert_close(noise[:, :, :4], fresh[:, :, :4], atol=0, rtol=0)  # the drawn context stays
    for start in (4, 6, 8):  # each block holds the frames 4 earlier, permuted; the last one is cut to 1 frame
        block = noise[0, 0, start : start + 2].flatten(1)
        source = noise[0, 0, start - 4 : start - 2].flatten(1)
        rows = sorted(tuple(r.tolist()) for r in block)
        assert all(row in {tuple(r.tolist()) for r in source} for row in rows)
    assert not torch.equal(noise, fresh)


def test_a_list_of_generators_shuffles_each_video_with_its_own():
    settings = FreeNoiseSettings(4, 2, "pyramid", "shuffle_context")
    cpu = torch.device("cpu")

    def draw(shape, generator):
        return free_noise_latents(settings, shape, None, generator, cpu, torch.float32)

    pair = draw((2, 2, 9, 3, 3), [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    for video, seed in enumerate((1, 2)):
        alone = draw((1, 2, 9, 3, 3), torch.Generator().manual_seed(seed))
        torch.testing.assert_close(pair[video : video + 1], alone, atol=0, rtol=0)
    one = draw((1, 2, 9, 3, 3), [torch.Generator().manual_seed(1)])
    torch.testing.assert_close(one, draw((1, 2, 9, 3, 3), torch.Generator().manual_seed(1)), atol=0, rtol=0)


def test_given_latents_under_free_noise():
    settings = FreeNoiseSettings(4, 2, "flat", "shuffle_context")
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="only for noise_type='repeat_context'.*pass all num_frames=9 frames"):
        free_noise_latents(settings, (1, 2, 9, 3, 3), torch.randn(1, 2, 4, 3, 3), None, cpu, torch.float32)
    with pytest.raises(ValueError, match="must have num_frames=9 frames"):
        free_noise_latents(settings, (1, 2, 9, 3, 3), torch.randn(1, 2, 5, 3, 3), None, cpu, torch.float32)
    context = torch.randn(1, 2, 4, 3, 3)
    repeat = FreeNoiseSettings(4, 2, "flat", "repeat_context")
    tiled = free_noise_latents(repeat, (1, 2, 9, 3, 3), context, None, cpu, torch.float32)
    torch.testing.assert_close(tiled, torch.cat([context, context, context[:, :, :1]], dim=2), atol=0, rtol=0)


# ---------------------------------------------------------------- pipeline switches and errors
def test_enable_free_noise_errors_name_the_argument(vidiff_animatediff):
    pipe = vidiff_animatediff
    cases = [
        (dict(context_length=33), "`context_length`=33 exceeds the motion modules' motion_max_seq_length=32"),
        (dict(context_length=7, weighting_scheme="delayed_reverse_sawtooth"), "needs an even `context_length`, got 7"),
        (dict(weighting_scheme="ramp"), "`weighting_scheme` must be one of \\['flat', 'pyramid', 'delayed_reverse_"),
        (dict(noise_type="fresh"), "`noise_type` must be one of \\['shuffle_context', 'repeat_context', 'random'\\]"),
        (dict(context_length=8, context_stride=9), "`context_stride`=9 must not exceed `context_length`=8"),
        (dict(context_stride=0), "`context_stride` must be a positive int, got 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe.enable_free_noise(**kwargs)
        assert not pipe.free_noise_enabled


def test_free_noise_switches_on_and_off_and_checks_num_frames_first(vidiff_animatediff):
    from tests.animatediff_checkpoint import SMALL_CALL

    pipe = vidiff_animatediff
    pipe.enable_free_noise(context_length=None, context_stride=4)
    try:
        assert pipe.free_noise_enabled
        modules = [m for m in pipe.unet.modules() if isinstance(m, MotionModule)]
        assert modules and all(m.frame_windows.context_length == 32 for m in modules)  # the UNet config's limit
        with pytest.raises(ValueError, match="num_frames=4 is less than the FreeNoise context_length=32"):
            pipe("a cat", **SMALL_CALL)
        pipe.enable_free_noise_split_inference(spatial_split_size=7, temporal_split_size=3)
        assert all(m.sequence_chunking == Chunking(7, 0) for m in modules)
        with pytest.raises(ValueError, match="temporal_split_size"):
            pipe.enable_free_noise_split_inference(temporal_split_size=0)
    finally:
        pipe.disable_free_noise()
    assert not pipe.free_noise_enabled
    assert all(m.frame_windows is None and m.sequence_chunking is None for m in modules)
    assert pipe.unet.mid_block.image_chunking is None


def test_free_noise_refuses_to_run_alongside_context_windows(vidiff_animatediff, monkeypatch):
    monkeypatch.setattr(type(vidiff_animatediff), "context_windows_enabled", True, raising=False)
    with pytest.raises(ValueError, match="call disable_context_windows\\(\\) before enable_free_noise\\(\\)"):
        vidiff_animatediff.enable_free_noise()
    assert not vidiff_animatediff.free_noise_enabled


def test_free_noise_with_a_numpy_generator_is_reproducible(vidiff_animatediff):
    from tests.animatediff_checkpoint import SMALL_CALL

    pipe = vidiff_animatediff
    call = {**SMALL_CALL, "num_frames": 10, "num_inference_steps": 1, "output_type": "latent"}
    pipe.enable_free_noise(context_length=8, context_stride=2)
    try:
        first, second = (
            pipe("a cat", generator=np.random.Generator(np.random.PCG64(3)), **call).frames for _ in range(2)
        )
    finally:
        pipe.disable_free_noise()
    assert first.shape == (1, 4, 10, 4, 6)
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_split_inference_bounds_what_each_layer_sees(vidiff_animatediff):
    from tests.animatediff_checkpoint import SMALL_CALL

    pipe = vidiff_animatediff
    unet = pipe.unet
    seen: dict[str, list[int]] = {"images": [], "sequences": []}

    def record(kind):
        return lambda module, args: seen[kind].append(args[0].shape[0])

    handles = []
    for stage in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        for name in ("resnets", "attentions", "downsamplers", "upsamplers"):
            handles += [m.register_forward_pre_hook(record("images")) for m in getattr(stage, name, None) or []]
        for motion in getattr(stage, "motion_modules", None) or []:
            layers = [motion.proj_in, motion.proj_out]
            layers += [layer for block in motion.transformer_blocks for layer in (block.attn1, block.attn2, block.ff)]
            handles += [layer.register_forward_pre_hook(record("sequences")) for layer in layers]
    call = {**SMALL_CALL, "num_frames": 10, "num_inference_steps": 1, "output_type": "latent"}
    pipe.enable_free_noise(context_length=8, context_stride=2)
    try:
        pipe.enable_free_noise_split_inference(spatial_split_size=5, temporal_split_size=4)
        pipe("a cat", generator=torch.Generator().manual_seed(0), **call)
    finally:
        pipe.disable_free_noise()
        for handle in handles:
            handle.remove()
    # guidance doubles the batch: 20 images, and 2·4·6 = 48 pixel sequences at the top level
    assert seen["images"] and max(seen["images"]) == 4
    assert seen["sequences"] and max(seen["sequences"]) == 5
