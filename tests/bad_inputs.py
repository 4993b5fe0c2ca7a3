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

# The command line's long-video flags (issue 13): ``(argv, text the one error line must contain)``.
# ``IMAGE`` and ``MODEL`` stand for an image file and an absent checkpoint folder: each case must be
# refused (exit status 2) before the model is even opened, which would fail with status 1.
IMAGE, MODEL = "<an image>", "<an absent checkpoint folder>"
_SVD, _I2V, _ANIMATEDIFF = ["svd", IMAGE], ["i2vgen-xl", IMAGE, "a cat"], ["animatediff", "a cat"]
CLI_LONG_VIDEO = {
    "context longer than the video": (_SVD + ["--num-frames", "8", "--context-length", "9"], "--context-length 9 is longer than the video (--num-frames 8)"),
    "free-noise default context longer": (_ANIMATEDIFF + ["--free-noise", "--num-frames", "8"], "--free-noise: its --context-length 16 (default 16) is longer than the video (--num-frames 8)"),
    "free-noise context longer": (_ANIMATEDIFF + ["--free-noise", "--num-frames", "20", "--context-length", "24"], "--context-length 24 (default 16) is longer than the video (--num-frames 20)"),
    "overlap not below length": (_SVD + ["--num-frames", "8", "--context-length", "4", "--context-overlap", "4"], "--context-overlap 4 must be less than --context-length 4"),
    "prompt-at past the end": (_ANIMATEDIFF + ["--prompt-at", "16:a dog"], "frame 16 is outside the video (frames 0 … 15 with --num-frames 16)"),
    "prompt-at past --num-frames": (_ANIMATEDIFF + ["--num-frames", "24", "--prompt-at", "30:a dog"], "frame 30 is outside the video"),
    "prompt-at negative frame": (_ANIMATEDIFF + ["--prompt-at=-2:a dog"], "argument --prompt-at: expected FRAME:TEXT"),
    "prompt-at without colon": (_ANIMATEDIFF + ["--prompt-at", "a dog"], "argument --prompt-at: expected FRAME:TEXT"),
    "prompt-at without text": (_ANIMATEDIFF + ["--prompt-at", "4: "], "argument --prompt-at: expected FRAME:TEXT"),
    "prompt-at frame twice": (_ANIMATEDIFF + ["--prompt-at", "4:a dog", "--prompt-at", "04:a cow"], "frame 4 already has a prompt"),
    "prompt-at frame 0": (_ANIMATEDIFF + ["--prompt-at", "0:a dog"], "frame 0's prompt is PROMPT"),
    "free-noise on svd": (_SVD + ["--free-noise"], "--free-noise does not apply to `vidiff svd`"),
    "free-noise on i2vgen-xl": (_I2V + ["--free-noise"], "--free-noise does not apply to `vidiff i2vgen-xl`"),
    "prompt-at on i2vgen-xl": (_I2V + ["--prompt-at", "2:a dog"], "--prompt-at does not apply to `vidiff i2vgen-xl`"),
    "context-stride on svd": (_SVD + ["--context-stride", "2"], "--context-stride does not apply to `vidiff svd`"),
    "context-stride without free-noise": (_ANIMATEDIFF + ["--context-stride", "2"], "--context-stride needs --free-noise"),
    "noise-type without free-noise": (_ANIMATEDIFF + ["--noise-type", "random"], "--noise-type needs --free-noise"),
    "context-overlap with free-noise": (_ANIMATEDIFF + ["--free-noise", "--context-overlap", "2"], "--context-overlap is for context windows, not --free-noise"),
    "closed-loop with free-noise": (_ANIMATEDIFF + ["--free-noise", "--closed-loop"], "--closed-loop is for context windows, not --free-noise"),
    "context-overlap alone": (_SVD + ["--context-overlap", "2"], "--context-overlap needs --context-length N"),
    "weighting alone": (_SVD + ["--weighting", "flat"], "--weighting needs --context-length N"),
    "stride beyond the window": (_ANIMATEDIFF + ["--free-noise", "--context-length", "4", "--context-stride", "8"], "--context-stride 8 is longer than --context-length 4"),
    "sawtooth with an odd window": (_ANIMATEDIFF + ["--free-noise", "--context-length", "5", "--weighting", "delayed_reverse_sawtooth"], "delayed_reverse_sawtooth needs an even --context-length (its two halves), got 5"),
    "sawtooth for context windows": (_SVD + ["--num-frames", "8", "--context-length", "4", "--weighting", "delayed_reverse_sawtooth"], "delayed_reverse_sawtooth is FreeNoise's only"),
    "closed loop without overlap": (_SVD + ["--num-frames", "8", "--context-length", "4", "--context-overlap", "0", "--closed-loop"], "--closed-loop needs --context-overlap ≥ 1"),
    "unknown weighting": (_ANIMATEDIFF + ["--free-noise", "--weighting", "triangle"], "argument --weighting: invalid choice: 'triangle'"),
    "unknown noise type": (_ANIMATEDIFF + ["--free-noise", "--noise-type", "gaussian"], "argument --noise-type: invalid choice: 'gaussian'"),
    "unknown schedule": (_SVD + ["--context-length", "4", "--context-schedule", "random"], "argument --context-schedule: invalid choice: 'random'"),
    "zero context length": (_SVD + ["--context-length", "0"], "argument --context-length: expected an integer ≥ 1 (frames), got 0"),
    "free-init 0": (_SVD + ["--free-init", "0"], "argument --free-init: expected an integer ≥ 1 (FreeInit iterations), got 0"),
    "unknown free-init method": (_SVD + ["--free-init", "2", "--free-init-method", "box"], "argument --free-init-method: invalid choice: 'box'"),
    "free-init-method alone": (_SVD + ["--free-init-method", "ideal"], "--free-init-method needs --free-init N"),
    "free-init-fast alone": (_I2V + ["--free-init-fast"], "--free-init-fast needs --free-init N"),
}
