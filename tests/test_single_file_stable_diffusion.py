"""Original single-file Stable Diffusion 1.x checkpoints: UNet, VAE and text encoder, against diffusers."""

from __future__ import annotations

import pytest
import torch

from tests.animatediff_checkpoint import build_parts, save_sd15_layout
from tests.helpers import perturb_
from tests.single_file_layouts import save_both, stable_diffusion_to_original
from vidiff.models.single_file.ldm_yaml import read_original_config, sd_overrides
from vidiff.models.single_file_components import load_components

# What no tensor shows in the tiny models (the SD 1.5 release has 8 heads, 32 groups, 12 text heads).
HIDDEN = {
    "unet": {"attention_head_dim": 4, "norm_num_groups": 8},
    "vae": {"norm_num_groups": 8},
    "text_encoder": {"num_attention_heads": 4},
}


@pytest.fixture(scope="module")
def sd_files(tmp_path_factory):
    parts = build_parts(seed=31)
    folder = tmp_path_factory.mktemp("sd15-single")
    save_sd15_layout(folder / "diffusers", parts)
    original = stable_diffusion_to_original(parts["unet"], parts["vae"], parts["text_encoder"], layers=2, attention=(True, False))
    files = save_both(original, folder, "tiny-sd15", wrap=True)
    return parts, folder, files


def _assert_same(ours: torch.nn.Module, reference: dict[str, torch.Tensor], skip: str = "position_ids") -> None:
    mine = ours.state_dict()
    reference = {k: v for k, v in reference.items() if skip not in k}
    assert sorted(mine) == sorted(reference)
    for key, tensor in reference.items():
        assert torch.equal(mine[key], tensor), key


def test_components_load_with_weights_identical_to_the_diffusers_models(sd_files):
    parts, folder, files = sd_files
    for path in files:
        models = load_components(path, config=HIDDEN)
        for name in ("unet", "vae", "text_encoder"):
            _assert_same(models[name], parts[name].state_dict())


def test_config_from_a_diffusers_folder_gives_the_folder_configs(sd_files):
    from vidiff.models.clip_text import CLIPTextModel
    from vidiff.models.unet_2d import UNet2DConditionModel
    from vidiff.models.vae_kl import AutoencoderKL

    _, folder, (safe, _) = sd_files
    models = load_components(safe, config=folder / "diffusers")
    for name, model_class in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        assert models[name].config == model_class.from_pretrained(folder / "diffusers", subfolder=name).config, name


def test_diffusers_own_single_file_loader_agrees(sd_files):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    _, folder, (safe, _) = sd_files
    ours = load_components(safe, config=HIDDEN)
    for name, oracle_class in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        theirs = oracle_class.from_single_file(str(safe), config=str(folder / "diffusers"), subfolder=name)
        _assert_same(ours[name], theirs.state_dict())


def test_wrong_files_are_clear_errors(sd_files, tmp_path):
    parts, _, _ = sd_files
    original = stable_diffusion_to_original(parts["unet"], parts["vae"], parts["text_encoder"], layers=2, attention=(True, False))
    save_both({k: v for k, v in original.items() if not k.startswith("first_stage_model.")}, tmp_path, "no-vae")
    with pytest.raises(ValueError, match=r"not an original Stable Diffusion checkpoint \(no first_stage_model\.…"):
        load_components(tmp_path / "no-vae.safetensors", config=HIDDEN)
    save_both({**original, "cond_stage_model.extra": torch.zeros(1)}, tmp_path, "stray")
    with pytest.raises(ValueError, match=r"belong to no Stable Diffusion component: cond_stage_model\.extra"):
        load_components(tmp_path / "stray.safetensors", config=HIDDEN)
    save_both({**original, "first_stage_model.encoder.mystery.weight": torch.zeros(1)}, tmp_path, "vae-stray")
    with pytest.raises(ValueError, match=r"\(vae\).*match no rule of the LDM VAE conversion table: encoder\.mystery"):
        load_components(tmp_path / "vae-stray.safetensors", config=HIDDEN)
    with pytest.raises(ValueError, match="unknown components"):
        load_components(tmp_path / "stray.safetensors", config={"unet": {}, "safety_checker": {}})


# The LDM YAML of a tiny SD: LDM's group norms always have 32 groups, so the widths are multiples of 32.
TINY_YAML = """
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    scale_factor: 0.5
    unet_config:
      params: {in_channels: 4, out_channels: 4, model_channels: 32, attention_resolutions: [1], num_res_blocks: 2,
               channel_mult: [1, 2], num_heads: 4, context_dim: 32, transformer_depth: 1}
    first_stage_config:
      params:
        ddconfig: {z_channels: 4, resolution: 64, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1}
"""


def test_original_config_yaml_states_the_unet_and_vae_configs(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from tests.animatediff_checkpoint import tiny_clip_text

    unet = perturb_(UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4, sample_size=8,
    ), seed=51)
    vae = perturb_(AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, latent_channels=4, sample_size=64, scaling_factor=0.5,
    ), seed=52)
    _, text_encoder = tiny_clip_text(53)
    save_both(stable_diffusion_to_original(unet, vae, text_encoder, layers=2, attention=(True, False)), tmp_path, "sd")
    (tmp_path / "tiny-inference.yaml").write_text(TINY_YAML)
    models = load_components(tmp_path / "sd.ckpt", original_config=tmp_path / "tiny-inference.yaml", skip=frozenset({"text_encoder"}))
    assert set(models) == {"unet", "vae"}
    for name, oracle in (("unet", unet), ("vae", vae)):
        _assert_same(models[name], oracle.state_dict())
        stated = sd_overrides(read_original_config(tmp_path / "tiny-inference.yaml"))[name]
        assert len(stated) >= 7
        for key in stated:  # every key the YAML states is the oracle's value
            value = oracle.config[key]
            assert getattr(models[name].config, key) == (tuple(value) if isinstance(value, list) else value), (name, key)
    with pytest.raises(ValueError, match="config or original_config, not both"):
        load_components(tmp_path / "sd.ckpt", config=HIDDEN, original_config=tmp_path / "tiny-inference.yaml")
    with pytest.raises(ValueError, match="no 'model' section"):
        load_components(tmp_path / "sd.ckpt", original_config={"unet": {}})
