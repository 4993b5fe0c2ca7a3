"""A tiny random I2VGen-XL checkpoint, built with diffusers (the oracle) and saved to disk.

The networks are small but not trivially so: 32-wide text and image embeddings, 4- and 8-head
attention, so that the prompt and the image move the frames well beyond the parity tolerance (a
broken text or image path cannot hide under it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests import animatediff_checkpoint
from tests.helpers import perturb_

# text width (AnimateDiff's tiny CLIP text encoder) = image projection width = UNet cross-attention width
CROSS = animatediff_checkpoint.TEXT_ENCODER["hidden_size"]
UNET = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=CROSS,
    attention_head_dim=8,
    num_attention_heads=None,
    in_channels=4,
    out_channels=4,
    sample_size=8,
)
# AnimateDiff's tiny 4-block VAE (it downsamples by 8 like the real one). scaling_factor: neither the default
# (0.18215) nor 1, so a hard-coded or forgotten factor breaks parity; large enough that the image
# latents (and so the image) visibly steer the tiny model.
VAE = {**animatediff_checkpoint.VAE, "scaling_factor": 0.8}
CLIP_VISION = dict(
    hidden_size=32, intermediate_size=48, projection_dim=CROSS, num_hidden_layers=2, num_attention_heads=4,
    image_size=224, patch_size=32, hidden_act="gelu",
)
CONFIGS = Path(__file__).parent / "configs"
# A fast call: non-square, 4 frames, 3 steps, numpy frames out.
SMALL_CALL = dict(height=32, width=48, num_frames=4, num_inference_steps=3, output_type="np")


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}


def build_parts(
    seed: int = 0,
    unet: dict | None = None,
    vae: dict | None = None,
    text: dict | None = None,
    vision: dict | None = None,
) -> dict:
    """The diffusers/transformers components with tiny, perturbed random weights; ``unet``, ``vae``,
    ``text`` and ``vision`` (the CLIP image tower) override entries of the default configs (for
    held-out variants and the benchmark's larger sizes)."""
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    tokenizer, text_encoder = animatediff_checkpoint.tiny_clip_text(seed + 3, **(text or {}))
    return dict(
        unet=perturb_(I2VGenXLUNet(**{**UNET, **(unet or {})}), seed=seed + 1).eval(),
        vae=perturb_(AutoencoderKL(**{**VAE, **(vae or {})}), seed=seed + 2).eval(),
        text_encoder=text_encoder,
        image_encoder=perturb_(
            CLIPVisionModelWithProjection(CLIPVisionConfig(**{**CLIP_VISION, **(vision or {})})), seed=seed + 4
        ).eval(),
        tokenizer=tokenizer,
        feature_extractor=CLIPImageProcessor(**_config("svd_xt_feature_extractor.json")),
        scheduler=DDIMScheduler.from_config(_config("i2vgenxl_scheduler.json")),
    )


def save_tiny_i2vgen_xl(directory: Path, seed: int = 0, variant: str | None = None, **overrides):
    """Build the tiny diffusers pipeline, save it to ``directory`` and return it (the oracle)."""
    from diffusers import I2VGenXLPipeline

    pipe = I2VGenXLPipeline(**build_parts(seed, **overrides))
    pipe.save_pretrained(directory, variant=variant)
    pipe.set_progress_bar_config(disable=True)
    return pipe
