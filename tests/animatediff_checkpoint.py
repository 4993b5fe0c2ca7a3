"""Tiny random AnimateDiff checkpoints, built with diffusers (the oracle) and saved to disk.

Two layouts, as users meet them:

- a Stable Diffusion 1.5 repository (``StableDiffusionPipeline`` layout, with ``safety_checker`` and
  ``feature_extractor`` listed in ``model_index.json`` but absent, so loading them would fail) plus a
  separate ``MotionAdapter`` folder;
- a saved ``AnimateDiffPipeline`` (its ``unet`` is a ``UNetMotionModel``, plus ``motion_adapter/``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from tests.helpers import perturb_
from tests.tokenizer_fixture import write_tiny_clip_tokenizer

# Two resolutions (one cross-attention stage, one plain), legacy `attention_head_dim` = heads.
UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)
MOTION_ADAPTER = dict(
    block_out_channels=(32, 64),
    motion_layers_per_block=2,
    motion_num_attention_heads=2,
    motion_norm_num_groups=8,
    motion_max_seq_length=32,
    use_motion_mid_block=True,
)
# Four blocks so the VAE downsamples by 8 like Stable Diffusion's.
VAE = dict(
    block_out_channels=(16, 16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)
TEXT_ENCODER = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77)
# Stable Diffusion 1.5's own scheduler config (PNDM); the AnimateDiff guide swaps in DDIM.
SD_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None,
)
# The guide's DDIM overrides on top of the repository's scheduler config.
GUIDE_DDIM = dict(clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)
# A fast call: non-square, 4 frames, 3 steps, numpy frames out.
SMALL_CALL = dict(height=32, width=48, num_frames=4, num_inference_steps=3, output_type="np")


def tiny_clip_text(seed: int, **overrides) -> tuple:
    """(tokenizer, text encoder): the tiny byte-level CLIP tokenizer (written to a temp dir) and a
    perturbed random transformers CLIPTextModel sized for it; ``overrides`` change TEXT_ENCODER."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(tempfile.mkdtemp(prefix="tiny-clip-tokenizer-"))
    write_tiny_clip_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **{**TEXT_ENCODER, **overrides},
    )
    return tokenizer, perturb_(CLIPTextModel(text_config), seed=seed).eval()


def build_parts(seed: int = 0) -> dict:
    """The diffusers components with tiny, perturbed random weights (tokenizer written to a temp dir)."""
    from diffusers import AutoencoderKL, MotionAdapter, PNDMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer, text_encoder = tiny_clip_text(seed + 3)
    return dict(
        unet=perturb_(UNet2DConditionModel(**UNET), seed=seed + 1).eval(),
        vae=perturb_(AutoencoderKL(**VAE), seed=seed + 2).eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=PNDMScheduler(**SD_SCHEDULER),
        motion_adapter=perturb_(MotionAdapter(**MOTION_ADAPTER), seed=seed + 4).eval(),
    )


def save_sd15_layout(directory: Path, parts: dict) -> None:
    """A Stable Diffusion 1.5-style repository whose model_index.json also lists a safety checker and
    a feature extractor that are not on disk (AnimateDiff must not read them)."""
    from diffusers import StableDiffusionPipeline

    sd_parts = {k: v for k, v in parts.items() if k != "motion_adapter"}
    pipe = StableDiffusionPipeline(**sd_parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(directory)
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index_path.write_text(json.dumps(index, indent=2))


def save_tiny_animatediff(root: Path, seed: int = 0) -> dict:
    """Write ``root/sd15`` (SD layout), ``root/motion_adapter`` and ``root/animatediff`` (a saved
    AnimateDiffPipeline, after swapping in the guide's DDIM); return the diffusers parts."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    parts = build_parts(seed)
    save_sd15_layout(root / "sd15", parts)
    parts["motion_adapter"].save_pretrained(root / "motion_adapter")
    pipe = AnimateDiffPipeline(**parts)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **GUIDE_DDIM)
    pipe.save_pretrained(root / "animatediff")
    return parts


def diffusers_pipeline(root: Path):
    """The oracle as the guide builds it: SD 1.5 folder + motion adapter, DDIM with the guide's overrides."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    adapter = MotionAdapter.from_pretrained(root / "motion_adapter")
    # The index lists a feature extractor that is not on disk; diffusers would try to load it.
    pipe = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=adapter, feature_extractor=None)
    pipe.scheduler = DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
    pipe.set_progress_bar_config(disable=True)
    return pipe
