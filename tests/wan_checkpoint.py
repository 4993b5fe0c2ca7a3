"""Tiny random Wan pipelines, built with diffusers (the oracle), every parameter perturbed, saved to disk.

Kinds (the released repositories they stand for):

* ``"t2v"``: Wan 2.1 T2V (16-channel Wan 2.1 VAE, 8× spatial);
* ``"i2v"``: Wan 2.1 I2V (CLIP image branch: ``image_dim`` + ``added_kv_proj_dim``, 36 input channels);
* ``"ti2v"``: Wan 2.2 TI2V (Wan 2.2 VAE with patchify, 16× spatial, ``expand_timesteps``);
* ``"a14b"`` / ``"a14b_i2v"``: Wan 2.2 A14B T2V / I2V (two experts, ``boundary_ratio``);
* ``"flf2v"``: Wan 2.1 FLF2V (first and last frame: the image branch's ``pos_embed_seq_len``).

Sizes are tiny but every path matters: 2 heads of 12 (RoPE splits 4/4/4), a 32-wide UMT5 with 4
heads, z_dim 4 with latent mean/std far from (0, 1).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers import perturb_
from vidiff.demo.umt5_tokenizer import write_tiny_umt5_tokenizer

TEXT_DIM = 32
UMT5 = dict(
    d_model=TEXT_DIM, d_kv=8, d_ff=40, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    relative_attention_max_distance=16, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
    dropout_rate=0.0, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
Z_DIM = 4
LATENTS_MEAN = [0.3, -0.5, 0.1, 0.8]
LATENTS_STD = [1.7, 0.6, 2.2, 0.9]
VAE_21 = dict(
    base_dim=8, z_dim=Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
    latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD,
)
VAE_22 = dict(
    VAE_21, decoder_base_dim=12, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
    scale_factor_spatial=16, scale_factor_temporal=4,
)
TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=Z_DIM, out_channels=Z_DIM,
    text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)
CLIP_VISION = dict(
    hidden_size=16, intermediate_size=24, projection_dim=16, num_hidden_layers=3, num_attention_heads=2,
    image_size=32, patch_size=8, hidden_act="gelu",
)
# The flow-form UniPC every Wan repository ships (flow_shift 3.0 as Wan 2.1).
SCHEDULER = dict(
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000,
    solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
)
KINDS = ("t2v", "i2v", "ti2v", "a14b", "a14b_i2v", "flf2v")
# CLIP tokens of one image: the class token + (image_size / patch_size)² patches.
CLIP_TOKENS = 1 + (CLIP_VISION["image_size"] // CLIP_VISION["patch_size"]) ** 2


def _umt5(seed: int, vocab_size: int):
    import transformers

    torch.manual_seed(seed)
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(vocab_size=vocab_size, **UMT5)).eval()
    return perturb_(model, seed)


def _transformer(seed: int, **overrides):
    import diffusers

    torch.manual_seed(seed)
    return perturb_(diffusers.WanTransformer3DModel(**{**TRANSFORMER, **overrides}).eval(), seed)


def _clip(seed: int):
    import transformers

    torch.manual_seed(seed)
    model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**CLIP_VISION)).eval()
    processor = transformers.CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    return perturb_(model, seed), processor


def build(kind: str, root: Path, seed: int = 0):
    """The diffusers pipeline of ``kind`` (see the module docstring), its tokenizer written under ``root``."""
    import diffusers
    import transformers

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tokenizer_dir = root / "tokenizer_source"
    write_tiny_umt5_tokenizer(tokenizer_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    text_encoder = _umt5(seed, len(tokenizer))
    two_experts = kind.startswith("a14b")
    image = kind in ("i2v", "a14b_i2v", "flf2v")
    vae_config = VAE_22 if kind == "ti2v" else VAE_21
    torch.manual_seed(seed + 1)
    vae = perturb_(diffusers.AutoencoderKLWan(**vae_config).eval(), seed + 1)
    extra = {}
    if image:
        extra = dict(in_channels=2 * Z_DIM + 4)
    if kind in ("i2v", "flf2v"):
        extra.update(image_dim=CLIP_VISION["hidden_size"], added_kv_proj_dim=TRANSFORMER["num_attention_heads"] * TRANSFORMER["attention_head_dim"])
    if kind == "flf2v":
        extra.update(pos_embed_seq_len=2 * CLIP_TOKENS)
    transformer = _transformer(seed + 2, **extra)
    transformer_2 = _transformer(seed + 3, **extra) if two_experts else None
    scheduler = diffusers.UniPCMultistepScheduler(**SCHEDULER)
    parts = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer)
    if two_experts:
        parts.update(transformer_2=transformer_2, boundary_ratio=0.9 if image else 0.875)
    if kind == "ti2v":
        parts.update(expand_timesteps=True)
    if not image and kind != "ti2v":
        return diffusers.WanPipeline(**parts)
    if kind in ("i2v", "flf2v"):
        image_encoder, image_processor = _clip(seed + 4)
        parts.update(image_encoder=image_encoder, image_processor=image_processor)
    return diffusers.WanImageToVideoPipeline(**parts)


def save_tiny_wan(kind: str, root: Path, seed: int = 0) -> tuple[Path, object]:
    """Build ``kind`` with diffusers, save it to ``root / kind``; returns (folder, diffusers pipeline)."""
    pipe = build(kind, root, seed)
    folder = root / kind
    pipe.save_pretrained(folder)
    return folder, pipe
