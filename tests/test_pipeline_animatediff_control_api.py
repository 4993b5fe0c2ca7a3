"""vidiff's video-to-video, ControlNet and SparseCtrl AnimateDiff pipelines: behaviour beyond the
numbers (those are the parity tests'), part 1 (context windows, batches and offload are in
test_pipeline_animatediff_control_windows.py).

- bad input: each a ValueError/TypeError naming the argument, raised before the UNet or a
  ControlNet runs;
- save/load: vidiff ↔ vidiff (identical frames) and vidiff ↔ diffusers (component types and count).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.control_api_fixtures import SMALL, control_net, frames_of, pipes, random_video, roots, seeded, vidiff_pipe
from vidiff import (
    AnimateDiffControlNetPipeline,
    AnimateDiffSparseControlNetPipeline,
    AnimateDiffVideoToVideoControlNetPipeline,
    ControlNetModel,
    MultiControlNetModel,
    PNDMScheduler,
    SparseControlNetModel,
)

VIDEO = random_video(4, seed=1)
CONTROL = random_video(4, seed=2)
__all__ = ["pipes", "roots"]  # the shared fixtures


class NetworkCalls:
    """Counts forward calls of the UNet and ControlNet(s) of a pipeline while installed."""

    def __init__(self, pipe):
        self.count = 0
        modules = [pipe.unet, pipe.controlnet] if hasattr(pipe, "controlnet") else [pipe.unet]
        self.handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, module, args):
        self.count += 1

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _base_call(kind):
    if kind == "v2v":
        return dict(video=VIDEO, prompt="a cat", **SMALL)
    if kind in ("cn", "cn2"):
        control = CONTROL if kind == "cn" else [CONTROL, CONTROL]
        return dict(prompt="a cat", num_frames=4, conditioning_frames=control, **SMALL)
    if kind == "v2v_cn":
        return dict(video=VIDEO, prompt="a cat", conditioning_frames=CONTROL, **SMALL)
    return dict(prompt="a cat", num_frames=4, conditioning_frames=CONTROL[:1], controlnet_frame_indices=[0], **SMALL)


def _refused(pipe, kind, error, argument, **changes):
    """Call with ``changes``: ``error`` whose message names ``argument``, before any network ran."""
    call = {**_base_call(kind), **changes}
    for name in [k for k, v in changes.items() if v is DROP]:
        call.pop(name)
    calls = NetworkCalls(pipe)
    try:
        with pytest.raises(error) as caught:
            pipe(**call, generator=seeded(0))
    finally:
        calls.remove()
    assert argument in str(caught.value), str(caught.value)
    assert calls.count == 0, "a network ran before the bad input was refused"
    return str(caught.value)


DROP = object()
V2V_KINDS = ["v2v", "v2v_cn"]


@pytest.mark.parametrize("kind", V2V_KINDS)
@pytest.mark.parametrize("strength", [0, -0.1, 1.5, True, "0.5", float("nan")])
def test_bad_strength(pipes, kind, strength):
    _refused(pipes[kind], kind, ValueError, "strength", strength=strength)


@pytest.mark.parametrize("kind", V2V_KINDS)
def test_video_and_latents_both_or_neither(pipes, kind):
    latents = torch.zeros(1, 4, 4, 4, 6)
    message = _refused(pipes[kind], kind, ValueError, "video", latents=latents)
    assert "latents" in message
    message = _refused(pipes[kind], kind, ValueError, "video", video=DROP)
    assert "video" in message


@pytest.mark.parametrize("kind", V2V_KINDS)
@pytest.mark.parametrize("video", [[], [[]], [VIDEO, VIDEO[:3]], np.zeros((0, 40, 56, 3), np.float32)])
def test_bad_videos(pipes, kind, video):
    _refused(pipes[kind], kind, (ValueError, TypeError), "video", video=video)


@pytest.mark.parametrize("kind", V2V_KINDS)
def test_three_clips_for_two_prompts(pipes, kind):
    _refused(pipes[kind], kind, ValueError, "video", video=[VIDEO] * 3, prompt=["a cat", "a dog"])


def test_scheduler_that_cannot_start_part_way(pipes):
    # PNDM's PLMS form restarts its warm-up at the cut (as diffusers does); its Runge-Kutta form cannot start part-way
    pipe = pipes["v2v"]
    ddim = pipe.scheduler
    pipe.scheduler = PNDMScheduler.from_config(ddim.config, skip_prk_steps=False)
    try:
        message = _refused(pipe, "v2v", ValueError, "PNDMScheduler", num_inference_steps=5)
    finally:
        pipe.scheduler = ddim
    assert "skip_prk_steps" in message and "DDIM" in message  # says why and what to use instead


@pytest.mark.parametrize("kind", ["cn", "v2v_cn", "cn2", "sparse"])
def test_conditioning_frames_missing(pipes, kind):
    _refused(pipes[kind], kind, ValueError, "conditioning_frames", conditioning_frames=DROP)


def test_control_frame_count_must_match(pipes):
    _refused(pipes["cn"], "cn", ValueError, "conditioning_frames", conditioning_frames=CONTROL[:3])
    _refused(pipes["cn"], "cn", ValueError, "conditioning_frames", conditioning_frames=CONTROL, num_frames=5)
    # video-to-video: the video's frame count rules
    _refused(pipes["v2v_cn"], "v2v_cn", ValueError, "conditioning_frames", video=random_video(5))
    _refused(pipes["cn2"], "cn2", ValueError, "conditioning_frames[1]", conditioning_frames=[CONTROL, CONTROL[:2]])


def test_multi_controlnet_needs_a_list_of_videos(pipes):
    _refused(pipes["cn2"], "cn2", ValueError, "conditioning_frames", conditioning_frames=CONTROL)
    _refused(pipes["cn2"], "cn2", ValueError, "conditioning_frames", conditioning_frames=[CONTROL] * 3)


@pytest.mark.parametrize(
    "kind, scale",
    [("cn2", [0.5]), ("cn2", [0.5, 0.5, 0.5]), ("cn", float("nan")), ("cn2", [1.0, float("inf")]), ("cn", "1"),
     ("sparse", float("nan"))],
)
def test_bad_conditioning_scale(pipes, kind, scale):
    _refused(pipes[kind], kind, ValueError, "controlnet_conditioning_scale", controlnet_conditioning_scale=scale)


@pytest.mark.parametrize(
    "kind, start, end, argument",
    [
        ("cn", 0.5, 0.5, "control_guidance_start"),
        ("cn", 0.8, 0.2, "control_guidance_start"),
        ("cn", -0.1, 1.0, "control_guidance_start"),
        ("cn", 0.0, 1.5, "control_guidance_end"),
        ("v2v_cn", 0.6, 0.4, "control_guidance_start"),
        ("cn2", [0.0, 0.1, 0.2], 1.0, "control_guidance_start"),
        ("cn2", 0.0, [1.0], "control_guidance_end"),
        ("cn2", [0.0, 0.1], [1.0, 0.9, 0.8], "control_guidance_end"),
        ("cn2", [0.0, 0.9], [1.0, 0.5], "control_guidance_start"),
    ],
)
def test_bad_guidance_window(pipes, kind, start, end, argument):
    _refused(pipes[kind], kind, ValueError, argument, control_guidance_start=start, control_guidance_end=end)


@pytest.mark.parametrize("kind", ["cn", "v2v_cn", "sparse"])
@pytest.mark.parametrize("guess_mode", [1, "yes", None])
def test_guess_mode_must_be_a_bool(pipes, kind, guess_mode):
    _refused(pipes[kind], kind, TypeError, "guess_mode", guess_mode=guess_mode)


@pytest.mark.parametrize(
    "frames, indices, error",
    [
        (CONTROL[:2], [0], ValueError),  # count differs
        (CONTROL[:1], [0, 1], ValueError),
        (CONTROL[:2], [1, 1], ValueError),  # duplicate
        (CONTROL[:1], [-1], ValueError),
        (CONTROL[:1], [4], ValueError),  # ≥ num_frames
        (CONTROL[:2], [0, 7], ValueError),
        (CONTROL[:1], [0.0], TypeError),
        (CONTROL[:1], [True], TypeError),
        (CONTROL[:1], ["0"], TypeError),
    ],
)
def test_bad_sparse_frame_indices(pipes, frames, indices, error):
    _refused(
        pipes["sparse"], "sparse", error, "controlnet_frame_indices", conditioning_frames=frames, controlnet_frame_indices=indices
    )


def test_controlnet_that_does_not_fit_the_unet(roots):
    adapter_root = roots[0]
    with pytest.raises(ValueError, match="controlnet"):
        vidiff_pipe(AnimateDiffControlNetPipeline, adapter_root, controlnet=control_net(roots, "cn_wide"))
    with pytest.raises(ValueError, match=r"controlnet\[1\]"):
        vidiff_pipe(AnimateDiffControlNetPipeline, adapter_root, controlnet=[control_net(roots, "cn"), control_net(roots, "cn_wide")])
    with pytest.raises(ValueError, match="controlnet"):
        vidiff_pipe(AnimateDiffVideoToVideoControlNetPipeline, adapter_root, controlnet=control_net(roots, "cn_wide"))


def test_sparse_controlnet_that_does_not_fit_the_unet(roots):
    with pytest.raises(ValueError, match="controlnet") as caught:
        vidiff_pipe(AnimateDiffSparseControlNetPipeline, roots[0], controlnet=control_net(roots, "sparse_wide"))
    assert "UNet" in str(caught.value)


@pytest.mark.parametrize("kind", ["cn", "sparse"])
def test_wrong_controlnet_type_is_named(roots, kind):
    cls = AnimateDiffControlNetPipeline if kind == "cn" else AnimateDiffSparseControlNetPipeline
    wrong = control_net(roots, "sparse_scribble") if kind == "cn" else control_net(roots, "cn")
    with pytest.raises((TypeError, ValueError), match="controlnet"):
        vidiff_pipe(cls, roots[0], controlnet=wrong)
    with pytest.raises((TypeError, ValueError), match="controlnet"):
        vidiff_pipe(cls, roots[0], controlnet="lllyasviel/sd-controlnet-canny")
    with pytest.raises((TypeError, ValueError), match="controlnet"):
        vidiff_pipe(cls, roots[0], controlnet=[control_net(roots, "cn"), wrong])
    with pytest.raises((TypeError, ValueError), match="controlnet"):
        vidiff_pipe(cls, roots[0], controlnet=[])


@pytest.mark.parametrize("kind", V2V_KINDS)
def test_free_noise_with_a_video_shorter_than_the_context(pipes, kind):
    pipe = pipes[kind]
    pipe.enable_free_noise(context_length=6, context_stride=2)
    try:
        message = _refused(pipe, kind, ValueError, "video")
    finally:
        pipe.disable_free_noise()
    assert "4 frames" in message and "context_length" in message  # the video's frame count, and the window

# ---------------------------------------------------------------------------------------------- save / load
def _ddim(pipe):
    from tests.animatediff_checkpoint import GUIDE_DDIM
    from vidiff import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **GUIDE_DDIM)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind", ["cn", "cn2"])
def test_saved_controlnet_pipeline_loads_in_vidiff_and_diffusers(pipes, kind, tmp_path):
    import diffusers

    pipe = pipes[kind]
    pipe.save_pretrained(tmp_path / "saved")
    again = AnimateDiffControlNetPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert type(again.controlnet) is type(pipe.controlnet) and len(again.controlnets) == len(pipe.controlnets)
    np.testing.assert_array_equal(frames_of(again, **_base_call(kind)), frames_of(pipe, **_base_call(kind)))

    theirs = diffusers.AnimateDiffControlNetPipeline.from_pretrained(tmp_path / "saved")
    if kind == "cn":
        assert isinstance(theirs.controlnet, diffusers.ControlNetModel)
    else:
        assert isinstance(theirs.controlnet, diffusers.MultiControlNetModel) and len(theirs.controlnet.nets) == 2
        assert all(isinstance(net, diffusers.ControlNetModel) for net in theirs.controlnet.nets)
    # the weights diffusers reads are the ones vidiff saved
    for ours, ref in zip(pipe.controlnets, theirs.controlnet.nets if kind == "cn2" else [theirs.controlnet]):
        reference = ref.state_dict()
        assert set(reference) == set(ours.state_dict())
        assert all(torch.equal(value, reference[key]) for key, value in ours.state_dict().items())


def test_diffusers_saved_multi_controlnet_pipeline_loads_in_vidiff(pipes, roots, tmp_path):
    import diffusers

    root, models = roots
    nets = [diffusers.ControlNetModel.from_pretrained(models / name) for name in ("cn", "cn2")]
    theirs = diffusers.AnimateDiffControlNetPipeline.from_pretrained(
        root / "sd15", motion_adapter=diffusers.MotionAdapter.from_pretrained(root / "motion_adapter"), controlnet=nets,
        feature_extractor=None,
    )
    theirs.save_pretrained(tmp_path / "saved")
    ours = _ddim(AnimateDiffControlNetPipeline.from_pretrained(tmp_path / "saved"))
    assert isinstance(ours.controlnet, MultiControlNetModel) and len(ours.controlnets) == 2
    np.testing.assert_allclose(frames_of(ours, **_base_call("cn2")), frames_of(pipes["cn2"], **_base_call("cn2")), atol=1e-6)


def test_a_list_of_controlnets_becomes_a_multi_controlnet(pipes):
    pipe = pipes["cn2"]
    assert isinstance(pipe.controlnet, MultiControlNetModel) and len(pipe.controlnets) == 2
    assert all(isinstance(net, ControlNetModel) for net in pipe.controlnets)
    assert isinstance(pipes["cn"].controlnet, ControlNetModel)


def test_saved_sparse_pipeline_loads_in_vidiff_and_diffusers(pipes, roots, tmp_path):
    import diffusers

    pipe = pipes["sparse"]
    pipe.save_pretrained(tmp_path / "saved")
    again = AnimateDiffSparseControlNetPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.controlnet, SparseControlNetModel)
    np.testing.assert_array_equal(frames_of(again, **_base_call("sparse")), frames_of(pipe, **_base_call("sparse")))
    theirs = diffusers.AnimateDiffSparseControlNetPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(theirs.controlnet, diffusers.SparseControlNetModel)
    reference = theirs.controlnet.state_dict()
    assert set(reference) == set(pipe.controlnet.state_dict())
    assert all(torch.equal(value, reference[key]) for key, value in pipe.controlnet.state_dict().items())


def test_diffusers_saved_sparse_pipeline_loads_in_vidiff(pipes, roots, tmp_path):
    import diffusers

    root, models = roots
    theirs = diffusers.AnimateDiffSparseControlNetPipeline.from_pretrained(
        root / "sd15", motion_adapter=diffusers.MotionAdapter.from_pretrained(root / "motion_adapter"),
        controlnet=diffusers.SparseControlNetModel.from_pretrained(models / "sparse_scribble"), feature_extractor=None,
    )
    theirs.save_pretrained(tmp_path / "saved")
    ours = _ddim(AnimateDiffSparseControlNetPipeline.from_pretrained(tmp_path / "saved"))
    assert isinstance(ours.controlnet, SparseControlNetModel)
    np.testing.assert_allclose(frames_of(ours, **_base_call("sparse")), frames_of(pipes["sparse"], **_base_call("sparse")), atol=1e-6)
