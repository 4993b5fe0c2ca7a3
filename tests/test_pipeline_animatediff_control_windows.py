"""vidiff's ControlNet and SparseCtrl AnimateDiff pipelines with vidiff's own levers, part 2 (bad
input and save/load are in test_pipeline_animatediff_control_api.py):

- context windows: one window over all frames is the plain call bit for bit (guess mode too); with
  several, every ControlNet call sees exactly its window's frames and the matching control frames
  (consecutive, wrapping when closed), and all frames are covered;
- ``num_videos_per_prompt`` with a list of generators: each video is the call made alone with its
  generator (diffusers forces one video per prompt here);
- model CPU offload (weights parked on ``meta``): the ControlNet is loaded in its place between the
  text encoder and the UNet, and the frames are the plain call's.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.control_api_fixtures import SMALL, frames_of, pipes, random_video, roots, seeded
from vidiff.pipelines.video_input import video_frames

__all__ = ["pipes", "roots"]  # the shared fixtures

VIDEO6, CONTROL6 = random_video(6, seed=4), random_video(6, seed=5)


def _call(kind, num_frames):
    """A call of ``num_frames`` frames, every frame control-conditioned with distinct frames."""
    control, video = CONTROL6[:num_frames], VIDEO6[:num_frames]
    if kind == "cn":
        return dict(prompt="a cat", num_frames=num_frames, conditioning_frames=control, **SMALL)
    if kind == "cn2":  # the second ControlNet follows the control video backwards
        return dict(prompt="a cat", num_frames=num_frames, conditioning_frames=[control, control[::-1]], **SMALL)
    if kind == "v2v_cn":
        return dict(video=video, prompt="a cat", conditioning_frames=control, strength=0.9, **SMALL)
    if kind == "sparse_rgb":  # two key frames
        return dict(prompt="a cat", num_frames=num_frames, conditioning_frames=control[:2],
                    controlnet_frame_indices=[num_frames - 1, 1], **SMALL)
    return dict(prompt="a cat", num_frames=num_frames, conditioning_frames=control,
                controlnet_frame_indices=list(range(num_frames))[::-1], **SMALL)


class ControlCalls:
    """Records, per call of the pipeline's ControlNet ``net`` (of ``pipe.controlnets``), the latents'
    frame count per video and the control frames it saw as ``[b, F_w, C, H, W]``."""

    def __init__(self, pipe, sparse, net=0):
        self.calls, self.sparse = [], sparse
        module = pipe.controlnet if sparse else pipe.controlnets[net]
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        sample = args[0]
        if self.sparse:  # sample [b, 4, F, h, w], sparse_cond [b, C, F, H, W], mask [b, 1, F, H, W]
            condition, mask = args[3], args[5]
            assert bool((mask == 1).all())
            self.calls.append((sample.shape[2], condition.transpose(1, 2)))
        else:  # sample [(b·F), 4, h, w], control [(b·F), 3, H, W]; text context [b, L, D] gives b
            text = args[2]
            frames = sample.shape[0] // text.shape[0]
            self.calls.append((frames, args[3].reshape(text.shape[0], frames, *args[3].shape[1:])))

    def remove(self):
        self.handle.remove()


def _frame_numbers(seen, full):
    """Which frames of ``full`` ``[F, C, H, W]`` each frame of ``seen`` ``[F_w, C, H, W]`` is."""
    numbers = []
    for frame in seen:
        matches = [i for i in range(full.shape[0]) if torch.equal(full[i], frame)]
        assert len(matches) == 1, "a ControlNet saw a control frame that is not one of the call's"
        numbers.append(matches[0])
    return numbers


def _full_control(kind, num_frames, net=0):
    """The call's control frames as ControlNet ``net`` receives them: ``[F, C, H, W]``."""
    pixels = video_frames(CONTROL6[:num_frames], 32, 48, "conditioning_frames")
    if kind == "sparse" or net == 1:  # scribbles at reversed indices; the second ControlNet's reversed video
        return pixels.flip(0)
    return pixels


@pytest.mark.parametrize("kind", ["cn", "cn2", "v2v_cn", "sparse", "sparse_rgb"])
@pytest.mark.parametrize("guess_mode", [False, True])
def test_one_context_window_over_all_frames_is_the_plain_call(pipes, kind, guess_mode):
    pipe = pipes[kind]
    plain = frames_of(pipe, **_call(kind, 4), guess_mode=guess_mode)
    pipe.enable_context_windows(context_length=4, context_overlap=2)
    try:
        windowed = frames_of(pipe, **_call(kind, 4), guess_mode=guess_mode)
    finally:
        pipe.disable_context_windows()
    np.testing.assert_array_equal(windowed, plain)


@pytest.mark.parametrize("kind, net", [("cn", 0), ("cn2", 0), ("cn2", 1), ("v2v_cn", 0), ("sparse", 0)])
@pytest.mark.parametrize("closed_loop", [False, True])
def test_each_controlnet_call_sees_its_windows_control_frames(pipes, kind, net, closed_loop):
    pipe = pipes[kind]
    full = _full_control(kind, 6, net)
    pipe.enable_context_windows(context_length=3, context_overlap=1, closed_loop=closed_loop)
    schedule = pipe.network_wrapper
    calls = ControlCalls(pipe, sparse=kind == "sparse", net=net)
    try:
        frames = frames_of(pipe, **_call(kind, 6))
    finally:
        calls.remove()
        pipe.disable_context_windows()
    assert frames.shape == (1, 6, 32, 48, 3)
    # the windows the latents are cut into, step after step (one network call per window per step)
    expected: list[list[int]] = []
    for step in range(SMALL["num_inference_steps"]):
        if len(expected) < len(calls.calls):  # video-to-video runs fewer steps than planned
            expected += [list(window) for window in schedule.windows(6, step)]
    assert len(calls.calls) > 2 and len(expected) == len(calls.calls)  # several windows per step
    seen = []
    for count, control in calls.calls:
        assert count == 3 and control.shape[1] == 3  # one window's frames
        numbers = [_frame_numbers(video, full.to(video.dtype)) for video in control]
        assert all(n == numbers[0] for n in numbers)  # the guided halves see the same window
        seen.append(numbers[0])
    assert seen == expected  # each call's control frames are its latent window's frames, in order
    assert {frame for window in seen for frame in window} == set(range(6))
    if closed_loop:
        assert any(window != sorted(window) for window in seen)  # some window wraps round the end


@pytest.mark.parametrize("kind", ["cn", "cn2", "v2v_cn", "sparse", "sparse_rgb"])
def test_num_videos_per_prompt_each_video_is_its_own_call(pipes, kind):
    pipe = pipes[kind]
    call = _call(kind, 4)
    both = np.asarray(pipe(**call, num_videos_per_prompt=2, generator=[seeded(5), seeded(6)]).frames)
    assert both.shape == (2, 4, 32, 48, 3)
    for index, seed in enumerate((5, 6)):
        alone = np.asarray(pipe(**call, generator=seeded(seed)).frames)
        np.testing.assert_allclose(both[index], alone[0], atol=1e-5)
    assert np.abs(both[0] - both[1]).max() > 1e-3  # the two videos differ


# ---------------------------------------------------------------------------------------------- offload
@pytest.mark.parametrize(
    "kind, expected",
    [
        ("cn", ["text_encoder"] + ["controlnet", "unet"] * 2 + ["vae"]),  # 2 steps, guidance in one batch
        ("v2v_cn", ["text_encoder", "vae", "controlnet", "unet", "vae"]),  # strength 0.9 of 2 steps: 1 step
        ("sparse", ["text_encoder"] + ["controlnet", "unet"] * 2 + ["vae"]),
        ("sparse_rgb", ["text_encoder", "vae"] + ["controlnet", "unet"] * 2 + ["vae"]),  # key frames VAE-encoded
    ],
)
def test_model_offload_runs_the_controlnet_in_its_place(pipes, kind, expected):
    shared = pipes[kind]
    plain = frames_of(shared, **_call(kind, 4))
    pipe = copy.deepcopy(shared)
    pipe._enable_offload("model", torch.device("cpu"), park_device="meta")
    offloader = pipe._offloader
    assert "controlnet" in offloader.components
    assert list(offloader.components).index("controlnet") < list(offloader.components).index("unet")
    seen: list[str] = []

    def probe(name):
        def check(module, args):
            assert offloader.resident == name, f"{name} ran while {offloader.resident} was loaded"
            if not seen or seen[-1] != name:
                seen.append(name)
        return check

    for name, component in offloader.components.items():
        for module in component.modules():
            module.register_forward_pre_hook(probe(name))
    frames = frames_of(pipe, **_call(kind, 4))
    np.testing.assert_array_equal(frames, plain)
    assert seen == expected
    assert offloader.resident is None
