"""Bad call arguments every video pipeline must reject with an error naming the argument.

Each entry is ``(overrides, error type, word the message must contain)``; each pipeline's API test
adds its own cases. Shapes assume the tests' small call: 4 frames at 32 × 48 pixels, one video.
"""

from __future__ import annotations

import torch

# Any pipeline.
COMMON = [
    (dict(height=30), ValueError, "height"),
    (dict(width=50), ValueError, "width"),
    (dict(num_frames=0), ValueError, "num_frames"),
    (dict(decode_chunk_size=0), ValueError, "decode_chunk_size"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(num_videos_per_prompt=0), ValueError, "num_videos_per_prompt"),
    (dict(generator="seed"), TypeError, "generator"),
    (dict(output_type="gif"), ValueError, "output_type"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), ValueError, "callback_on_step_end_tensor_inputs"),
    # NaN or infinity anywhere gives an all-NaN video: refused up front, naming the argument.
    (dict(latents=torch.full((1, 4, 4, 4, 6), float("nan"))), ValueError, "latents"),
]

# Pipelines with a prompt, classifier-free guidance and DDIM's eta (AnimateDiff, I2VGen-XL).
TEXT = [
    (dict(guidance_scale=-1.0), ValueError, "guidance_scale"),
    (dict(eta=2.0), ValueError, "eta"),
    (dict(prompt=None), ValueError, "prompt"),
    (dict(prompt=3), TypeError, "prompt"),
    (dict(negative_prompt=["a", "b"]), TypeError, "negative_prompt"),
    (dict(prompt=["a", "b"], negative_prompt=["c"]), ValueError, "negative_prompt"),
    (dict(generator=[torch.Generator()] * 3), ValueError, "generator"),
    (dict(latents=torch.zeros(1, 4, 3, 4, 6)), ValueError, "latents"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (dict(guidance_scale=float("inf")), ValueError, "guidance_scale"),
    (dict(eta=float("nan")), ValueError, "eta"),
]

# Stable Video Diffusion's numbers (the image is passed separately).
SVD = [
    (dict(fps=float("nan")), ValueError, "fps"),
    (dict(fps="7"), TypeError, "fps"),
    (dict(motion_bucket_id=float("inf")), ValueError, "motion_bucket_id"),
    (dict(noise_aug_strength=float("nan")), ValueError, "noise_aug_strength"),
    (dict(min_guidance_scale=float("nan")), ValueError, "min_guidance_scale"),
    (dict(max_guidance_scale=float("inf")), ValueError, "max_guidance_scale"),
    (dict(sigmas=[700.0, float("nan"), 0.1]), ValueError, "sigmas"),
]

# I2VGen-XL's frame rate.
I2VGEN_XL = [
    (dict(target_fps=float("nan")), ValueError, "target_fps"),
    (dict(target_fps=float("inf")), ValueError, "target_fps"),
]
