"""Test-side reverse conversions: diffusers-layout state dicts → the original single-file layouts.

Each function is the inverse of a table in ``vidiff.models.single_file``, written independently from
diffusers' documented conversion facts, so that a tiny diffusers model can be saved as the file a
user downloads (``mm_sd_v15_v2.ckpt`` …) and loaded back with ``from_single_file``.
"""

from __future__ import annotations

import re
from pathlib import Path

import safetensors.torch
import torch

_MOTION_LEAVES = (
    (r"\.attn1\.", ".attention_blocks.0."),
    (r"\.attn2\.", ".attention_blocks.1."),
    (r"\.norm1\.", ".norms.0."),
    (r"\.norm2\.", ".norms.1."),
    (r"\.norm3\.", ".ff_norm."),
)


def motion_adapter_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``MotionAdapter`` keys → AnimateDiff's ``…motion_modules.N.temporal_transformer…`` keys."""
    original = {}
    for key, tensor in state.items():
        module, rest = re.match(r"(.*?motion_modules\.\d+)\.(.*)", key).groups()
        if rest.endswith("pos_embed.pe"):
            block = rest.removesuffix(".pos_embed.pe")
            for attention in (0, 1):  # the original keeps one table per attention block
                original[f"{module}.temporal_transformer.{block}.attention_blocks.{attention}.pos_encoder.pe"] = tensor.clone()
            continue
        for pattern, replacement in _MOTION_LEAVES:
            rest = re.sub(pattern, replacement, f".{rest}.")[1:-1]
        original[f"{module}.temporal_transformer.{rest}"] = tensor.clone()
    return original


def save_both(state: dict[str, torch.Tensor], folder: Path, stem: str, wrap: bool = False) -> tuple[Path, Path]:
    """Write ``state`` as ``stem.safetensors`` and as a pickle ``stem.ckpt`` (``{"state_dict": …}`` when ``wrap``)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state.items()}
    safe = folder / f"{stem}.safetensors"
    safetensors.torch.save_file(tensors, str(safe))
    pickled = folder / f"{stem}.ckpt"
    torch.save({"state_dict": tensors, "global_step": 7} if wrap else tensors, pickled)
    return safe, pickled


_RESNET_TO_LDM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}
_UNET_STEM_TO_LDM = {
    "conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0", "conv_out": "out.2", "controlnet_mid_block": "middle_block_out.0",
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
    "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1", "mid_block.resnets.1": "middle_block.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
}


def _resnet_to_ldm(rest: str) -> str:
    """Inside one resnet; SVD's video resnets nest a spatial and a temporal one and a mix factor."""
    if rest == "time_mixer.mix_factor":
        return rest
    if rest.startswith("temporal_res_block."):
        return "time_stack." + _resnet_to_ldm(rest.removeprefix("temporal_res_block."))
    head, _, kind = rest.removeprefix("spatial_res_block.").partition(".")
    return f"{_RESNET_TO_LDM[head]}.{kind}"


def _attention_to_ldm(rest: str) -> str:
    """Inside one spatial transformer; SVD's temporal blocks and frame-index MLP have LDM names."""
    rest = rest.replace("temporal_transformer_blocks.", "time_stack.")
    return rest.replace("time_pos_embed.linear_1.", "time_pos_embed.0.").replace("time_pos_embed.linear_2.", "time_pos_embed.2.")


def unet_to_ldm(state: dict[str, torch.Tensor], layers: int, attention: tuple[bool, ...]) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel / ControlNetModel state dict in LDM's flat block numbering."""
    stages, hint_blocks = len(attention), 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))), default=-1
    )
    ldm = {}
    for key, tensor in state.items():
        module, kind = key.rsplit(".", 1)
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            stage, what, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            n = 1 + stage * (layers + 1) + layer
            new = f"input_blocks.{n}.0.{_resnet_to_ldm(rest)}" if what == "resnets" else f"input_blocks.{n}.1.{_attention_to_ldm(rest)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{1 + int(m[1]) * (layers + 1) + layers}.0.op.{m[2]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            n = int(m[1]) * (layers + 1) + int(m[3])
            new = f"output_blocks.{n}.0.{_resnet_to_ldm(m[4])}" if m[2] == "resnets" else f"output_blocks.{n}.1.{_attention_to_ldm(m[4])}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            up = int(m[1])
            new = f"output_blocks.{up * (layers + 1) + layers}.{2 if attention[stages - 1 - up] else 1}.conv.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.(resnets\.\d+|attentions\.0)\.(.+)", key):
            base = _UNET_STEM_TO_LDM[f"mid_block.{m[1]}"]
            new = f"{base}.{_resnet_to_ldm(m[2]) if m[1].startswith('resnets') else _attention_to_ldm(m[2])}"
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
            new = f"zero_convs.{m[1]}.0.{m[2]}"
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
            new = f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
        elif module == "controlnet_cond_embedding.conv_out":
            new = f"input_hint_block.{2 * (hint_blocks + 1)}.{kind}"
        else:
            new = f"{_UNET_STEM_TO_LDM[module]}.{kind}"
        ldm[new] = tensor.clone()
    return ldm


def vae_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in LDM's ``first_stage_model`` names (1×1 conv attentions)."""
    ups = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k)))
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    ldm = {}
    for key, tensor in state.items():
        key = _video_decoder_names(key)
        module, kind = key.rsplit(".", 1)
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", module):
            new = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{kind}"
            if tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{ups - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{ups - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif key.startswith("decoder.time_conv_out."):
            new = key.replace("time_conv_out", "conv_out.time_mix_conv")
        else:
            new = key.replace("conv_norm_out", "norm_out")
        ldm[new.replace("conv_shortcut", "nin_shortcut")] = tensor.clone()
    return ldm


_TEMPORAL_VAE_LEAVES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3"}


def _video_decoder_names(key: str) -> str:
    """SVD's decoder resnets in LDM's VideoResBlock names (spatial leaves bare, ``time_stack``, ``mix_factor``)."""
    key = re.sub(r"(resnets\.\d+)\.spatial_res_block\.", r"\1.", key)
    key = re.sub(r"(resnets\.\d+)\.time_mixer\.mix_factor$", r"\1.mix_factor", key)
    if m := re.fullmatch(r"(.+resnets\.\d+)\.temporal_res_block\.(\w+)\.(weight|bias)", key):
        key = f"{m[1]}.time_stack.{_TEMPORAL_VAE_LEAVES[m[2]]}.{m[3]}"
    return key


def clip_vision_to_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIPVisionModelWithProjection state dict in open_clip's ``visual.`` names."""
    names = {
        "vision_model.embeddings.class_embedding": "class_embedding",
        "vision_model.embeddings.position_embedding.weight": "positional_embedding",
        "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    }
    leaves = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    out = {}
    for key, tensor in state.items():
        if key in names:
            out[names[key]] = tensor.clone()
        elif key == "visual_projection.weight":
            out["proj"] = tensor.t().contiguous()
        elif m := re.fullmatch(r"vision_model\.(pre_layrnorm|post_layernorm)\.(.+)", key):
            out[f"{'ln_pre' if m[1] == 'pre_layrnorm' else 'ln_post'}.{m[2]}"] = tensor.clone()
        elif m := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", key):
            parts = [state[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[f"transformer.resblocks.{m[1]}.attn.in_proj_{m[2]}"] = torch.cat(parts)
        elif re.search(r"self_attn\.(k|v)_proj", key) or key.endswith("position_ids"):
            continue
        else:
            m = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
            out[f"transformer.resblocks.{m[1]}.{leaves[m[2]]}.{m[3]}"] = tensor.clone()
    return out


def svd_to_original(unet, vae, image_encoder, layers: int, attention: tuple[bool, ...], encoder_in_conditioner: bool = True) -> dict[str, torch.Tensor]:
    """One original SVD checkpoint dict from three diffusers/transformers models, with the extra
    copies and leftovers the released files carry (a differing VAE-encoder copy, OpenCLIP text bits)."""
    state = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(unet.state_dict(), layers, attention).items()}
    vae_ldm = vae_to_ldm(vae.state_dict())
    encoder_prefix = "conditioner.embedders.3.encoder." if encoder_in_conditioner else "first_stage_model."
    for key, tensor in vae_ldm.items():
        state[(encoder_prefix if not key.startswith("decoder.") else "first_stage_model.") + key] = tensor
        if encoder_in_conditioner and not key.startswith("decoder."):
            state[f"first_stage_model.{key}"] = tensor + 1  # the other copy: must not be the one loaded
    visual = clip_vision_to_open_clip(image_encoder.state_dict())
    state.update({f"conditioner.embedders.0.open_clip.model.visual.{k}": v for k, v in visual.items()})
    state["conditioner.embedders.0.open_clip.model.logit_scale"] = torch.tensor(4.6)
    state["denoiser.sigmas"] = torch.linspace(0.002, 700, 10)
    return state


def stable_diffusion_to_original(unet, vae, text_encoder, layers: int, attention: tuple[bool, ...]) -> dict[str, torch.Tensor]:
    """One original SD 1.x checkpoint dict from three diffusers/transformers models (plus bookkeeping)."""
    state = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(unet.state_dict(), layers, attention).items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(vae.state_dict()).items()})
    state.update({f"cond_stage_model.transformer.{k}": v.clone() for k, v in text_encoder.state_dict().items()})
    # Released files still carry the position-id buffer older transformers saved.
    positions = text_encoder.config.max_position_embeddings
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    state.update({"alphas_cumprod": torch.linspace(1, 0.1, 10), "model_ema.decay": torch.tensor(0.999)})
    return state
