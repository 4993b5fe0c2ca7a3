"""Prompt travel with FreeNoise against diffusers 0.42.1: the same frames (within 1e-4).

diffusers accepts a ``{frame: text}`` prompt only with FreeNoise on; both pipelines then encode the
key frames, blend the states between them and denoise with per-frame text states. Compared with the
default linear blend and with a custom ``prompt_interpolation_callback``, with a dict, a text or no
negative prompt, on private copies of the session's tiny pipelines.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.animatediff_checkpoint import SMALL_CALL
from tests.helpers import max_abs_diff

TOLERANCE = 1e-4
FRAMES = 10
PROMPT = {0: "a caterpillar on a leaf", 4: "a cocoon", 7: "a butterfly flies off"}
NEGATIVE = {0: "blurry", 5: "low quality, worse quality"}


def _hold(start_frame, end_frame, start, end):
    """A step instead of a blend: the first key's states until the frame before the next key."""
    return torch.cat([start.repeat(end_frame - start_frame, 1, 1), end])


@pytest.fixture(scope="module")
def pair(tiny_animatediff, vidiff_animatediff):
    return copy.deepcopy(tiny_animatediff[1]), copy.deepcopy(vidiff_animatediff)


CASES = {
    "negative_dict": dict(negative_prompt=NEGATIVE),
    "negative_text": dict(negative_prompt="blurry"),
    "no_negative": dict(),
    "custom_callback": dict(negative_prompt=NEGATIVE, callback=_hold),
}


@pytest.mark.parametrize("case", CASES)
def test_prompt_travel_with_free_noise_matches_diffusers(pair, case):
    oracle, pipe = pair
    options = dict(CASES[case])
    callback = options.pop("callback", None)
    for each in (oracle, pipe):
        each.enable_free_noise(context_length=4, context_stride=2, prompt_interpolation_callback=callback)
    try:
        call = {**SMALL_CALL, "num_frames": FRAMES, "prompt": PROMPT, **options}
        ours = pipe(**call, generator=torch.Generator().manual_seed(5)).frames
        theirs = oracle(**call, generator=torch.Generator().manual_seed(5)).frames
    finally:
        for each in (oracle, pipe):
            each.disable_free_noise()
    assert ours.shape == theirs.shape == (1, FRAMES, 32, 48, 3)
    assert max_abs_diff(ours, theirs) <= TOLERANCE
