"""Context windows on every pipeline's tiny checkpoint: one window over all frames is the plain call
bit for bit; with the temporal layers made inert, overlapping (even wrapping) windows change
nothing, which shows each window gets its slice of every frame-indexed input and that SVD's
guidance ramp still gives each frame its place in the whole video; videos 3× the trained length
come out with the right frame count, each network call holding one window; bad lengths are refused
before any network runs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import max_abs_diff, perturb_
from tests.svd_checkpoint import random_image
from tests.test_frame_windows import _make_temporal_layers_inert
from vidiff import AnimateDiffPipeline, DDIMScheduler, MotionAdapter
from vidiff.diffusion.windows import ContextWindows

IMAGE = random_image(80, 56)
PROMPT = "a red fox running through snow"
SMALL = dict(height=32, width=48, num_inference_steps=2)
CALLS = {
    # every call runs classifier-free guidance (SVD: the min 1 → max 3 ramp over the frames)
    "svd": ("vidiff_svd", dict(image=IMAGE, **SMALL)),
    "i2vgen_xl": ("vidiff_i2vgen_xl", dict(prompt=PROMPT, image=IMAGE, **SMALL)),
    "animatediff": ("vidiff_animatediff", dict(prompt=PROMPT, **SMALL)),
}


@pytest.fixture(params=sorted(CALLS))
def shared_pipe_and_call(request):
    """A session pipeline (weights untouched) and its call; context windows are off again afterwards."""
    fixture, call = CALLS[request.param]
    pipe = request.getfixturevalue(fixture)
    yield pipe, call
    pipe.disable_context_windows()
    pipe.network_wrapper = None


def _frames(pipe, call, output_type="latent", **overrides):
    return pipe(**{**call, **overrides}, output_type=output_type, generator=torch.Generator().manual_seed(3)).frames


def test_one_window_over_all_frames_is_bit_identical(shared_pipe_and_call):
    pipe, call = shared_pipe_and_call
    plain = _frames(pipe, call, "pt", num_frames=4)
    pipe.enable_context_windows(context_length=4, context_overlap=2, fuse="pyramid", closed_loop=True)
    assert torch.equal(_frames(pipe, call, "pt", num_frames=4), plain)


def test_windows_change_nothing_when_frames_do_not_mix(shared_pipe_and_call):
    # float64 so that smaller batches' different kernel rounding stays ~1e-15 (see test_frame_windows).
    shared, call = shared_pipe_and_call
    pipe = copy.deepcopy(shared).to(torch.float64)
    windows = dict(context_length=2, context_overlap=1, schedule="uniform", closed_loop=True)
    plain = _frames(pipe, call, num_frames=5)
    pipe.enable_context_windows(**windows)
    assert max_abs_diff(_frames(pipe, call, num_frames=5), plain) > 1e-3  # windows do cut temporal layers
    pipe.disable_context_windows()

    assert _make_temporal_layers_inert(pipe.unet) > 0
    plain = _frames(pipe, call, num_frames=5)
    pipe.enable_context_windows(**windows)
    torch.testing.assert_close(_frames(pipe, call, num_frames=5), plain, rtol=0, atol=1e-5)


def _recording(windows: ContextWindows, frames_seen: list[int]):
    """``windows`` around a network that records how many frames each call gets."""

    def wrapper(network, frame_axes):
        def recorded(x, timestep, inputs):
            frames_seen.append(x.shape[2])
            return network(x, timestep, inputs)

        return windows(recorded, frame_axes)

    return wrapper


@pytest.mark.parametrize("name", ["svd", "i2vgen_xl"])
def test_three_times_the_length_in_windows(name, request):
    fixture, call = CALLS[name]
    pipe = request.getfixturevalue(fixture)
    frames_seen: list[int] = []
    try:
        pipe.network_wrapper = _recording(ContextWindows(4, 1), frames_seen)
        video = _frames(pipe, call, "np", num_frames=12)
    finally:
        pipe.network_wrapper = None
    assert video.shape == (1, 12, 32, 48, 3)
    assert set(frames_seen) == {4} and len(frames_seen) >= 2 * 4  # 2 steps, at least 4 windows each


@pytest.fixture(scope="module")
def short_motion_animatediff(tiny_animatediff, tmp_path_factory):
    """The tiny AnimateDiff with a motion adapter of motion_max_seq_length 8 (built by diffusers)."""
    from diffusers import MotionAdapter as DiffusersMotionAdapter

    from tests.animatediff_checkpoint import GUIDE_DDIM, MOTION_ADAPTER

    root, folder = tiny_animatediff[0], tmp_path_factory.mktemp("adapter-8")
    perturb_(DiffusersMotionAdapter(**{**MOTION_ADAPTER, "motion_max_seq_length": 8}), seed=7).save_pretrained(folder)
    pipe = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=MotionAdapter.from_pretrained(folder))
    pipe.scheduler = DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_animatediff_three_times_its_motion_length_in_windows(short_motion_animatediff):
    pipe, call = short_motion_animatediff, CALLS["animatediff"][1]
    assert pipe.unet.config.motion_max_seq_length == 8
    with pytest.raises(ValueError, match="motion_max_seq_length"):
        _frames(pipe, call, num_frames=24)  # without windows: refused
    with pytest.raises(ValueError, match=r"`context_length` \(9\) exceeds the motion modules' motion_max_seq_length \(8\)"):
        pipe.enable_context_windows(context_length=9, context_overlap=2)
    assert not pipe.context_windows_enabled

    pipe.enable_context_windows(context_length=8, context_overlap=2)
    frames_seen: list[int] = []
    pipe.network_wrapper = _recording(pipe.context_windows, frames_seen)
    video = _frames(pipe, call, "np", num_frames=24)
    assert video.shape == (1, 24, 32, 48, 3)
    assert set(frames_seen) == {8} and len(frames_seen) >= 2 * 4


def test_a_context_longer_than_the_video_is_refused_before_any_network_runs(shared_pipe_and_call):
    pipe, call = shared_pipe_and_call
    pipe.enable_context_windows(context_length=8, context_overlap=2)
    calls = []
    hooks = [module.register_forward_pre_hook(lambda *_: calls.append(1)) for module in pipe._modules()]
    try:
        with pytest.raises(ValueError, match=r"`context_length` \(8\) is longer than the video: `num_frames` is 6"):
            _frames(pipe, call, num_frames=6)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []


def test_animatediff_windows_must_fit_the_motion_modules(vidiff_animatediff):
    limit = vidiff_animatediff.unet.config.motion_max_seq_length
    with pytest.raises(ValueError, match="`context_length`.*motion_max_seq_length"):
        vidiff_animatediff.enable_context_windows(context_length=limit + 1)
    assert not vidiff_animatediff.context_windows_enabled


def test_prompt_travel_states_are_cut_per_window(vidiff_animatediff):
    """AnimateDiff's per-frame text states (prompt travel, frame axis 1) go with their frames: with the
    motion modules inert, windows change nothing; with them, the windows do cut."""
    pipe = copy.deepcopy(vidiff_animatediff).to(torch.float64)
    call = dict(CALLS["animatediff"][1], prompt={0: PROMPT, 3: "a blue bird on a wire"}, num_frames=5)
    assert _make_temporal_layers_inert(pipe.unet) > 0
    plain = _frames(pipe, call)
    pipe.enable_context_windows(context_length=2, context_overlap=1, schedule="static", closed_loop=True)
    torch.testing.assert_close(_frames(pipe, call), plain, rtol=0, atol=1e-5)
    pipe.disable_context_windows()
    # the schedule matters: the key frames' states differ, so a wrong slice would show
    assert max_abs_diff(plain, _frames(pipe, dict(call, prompt=PROMPT))) > 1e-3
