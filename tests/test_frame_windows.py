"""The conditioning contract and the network-wrapper seam: windows of frames.

Every pipeline hands the loop per-video conditioning and declares its frame-indexed inputs
(``frame_axes``); :class:`~vidiff.diffusion.windows.FrameWindows` cuts the latents and those inputs
into windows of frames. Checked here: the wrapper itself on a toy network (placement, overlap
averaging, slicing along a declared axis, errors), and on each pipeline's tiny checkpoint that
(a) windows covering every frame once give the unwrapped frames when the network's temporal layers
are made inert (and different frames when they are not), (b) one window over all frames gives the
unwrapped frames bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import max_abs_diff
from tests.svd_checkpoint import random_image
from vidiff.diffusion.windows import FrameWindows, sliding_windows
from vidiff.layers.motion import MotionModule
from vidiff.layers.temporal import AlphaBlender
from vidiff.models.unet_i2vgen_xl_blocks import TemporalConvStack

NUM_FRAMES = 4
# Cover frames 0..3 exactly once, with windows of different lengths (one of a single frame).
TILES = [(0, 1), (1, 3), (3, 4)]
IMAGE = random_image(80, 56)
PROMPT = "a red fox running through snow"
CALL = dict(height=32, width=48, num_frames=NUM_FRAMES, num_inference_steps=2)


# ---------------------------------------------------------------------- the wrapper on a toy network
def _toy_network(x, timestep, inputs):
    """Output depends on every frame of its window (a cumulative sum over frames) and on the inputs."""
    per_frame = inputs["per_frame"]  # [B, F, C]: frame axis 1
    shift = per_frame.transpose(1, 2)[..., None, None]  # [B, C, F, 1, 1]
    return x.cumsum(dim=2) * timestep + shift + inputs["whole"].view(-1, 1, 1, 1, 1)


def _toy_inputs(batch=2, channels=3, frames=5):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, frames, 2, 3, generator=generator)
    inputs = {"per_frame": torch.randn(batch, frames, channels, generator=generator), "whole": torch.randn(batch, generator=generator)}
    return x, torch.tensor(0.7), inputs


def test_single_window_is_the_network_bit_for_bit():
    x, t, inputs = _toy_inputs()
    wrapped = FrameWindows([(0, 5)])(_toy_network, {"per_frame": 1})
    assert torch.equal(wrapped(x, t, inputs), _toy_network(x, t, inputs))


def test_overlapping_windows_are_averaged():
    x, t, inputs = _toy_inputs()
    wrapped = FrameWindows([(0, 3), (2, 5)])(_toy_network, {"per_frame": 1})
    first = _toy_network(x[:, :, 0:3], t, {**inputs, "per_frame": inputs["per_frame"][:, 0:3]})
    second = _toy_network(x[:, :, 2:5], t, {**inputs, "per_frame": inputs["per_frame"][:, 2:5]})
    expected = torch.cat([first[:, :, :2], (first[:, :, 2:] + second[:, :, :1]) / 2, second[:, :, 1:]], dim=2)
    out = wrapped(x, t, inputs)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # the cumulative sum restarts per window, so windowing must change frames 2..4
    assert max_abs_diff(out, _toy_network(x, t, inputs)) > 0.1


def test_frame_inputs_are_sliced_along_their_axis_and_others_passed_whole():
    x, t, inputs = _toy_inputs(frames=6)
    inputs["per_frame_late_axis"] = torch.arange(6.0).view(1, 1, 6).expand(2, 3, 6)  # frame axis 2
    seen = []

    def network(x_window, timestep, window_inputs):
        seen.append({name: value.clone() for name, value in window_inputs.items()})
        return x_window

    FrameWindows([(0, 4), (4, 6)])(network, {"per_frame": 1, "per_frame_late_axis": 2})(x, t, inputs)
    for (start, stop), window_inputs in zip([(0, 4), (4, 6)], seen):
        assert torch.equal(window_inputs["per_frame"], inputs["per_frame"][:, start:stop])
        assert torch.equal(window_inputs["per_frame_late_axis"][0, 0], torch.arange(float(start), float(stop)))
        assert torch.equal(window_inputs["whole"], inputs["whole"])


def test_a_doubled_guidance_batch_passes_through():
    x, t, inputs = _toy_inputs(batch=4)
    wrapped = FrameWindows([(0, 2), (2, 5)])(_toy_network, {"per_frame": 1})
    assert wrapped(x, t, inputs).shape == x.shape


@pytest.mark.parametrize(
    "windows, message",
    [([(0, 2), (3, 5)], r"frames \[2\] of 5 are in no window"), ([(0, 3), (2, 6)], "run past the video's 5 frames")],
)
def test_windows_that_leave_frames_out_or_run_past_the_video_are_refused(windows, message):
    x, t, inputs = _toy_inputs()
    wrapped = FrameWindows(windows)(_toy_network, {"per_frame": 1})
    with pytest.raises(ValueError, match=message):
        wrapped(x, t, inputs)


@pytest.mark.parametrize("windows", [[], [(2, 2)], [(3, 1)], [(-1, 2)], [(0, 1.5)], [(0, 1, 2)], [5]])
def test_malformed_windows_are_refused(windows):
    with pytest.raises(ValueError, match="FrameWindows"):
        FrameWindows(windows)


def test_a_frame_input_without_the_latents_frames_is_refused():
    x, t, inputs = _toy_inputs()
    inputs["per_frame"] = inputs["per_frame"][:, :4]
    with pytest.raises(ValueError, match="'per_frame'.*5 frames on its declared frame axis 1"):
        FrameWindows([(0, 5)])(_toy_network, {"per_frame": 1})(x, t, inputs)


def test_sliding_windows():
    assert sliding_windows(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert sliding_windows(8, 4, 4) == [(0, 4), (4, 8)]
    assert sliding_windows(9, 4, 4) == [(0, 4), (4, 8), (5, 9)]
    assert sliding_windows(3, 16, 8) == [(0, 3)]
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(10, 4, 5)


# ---------------------------------------------------------------------- the pipelines
def _svd_call():
    return dict(image=IMAGE, **CALL)


def _text_call():
    return dict(prompt=PROMPT, image=IMAGE, **CALL)


PIPELINES = {
    # (fixture, call arguments): every call runs classifier-free guidance (SVD: max_guidance_scale 3)
    "svd": ("vidiff_svd", _svd_call),
    "i2vgen_xl": ("vidiff_i2vgen_xl", _text_call),
    "animatediff": ("vidiff_animatediff", lambda: {k: v for k, v in _text_call().items() if k != "image"}),
}


@pytest.fixture(params=sorted(PIPELINES))
def pipeline_and_call(request):
    """A private copy of a tiny pipeline (tests change its weights and wrapper) and its call."""
    fixture, call = PIPELINES[request.param]
    return copy.deepcopy(request.getfixturevalue(fixture)), call()


def _run(pipe, call, wrapper=None, output_type="latent"):
    pipe.network_wrapper = wrapper
    return pipe(**call, output_type=output_type, generator=torch.Generator().manual_seed(3)).frames


@torch.no_grad()
def _make_temporal_layers_inert(unet: torch.nn.Module) -> int:
    """Turn every layer that mixes frames into an exact identity on its input; returns how many.

    Motion modules and temporal transformers add ``proj_out(...)`` to their input: zero it. I2VGen-XL's
    temporal conv stacks add their last conv's output: zero it. SVD blends spatial and temporal
    branches as ``lerp(spatial, temporal, 1 − sigmoid(mix_factor))``: sigmoid(100) is 1.0 in float32,
    so the temporal branch gets weight exactly 0.
    """
    count = 0
    for module in unet.modules():
        if isinstance(module, MotionModule):
            module.proj_out.weight.zero_()
            module.proj_out.bias.zero_()
        elif isinstance(module, TemporalConvStack):
            for parameter in module.conv4[-1].parameters():
                parameter.zero_()
        elif isinstance(module, AlphaBlender):
            module.mix_factor.fill_(100.0)
        else:
            continue
        count += 1
    return count


def test_windows_covering_each_frame_once_change_nothing_without_temporal_layers(pipeline_and_call):
    # float64: a window is a smaller batch, so float32 kernels may round differently (up to ~1e-5 in
    # the frames after guidance); in float64 that noise is ~1e-15 and the check is about the math.
    pipe, call = pipeline_and_call
    pipe.to(torch.float64)
    with_temporal = _run(pipe, call), _run(pipe, call, FrameWindows(TILES))
    # Not vacuous: with its temporal layers the network does see across windows' edges.
    assert max_abs_diff(*with_temporal) > 1e-3

    assert _make_temporal_layers_inert(pipe.unet) > 0
    unwrapped, windowed = _run(pipe, call), _run(pipe, call, FrameWindows(TILES))
    torch.testing.assert_close(windowed, unwrapped, rtol=0, atol=1e-5)
    assert max_abs_diff(unwrapped, with_temporal[0]) > 1e-3  # the inert network is another network


def test_one_window_over_all_frames_is_bit_identical(pipeline_and_call):
    pipe, call = pipeline_and_call
    unwrapped = _run(pipe, call, output_type="pt")
    windowed = _run(pipe, call, FrameWindows([(0, NUM_FRAMES)]), output_type="pt")
    assert torch.equal(windowed, unwrapped)


def test_frame_axes_name_inputs_the_pipelines_hand_the_loop(pipeline_and_call):
    """Every declared frame axis holds the video's frames: a wrapper that checks it sees them."""
    pipe, call = pipeline_and_call
    seen = []

    def recording(network, frame_axes):
        def wrapped(x, timestep, inputs):
            # a declared input may be absent from a call (AnimateDiff's frame_context: prompt travel only)
            seen.append({name: inputs[name].shape[axis] for name, axis in frame_axes.items() if name in inputs})
            assert all(value.shape[0] == x.shape[0] for value in inputs.values())  # per video, [B', …]
            return network(x, timestep, inputs)

        return wrapped

    _run(pipe, call, recording)
    assert seen and all(set(counts.values()) <= {NUM_FRAMES} for counts in seen)
