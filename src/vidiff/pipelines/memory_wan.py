"""The memory estimate of a Wan run (a diffusion transformer and a causal video VAE), from the configs.

:func:`vidiff.pipelines.memory.estimate_memory` hands a pipeline whose configs hold a
``transformer`` (or ``transformer_2``) here. Same phases as for the UNet pipelines, other shapes:

- denoise: the float32 latents ``[B', C, f, h, w]`` (f = (F − 1)/4 + 1, h × w = H/s × W/s; B' = 2·B
  with guidance, both branches run as one batch) and one transformer block's working set per token
  (T = f·h·w / patch tokens, or a context window's): the residual stream and, at the block's peak,
  either attention's (normed input, q, k, v, their rotated copies, output: ≈ 8·D) or the
  feed-forward's (input, the ffn_dim-wide hidden and its GELU, output). With forward chunking the
  attention and feed-forward run one sequence at a time, so only one of B' holds that peak.
  Attention scores are not counted (fused kernels, see :mod:`memory`).
- decode: Wan's VAE decodes one latent frame at a time (4 video frames out) with a feature cache
  that keeps the last 2 frames of every causal convolution's input. Counted: those 4 frames' working
  set at the decoder's full resolution (Wan 2.2's decoder ends at H/2 × W/2 before un-patchifying),
  the cache at every level, and the decoded frames gathered so far (dtype, then float32). Tiling
  bounds both to one 256 × 256 tile (the VAE's default tile).
- output: as for every pipeline (float32 frames, one uint8 video).

Rough on purpose (within about 2× of the measured peak); per-token timesteps of Wan 2.2 TI2V
(6·D float32 per token) are inside that margin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from . import memory

# Elements alive per token at a block's attention peak, in units of the hidden width D (see above).
ATTENTION_WORKING_SET = 8
# The residual stream and its modulated copy, per token, in units of D: alive through every block.
RESIDUAL_SET = 2
# The decoder's working set per output frame and full-resolution pixel, in units of its channels
# there: a resnet's input, RMS-normed, SiLU'd, convolved (with its causal padding), and the sum.
WAN_VAE_WORKING_SET = 8
CACHE_FRAMES = 2  # frames of each causal convolution's input the feature cache keeps
FRAMES_PER_LATENT = 4  # video frames the decoder makes from one latent frame (after the first)
WAN_TILE = 256  # pixels a side of one decode tile: AutoencoderKLWan's default tile_sample_min_*
FLOAT32 = 4


def is_wan(configs: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether ``configs`` (by component) are a Wan pipeline's: a transformer and no UNet."""
    return "unet" not in configs and ("transformer" in configs or "transformer_2" in configs)


def wan_vae_factor(vae: Mapping[str, Any]) -> int:
    """Pixels per latent pixel of a Wan VAE config: ``scale_factor_spatial`` if written, else
    patch × 2 per downsampling stage (8 for Wan 2.1, 16 for Wan 2.2)."""
    given = vae.get("scale_factor_spatial")
    if given:
        return int(given)
    return int(vae.get("patch_size") or 1) * 2 ** (len(vae.get("dim_mult", (1, 2, 4, 4))) - 1)


def estimate_wan_memory(
    configs: Mapping[str, Mapping[str, Any]], sizes: memory.WeightSizes, size: memory.RunSize, levers: memory.Levers
) -> memory.MemoryEstimate:
    """The :class:`memory.MemoryEstimate` of a Wan run (see the module docstring)."""
    transformer = configs.get("transformer") or configs["transformer_2"]
    vae = configs["vae"]
    element = memory.dtype_bytes(size.dtype)
    factor = wan_vae_factor(vae)
    latent_frames = (size.num_frames - 1) // FRAMES_PER_LATENT + 1
    latent_h, latent_w = math.ceil(size.height / factor), math.ceil(size.width / factor)
    batch = size.videos * (2 if size.guidance else 1)
    channels = transformer.get("in_channels", 16) + transformer.get("out_channels", 16)
    latents = memory.LATENT_COPIES * batch * channels * latent_frames * latent_h * latent_w * FLOAT32
    # Context windows count latent frames for Wan: the transformer sees one window at a time.
    window = latent_frames if size.window_frames is None else min(size.window_frames, latent_frames)
    tokens = _tokens(transformer, window, latent_h, latent_w)
    width = transformer.get("num_attention_heads", 12) * transformer.get("attention_head_dim", 128)
    peak = max(ATTENTION_WORKING_SET * width, 2 * width + 2 * transformer.get("ffn_dim", 4 * width))
    sequences_at_peak = 1 if levers.forward_chunking else batch
    activations = tokens * (batch * RESIDUAL_SET * width + sequences_at_peak * peak)
    on_device = {None: None, "model": sizes.largest_network, "sequential": sizes.largest_layer}[levers.offload]
    return memory.MemoryEstimate(
        weights=sizes.total * element,
        latents=latents,
        denoiser_activations=activations * element,
        vae_decode=_decode_bytes(vae, size, element, levers.vae_tiling),
        output_frames=memory.output_bytes(size),
        device_weights=None if on_device is None else on_device * element,
    )


def _tokens(transformer: Mapping[str, Any], frames: int, latent_h: int, latent_w: int) -> int:
    patch_t, patch_h, patch_w = transformer.get("patch_size", (1, 2, 2))
    return math.ceil(frames / patch_t) * math.ceil(latent_h / patch_h) * math.ceil(latent_w / patch_w)


def _decode_bytes(vae: Mapping[str, Any], size: memory.RunSize, element: int, tiled: bool) -> int:
    """The decoder's working set and feature cache for ``size.videos`` videos, plus the gathered frames."""
    patch = int(vae.get("patch_size") or 1)
    height, width = (min(size.height, WAN_TILE), min(size.width, WAN_TILE)) if tiled else (size.height, size.width)
    pixels = math.ceil(height / patch) * math.ceil(width / patch)  # the decoder's full resolution
    base = vae.get("decoder_base_dim") or vae.get("base_dim", 96)
    mult = list(vae.get("dim_mult", (1, 2, 4, 4)))
    full = base * mult[0]
    working = FRAMES_PER_LATENT * WAN_VAE_WORKING_SET * full * pixels
    # The cache: every level's causal convolutions (two per resnet, plus the level's up-sampler),
    # at that level's channels and resolution (a quarter of the pixels per level down).
    convs = 2 * (vae.get("num_res_blocks", 2) + 1) + 1
    levels = sum(base * m * pixels / 4**level for level, m in enumerate(mult))
    cache = CACHE_FRAMES * convs * int(levels)
    gathered = size.videos * size.num_frames * 3 * size.height * size.width * (element + FLOAT32)
    return size.videos * (working + cache) * element + gathered
