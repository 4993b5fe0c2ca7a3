"""Speed and memory of vidiff's AnimateDiffPipeline next to diffusers', on the same weights.

One random Stable Diffusion 1.5-layout checkpoint plus a MotionAdapter is built with diffusers at the
chosen size and saved to a temporary folder; both libraries load it the way the AnimateDiff guide
does (SD folder + motion adapter, DDIM with the guide's overrides) and run the same prompt, negative
prompt, guidance 7.5 and seed. Nothing here is asserted: this is a measurement.

    python benchmarks/animatediff_pipeline.py                       # "small", CPU, float32
    python benchmarks/animatediff_pipeline.py --size medium --device cuda --dtype fp16 --json out.json
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import harness  # first: it makes the repository root importable
from tests import animatediff_checkpoint as tiny
from tests.helpers import perturb_
from tests.tokenizer_fixture import write_tiny_clip_tokenizer

PROMPT = "a rocket flying into space"
NEGATIVE_PROMPT = "bad quality, worse quality, low resolution"

# Per size above "tiny" (= the test checkpoint): UNet channels per stage (the last stage has no
# cross-attention, as in SD 1.5), attention heads per stage (legacy `attention_head_dim`; head dim
# 32), UNet and motion layers per block, motion heads, cross-attention width (= CLIP text width),
# CLIP text layers, VAE channels, and the default run (frames, height, width, steps). The real SD 1.5
# is UNet (320, 640, 1280, 1280) with 8 heads, CLIP 768 × 12 layers, VAE (128, 256, 512, 512), and
# AnimateDiff v1.5 runs 16 frames at 512 × 512.
SIZES = {
    "small": dict(unet=(64, 128, 128), heads=(2, 4, 4), layers=1, motion_heads=4, cross=64, text_layers=2,
                  vae=(64, 64, 64, 64), run=(8, 128, 128, 6)),
    # ≈15 M UNet parameters (8.7 M SD + 4.5 M motion) with the released 4-level topology: the CPU sizes
    # of `python -m benchmarks.run`.
    "m15": dict(unet=(32, 64, 128, 128), heads=(1, 2, 4, 4), layers=2, motion_heads=4, cross=128, text_layers=2,
                vae=(32, 64, 128, 128), run=(8, 128, 128, 5)),
    "medium": dict(unet=(160, 320, 640, 640), heads=(5, 10, 20, 20), layers=2, motion_heads=8, cross=512,
                   text_layers=8, vae=(128, 128, 256, 256), run=(16, 256, 256, 25)),
}
RUNS = {"tiny": (4, 32, 48, 3), **{size: spec["run"] for size, spec in SIZES.items()}}


def build_parts(size: str, seed: int) -> dict:
    """diffusers' SD 1.5 components + MotionAdapter at ``size``, random and perturbed."""
    if size == "tiny":
        return tiny.build_parts(seed)
    from diffusers import AutoencoderKL, MotionAdapter, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec, stages = SIZES[size], len(SIZES[size]["unet"])
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="bench-clip-tokenizer-") as folder:
        write_tiny_clip_tokenizer(folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    unet = UNet2DConditionModel(
        block_out_channels=spec["unet"], attention_head_dim=spec["heads"], layers_per_block=spec["layers"],
        down_block_types=("CrossAttnDownBlock2D",) * (stages - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (stages - 1),
        cross_attention_dim=spec["cross"], sample_size=spec["run"][1] // 8)
    adapter = MotionAdapter(block_out_channels=spec["unet"], motion_layers_per_block=spec["layers"],
                            motion_num_attention_heads=spec["motion_heads"], use_motion_mid_block=True)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=spec["cross"], intermediate_size=4 * spec["cross"],
        num_hidden_layers=spec["text_layers"], num_attention_heads=spec["cross"] // 32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(block_out_channels=spec["vae"], layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * len(spec["vae"]),
                        up_block_types=("UpDecoderBlock2D",) * len(spec["vae"]))
    networks = dict(unet=unet, vae=vae, text_encoder=text, motion_adapter=adapter)
    for offset, module in enumerate(networks.values()):
        perturb_(module, seed=seed + offset).eval()
    return dict(networks, tokenizer=tokenizer, scheduler=PNDMScheduler(**tiny.SD_SCHEDULER))


def build_checkpoint(size: str, folder: Path, seed: int = 0) -> None:
    """Save ``folder/sd15`` (Stable Diffusion 1.5 layout) and ``folder/motion_adapter`` at ``size``."""
    parts = build_parts(size, seed)
    tiny.save_sd15_layout(folder / "sd15", parts)
    parts["motion_adapter"].save_pretrained(folder / "motion_adapter")


def load(library: str, folder: Path, dtype: torch.dtype):
    """``library``'s AnimateDiffPipeline as the guide loads it: SD folder + motion adapter, DDIM."""
    if library == "diffusers":
        import diffusers as lib
        # The SD index lists a feature extractor that is not on disk; diffusers would try to load it.
        extra = dict(feature_extractor=None)
    else:
        import vidiff as lib
        extra = {}
    adapter = lib.MotionAdapter.from_pretrained(folder / "motion_adapter")
    scheduler = lib.DDIMScheduler.from_pretrained(folder / "sd15", subfolder="scheduler", **tiny.GUIDE_DDIM)
    return lib.AnimateDiffPipeline.from_pretrained(folder / "sd15", motion_adapter=adapter, scheduler=scheduler,
                                                   dtype=dtype, **extra)


def inputs(args) -> tuple[tuple, dict]:
    """One call: the prompt with a negative prompt, guidance 7.5, and the run's settings."""
    return (), dict(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, guidance_scale=7.5, num_frames=args.frames,
                    height=args.height, width=args.width, num_inference_steps=args.steps,
                    decode_chunk_size=args.decode_chunk_size)


SUBJECT = harness.Subject(runs=RUNS, build=build_checkpoint, load=load, inputs=inputs, script=__file__)

if __name__ == "__main__":
    harness.main(SUBJECT, __doc__.split("\n\n")[0])
