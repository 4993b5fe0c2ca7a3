"""Run as a script by tests/test_memory_estimate_wan.py: the CPU memory of two Wan calls in this fresh process.

Builds a small random WanPipeline with vidiff's classes (no files but the tokenizer), warms up, then
measures each call's peak RSS (VmHWM reset through /proc/self/clear_refs).
Prints one JSON line: the configs, the parameter count and, per size, the process's peak RSS during
the call and its increase over the RSS before it (bytes). Run with a fixed glibc
``MALLOC_MMAP_THRESHOLD_`` so freed blocks leave the process at once (else RSS hides later peaks).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from vidiff.demo.umt5_tokenizer import write_tiny_umt5_tokenizer
from vidiff.demo.wan_checkpoint import WAN_SCHEDULER
from vidiff.models.umt5 import UMT5EncoderModel
from vidiff.models.wan_transformer import WanTransformer3DModel
from vidiff.models.wan_vae import AutoencoderKLWan
from vidiff.pipelines.wan import WanPipeline
from vidiff.schedulers import UniPCMultistepScheduler
from vidiff.tokenizer import T5TokenizerFast

TRANSFORMER = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
                   text_dim=32, freq_dim=32, ffn_dim=256, num_layers=2, rope_max_seq_len=1024,
                   qk_norm="rms_norm_across_heads", cross_attn_norm=True)
VAE = dict(base_dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
TEXT = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
            relative_attention_max_distance=16)


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main(sizes: list[tuple[int, int, int]]) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        vocab = write_tiny_umt5_tokenizer(Path(folder) / "tokenizer")
        tokenizer = T5TokenizerFast.from_pretrained(folder)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=UMT5EncoderModel.from_config(dict(TEXT, vocab_size=vocab)).eval(),
        vae=AutoencoderKLWan.from_config(VAE).eval(), transformer=WanTransformer3DModel.from_config(TRANSFORMER).eval(),
        scheduler=UniPCMultistepScheduler.from_config(WAN_SCHEDULER),
    )
    pipe.set_progress_bar_config(disable=True)
    calls = [dict(prompt="a cat", num_frames=f, height=h, width=w, num_inference_steps=1) for f, h, w in sizes]
    for call in calls:  # warm-up: kernels and caches for every shape
        pipe(**call, generator=torch.Generator().manual_seed(0))
    peaks, increases = [], []
    for call in calls:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_bytes("VmRSS")
        pipe(**call, generator=torch.Generator().manual_seed(0))
        peaks.append(_status_bytes("VmHWM"))
        increases.append(peaks[-1] - before)
    parameters = sum(p.numel() for network in (pipe.text_encoder, pipe.vae, pipe.transformer) for p in network.parameters())
    configs = dict(transformer=TRANSFORMER, vae=VAE, text_encoder=dict(TEXT, vocab_size=vocab))
    print(json.dumps(dict(configs=configs, parameters=parameters, peaks=peaks, increases=increases)))


if __name__ == "__main__":
    main([tuple(int(v) for v in text.split("x")) for text in sys.argv[1:]])
