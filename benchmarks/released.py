"""The released configs (``tests/configs``, copies of ``/work/shared/configs``) for the CUDA benchmark:
random fp16 checkpoints built on the GPU, and FLOPs per video counted on the meta device.

Nothing is downloaded: every network is built from its published config.json with random
(perturbed) weights; the tokenizer is the tests' tiny CLIP tokenizer (its ids fit every vocabulary).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# The tests' copies of the published configs travel with the checkout (to a GPU machine too); the
# shared folder (or $VIDIFF_CONFIGS) is the fallback for a file they lack.
LOCAL = REPO_ROOT / "tests" / "configs"
SHARED = Path(os.environ.get("VIDIFF_CONFIGS", "/work/shared/configs"))
TEXT_TOKENS = 77  # CLIP's padded prompt length
WAN_TEXT_TOKENS = 512  # Wan's max_sequence_length
WAN_T2V = "wan/Wan2.1-T2V-1.3B-Diffusers"  # the repository's config files, under tests/configs


def config(name: str) -> dict:
    """A published config without its bookkeeping keys (``_class_name``, ``_source`` …)."""
    folder = LOCAL if (LOCAL / name).exists() else SHARED
    return {k: v for k, v in json.loads((folder / name).read_text()).items() if not k.startswith("_")}


def networks(pipeline: str) -> dict[str, torch.nn.Module]:
    """The pipeline's released networks, built on the current default device (meta, cuda …)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    if pipeline == "wan":  # Wan 2.1 T2V-1.3B
        from transformers import UMT5Config, UMT5EncoderModel

        return dict(transformer=diffusers.WanTransformer3DModel.from_config(config(f"{WAN_T2V}/transformer/config.json")),
                    vae=diffusers.AutoencoderKLWan.from_config(config(f"{WAN_T2V}/vae/config.json")),
                    text_encoder=UMT5EncoderModel(UMT5Config(**config(f"{WAN_T2V}/text_encoder/config.json"))))
    if pipeline == "svd":
        return dict(unet=diffusers.UNetSpatioTemporalConditionModel.from_config(config("svd_xt_unet.json")),
                    vae=diffusers.AutoencoderKLTemporalDecoder.from_config(config("svd_xt_vae.json")),
                    image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**config("svd_xt_image_encoder.json"))))
    if pipeline == "animatediff":
        return dict(unet=diffusers.UNet2DConditionModel.from_config(config("sd15_unet.json")),
                    motion_adapter=diffusers.MotionAdapter.from_config(config("animatediff_motion_adapter_v1_5_2.json")),
                    vae=diffusers.AutoencoderKL.from_config(config("sd15_vae.json")),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**config("sd15_text_encoder.json"))))
    return dict(unet=diffusers.I2VGenXLUNet.from_config(config("i2vgenxl_unet.json")),
                vae=diffusers.AutoencoderKL.from_config(config("i2vgenxl_vae.json")),
                text_encoder=CLIPTextModel(CLIPTextConfig(**config("i2vgenxl_text_encoder.json"))),
                image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**config("i2vgenxl_image_encoder.json"))))


def _denoiser_inputs(pipeline: str, unet, frames: int, h: int, w: int) -> tuple[tuple, dict]:
    """One denoiser call with guidance: batch 2 (unconditional + conditional), latents h × w."""
    meta = dict(device="meta")
    t = torch.tensor(500.0, **meta)
    if pipeline == "wan":  # latent frames (F − 1)/4 + 1; UMT5 states zero-padded to 512 tokens
        latent_frames = (frames - 1) // 4 + 1
        return (torch.empty(2, unet.config.in_channels, latent_frames, h, w, **meta), t.expand(2),
                torch.empty(2, WAN_TEXT_TOKENS, unet.config.text_dim, **meta)), {}
    if pipeline == "svd":
        cross = unet.config.cross_attention_dim
        return (torch.empty(2, frames, 8, h, w, **meta), t, torch.empty(2, 1, cross, **meta),
                torch.empty(2, 3, **meta)), {}
    if pipeline == "animatediff":
        cross = unet.config.cross_attention_dim
        return (torch.empty(2, 4, frames, h, w, **meta), t, torch.empty(2, TEXT_TOKENS, cross, **meta)), {}
    cross = unet.config.cross_attention_dim
    return (torch.empty(2, 4, frames, h, w, **meta), t), dict(
        fps=torch.empty(2, **meta), image_latents=torch.empty(2, 4, frames, h, w, **meta),
        image_embeddings=torch.empty(2, cross, **meta), encoder_hidden_states=torch.empty(2, TEXT_TOKENS, cross, **meta))


def _motion_unet():
    """AnimateDiff's denoiser, SD 1.5's UNet with the v1-5-2 adapter's motion modules, on meta.

    Built with vidiff's classes: diffusers' UNetMotionModel mis-shapes its blocks' tensors on meta
    (a broadcast error inside its transformer blocks); the two compute the same function."""
    import vidiff
    from vidiff.models.unet_motion import UNetMotionModel

    sd = vidiff.UNet2DConditionModel.from_config(config("sd15_unet.json"))
    adapter = vidiff.MotionAdapter.from_config(config("animatediff_motion_adapter_v1_5_2.json"))
    return UNetMotionModel.from_unet2d(sd, adapter, load_weights=False)


def video_flops(pipeline: str, size) -> float:
    """FLOPs of one video at ``size``: one guided denoiser call × steps + the VAE decode of every
    frame, counted by ``torch.utils.flop_counter`` on meta tensors (matmuls, convolutions and
    attention; the text/image encoders, under 1 %, are left out)."""
    import diffusers
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        nets = networks(pipeline)
        unet = nets.get("unet") or nets["transformer"]
        if pipeline == "animatediff":
            unet = _motion_unet()
    # A few buffers (e.g. SVD's mix factors, made with the legacy torch.Tensor(...)) ignore the
    # default device and land on the CPU: move them too.
    unet, nets["vae"] = unet.to("meta"), nets["vae"].to("meta")
    wan = pipeline == "wan"
    scale = 8 if wan else 2 ** (len(nets["vae"].config.block_out_channels) - 1)
    h, w = size.height // scale, size.width // scale
    args, kwargs = _denoiser_inputs(pipeline, unet, size.frames, h, w)
    if wan:  # one video's latents [1, z, (F − 1)/4 + 1, h, w]
        latents = torch.empty(1, nets["vae"].config.z_dim, (size.frames - 1) // 4 + 1, h, w, device="meta")
    else:
        latents = torch.empty(size.frames, nets["vae"].config.latent_channels, h, w, device="meta")
    decode_kwargs = dict(num_frames=size.frames) if pipeline == "svd" else {}
    # diffusers makes a few small tensors without a device (CPU): the meta default device catches them.
    with torch.device("meta"), FlopCounterMode(display=False) as denoise:
        unet(*args, **kwargs)
    with torch.device("meta"), FlopCounterMode(display=False) as decode:
        nets["vae"].decode(latents, **decode_kwargs)
    return float(denoise.get_total_flops() * size.steps + decode.get_total_flops())


@torch.no_grad()
def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """Seeded noise on every parameter and floating buffer, on the module's own device (so norm
    weights ≠ 1 and biases ≠ 0, as in the CPU checkpoints)."""
    torch.manual_seed(seed)
    for tensor in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
        tensor.add_(torch.randn_like(tensor) * scale)
    return module.eval()


def build_checkpoint(pipeline: str, folder: Path, device: str, seed: int = 0) -> None:
    """Build the released networks on ``device`` (random init is fast there), perturb, cast to
    fp16 (Wan: bf16) and save with diffusers in the layout the CPU benchmark uses for ``pipeline``."""
    import diffusers
    from transformers import CLIPImageProcessor

    from tests.animatediff_checkpoint import save_sd15_layout
    from tests.tokenizer_fixture import write_tiny_clip_tokenizer

    dtype = torch.bfloat16 if pipeline == "wan" else torch.float16
    with torch.device(device):
        nets = {name: _perturb(net, seed + i).to("cpu", dtype) for i, (name, net) in enumerate(networks(pipeline).items())}
    if pipeline == "wan":
        _save_wan(folder, nets)
    elif "text_encoder" in nets:
        from transformers import CLIPTokenizer
        source = folder.parent / f"{folder.name}-tokenizer"  # beside the checkpoint, not in it
        write_tiny_clip_tokenizer(source)
        nets["tokenizer"] = CLIPTokenizer.from_pretrained(source)
    if pipeline == "wan":
        pass  # saved above
    elif pipeline == "svd":
        diffusers.StableVideoDiffusionPipeline(
            **nets, scheduler=diffusers.EulerDiscreteScheduler.from_config(config("svd_xt_scheduler.json")),
            feature_extractor=CLIPImageProcessor(**config("svd_xt_feature_extractor.json"))).save_pretrained(folder)
    elif pipeline == "animatediff":
        nets["scheduler"] = diffusers.DDIMScheduler.from_config(config("animatediff_scheduler.json"))
        save_sd15_layout(folder / "sd15", nets)
        nets["motion_adapter"].save_pretrained(folder / "motion_adapter")
    else:
        diffusers.I2VGenXLPipeline(
            **nets, scheduler=diffusers.DDIMScheduler.from_config(config("i2vgenxl_scheduler.json")),
            feature_extractor=CLIPImageProcessor(**config("svd_xt_feature_extractor.json"))).save_pretrained(folder)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def _save_wan(folder: Path, nets: dict[str, torch.nn.Module]) -> None:
    """Wan 2.1 T2V-1.3B's layout: the networks, the tests' tiny UMT5 tokenizer (its ids fit UMT5's
    vocabulary) and the released flow UniPC scheduler."""
    import diffusers
    from transformers import AutoTokenizer

    from vidiff.demo.umt5_tokenizer import write_tiny_umt5_tokenizer

    source = folder.parent / f"{folder.name}-tokenizer"  # beside the checkpoint, not in it
    write_tiny_umt5_tokenizer(source)
    scheduler = diffusers.UniPCMultistepScheduler.from_config(config(f"{WAN_T2V}/scheduler/scheduler_config.json"))
    diffusers.WanPipeline(tokenizer=AutoTokenizer.from_pretrained(source), scheduler=scheduler, **nets).save_pretrained(folder)
