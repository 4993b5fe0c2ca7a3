"""The released Wan repositories' own files (tests/configs/wan: model_index.json, scheduler and VAE
configs of Wan 2.1 T2V/I2V, Wan 2.2 TI2V and both A14B) are understood by vidiff's Wan pipelines:
every component class they name is one the pipeline loads, the settings beside them are the
pipeline's options, and the scheduler samples Wan's flow matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidiff import WanImageToVideoPipeline, WanPipeline
from vidiff.models.wan_vae import AutoencoderKLWan
from vidiff.schedulers import UniPCMultistepScheduler

RELEASED = Path(__file__).parent / "configs" / "wan"
REPOSITORIES = sorted(path.parent.name for path in RELEASED.glob("*/model_index.json"))
PIPELINES = {"WanPipeline": WanPipeline, "WanImageToVideoPipeline": WanImageToVideoPipeline}


def test_every_released_repository_is_here():
    assert len(REPOSITORIES) == 7


@pytest.mark.parametrize("repository", REPOSITORIES)
def test_model_index_names_only_what_the_pipeline_loads(repository):
    index = json.loads((RELEASED / repository / "model_index.json").read_text())
    pipeline = PIPELINES[index["_class_name"]]
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        if name in pipeline.options:
            continue
        library, class_name = entry
        if class_name is None:
            assert name in pipeline.optional_components, name
        else:
            assert class_name in pipeline.components[name], (name, class_name)
    for name in set(pipeline.components) - set(index):
        assert name in pipeline.optional_components  # Wan 2.1 indexes have no transformer_2


@pytest.mark.parametrize("repository", REPOSITORIES)
def test_the_released_scheduler_samples_flow_matching_as_configured(repository):
    raw = json.loads((RELEASED / repository / "scheduler" / "scheduler_config.json").read_text())
    scheduler = UniPCMultistepScheduler.from_config(raw)
    plan = scheduler.plan(50)
    assert plan.parameterization.space == "flow" and plan.num_steps == 50
    assert float(plan.sigmas[-1]) == 0.0 and plan.init_noise_sigma == 1.0
    # flow_shift bends the schedule towards high noise: the midpoint t is above the unshifted 0.5
    assert float(plan.sigmas[25]) > 0.5 + 0.1 * (raw["flow_shift"] - 1) / raw["flow_shift"]


@pytest.mark.parametrize("repository", REPOSITORIES)
def test_the_released_vae_config_gives_the_documented_factors(repository):
    raw = json.loads((RELEASED / repository / "vae" / "config.json").read_text())
    config = AutoencoderKLWan.config_class.from_diffusers(raw)
    wan22 = raw["z_dim"] == 48
    assert config.z_dim == (48 if wan22 else 16)
    assert len(config.latents_mean) == len(config.latents_std) == config.z_dim
    index = json.loads((RELEASED / repository / "model_index.json").read_text())
    assert bool(index.get("expand_timesteps")) == wan22  # only TI2V-5B has the 16× VAE
