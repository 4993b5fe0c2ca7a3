"""Speed and memory of vidiff's WanPipeline (text → video) next to diffusers', on the same weights.

One random Wan 2.1 T2V checkpoint is built with diffusers at the chosen size (``tiny`` = the test
fixture `tests/wan_checkpoint.py`; larger sizes keep Wan 2.1's topology, narrower) and saved to a
temporary folder; both libraries load it and run the same prompt, negative prompt, guidance 5.0
and seed (flow UniPC, shift 3, as released). Nothing here is asserted: this is a measurement.

    python benchmarks/wan_pipeline.py                               # "small", CPU, float32
    python benchmarks/wan_pipeline.py --size m15 --device cuda --dtype bf16 --json out.json

Wan makes 4k + 1 frames: other frame counts (the shared CPU sizes' 6 and 8) are rounded down to
5 by both libraries alike, with a warning. CUDA runs of the released Wan 2.1 T2V-1.3B (81 × 480 ×
832, 50 steps, bf16) go through ``python -m benchmarks.run --device cuda --pipelines wan`` and
``benchmarks/released.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import harness  # first: it makes the repository root importable
from tests import wan_checkpoint as tiny
from tests.helpers import perturb_

PROMPT = "A cat walks on the grass, realistic"
NEGATIVE_PROMPT = "blurry, static, low quality"

# Per size above "tiny": transformer heads × head width (128 in every release), layers and
# feed-forward width; UMT5 width and layers; the Wan 2.1 VAE's base width; the default run (frames,
# height, width, steps). The released 1.3B is 12 × 128 heads, 30 layers, ffn 8960; UMT5-XXL 4096 ×
# 24 layers; VAE base 96.
SIZES = {
    "small": dict(heads=2, head_dim=32, layers=2, ffn=256, text=64, text_layers=2, vae=16, run=(9, 64, 96, 5)),
    # ≈15 M transformer parameters: the CPU size of `python -m benchmarks.run`.
    "m15": dict(heads=4, head_dim=64, layers=12, ffn=1024, text=128, text_layers=2, vae=32, run=(9, 96, 128, 5)),
    "medium": dict(heads=8, head_dim=64, layers=16, ffn=2048, text=256, text_layers=4, vae=64, run=(17, 256, 256, 20)),
}
RUNS = {"tiny": (5, 32, 32, 3), **{size: spec["run"] for size, spec in SIZES.items()}}


def build_parts(size: str, seed: int, folder: Path):
    """diffusers' WanPipeline at ``size``, random and perturbed (the tokenizer written under ``folder``)."""
    if size == "tiny":
        return tiny.build("t2v", folder, seed)
    import diffusers
    import transformers

    spec = SIZES[size]
    tokenizer_dir = folder / "tokenizer_source"
    tiny.write_tiny_umt5_tokenizer(tokenizer_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    text = transformers.UMT5EncoderModel(transformers.UMT5Config(
        **dict(tiny.UMT5, d_model=spec["text"], d_kv=spec["text"] // 4, d_ff=4 * spec["text"], num_layers=spec["text_layers"]),
        vocab_size=len(tokenizer)))
    vae = diffusers.AutoencoderKLWan(base_dim=spec["vae"], z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                     temperal_downsample=[False, True, True])
    transformer = diffusers.WanTransformer3DModel(
        **dict(tiny.TRANSFORMER, num_attention_heads=spec["heads"], attention_head_dim=spec["head_dim"], in_channels=16,
               out_channels=16, text_dim=spec["text"], freq_dim=256, ffn_dim=spec["ffn"], num_layers=spec["layers"],
               rope_max_seq_len=1024))
    for offset, module in enumerate((text, vae, transformer)):
        perturb_(module, seed + offset).eval()
    return diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text, vae=vae, transformer=transformer,
                                 scheduler=diffusers.UniPCMultistepScheduler(**tiny.SCHEDULER))


def build_checkpoint(size: str, folder: Path, seed: int = 0) -> None:
    """Save the random WanPipeline of ``size`` into ``folder`` (the tokenizer source beside it)."""
    with tempfile.TemporaryDirectory(prefix="bench-umt5-tokenizer-") as scratch:
        build_parts(size, seed, Path(scratch)).save_pretrained(folder)


def load(library: str, folder: Path, dtype: torch.dtype):
    """``library``'s WanPipeline from ``folder``, on the CPU, in ``dtype``."""
    if library == "diffusers":
        import diffusers

        return diffusers.WanPipeline.from_pretrained(folder, dtype=dtype)
    from vidiff.pipelines.wan import WanPipeline

    return WanPipeline.from_pretrained(folder, dtype=dtype)


def inputs(args) -> tuple[tuple, dict]:
    """One call: the prompt with a negative prompt, guidance 5.0, and the run's settings."""
    return (), dict(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, guidance_scale=5.0, num_frames=args.frames,
                    height=args.height, width=args.width, num_inference_steps=args.steps)


SUBJECT = harness.Subject(runs=RUNS, build=build_checkpoint, load=load, inputs=inputs, script=__file__)

if __name__ == "__main__":
    harness.main(SUBJECT, __doc__.split("\n\n")[0])
