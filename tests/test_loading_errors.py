"""Loading fails readably (issue 10, items 12–13): wrong config values are errors that name the file,
the key and what is valid; corrupt or foreign weights give one short line; the CLI prints one line.

Python-level tests use a tiny VAE written here; CLI tests copy the session's tiny checkpoints to
``tmp_path`` before damaging them.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tests.svd_checkpoint import random_image
from tests.test_cli import SMALL, vidiff
from vidiff import AutoencoderKL
from vidiff.config import ConfigError, RawConfig
from vidiff.image_processing import CLIPImageProcessorConfig
from vidiff.models.clip_text import CLIPTextConfig
from vidiff.models.clip_vision import CLIPVisionConfig
from vidiff.models.motion_adapter import MotionAdapter, MotionAdapterConfig
from vidiff.models.unet_2d import UNet2DConditionConfig
from vidiff.models.unet_i2vgen_xl import I2VGenXLUNetConfig
from vidiff.models.unet_motion import UNetMotionConfig, motion_config_from_unet2d
from vidiff.models.unet_svd import UNetSpatioTemporalConditionConfig
from vidiff.models.vae_kl import AutoencoderKLConfig
from vidiff.models.vae_temporal import AutoencoderKLTemporalDecoderConfig

RELEASED = Path("/work/shared/configs")
CONFIG_CLASSES = {
    "svd_xt_unet": UNetSpatioTemporalConditionConfig,
    "svd_xt_vae": AutoencoderKLTemporalDecoderConfig,
    "svd_xt_image_encoder": CLIPVisionConfig,
    "svd_xt_feature_extractor": CLIPImageProcessorConfig,
    "i2vgenxl_unet": I2VGenXLUNetConfig,
    "i2vgenxl_vae": AutoencoderKLConfig,
    "i2vgenxl_text_encoder": CLIPTextConfig,
    "i2vgenxl_image_encoder": CLIPVisionConfig,
    "sd15_unet": UNet2DConditionConfig,
    "sd15_vae": AutoencoderKLConfig,
    "sd15_text_encoder": CLIPTextConfig,
    "animatediff_motion_adapter_v1_5_2": MotionAdapterConfig,
}
TINY_VAE = {"block_out_channels": [8], "norm_num_groups": 4, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"]}
WEIGHTS = "diffusion_pytorch_model"
LINE_LIMIT = 600  # what "one readable line" means here


def released(name: str) -> dict:
    return json.loads((RELEASED / f"{name}.json").read_text())


@pytest.fixture
def tiny_vae(tmp_path) -> Path:
    folder = tmp_path / "vae"
    AutoencoderKL.from_config(TINY_VAE).save_pretrained(folder)
    return folder


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# ------------------------------------------------------------------ item 12: config values
@pytest.mark.skipif(not RELEASED.is_dir(), reason="the released configs are not on this machine")
@pytest.mark.parametrize("name", sorted(CONFIG_CLASSES))
def test_every_released_config_passes_validation(name):
    """nulls for Optional fields, lists for tuples, ints for floats, old keys: all still load."""
    config = CONFIG_CLASSES[name].from_diffusers(RawConfig(released(name), str(RELEASED / f"{name}.json")))
    assert isinstance(config, CONFIG_CLASSES[name])


@pytest.mark.skipif(not RELEASED.is_dir(), reason="the released configs are not on this machine")
def test_released_motion_unet_config_passes_validation():
    with torch.device("meta"):
        adapter = MotionAdapter.from_config(released("animatediff_motion_adapter_v1_5_2"))
    unet = UNet2DConditionConfig.from_diffusers(released("sd15_unet"))
    assert isinstance(UNetMotionConfig.from_diffusers(motion_config_from_unet2d(unet, adapter)), UNetMotionConfig)


@pytest.mark.skipif(not RELEASED.is_dir(), reason="the released configs are not on this machine")
@pytest.mark.parametrize(
    "name, key, value, valid",
    [
        ("svd_xt_unet", "in_channels", "8", "expected an integer"),
        ("svd_xt_unet", "num_attention_heads", 0, "1..65536"),  # was a ZeroDivisionError
        ("svd_xt_unet", "num_attention_heads", [5, 10, 0, 20], "1..65536"),
        ("svd_xt_unet", "block_out_channels", [320, "640", 1280, 1280], "a list of integers"),
        ("sd15_unet", "cross_attention_dim", 10**12, "1..65536"),
        ("sd15_unet", "layers_per_block", 10**6, "1..1024"),  # would build a million layers
        ("sd15_unet", "attention_head_dim", 0, "1..65536"),
        ("sd15_vae", "norm_num_groups", 0, "1..65536"),
        ("sd15_vae", "scaling_factor", "0.18215", "expected a number"),
        ("sd15_vae", "force_upcast", 1, "expected true or false"),
        ("svd_xt_vae", "latent_channels", -4, "1..65536"),
        ("svd_xt_image_encoder", "num_attention_heads", 0, "1..65536"),
        ("sd15_text_encoder", "hidden_size", "768", "expected an integer"),
        ("i2vgenxl_unet", "attention_head_dim", 0, "1..65536"),
        ("animatediff_motion_adapter_v1_5_2", "motion_norm_num_groups", 0, "1..65536"),
    ],
)
def test_bad_config_values_name_file_key_and_what_is_valid(name, key, value, valid):
    source = f"/checkpoints/x/{name}/config.json"
    with pytest.raises(ConfigError) as error:
        CONFIG_CLASSES[name].from_diffusers(RawConfig({**released(name), key: value}, source))
    message = str(error.value)
    assert message.startswith(f"{source}: {key}=") and valid in message, message


def test_ints_are_numbers_and_optional_fields_take_null():
    config = AutoencoderKLConfig.from_diffusers({**TINY_VAE, "scaling_factor": 1, "shift_factor": None})
    assert config.scaling_factor == 1 and config.shift_factor is None


def test_cross_option_errors_name_the_file_and_overrides_do_not_blame_it():
    source = "/x/vae/config.json"
    with pytest.raises(ConfigError, match=r"^/x/vae/config\.json: norm_num_groups=3 must divide"):
        AutoencoderKLConfig.from_diffusers(RawConfig({**TINY_VAE, "norm_num_groups": 3}, source))
    with pytest.raises(ConfigError) as error:
        AutoencoderKLConfig.from_diffusers(RawConfig(TINY_VAE, source), latent_channels=0)
    assert str(error.value).startswith("latent_channels=0"), error.value


def test_quoted_values_are_capped():
    with pytest.raises(ConfigError) as error:
        AutoencoderKLConfig.from_diffusers({**TINY_VAE, "in_channels": "x" * 100_000})
    assert len(str(error.value)) < 200 and "…" in str(error.value)


def test_loading_a_bad_config_names_the_file(tiny_vae):
    edit_json(tiny_vae / "config.json", latent_channels=0)
    with pytest.raises(ConfigError) as error:
        AutoencoderKL.from_pretrained(tiny_vae)
    assert str(error.value).startswith(f"{tiny_vae / 'config.json'}: latent_channels=0"), error.value


# ------------------------------------------------------------------ item 13: weights, one short line
def test_integer_weights_name_the_file_and_the_dtype(tiny_vae):
    path = tiny_vae / f"{WEIGHTS}.safetensors"
    state = safetensors.torch.load_file(str(path))
    safetensors.torch.save_file({k: (v * 100).long() for k, v in state.items()}, str(path))
    with pytest.raises(ValueError) as error:
        AutoencoderKL.from_pretrained(tiny_vae)
    message = str(error.value)
    assert message.startswith(str(path)) and "int64, expected floating point" in message, message
    assert f"… and {len(state) - 5} more" in message and len(message) < LINE_LIMIT


def test_key_lists_are_capped(tiny_vae):
    path = tiny_vae / f"{WEIGHTS}.safetensors"
    state = safetensors.torch.load_file(str(path))
    safetensors.torch.save_file({**state, **{f"stray.{i}": torch.zeros(1) for i in range(3000)}}, str(path))
    with pytest.raises(ValueError, match=r"unexpected keys \(3000\): .* … and 2995 more") as error:
        AutoencoderKL.from_pretrained(tiny_vae)
    assert len(str(error.value)) < LINE_LIMIT


def _as_bin(folder: Path, cut) -> Path:
    """Replace the safetensors weights by a .bin holding the same tensors, cut by ``cut(bytes)``."""
    source = folder / f"{WEIGHTS}.safetensors"
    state = safetensors.torch.load_file(str(source))
    source.unlink()
    path = folder / f"{WEIGHTS}.bin"
    torch.save(state, path)
    path.write_bytes(cut(path.read_bytes()))
    return path


@pytest.mark.parametrize(
    "cut",
    [lambda b: b[: len(b) // 2], lambda b: b[:10], lambda b: b"", lambda b: b"\x80\x02garbage" * 20],
    ids=["half", "ten-bytes", "empty", "garbage"],
)
def test_corrupt_bin_is_one_plain_error(tiny_vae, cut):
    path = _as_bin(tiny_vae, cut)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError) as error:
            AutoencoderKL.from_pretrained(tiny_vae)
    message = str(error.value)
    assert message.startswith(f"{path} is not a readable PyTorch weights file (truncated or corrupt): "), message
    assert "arbitrary code" not in message and "\n" not in message and len(message) < 300
    assert not [w for w in caught if "weights" in str(w.message)], [str(w.message) for w in caught]


# ------------------------------------------------------------------ the CLI: warnings and the last resort
def test_cli_warnings_become_one_line_and_noise_is_dropped(caplog):
    from vidiff.cli import warning_lines

    with caplog.at_level(logging.DEBUG, logger="vidiff"):
        warning_lines._show_warning(UserWarning("Corrupt EXIF\ndata"), UserWarning, "/home/u/vidiff/x.py", 3)
        warning_lines._show_warning(UserWarning("TypedStorage"), UserWarning, "/v/lib/python3.11/site-packages/torch/x.py", 3)
        warning_lines._show_warning(FutureWarning("soon"), FutureWarning, "/home/u/x.py", 3)
    shown = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert shown == ["warning: UserWarning: Corrupt EXIF data"]


def test_cli_error_lines_are_capped(capsys):
    from vidiff.cli.main import _fail

    assert _fail(ValueError("key, " * 30_000), 1, debug=False) == 1
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and len(line) < LINE_LIMIT and "…" in line


# ------------------------------------------------------------------ the CLI on damaged checkpoints
def one_error_line(result, status: int = 1) -> str:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidiff: error: ") and len(lines[0]) < LINE_LIMIT, lines
    return lines[0]


@pytest.fixture
def svd_copy(tiny_svd, tmp_path) -> Path:
    random_image(80, 56).save(tmp_path / "img.png")
    return Path(shutil.copytree(tiny_svd[0], tmp_path / "svd"))


def run_svd(folder: Path, tmp_path: Path):
    return vidiff("svd", "img.png", "--model", folder, *SMALL, "-q", "-o", "out.mp4", cwd=tmp_path)


def test_cli_bad_config_value_is_a_runtime_error_naming_file_and_key(svd_copy, tmp_path):
    edit_json(svd_copy / "unet/config.json", num_attention_heads=0)
    line = one_error_line(run_svd(svd_copy, tmp_path))
    assert f"{svd_copy / 'unet/config.json'}: num_attention_heads=0" in line and "1..65536" in line, line
    edit_json(svd_copy / "unet/config.json", num_attention_heads=[2, 4])
    edit_json(svd_copy / "vae/config.json", latent_channels="4")
    line = one_error_line(run_svd(svd_copy, tmp_path))
    assert f"{svd_copy / 'vae/config.json'}: latent_channels=\"4\"" in line and "an integer" in line, line


def test_cli_integer_weights_and_corrupt_bin_are_one_line(svd_copy, tmp_path):
    path = svd_copy / f"unet/{WEIGHTS}.safetensors"
    state = safetensors.torch.load_file(str(path))
    safetensors.torch.save_file({k: v.long() for k, v in state.items()}, str(path))
    line = one_error_line(run_svd(svd_copy, tmp_path))
    assert str(path) in line and "int64, expected floating point" in line, line
    safetensors.torch.save_file(state, str(path))
    bin_path = _as_bin(svd_copy / "vae", lambda b: b[: len(b) // 2])
    line = one_error_line(run_svd(svd_copy, tmp_path))
    assert f"{bin_path} is not a readable PyTorch weights file" in line and "arbitrary" not in line, line


def test_cli_motion_adapter_failures_name_the_adapter(tiny_animatediff, tmp_path):
    root = tiny_animatediff[0]
    adapter = Path(shutil.copytree(root / "motion_adapter", tmp_path / "adapter"))
    args = ("animatediff", "a cat", "--model", root / "sd15", *SMALL, "-q", "-o", "out.mp4")
    line = one_error_line(vidiff(*args, "--motion-adapter", tmp_path / "missing", cwd=tmp_path))
    assert line.startswith(f"vidiff: error: cannot load --motion-adapter '{tmp_path / 'missing'}': "), line
    edit_json(adapter / "config.json", motion_num_attention_heads=0)
    line = one_error_line(vidiff(*args, "--motion-adapter", adapter, cwd=tmp_path))
    assert "cannot load --motion-adapter" in line and "motion_num_attention_heads=0" in line, line
    assert str(adapter / "config.json") in line


@pytest.mark.parametrize("cls_name, option", [
    ("EulerDiscreteScheduler", {"sigma_max": float("inf")}),
    ("DDIMScheduler", {"beta_end": float("nan")}),
    ("DPMSolverMultistepScheduler", {"lambda_min_clipped": float("nan")}),
])
def test_non_finite_numbers_are_refused_where_no_default_is_infinite(cls_name, option):
    """A NaN or infinite option would only ever give a NaN video; infinity stays valid where the
    option's own default is infinite (DPM-Solver's lambda_min_clipped = -inf)."""
    import vidiff

    cls = getattr(vidiff, cls_name)
    with pytest.raises(ValueError, match=f"{next(iter(option))}=.*finite number"):
        cls.from_config({}, **option)
    assert vidiff.DPMSolverMultistepScheduler.from_config({}, lambda_min_clipped=float("-inf")).config.lambda_min_clipped == float("-inf")
