"""Speed and memory of vidiff's StableVideoDiffusionPipeline next to diffusers', on the same weights.

One random SVD checkpoint is built with diffusers at the chosen size and saved to a temporary
folder; both libraries load that folder and run on the same image, seed and settings. Timed runs
alternate between the libraries so machine noise spreads over both. Nothing here is asserted:
this is a measurement, never part of the test suite.

    python benchmarks/svd_pipeline.py                       # "small", CPU, float32
    python benchmarks/svd_pipeline.py --size medium --device cuda --dtype fp16 --json out.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch

import harness  # first: it makes the repository root importable
from tests.helpers import perturb_

CONFIGS = harness.REPO_ROOT / "tests" / "configs"  # SVD-XT's scheduler and CLIP preprocessing

# Per size: UNet channels per stage, attention heads per stage (head dim 32 throughout), UNet layers
# per block, cross-attention width (= CLIP projection), VAE channels, CLIP tower (width, layers,
# patch), and the default run (frames, height, width, steps). The released SVD-XT is UNet
# (320, 640, 1280, 1280), VAE (128, 256, 512, 512), CLIP 1280 × 32 layers, 25 frames at 576 × 1024.
SIZES = {
    "tiny": dict(unet=(32, 64), heads=(1, 2), layers=1, cross=32, vae=(32, 32, 32, 32),
                 clip=(32, 2, 32), run=(3, 32, 48, 2)),
    "small": dict(unet=(64, 128, 128), heads=(2, 4, 4), layers=1, cross=64, vae=(64, 64, 64, 64),
                  clip=(64, 2, 32), run=(8, 128, 192, 6)),
    # ≈15 M UNet parameters with the released 4-level topology: the CPU sizes of `python -m benchmarks.run`.
    "m15": dict(unet=(32, 64, 128, 128), heads=(1, 2, 4, 4), layers=2, cross=128, vae=(32, 64, 128, 128),
                clip=(128, 2, 32), run=(8, 128, 128, 5)),
    "medium": dict(unet=(160, 320, 640, 640), heads=(5, 10, 20, 20), layers=2, cross=512,
                   vae=(128, 128, 256, 256), clip=(512, 8, 14), run=(14, 320, 512, 25)),
}


def build_checkpoint(size: str, folder: Path, seed: int = 0) -> None:
    """Build a random diffusers SVD pipeline of the given size and save it to ``folder`` (float32)."""
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler,
                           StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    spec, stages = SIZES[size], len(SIZES[size]["unet"])
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=spec["unet"], num_attention_heads=spec["heads"], layers_per_block=spec["layers"],
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (stages - 1) + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * (stages - 1),
        cross_attention_dim=spec["cross"], addition_time_embed_dim=spec["cross"] // 2,
        projection_class_embeddings_input_dim=3 * (spec["cross"] // 2),  # fps, motion bucket, noise aug
        in_channels=8, out_channels=4, num_frames=spec["run"][0], sample_size=spec["run"][1] // 8,
    )
    vae = AutoencoderKLTemporalDecoder(block_out_channels=spec["vae"], layers_per_block=1,
                                       down_block_types=("DownEncoderBlock2D",) * len(spec["vae"]))
    width, layers, patch = spec["clip"]
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=width // 32,
        projection_dim=spec["cross"], image_size=224, patch_size=patch, hidden_act="gelu"))
    for offset, module in enumerate((unet, vae, encoder)):
        perturb_(module, seed=seed + offset, scale=0.02)
    read = lambda name: {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}  # noqa: E731
    pipe = StableVideoDiffusionPipeline(
        unet=unet.eval(), vae=vae.eval(), image_encoder=encoder.eval(),
        scheduler=EulerDiscreteScheduler.from_config(read("svd_xt_scheduler.json")),
        feature_extractor=CLIPImageProcessor(**read("svd_xt_feature_extractor.json")))
    pipe.save_pretrained(folder)


def load(library: str, folder: Path, dtype: torch.dtype):
    """``library``'s StableVideoDiffusionPipeline from ``folder``, in ``dtype``."""
    if library == "diffusers":
        from diffusers import StableVideoDiffusionPipeline
    else:
        from vidiff import StableVideoDiffusionPipeline
    return StableVideoDiffusionPipeline.from_pretrained(folder, dtype=dtype)


def make_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """A smooth random RGB image at the output size."""
    low = np.random.default_rng(seed).integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    return PIL.Image.fromarray(low).resize((width, height), PIL.Image.Resampling.BICUBIC)




def inputs(args) -> tuple[tuple, dict]:
    """One call: a smooth random image at the output size, and the run's settings."""
    image = make_image(args.width, args.height)
    return (image,), dict(height=args.height, width=args.width, num_frames=args.frames,
                          num_inference_steps=args.steps, decode_chunk_size=args.decode_chunk_size)


SUBJECT = harness.Subject(runs={size: spec["run"] for size, spec in SIZES.items()}, build=build_checkpoint,
                          load=load, inputs=inputs, script=__file__)

if __name__ == "__main__":
    harness.main(SUBJECT, __doc__.split("\n\n")[0])
