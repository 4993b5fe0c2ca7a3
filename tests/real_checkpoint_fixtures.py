"""Tiny checkpoints with the on-disk quirks of the real repositories vidiff users point it at.

Each builder starts from the tiny perturbed diffusers/transformers models of the other fixtures and
rewrites the files the way older tools wrote them:

- a Stable Diffusion 1.5 repository of the diffusers 0.6.0 era (``runwayml/stable-diffusion-v1-5``
  and the fine-tunes copied from it): ``model_index.json`` with ``PNDMScheduler``, a listed
  ``safety_checker`` (not on disk: nothing may read it), ``feature_extractor`` and
  ``requires_safety_checker``; PNDM's ``scheduler_config.json``; a text encoder stored only as
  transformers 4 pickles (``pytorch_model.bin``, ``pytorch_model.fp16.bin``) that still hold the
  ``position_ids`` buffer; a VAE in a ``.bin`` with the pre-0.14 attention names and no fp16
  variant; the old ``tokenizer_config.json`` (``AddedToken`` dicts, an absolute ``name_or_path``);
  the old integer-size ``preprocessor_config.json``;
- an SVD repository whose image encoder is sharded ``.bin`` with its index (plus a single
  ``pytorch_model.fp16.bin``), both holding ``position_ids``, and whose VAE safetensors use the old
  attention names in the encoder's mid block;
- the v1-5-2 and v1-5-3 motion adapters' configs with their legacy keys (v1-5-3: no motion mid block).

``.bin`` files are written with ``torch.save(state_dict)``, as transformers 4 and diffusers did
(transformers 5 always writes safetensors).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from tests.animatediff_checkpoint import build_parts
from tests.helpers import perturb_, published_config
from tests.svd_checkpoint import build_diffusers_svd
from tests.tokenizer_fixture import END_TOKEN, START_TOKEN

# diffusers < 0.14 names of the VAE attention projections (the keys the old files hold).
OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
SD15_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": True,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# runwayml/stable-diffusion-v1-5/scheduler/scheduler_config.json
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# openai/clip-vit-large-patch14's preprocessor_config.json as SD 1.5 ships it: sizes as plain ints.
OLD_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}
# The motion adapters at tiny widths, every other key as published (legacy keys included). v1-5-3
# has the same keys as v1-5-2 but no motion mid block.
TINY_ADAPTER = {"block_out_channels": [32, 64], "motion_num_attention_heads": 2, "motion_norm_num_groups": 8}
MOTION_ADAPTER_CONFIGS = {
    "v1-5-2": {**published_config("animatediff_motion_adapter_v1_5_2.json"), **TINY_ADAPTER},
    "v1-5-3": {
        **published_config("animatediff_motion_adapter_v1_5_2.json"), **TINY_ADAPTER,
        "_diffusers_version": "0.27.0.dev0", "use_motion_mid_block": False, "conv_in_channels": None,
    },
}
# The motion adapter options diffusers' MotionAdapter takes (the rest are the legacy keys it ignores).
LEGACY_ADAPTER_KEYS = ("motion_activation_fn", "motion_attention_bias", "motion_cross_attention_dim")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def with_old_attention_names(state: dict[str, torch.Tensor], blocks: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``state`` with the attention projections under ``blocks`` renamed to their pre-0.14 names."""
    renamed = {}
    for key, tensor in state.items():
        for block in blocks:
            for new, old in OLD_ATTENTION_NAMES.items():
                prefix, _, tail = key.partition(f".{new}.")
                if tail and prefix.startswith(f"{block}.attentions."):
                    key = f"{prefix}.{old}.{tail}"
        renamed[key] = tensor
    return renamed


def write_transformers_pickles(model, folder: Path, tower: str, *, shards: int = 1, fp16: bool = True) -> None:
    """Save a transformers model as transformers 4 did with ``safe_serialization=False``: config.json
    plus ``pytorch_model.bin`` (or ``shards`` shards with ``pytorch_model.bin.index.json``), and
    ``pytorch_model.fp16.bin`` if ``fp16``; every file also holds the ``position_ids`` buffer."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    # What transformers 4.2x wrote besides the options; an absolute path as fine-tunes often have.
    config.update(_name_or_path="/home/user/.cache/huggingface/clip", torch_dtype="float32", transformers_version="4.25.1")
    _write_json(folder / "config.json", config)
    state = dict(model.state_dict())
    positions = model.config.max_position_embeddings if tower == "text_model" else (
        (model.config.image_size // model.config.patch_size) ** 2 + 1
    )
    state[f"{tower}.embeddings.position_ids"] = torch.arange(positions)[None]  # int64, as stored
    keys = list(state)
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        size = -(-len(keys) // shards)
        weight_map = {}
        for i in range(shards):
            name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
            part = {k: state[k] for k in keys[i * size:(i + 1) * size]}
            torch.save(part, folder / name)
            weight_map.update(dict.fromkeys(part, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        _write_json(folder / "pytorch_model.bin.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    if fp16:
        torch.save(_half(state), folder / "pytorch_model.fp16.bin")


def write_old_tokenizer_config(folder: Path) -> None:
    """Rewrite the tokenizer settings as SD 1.5's: specials as ``AddedToken`` dicts, absolute paths."""
    def added(content: str) -> dict:
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    config = {
        "add_prefix_space": False,
        "bos_token": added(START_TOKEN),
        "do_lower_case": True,
        "eos_token": added(END_TOKEN),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "/home/user/.cache/huggingface/diffusers/models--openai--clip-vit-large-patch14/snapshots/abc",
        "pad_token": "<|endoftext|>",
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added(END_TOKEN),
    }
    _write_json(folder / "tokenizer_config.json", config)
    specials = {"bos_token": START_TOKEN, "eos_token": END_TOKEN, "pad_token": END_TOKEN, "unk_token": END_TOKEN}
    _write_json(folder / "special_tokens_map.json", specials)


def write_sd15_repository(root: Path, seed: int = 0) -> dict:
    """A tiny SD 1.5 repository with the quirks listed above; returns the diffusers parts."""
    from diffusers import StableDiffusionPipeline

    parts = build_parts(seed)
    sd_parts = {k: v for k, v in parts.items() if k != "motion_adapter"}
    pipe = StableDiffusionPipeline(**sd_parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root)  # tokenizer and unet as diffusers writes them; the rest is replaced below
    copy.deepcopy(parts["unet"]).half().save_pretrained(root / "unet", variant="fp16")
    # VAE: one .bin with the old attention names in both mid blocks, no fp16 variant.
    for stale in (root / "vae").glob("*.safetensors"):
        stale.unlink()
    torch.save(with_old_attention_names(parts["vae"].state_dict(), ("encoder.mid_block", "decoder.mid_block")),
               root / "vae" / "diffusion_pytorch_model.bin")
    # Text encoder: transformers 4 pickles only.
    for stale in (root / "text_encoder").iterdir():
        stale.unlink()
    write_transformers_pickles(parts["text_encoder"], root / "text_encoder", "text_model")
    write_old_tokenizer_config(root / "tokenizer")
    _write_json(root / "scheduler" / "scheduler_config.json", SD15_SCHEDULER)
    _write_json(root / "feature_extractor" / "preprocessor_config.json", OLD_PREPROCESSOR)
    _write_json(root / "model_index.json", SD15_MODEL_INDEX)
    return parts


def write_motion_adapter(folder: Path, version: str, seed: int = 0) -> None:
    """A tiny motion adapter saved by diffusers, its config.json replaced by ``version``'s (legacy keys kept)."""
    from diffusers import MotionAdapter

    config = MOTION_ADAPTER_CONFIGS[version]
    options = {k: v for k, v in config.items() if not k.startswith("_") and k not in LEGACY_ADAPTER_KEYS}
    torch.manual_seed(seed)
    perturb_(MotionAdapter(**options), seed=seed + 1).save_pretrained(folder)
    _write_json(folder / "config.json", config)


def write_svd_repository(root: Path, seed: int = 0) -> None:
    """A tiny SVD repository: fp16 UNet variant, image encoder as sharded .bin (+ fp16 .bin) with
    ``position_ids``, VAE safetensors with old attention names in the encoder's mid block and no fp16
    variant, and the old integer-size feature extractor config."""
    import safetensors.torch

    pipe = build_diffusers_svd(seed)
    pipe.save_pretrained(root)
    copy.deepcopy(pipe.unet).half().save_pretrained(root / "unet", variant="fp16")
    encoder = root / "image_encoder"
    for stale in encoder.iterdir():
        stale.unlink()
    write_transformers_pickles(pipe.image_encoder, encoder, "vision_model", shards=2)
    vae_file = root / "vae" / "diffusion_pytorch_model.safetensors"
    state = with_old_attention_names(safetensors.torch.load_file(str(vae_file)), ("encoder.mid_block",))
    safetensors.torch.save_file(state, str(vae_file), metadata={"format": "pt"})
    _write_json(root / "feature_extractor" / "preprocessor_config.json", OLD_PREPROCESSOR)
