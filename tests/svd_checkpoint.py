"""A tiny random Stable Video Diffusion checkpoint, built with diffusers (the oracle) and saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from tests.helpers import perturb_

# Wide enough that the image embedding and conditioning latents visibly move the output.
UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=8,
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    cross_attention_dim=32,
    num_attention_heads=(2, 4),
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24,
    num_frames=3,
)
# Four blocks so the VAE downsamples by 8 like the real one (32 channels: GroupNorm(32) needs them).
VAE = dict(
    block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    layers_per_block=1,
    latent_channels=4,
    in_channels=3,
    out_channels=3,
)
CLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    projection_dim=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=224,
    patch_size=32,
    hidden_act="gelu",
)
# A fast pipeline call on the tiny checkpoint: non-square, 3 frames, 2 steps, numpy frames out.
SMALL_CALL = dict(height=32, width=48, num_frames=3, num_inference_steps=2, output_type="np")
SCHEDULER_CONFIG = Path(__file__).parent / "configs" / "svd_xt_scheduler.json"
FEATURE_EXTRACTOR_CONFIG = Path(__file__).parent / "configs" / "svd_xt_feature_extractor.json"


def build_diffusers_svd(seed: int = 0):
    """A diffusers StableVideoDiffusionPipeline with tiny, perturbed random weights."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = perturb_(UNetSpatioTemporalConditionModel(**UNET), seed=seed + 1)
    vae = perturb_(AutoencoderKLTemporalDecoder(**VAE), seed=seed + 2)
    image_encoder = perturb_(CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VISION)), seed=seed + 3)
    scheduler_config = {k: v for k, v in json.loads(SCHEDULER_CONFIG.read_text()).items() if not k.startswith("_")}
    scheduler = EulerDiscreteScheduler.from_config(scheduler_config)
    processor_config = {k: v for k, v in json.loads(FEATURE_EXTRACTOR_CONFIG.read_text()).items() if not k.startswith("_")}
    feature_extractor = CLIPImageProcessor(**processor_config)
    pipe = StableVideoDiffusionPipeline(
        vae=vae.eval(), image_encoder=image_encoder.eval(), unet=unet.eval(), scheduler=scheduler,
        feature_extractor=feature_extractor,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_svd(directory: Path, seed: int = 0, variant: str | None = None):
    """Build and save the tiny diffusers pipeline; returns the diffusers pipeline (the oracle)."""
    pipe = build_diffusers_svd(seed)
    pipe.save_pretrained(directory, variant=variant)
    return pipe


def random_image(width: int = 56, height: int = 40, seed: int = 0) -> PIL.Image.Image:
    """A smooth random RGB image (smooth so resizing filters matter but stay well-behaved)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    return PIL.Image.fromarray(low).resize((width, height), PIL.Image.Resampling.BICUBIC)
