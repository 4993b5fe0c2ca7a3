"""EulerDiscreteScheduler against diffusers': schedules, steps, config IO."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import diffusers
import pytest
import torch

from tests.helpers import max_abs_diff
from tests.scheduler_checks import public_options, set_up_both
from vidiff.schedulers import EulerDiscreteConfig, EulerDiscreteScheduler

CONFIGS = Path(__file__).parent / "configs"
SVD_XT = json.loads((CONFIGS / "svd_xt_scheduler.json").read_text())
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
      "timestep_spacing": "leading"}


def relative_error(ours, reference) -> float:
    ours = torch.as_tensor(ours, dtype=torch.float64)
    reference = torch.as_tensor(reference, dtype=torch.float64)
    assert ours.shape == reference.shape, f"shape {list(ours.shape)} vs {list(reference.shape)}"
    if ours.numel() == 0:
        return 0.0
    return ((ours - reference).abs() / reference.abs().clamp_min(1e-12)).max().item()


def both(config: dict, **kwargs):
    return set_up_both(EulerDiscreteScheduler, diffusers.EulerDiscreteScheduler, config, **kwargs)


def assert_same_schedule(ours, reference, what: str) -> None:
    assert ours.timesteps.dtype == reference.timesteps.dtype == torch.float32, what
    assert ours.sigmas.dtype == reference.sigmas.dtype == torch.float32, what
    assert relative_error(ours.timesteps, reference.timesteps) <= 1e-6, what
    assert relative_error(ours.sigmas, reference.sigmas) <= 1e-6, what
    assert relative_error(ours.init_noise_sigma, float(reference.init_noise_sigma)) <= 1e-6, what
    assert ours.num_inference_steps == reference.num_inference_steps, what


# ---------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("num_steps", [1, 2, 25, 30])
def test_svd_xt_schedule_and_plan(num_steps):
    ours, reference = both(SVD_XT, num_inference_steps=num_steps)
    assert_same_schedule(ours, reference, f"svd-xt, {num_steps} steps")
    plan = ours.plan(num_steps)
    assert torch.equal(plan.sigmas, reference.sigmas)  # N+1 values, the last 0
    assert torch.equal(plan.timesteps, reference.timesteps)  # ¼ ln σ
    assert plan.init_noise_sigma == float(reference.init_noise_sigma)


def _grid():
    """A fixed, seeded third of all option combinations; every value of every option occurs."""
    options = {
        "timestep_spacing": ["leading", "trailing", "linspace"],
        "steps_offset": [0, 1],
        "use_karras_sigmas": [False, True],
        "prediction_type": ["epsilon", "v_prediction"],
        "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2"],
        "interpolation_type": ["linear", "log_linear"],
        "timestep_type": ["discrete", "continuous"],
    }
    combos = [dict(zip(options, values)) for values in itertools.product(*options.values())]
    chosen = random.Random(0).sample(combos, len(combos) // 3)
    for name, values in options.items():
        assert {c[name] for c in chosen} == set(values), name
    return [{"beta_start": 0.00085, "beta_end": 0.012, **c} for c in chosen]


def test_schedule_grid():
    for config in _grid():
        for num_steps in (1, 7, 25):
            ours, reference = both(config, num_inference_steps=num_steps)
            assert_same_schedule(ours, reference, f"{config}, {num_steps} steps")


@pytest.mark.parametrize(
    "config",
    [
        {"use_exponential_sigmas": True, **SD},
        {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
        {"final_sigmas_type": "sigma_min", "use_karras_sigmas": True},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "linspace", "beta_schedule": "squaredcos_cap_v2"},
        {"trained_betas": torch.linspace(0.001, 0.03, 50).tolist(), "num_train_timesteps": 50},
        {"prediction_type": "sample", "timestep_type": "continuous"},  # continuous needs v: stays discrete
    ],
)
def test_other_options(config):
    for num_steps in (1, 4, 25):
        ours, reference = both(config, num_inference_steps=num_steps)
        assert_same_schedule(ours, reference, f"{config}, {num_steps} steps")


def test_trailing_step_counts_follow_reference():
    # np.arange's float64 length gives some step counts one extra timestep (61 → 62); both agree.
    for num_steps in (3, 48, 61, 96, 103):
        ours, reference = both({"timestep_spacing": "trailing"}, num_inference_steps=num_steps)
        assert_same_schedule(ours, reference, f"trailing, {num_steps} steps")
    plan = EulerDiscreteScheduler(timestep_spacing="trailing").plan(61)
    reference = diffusers.EulerDiscreteScheduler(timestep_spacing="trailing")
    reference.set_timesteps(61)
    assert len(plan.timesteps) == len(reference.timesteps) == 62
    assert torch.equal(plan.sigmas, reference.sigmas) and torch.equal(plan.timesteps, reference.timesteps)


def test_log_linear_plan_drops_unused_final_sigma():
    ours, reference = both({"interpolation_type": "log_linear"}, num_inference_steps=5)
    assert len(reference.sigmas) == 7  # the reference appends the final σ to 6 log-spaced values
    plan = ours.plan(5)
    assert torch.equal(plan.sigmas, reference.sigmas[:6])


@pytest.mark.parametrize("config", [SVD_XT, {}, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}])
def test_custom_sigmas(config):
    for sigmas in ([14.6, 5.0, 1.2, 0.3, 0.0], [700.0, 20.0, 0.002, 0.0], [3.0, 0.5]):
        ours, reference = both(config, sigmas=sigmas)
        assert_same_schedule(ours, reference, f"{config}, sigmas={sigmas}")
        plan = ours.plan(25, sigmas=torch.tensor(sigmas))  # custom σ replace the step count
        assert torch.equal(plan.sigmas, reference.sigmas) and torch.equal(plan.timesteps, reference.timesteps)


def test_custom_timesteps():
    for config in ({}, SD):
        ours, reference = both(config, timesteps=[901, 700.5, 400, 13])
        assert_same_schedule(ours, reference, f"{config}, custom timesteps")
    with pytest.raises(ValueError, match="custom timesteps"):
        EulerDiscreteScheduler.from_config(SVD_XT).plan(timesteps=[900, 500])
    with pytest.raises(ValueError, match="exactly one"):
        EulerDiscreteScheduler().plan(sigmas=[1.0, 0.0], timesteps=[900])


def test_initial_state_matches_reference():
    for config in (SVD_XT, SD):
        ours = EulerDiscreteScheduler.from_config(config)
        reference = diffusers.EulerDiscreteScheduler.from_config(config)
        assert relative_error(ours.timesteps, reference.timesteps) <= 1e-6
        assert relative_error(ours.sigmas, reference.sigmas) <= 1e-6
        assert relative_error(ours.init_noise_sigma, float(reference.init_noise_sigma)) <= 1e-6


def test_plan_puts_timesteps_on_device_and_sigmas_on_cpu():
    plan = EulerDiscreteScheduler.from_config(SD).plan(4, device="meta")
    assert plan.timesteps.device.type == "meta" and plan.sigmas.device.type == "cpu"


@pytest.mark.parametrize("request_kwargs", [{}, {"num_inference_steps": 3, "sigmas": [1.0, 0.0]},
                                            {"num_inference_steps": 0}, {"sigmas": [[1.0, 0.0]]}])
def test_bad_schedule_requests(request_kwargs):
    with pytest.raises(ValueError):
        EulerDiscreteScheduler().set_timesteps(**request_kwargs)


# ---------------------------------------------------------------------------- steps
@pytest.mark.parametrize(
    "config",
    [SVD_XT, SD, {**SD, "prediction_type": "v_prediction", "use_karras_sigmas": True},
     {"prediction_type": "sample", "timestep_spacing": "trailing"}],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_step_matches_reference(config, dtype):
    ours, reference = both(config, num_inference_steps=6)
    gen = torch.Generator().manual_seed(1)
    ours_x = ref_x = torch.randn(2, 4, 3, 5, 6, generator=gen).to(dtype) * ours.init_noise_sigma
    for t_ours, t_ref in zip(ours.timesteps, reference.timesteps):
        scaled = ours.scale_model_input(ours_x, t_ours)
        scaled_ref = reference.scale_model_input(ref_x, t_ref)
        assert scaled.dtype == scaled_ref.dtype == dtype
        assert max_abs_diff(scaled, scaled_ref) <= 1e-6 * max(1.0, scaled_ref.abs().max().item())
        output = torch.randn(ours_x.shape, generator=gen).to(dtype)
        step = ours.step(output, t_ours, ours_x)
        step_ref = reference.step(output, t_ref, ref_x)
        scale = max(1.0, step_ref.prev_sample.abs().max().item())
        assert step.prev_sample.dtype == step_ref.prev_sample.dtype == dtype
        assert max_abs_diff(step.prev_sample, step_ref.prev_sample) <= 1e-6 * scale
        assert max_abs_diff(step.pred_original_sample, step_ref.pred_original_sample) <= 1e-6 * scale
        # Both continue from the reference's sample so errors cannot compound or hide.
        ours_x = ref_x = step_ref.prev_sample
    assert ours.step_index == reference.step_index == 6


def test_step_with_begin_index_and_tuple_output():
    ours, reference = both(SD, num_inference_steps=5)
    ours.set_begin_index(2)
    reference.set_begin_index(2)
    x = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    output = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    prev, denoised = ours.step(output, ours.timesteps[2], x, return_dict=False)
    prev_ref, denoised_ref = reference.step(output, reference.timesteps[2], x, return_dict=False)
    assert max_abs_diff(prev, prev_ref) <= 1e-6 and max_abs_diff(denoised, denoised_ref) <= 1e-6
    assert ours.step_index == 3


def test_step_rejects_integer_timesteps():
    ours = EulerDiscreteScheduler.from_config(SD)
    ours.set_timesteps(3)
    x = torch.zeros(1, 4, 1, 2, 2)
    with pytest.raises(ValueError, match="index"):
        ours.step(x, 0, x)
    with pytest.raises(ValueError, match="not one of"):
        ours.step(x, torch.tensor(12.5), x)


# ---------------------------------------------------------------------------- config IO
def test_from_config_overrides_and_extra_keys():
    scheduler = EulerDiscreteScheduler.from_config(SVD_XT, prediction_type="epsilon", steps_offset=0)
    assert isinstance(scheduler.config, EulerDiscreteConfig)
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.steps_offset == 0
    assert scheduler.config.use_karras_sigmas is True and scheduler.config.sigma_max == 700.0
    assert scheduler.config.extra["skip_prk_steps"] is True  # an option Euler ignores, kept for saving
    again = EulerDiscreteScheduler.from_config(scheduler.config)
    assert again.config == scheduler.config


def test_defaults_are_diffusers_defaults():
    assert EulerDiscreteScheduler().config.to_diffusers() == public_options(diffusers.EulerDiscreteScheduler().config)


def test_unknown_override_is_a_type_error():
    with pytest.raises(TypeError, match="prediction_typo"):
        EulerDiscreteScheduler.from_config(SVD_XT, prediction_typo="epsilon")


@pytest.mark.parametrize(
    "option, value",
    [("beta_schedule", "cosine"), ("prediction_type", "x0"), ("timestep_spacing", "even"),
     ("interpolation_type", "cubic"), ("timestep_type", "edm"), ("final_sigmas_type", "one"),
     ("use_beta_sigmas", True)],
)
def test_unsupported_value_names_option_and_choices(option, value):
    with pytest.raises(ValueError, match=option) as error:
        EulerDiscreteScheduler.from_config(SVD_XT, **{option: value})
    assert "must be one of" in str(error.value)


def test_karras_and_exponential_together_is_an_error():
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        EulerDiscreteScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)


def test_from_pretrained_reads_what_diffusers_saved(tmp_path):
    reference = diffusers.EulerDiscreteScheduler.from_config(SVD_XT)
    reference.save_pretrained(tmp_path / "scheduler")
    ours = EulerDiscreteScheduler.from_pretrained(tmp_path)
    assert ours.config.timestep_type == "continuous" and ours.config.sigma_min == 0.002
    ours.set_timesteps(25)
    reference.set_timesteps(25)
    assert_same_schedule(ours, reference, "loaded from a diffusers save")
    alone = EulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler", subfolder=None, steps_offset=0)
    assert alone.config.steps_offset == 0
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        EulerDiscreteScheduler.from_pretrained(tmp_path, subfolder="unet")


def test_save_round_trip_loads_in_diffusers_and_vidiff(tmp_path):
    ours = EulerDiscreteScheduler.from_config(SVD_XT, steps_offset=0)
    ours.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert raw["_class_name"] == "EulerDiscreteScheduler" and raw["skip_prk_steps"] is True
    again = EulerDiscreteScheduler.from_pretrained(tmp_path, subfolder=None)
    assert again.config == ours.config
    reference = diffusers.EulerDiscreteScheduler.from_pretrained(tmp_path)
    ours.set_timesteps(7)
    reference.set_timesteps(7)
    assert_same_schedule(ours, reference, "saved by vidiff, loaded by diffusers")
