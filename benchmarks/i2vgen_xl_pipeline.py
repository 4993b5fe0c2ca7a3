"""Speed and memory of vidiff's I2VGenXLPipeline next to diffusers', on the same weights.

One random I2VGen-XL checkpoint is built with diffusers at the chosen size (the test fixture
`tests/i2vgen_xl_checkpoint.py`, with larger configs above "tiny") and saved to a temporary folder;
both libraries load it and run the same image, prompt, negative prompt, guidance 9.0 and seed.
Nothing here is asserted: this is a measurement.

    python benchmarks/i2vgen_xl_pipeline.py                         # "small", CPU, float32
    python benchmarks/i2vgen_xl_pipeline.py --size medium --device cuda --dtype fp16 --json out.json
"""

from __future__ import annotations

from pathlib import Path

import torch

import harness  # first: it makes the repository root importable
from tests import i2vgen_xl_checkpoint as tiny
from tests.svd_checkpoint import random_image

PROMPT = "Papers were floating in the air on a table in the library"
NEGATIVE_PROMPT = "Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static"

# Per size above "tiny" (= the test checkpoint): UNet channels per stage (the last stage has no
# cross-attention), `attention_head_dim` (in I2VGenXLUNet the head WIDTH of every stage's
# transformers, C // value heads, and the width of transformer_in's 8 heads), UNet layers per block, cross-attention
# width (= CLIP text width = CLIP image projection), CLIP text layers, CLIP image tower (width,
# layers, patch), VAE channels, and the default run (frames, height, width, steps). The released
# I2VGen-XL is UNet (320, 640, 1280, 1280) with heads of width 64, CLIP text 1024 × 24 layers, CLIP image
# 1280 × 32 layers (patch 14), VAE (128, 256, 512, 512), 16 frames at 704 × 1280, 50 steps.
SIZES = {
    "small": dict(unet=(64, 128, 128), head_dim=4, layers=1, cross=64, text_layers=2, vision=(64, 2, 32),
                  vae=(64, 64, 64, 64), run=(8, 128, 128, 6)),
    # ≈15 M UNet parameters with the released 4-level topology: the CPU sizes of `python -m benchmarks.run`.
    "m15": dict(unet=(32, 64, 128, 128), head_dim=32, layers=2, cross=128, text_layers=2, vision=(128, 2, 32),
                vae=(32, 64, 128, 128), run=(8, 128, 128, 5)),
    "medium": dict(unet=(160, 320, 640, 640), head_dim=32, layers=2, cross=512, text_layers=8, vision=(512, 8, 14),
                   vae=(128, 128, 256, 256), run=(16, 320, 512, 25)),
}
TINY_RUN = tuple(tiny.SMALL_CALL[key] for key in ("num_frames", "height", "width", "num_inference_steps"))
RUNS = {"tiny": TINY_RUN, **{size: spec["run"] for size, spec in SIZES.items()}}


def overrides(size: str) -> dict[str, dict]:
    """``tests.i2vgen_xl_checkpoint.build_parts`` keyword overrides for ``size`` (none for "tiny")."""
    if size == "tiny":
        return {}
    spec, stages = SIZES[size], len(SIZES[size]["unet"])
    width, layers, patch = spec["vision"]
    return dict(
        unet=dict(block_out_channels=spec["unet"], attention_head_dim=spec["head_dim"], layers_per_block=spec["layers"],
                  down_block_types=("CrossAttnDownBlock3D",) * (stages - 1) + ("DownBlock3D",),
                  up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (stages - 1),
                  norm_num_groups=32, cross_attention_dim=spec["cross"], sample_size=spec["run"][1] // 8),
        vae=dict(block_out_channels=spec["vae"], norm_num_groups=32,
                 down_block_types=("DownEncoderBlock2D",) * len(spec["vae"]),
                 up_block_types=("UpDecoderBlock2D",) * len(spec["vae"])),
        text=dict(hidden_size=spec["cross"], intermediate_size=4 * spec["cross"], num_hidden_layers=spec["text_layers"],
                  num_attention_heads=spec["cross"] // 32),
        vision=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                    num_attention_heads=width // 32, patch_size=patch, projection_dim=spec["cross"]),
    )


def build_checkpoint(size: str, folder: Path, seed: int = 0) -> None:
    """Build a random diffusers I2VGen-XL pipeline of the given size and save it to ``folder`` (float32)."""
    tiny.save_tiny_i2vgen_xl(folder, seed=seed, **overrides(size))


class SameDraws:
    """diffusers' I2VGenXLPipeline, called so that it draws the same numbers as vidiff's.

    vidiff samples the image's VAE latent with ``generator`` (its first draw, [1, 4, H/8, W/8]), then
    the initial latents; diffusers samples that latent from torch's global RNG and the rest from
    ``generator``. So each call seeds the global RNG with the generator's seed and advances the
    generator past vidiff's first draw: microseconds, timed with the call. On CUDA, diffusers' global
    draw happens on the GPU's RNG, so the image latents (and the frames) differ from vidiff's there.
    """

    def __init__(self, pipe):
        self.pipe = pipe

    def to(self, device):
        self.pipe.to(device)
        return self

    def set_progress_bar_config(self, **options) -> None:
        self.pipe.set_progress_bar_config(**options)

    def __call__(self, *args, generator: torch.Generator, height: int, width: int, **kwargs):
        torch.manual_seed(generator.initial_seed())
        scale, vae = self.pipe.vae_scale_factor, self.pipe.vae
        torch.randn((1, vae.config.latent_channels, height // scale, width // scale), generator=generator, dtype=vae.dtype)
        return self.pipe(*args, generator=generator, height=height, width=width, **kwargs)


def load(library: str, folder: Path, dtype: torch.dtype):
    """``library``'s I2VGenXLPipeline from ``folder``, in ``dtype`` (diffusers' wrapped in ``SameDraws``)."""
    if library == "diffusers":
        from diffusers import I2VGenXLPipeline
        return SameDraws(I2VGenXLPipeline.from_pretrained(folder, dtype=dtype))
    from vidiff import I2VGenXLPipeline
    return I2VGenXLPipeline.from_pretrained(folder, dtype=dtype)


def inputs(args) -> tuple[tuple, dict]:
    """One call: a smooth random image at the output size, the prompts, guidance 9.0, the run's settings."""
    return (), dict(prompt=PROMPT, image=random_image(args.width, args.height), negative_prompt=NEGATIVE_PROMPT,
                    guidance_scale=9.0, target_fps=16, height=args.height, width=args.width, num_frames=args.frames,
                    num_inference_steps=args.steps, decode_chunk_size=args.decode_chunk_size)


SUBJECT = harness.Subject(runs=RUNS, build=build_checkpoint, load=load, inputs=inputs, script=__file__)

if __name__ == "__main__":
    harness.main(SUBJECT, __doc__.split("\n\n")[0])
