"""The tiny random Wan 2.1 text-to-video checkpoint of ``vidiff demo``, built with vidiff's own classes.

Same layout as ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (``model_index.json``; ``tokenizer``,
``text_encoder`` (UMT5), ``vae`` (AutoencoderKLWan), ``scheduler`` (flow UniPC, as released) and
``transformer`` folders), a few hundred thousand parameters: loads and runs in well under a second.
The sizes keep every path of the real model: RoPE over all three axes (head dimension 16), the
Wan 2.1 VAE's 4× temporal and 8× spatial compression, latent mean/std away from (0, 1).
"""

from __future__ import annotations

from pathlib import Path

from ..models.umt5 import UMT5EncoderModel
from ..models.wan_transformer import WanTransformer3DModel
from ..models.wan_vae import AutoencoderKLWan
from ..pipelines.wan import WanPipeline
from ..schedulers import UniPCMultistepScheduler
from ..tokenizer import T5TokenizerFast
from .umt5_tokenizer import write_tiny_umt5_tokenizer

TEXT_WIDTH = 32
Z_DIM = 4
WAN_TEXT_ENCODER = dict(
    d_model=TEXT_WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    relative_attention_max_distance=16, feed_forward_proj="gated-gelu", dropout_rate=0.0,
)
WAN_VAE = dict(
    base_dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
    latents_mean=[0.2, -0.4, 0.1, 0.6], latents_std=[1.5, 0.7, 2.0, 1.1],
)
WAN_TRANSFORMER = dict(
    patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=16, in_channels=Z_DIM, out_channels=Z_DIM,
    text_dim=TEXT_WIDTH, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
)
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers/scheduler/scheduler_config.json: UniPC in its flow form, shift 3.
WAN_SCHEDULER = dict(
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
    solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    timestep_spacing="linspace", steps_offset=0,
)
WAN_RECIPE = [WAN_TEXT_ENCODER, WAN_VAE, WAN_TRANSFORMER, WAN_SCHEDULER]


def build_wan(folder: Path, jittered) -> None:
    """Write the demo's Wan 2.1 T2V checkpoint into ``folder``; ``jittered(model)`` moves its norm
    weights and biases off their constant init (the other demo networks' treatment)."""
    vocab_size = write_tiny_umt5_tokenizer(Path(folder) / "tokenizer")
    tokenizer = T5TokenizerFast.from_pretrained(folder)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=jittered(UMT5EncoderModel.from_config(dict(WAN_TEXT_ENCODER, vocab_size=vocab_size))),
        vae=jittered(AutoencoderKLWan.from_config(WAN_VAE)),
        scheduler=UniPCMultistepScheduler.from_config(WAN_SCHEDULER),
        transformer=jittered(WanTransformer3DModel.from_config(WAN_TRANSFORMER)),
    )
    pipe.save_pretrained(folder)

