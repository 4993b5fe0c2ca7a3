"""AnimateDiffPipeline against diffusers' on a tiny random checkpoint: the same frames.

Both pipelines get the same seeded CPU torch generator and draw the initial latents (and any step
noise) themselves, so the seeding path is compared too. Frames are compared as ``np`` output in
[0, 1], within 1e-4 absolute.
"""

from __future__ import annotations

import pytest
import torch

from tests.animatediff_checkpoint import SMALL_CALL
from tests.helpers import max_abs_diff

PROMPT = "a rocket flying into space"
NEGATIVE = "bad quality, worse quality, low resolution"
# Well over 77 tokens with the tiny byte-level vocabulary: truncation must match.
LONG_PROMPT = "A space rocket launching into space from the desert, 4k, high resolution, " * 4
TOLERANCE = 1e-4

CASES = {
    "negative_prompt": dict(prompt=PROMPT, negative_prompt=NEGATIVE),
    "no_negative_prompt": dict(prompt=PROMPT),
    "cfg_off": dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=1.0),
    "long_prompt": dict(prompt=LONG_PROMPT, negative_prompt=NEGATIVE),
    "prompt_list": dict(prompt=[PROMPT, "a dog"], negative_prompt=[NEGATIVE, "blurry"]),
    "clip_skip": dict(prompt=PROMPT, clip_skip=1, guidance_scale=3.0),
    "square_default_size": dict(prompt=PROMPT, height=None, width=None),
    "frames_6_chunk_4": dict(prompt=PROMPT, num_frames=6, decode_chunk_size=4),
    "steps_5": dict(prompt=PROMPT, num_inference_steps=5),
}


def _run_both(oracle, pipe, **overrides):
    call = {**SMALL_CALL, **overrides}
    ours = pipe(**call, generator=torch.Generator().manual_seed(7)).frames
    theirs = oracle(**call, generator=torch.Generator().manual_seed(7)).frames
    return ours, theirs


@pytest.mark.parametrize("case", CASES)
def test_frames_match_diffusers(tiny_animatediff, vidiff_animatediff, case):
    ours, theirs = _run_both(tiny_animatediff[1], vidiff_animatediff, **CASES[case])
    assert ours.shape == theirs.shape
    assert max_abs_diff(ours, theirs) <= TOLERANCE
