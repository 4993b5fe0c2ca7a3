"""Prompt travel: ``prompt={frame: text}`` gives per-frame text states blended between key frames.

Checked: the interpolation itself (key frames exact, linear in between, the last key held, a custom
callback and its shape check), the schedule's validation, the per-frame text states against
diffusers' own FreeNoise prompt encoding (``_encode_prompt_free_noise``) on the tiny checkpoint, that
the states reach the network frame by frame, and that a one-key schedule is the plain prompt's video.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.animatediff_checkpoint import SMALL_CALL
from tests.helpers import max_abs_diff
from vidiff.pipelines import prompt_travel

PROMPT = {0: "a caterpillar on a leaf", 3: "a cocoon", 5: "a butterfly flies off"}
NEGATIVE = {0: "blurry", 4: "low quality"}
FRAMES = 8


# ---------------------------------------------------------------------- the interpolation
def test_interpolate_hits_keys_blends_between_and_holds_the_last():
    states = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0))  # K=3 keys
    out = prompt_travel.interpolate([0, 2, 5], states, 8)
    assert out.shape == (8, 2, 5)
    for frame, key in ((0, 0), (2, 1), (5, 2), (6, 2), (7, 2)):
        torch.testing.assert_close(out[frame], states[key], rtol=0, atol=1e-7)
    torch.testing.assert_close(out[1], (states[0] + states[1]) / 2)
    torch.testing.assert_close(out[3], states[1] * 2 / 3 + states[2] / 3)


def test_custom_callback_is_called_per_span_and_its_shape_checked():
    states = torch.randn(2, 1, 3)
    calls = []

    def step(start, end, first, last):
        calls.append((start, end, first.shape, last.shape))
        return first.repeat(end - start + 1, 1, 1)  # hold each key until the next

    out = prompt_travel.interpolate([0, 3], states, 6, step)
    assert calls == [(0, 3, (1, 1, 3), (1, 1, 3)), (3, 5, (1, 1, 3), (1, 1, 3))]
    assert torch.equal(out[2], states[0]) and torch.equal(out[3], states[1])
    with pytest.raises(ValueError, match="prompt_interpolation_callback"):
        prompt_travel.interpolate([0, 3], states, 6, lambda s, e, a, b: a)


@pytest.mark.parametrize(
    "schedule, error, match",
    [
        ({}, ValueError, "empty"),
        ({1: "late start"}, ValueError, "frame 0"),
        ({0: "a", 8: "past the end"}, ValueError, "frame 8, outside the video's frames 0..7"),
        ({0: "a", -1: "negative"}, ValueError, "frame -1"),
        ({0: "a", "3": "string key"}, TypeError, "frame indices"),
        ({0: "a", True: "bool key"}, TypeError, "frame indices"),
        ({0: ["not", "a", "text"]}, TypeError, "texts"),
    ],
)
def test_bad_schedules_are_refused_naming_the_argument(schedule, error, match):
    with pytest.raises(error, match=match) as info:
        prompt_travel.check_schedule(schedule, FRAMES, "negative_prompt")
    assert "`negative_prompt`" in str(info.value)


def test_schedule_is_sorted():
    assert list(prompt_travel.check_schedule({5: "c", 0: "a", 2: "b"}, FRAMES)) == [0, 2, 5]


# ---------------------------------------------------------------------- the pipeline
def _recorded_inputs(pipe, **call):
    """The cond/uncond inputs the loop hands the network, captured by a network wrapper."""
    seen = []

    def recording(network, frame_axes):
        def wrapped(x, timestep, inputs):
            seen.append({name: value.clone() for name, value in inputs.items()})
            return network(x, timestep, inputs)

        return wrapped

    pipe = copy.copy(pipe)
    pipe.network_wrapper = recording
    pipe(**{**SMALL_CALL, "num_frames": FRAMES, "num_inference_steps": 1, **call}, generator=torch.Generator().manual_seed(0))
    return seen[0]


@pytest.mark.parametrize("negative", [None, "blurry", NEGATIVE], ids=["no_negative", "negative_text", "negative_dict"])
def test_frame_states_match_diffusers_free_noise_encoding(tiny_animatediff, vidiff_animatediff, negative):
    """diffusers builds [negative F, positive F] per-frame states in _encode_prompt_free_noise; ours
    are the loop's [uncond, cond] frame_context, one video."""
    oracle = copy.copy(tiny_animatediff[1])
    oracle._free_noise_prompt_interpolation_callback = oracle._lerp
    # diffusers wants both as dicts or texts; it turns a missing negative prompt into ""
    theirs, _ = oracle._encode_prompt_free_noise(
        prompt=PROMPT, num_frames=FRAMES, device=torch.device("cpu"), num_videos_per_prompt=1,
        do_classifier_free_guidance=True, negative_prompt=negative,
    )
    inputs = _recorded_inputs(vidiff_animatediff, prompt=PROMPT, negative_prompt=negative)
    ours = inputs["frame_context"]  # [2, F, 77, D]: uncond video first
    assert ours.shape == (2, FRAMES, *theirs.shape[1:])
    assert max_abs_diff(ours.flatten(0, 1), theirs) <= 1e-6


def test_states_travel_across_frames_and_guidance_off_has_one_branch(vidiff_animatediff):
    inputs = _recorded_inputs(vidiff_animatediff, prompt=PROMPT, guidance_scale=1.0)
    states = inputs["frame_context"][0]  # [F, 77, D]
    assert inputs["frame_context"].shape[0] == 1  # no unconditional branch
    assert not torch.equal(states[0], states[3]) and not torch.equal(states[3], states[5])
    assert torch.equal(states[5], states[7])  # the last key holds


def test_one_key_schedule_is_the_plain_prompt(vidiff_animatediff):
    call = {**SMALL_CALL, "num_frames": FRAMES, "negative_prompt": "blurry"}
    plain = vidiff_animatediff(prompt="a cocoon", **call, generator=torch.Generator().manual_seed(1)).frames
    travel = vidiff_animatediff(prompt={0: "a cocoon"}, **call, generator=torch.Generator().manual_seed(1)).frames
    # per-frame cross-attention keys are the per-video ones, projected once per frame: rounding only
    assert max_abs_diff(plain, travel) <= 1e-5
    changed = vidiff_animatediff(prompt=PROMPT, **call, generator=torch.Generator().manual_seed(1)).frames
    assert max_abs_diff(plain, changed) > 1e-3


def test_num_videos_per_prompt_repeats_the_schedule(vidiff_animatediff):
    inputs = _recorded_inputs(vidiff_animatediff, prompt=PROMPT, num_videos_per_prompt=2)
    context = inputs["frame_context"]  # [uncond ×2, cond ×2]
    assert context.shape[:2] == (4, FRAMES)
    assert torch.equal(context[2], context[3]) and torch.equal(context[0], context[1])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (dict(prompt={0: "a", 9: "b"}), ValueError, "`prompt` names frame 9"),
        (dict(prompt=[{0: "a"}]), TypeError, "`prompt`"),
        (dict(prompt=PROMPT, negative_prompt=["a", "b"]), TypeError, "`negative_prompt`"),
        (dict(prompt="a", negative_prompt={2: "late"}), ValueError, "`negative_prompt` dict must start at frame 0"),
        (dict(prompt_embeds=torch.zeros(2, 77, 32), negative_prompt=NEGATIVE), ValueError, "prompt_embeds"),
    ],
)
def test_bad_travel_calls_fail_before_denoising(vidiff_animatediff, call, error, match):
    with pytest.raises(error, match=match):
        vidiff_animatediff(**{**SMALL_CALL, "num_frames": FRAMES}, **call)
