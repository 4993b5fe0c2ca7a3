"""Real repositories' on-disk quirks (see tests/real_checkpoint_fixtures.py): vidiff loads the same
weights as diffusers and transformers load from the same folders, tensor for tensor.

The oracles load each folder themselves; every state-dict tensor is compared exactly (the same file
bytes, cast the same way), and so are the dtypes: float32 for every network without ``dtype`` (fp16
variant files upcast), the requested dtype with it.
"""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest
import torch

from tests.animatediff_checkpoint import SMALL_CALL
from tests.helpers import max_abs_diff
from tests.real_checkpoint_fixtures import (
    LEGACY_ADAPTER_KEYS,
    MOTION_ADAPTER_CONFIGS,
    SD15_SCHEDULER,
    with_old_attention_names,
    write_motion_adapter,
    write_sd15_repository,
    write_svd_repository,
)
from vidiff import (
    AnimateDiffPipeline,
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
    MotionAdapter,
    StableVideoDiffusionPipeline,
)

VARIANTS = [None, "fp16"]
PROMPTS = ["a rocket flying into space", "A SPACE Rocket, launching!  into space from the desert, 4k", ""]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("quirks")
    write_sd15_repository(root / "sd15", seed=0)
    for version in MOTION_ADAPTER_CONFIGS:
        write_motion_adapter(root / version, version, seed=5)
    write_svd_repository(root / "svd", seed=1)
    return root


def assert_same_weights(ours: torch.nn.Module, theirs: torch.nn.Module, dtype: torch.dtype) -> None:
    """Every tensor of ``theirs`` is in ``ours`` under the same name, equal, and floats are ``dtype``."""
    got, expected = ours.state_dict(), theirs.state_dict()
    assert sorted(got) == sorted(expected)
    floats = {key for key, tensor in expected.items() if tensor.is_floating_point()}
    assert {expected[key].dtype for key in floats} == {got[key].dtype for key in floats} == {dtype}
    different = [key for key, tensor in expected.items() if not torch.equal(got[key], tensor)]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"


def _diffusers_animatediff(repos, version: str, **options):
    from diffusers import AnimateDiffPipeline as Oracle
    from diffusers import MotionAdapter as OracleAdapter

    adapter = OracleAdapter.from_pretrained(repos / version, torch_dtype=options.get("torch_dtype"))
    return Oracle.from_pretrained(repos / "sd15", motion_adapter=adapter, **options)


# ---------------------------------------------------------------- a Stable Diffusion 1.5 repository
@pytest.mark.parametrize("variant", VARIANTS)
def test_sd15_repository_loads_the_weights_diffusers_loads(repos, variant):
    """.bin-only text encoder with position_ids, legacy VAE names in a .bin without fp16 variant:
    without ``dtype`` every network is float32 (the fp16 files upcast), never a mix."""
    ours = AnimateDiffPipeline.from_pretrained(
        repos / "sd15", variant=variant, motion_adapter=MotionAdapter.from_pretrained(repos / "v1-5-2")
    )
    theirs = _diffusers_animatediff(repos, "v1-5-2", variant=variant)
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(ours, name), getattr(theirs, name), torch.float32)


def test_sd15_repository_with_dtype_casts_every_network(repos):
    ours = AnimateDiffPipeline.from_pretrained(
        repos / "sd15", variant="fp16", dtype=torch.float16,
        motion_adapter=MotionAdapter.from_pretrained(repos / "v1-5-2", dtype=torch.float16),
    )
    theirs = _diffusers_animatediff(repos, "v1-5-2", variant="fp16", torch_dtype=torch.float16)
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(ours, name), getattr(theirs, name), torch.float16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bin_only_text_encoder_loads_like_transformers(repos, variant):
    from transformers import CLIPTextModel as Oracle

    ours = CLIPTextModel.from_pretrained(repos / "sd15", subfolder="text_encoder", variant=variant)
    theirs = Oracle.from_pretrained(repos / "sd15", subfolder="text_encoder", variant=variant)
    assert_same_weights(ours, theirs, torch.float32)
    if variant == "fp16":  # the values are the fp16 file's, not the fp32 file's
        fp32 = CLIPTextModel.from_pretrained(repos / "sd15", subfolder="text_encoder")
        assert not all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), fp32.state_dict().values()))


def test_vae_with_legacy_names_in_a_bin_falls_back_from_the_missing_variant(repos, caplog):
    from diffusers import AutoencoderKL as Oracle

    with caplog.at_level(logging.WARNING, logger="vidiff"):
        ours = AutoencoderKL.from_pretrained(repos / "sd15", subfolder="vae", variant="fp16")
    assert any("'fp16'" in record.getMessage() for record in caplog.records)
    assert_same_weights(ours, Oracle.from_pretrained(repos / "sd15", subfolder="vae"), torch.float32)


def test_sd15_default_scheduler_is_its_pndm(repos):
    """An SD 1.5 repository's own PLMS scheduler, read with its settings, gives diffusers' timesteps."""
    from diffusers import PNDMScheduler as Oracle

    pipe = AnimateDiffPipeline.from_pretrained(repos / "sd15", motion_adapter=MotionAdapter.from_pretrained(repos / "v1-5-2"))
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    for key in ("skip_prk_steps", "set_alpha_to_one", "steps_offset", "beta_schedule", "beta_start", "beta_end"):
        assert pipe.scheduler.config[key] == SD15_SCHEDULER[key], key
    oracle = Oracle.from_pretrained(repos / "sd15", subfolder="scheduler")
    for steps in (3, 5, 25):
        pipe.scheduler.set_timesteps(steps)
        oracle.set_timesteps(steps)
        assert pipe.scheduler.timesteps.tolist() == oracle.timesteps.tolist()


def test_sd15_repository_gives_diffusers_frames_with_its_own_scheduler(repos):
    ours = AnimateDiffPipeline.from_pretrained(repos / "sd15", motion_adapter=MotionAdapter.from_pretrained(repos / "v1-5-2"))
    theirs = _diffusers_animatediff(repos, "v1-5-2")
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    call = {**SMALL_CALL, "prompt": PROMPTS[1], "negative_prompt": "blurry"}
    got = ours(**call, generator=torch.Generator().manual_seed(3)).frames
    expected = theirs(**call, generator=torch.Generator().manual_seed(3)).frames
    assert max_abs_diff(got, expected) <= 1e-4


def test_old_tokenizer_config_gives_transformers_ids(repos):
    """AddedToken dicts and an absolute name_or_path (a folder that does not exist here)."""
    from transformers import CLIPTokenizer as Oracle

    ours = CLIPTokenizer.from_pretrained(repos / "sd15")
    theirs = Oracle.from_pretrained(repos / "sd15", subfolder="tokenizer")
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id,
    )
    options = {"padding": "max_length", "max_length": ours.model_max_length, "truncation": True}
    assert ours(PROMPTS, **options)["input_ids"] == theirs(PROMPTS, **options)["input_ids"]
    assert ours.model_max_length == theirs.model_max_length == 77


@pytest.mark.parametrize("repo", ["sd15", "svd"])
def test_old_integer_size_preprocessor_config_gives_transformers_pixels(repos, repo):
    from transformers import CLIPImageProcessor as Oracle

    ours = CLIPImageProcessor.from_pretrained(repos / repo, subfolder="feature_extractor")
    theirs = Oracle.from_pretrained(repos / repo, subfolder="feature_extractor")
    image = PIL.Image.fromarray(np.random.default_rng(2).integers(0, 256, (150, 260, 3), dtype=np.uint8))
    expected = theirs(images=image, return_tensors="pt").pixel_values
    got = ours(image)
    assert got.shape == expected.shape == (1, 3, 224, 224)
    assert max_abs_diff(got, expected) <= 1e-4


# ---------------------------------------------------------------- motion adapters
@pytest.mark.parametrize("version", sorted(MOTION_ADAPTER_CONFIGS))
def test_published_motion_adapter_configs_load_like_diffusers(repos, version):
    """v1-5-2 and v1-5-3 configs with their legacy keys; v1-5-3 has no motion mid block."""
    from diffusers import MotionAdapter as Oracle

    ours = MotionAdapter.from_pretrained(repos / version)
    theirs = Oracle.from_pretrained(repos / version)
    assert_same_weights(ours, theirs, torch.float32)
    has_mid = MOTION_ADAPTER_CONFIGS[version]["use_motion_mid_block"]
    assert (ours.mid_block is not None) == has_mid
    assert any(key.startswith("mid_block.") for key in ours.state_dict()) == has_mid
    for key in LEGACY_ADAPTER_KEYS:  # kept (diffusers ignores them too), written back on save
        assert ours.config.to_diffusers()[key] == MOTION_ADAPTER_CONFIGS[version][key]


@pytest.mark.parametrize("version", sorted(MOTION_ADAPTER_CONFIGS))
def test_animatediff_unet_with_each_adapter_holds_diffusers_weights(repos, version):
    ours = AnimateDiffPipeline.from_pretrained(repos / "sd15", motion_adapter=MotionAdapter.from_pretrained(repos / version))
    theirs = _diffusers_animatediff(repos, version)
    assert_same_weights(ours.unet, theirs.unet, torch.float32)


# ---------------------------------------------------------------- an SVD repository
@pytest.mark.parametrize("variant", VARIANTS)
def test_svd_repository_loads_the_weights_diffusers_loads(repos, variant):
    """Image encoder as sharded .bin (fp16: one .bin) with position_ids; VAE safetensors with legacy
    names in the encoder's mid block and no fp16 variant."""
    from diffusers import StableVideoDiffusionPipeline as Oracle

    ours = StableVideoDiffusionPipeline.from_pretrained(repos / "svd", variant=variant)
    theirs = Oracle.from_pretrained(repos / "svd", variant=variant)
    for name in ("unet", "vae", "image_encoder"):
        assert_same_weights(getattr(ours, name), getattr(theirs, name), torch.float32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_image_encoder_from_transformers_pickles_loads_like_transformers(repos, variant):
    from transformers import CLIPVisionModelWithProjection as Oracle

    ours = CLIPVisionModelWithProjection.from_pretrained(repos / "svd", subfolder="image_encoder", variant=variant)
    theirs = Oracle.from_pretrained(repos / "svd", subfolder="image_encoder", variant=variant)
    assert_same_weights(ours, theirs, torch.float32)


def test_svd_vae_renames_legacy_names_only_where_diffusers_does(repos, tmp_path):
    """The temporal decoder's attention never had the old names: there they stay unexpected keys."""
    import safetensors.torch

    ours = AutoencoderKLTemporalDecoder.from_pretrained(repos / "svd", subfolder="vae")
    state = ours.state_dict()
    folder = tmp_path / "vae"
    ours.save_pretrained(folder)
    old = with_old_attention_names(state, ("decoder.mid_block",))
    assert "decoder.mid_block.attentions.0.query.weight" in old
    safetensors.torch.save_file(old, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"decoder\.mid_block\.attentions\.0\.(query|key|value|proj_attn)"):
        AutoencoderKLTemporalDecoder.from_pretrained(folder)
    both = {**state, "encoder.mid_block.attentions.0.query.weight": state["encoder.mid_block.attentions.0.to_q.weight"].clone()}
    safetensors.torch.save_file(both, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="both"):
        AutoencoderKLTemporalDecoder.from_pretrained(folder)
