"""EulerAncestralDiscreteScheduler against diffusers': schedules, seeded stochastic steps, the loop, config IO."""

from __future__ import annotations

import itertools
import json

import diffusers
import pytest
import torch

from tests.helpers import max_abs_diff
from tests.scheduler_checks import (
    SHAPE,
    FakeNetwork,
    conditioning,
    diffusers_loop,
    initial_noise,
    public_options,
    seeded_noise,
    set_up_both,
    vidiff_loop,
)
from vidiff.diffusion.loop import sample
from vidiff.schedulers import (
    EulerAncestralDiscreteConfig,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from vidiff.diffusion.steppers import euler_ancestral

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
      "timestep_spacing": "leading"}


def reference_loop(config, num_steps, scale, seed, dtype=torch.float32):
    """diffusers' pipeline loop around its ancestral scheduler, noise drawn from a seeded generator."""
    scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(num_steps)
    cond, uncond = conditioning(dtype)
    return diffusers_loop(scheduler, cond, uncond, scale, torch.Generator().manual_seed(seed), dtype)


def run_ours(config, num_steps, scale, seed, dtype=torch.float32):
    plan = EulerAncestralDiscreteScheduler.from_config(config).plan(num_steps)
    cond, uncond = conditioning(dtype)
    return vidiff_loop(plan, cond, uncond, scale, seeded_noise(seed, dtype), dtype)


def both(config: dict, num_steps: int):
    return set_up_both(EulerAncestralDiscreteScheduler, diffusers.EulerAncestralDiscreteScheduler, config, num_steps)


def _grid():
    """Every combination of the schedule options (72); each checked at a few step counts."""
    options = {
        "timestep_spacing": ["leading", "trailing", "linspace"],
        "steps_offset": [0, 1],
        "prediction_type": ["epsilon", "v_prediction"],
        "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2"],
        "rescale_betas_zero_snr": [False, True],
    }
    combos = [dict(zip(options, values)) for values in itertools.product(*options.values())]
    return [{"beta_start": 0.00085, "beta_end": 0.012, **c} for c in combos]


# ---------------------------------------------------------------------------- schedules
def test_schedule_grid_is_bit_exact():
    for config in _grid():
        for num_steps in (1, 7, 25, 61):  # 61 with "trailing": one extra timestep, in both
            ours, reference = both(config, num_steps)
            what = f"{config}, {num_steps} steps"
            assert torch.equal(ours.timesteps, reference.timesteps), what
            assert torch.equal(ours.sigmas, reference.sigmas), what
            assert ours.init_noise_sigma == float(reference.init_noise_sigma), what
            plan = ours.plan(num_steps)
            assert torch.equal(plan.sigmas, reference.sigmas) and torch.equal(plan.timesteps, reference.timesteps)
            assert plan.stepper is euler_ancestral and plan.init_noise_sigma == ours.init_noise_sigma


def test_trained_betas_and_initial_state():
    config = {"trained_betas": torch.linspace(0.001, 0.03, 50).tolist(), "num_train_timesteps": 50}
    ours = EulerAncestralDiscreteScheduler.from_config(config)
    reference = diffusers.EulerAncestralDiscreteScheduler.from_config(config)
    assert torch.equal(ours.sigmas, reference.sigmas)  # before set_timesteps: the whole table
    assert torch.equal(ours.timesteps, reference.timesteps.float())
    ours.set_timesteps(9)
    reference.set_timesteps(9)
    assert torch.equal(ours.sigmas, reference.sigmas) and torch.equal(ours.timesteps, reference.timesteps)


# ---------------------------------------------------------------------------- steps with seeded noise
ZERO_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}
COSINE = {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace"}  # σ_max ≈ 2e4: not for float16


@pytest.mark.parametrize(
    "config, dtype",
    [(SD, torch.float32), (SD, torch.float16),
     ({**SD, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, torch.float32),
     ({**SD, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, torch.float16),
     (ZERO_SNR, torch.float32),
     (COSINE, torch.float32)],
)
def test_step_matches_reference_with_same_generator(config, dtype):
    ours, reference = both(config, 6)
    gen = torch.Generator().manual_seed(1)
    ours_gen, reference_gen = torch.Generator().manual_seed(42), torch.Generator().manual_seed(42)
    x = (torch.randn(SHAPE, generator=gen) * ours.init_noise_sigma).to(dtype)
    for t_ours, t_ref in zip(ours.timesteps, reference.timesteps):
        scaled, scaled_ref = ours.scale_model_input(x, t_ours), reference.scale_model_input(x, t_ref)
        assert torch.equal(scaled, scaled_ref)
        output = torch.randn(SHAPE, generator=gen).to(dtype)
        step = ours.step(output, t_ours, x, generator=ours_gen)
        step_ref = reference.step(output, t_ref, x, generator=reference_gen)
        assert step.prev_sample.dtype == step_ref.prev_sample.dtype == dtype
        assert torch.isfinite(step_ref.prev_sample).all()
        assert torch.equal(step.prev_sample, step_ref.prev_sample), f"{config}, t={float(t_ref)}"
        assert torch.equal(step.pred_original_sample, step_ref.pred_original_sample)
        x = step_ref.prev_sample  # both continue from the reference's sample
    assert ours.step_index == reference.step_index == 6
    # One draw per step on both sides: the generators are in the same state afterwards.
    assert torch.equal(torch.randn(3, generator=ours_gen), torch.randn(3, generator=reference_gen))


def test_step_noise_is_really_drawn():
    # Same inputs, different seeds: different results (the σ_up·noise term is not vanishing).
    ours = EulerAncestralDiscreteScheduler.from_config(SD)
    ours.set_timesteps(5)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    first = ours.step(x, ours.timesteps[1], x, generator=torch.Generator().manual_seed(1)).prev_sample
    ours.set_timesteps(5)
    second = ours.step(x, ours.timesteps[1], x, generator=torch.Generator().manual_seed(2)).prev_sample
    assert max_abs_diff(first, second) > 0.1


def test_step_with_a_list_of_generators():
    ours, reference = both(SD, 4)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    seeds = [5, 6]
    step = ours.step(x, ours.timesteps[0], x, generator=[torch.Generator().manual_seed(s) for s in seeds])
    step_ref = reference.step(x, reference.timesteps[0], x, generator=[torch.Generator().manual_seed(s) for s in seeds])
    assert torch.equal(step.prev_sample, step_ref.prev_sample)


# ---------------------------------------------------------------------------- the one loop
@pytest.mark.parametrize(
    "config, scale",
    [(SD, 7.5), ({**SD, "prediction_type": "v_prediction"}, None),
     ({"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 5.0),
     ({"timestep_spacing": "linspace", "steps_offset": 1}, 3.0)],
)
@pytest.mark.parametrize("num_steps", [1, 4, 20])
def test_loop_matches_reference_loop(config, scale, num_steps):
    ours = run_ours(config, num_steps, scale, seed=123)
    reference = reference_loop(config, num_steps, scale, seed=123)
    assert torch.isfinite(reference).all()
    assert torch.equal(ours, reference), max_abs_diff(ours, reference)


def test_loop_in_float16_matches_reference():
    ours = run_ours(SD, 8, 7.5, seed=9, dtype=torch.float16)
    reference = reference_loop(SD, 8, 7.5, seed=9, dtype=torch.float16)
    assert ours.dtype == reference.dtype == torch.float16
    assert torch.equal(ours, reference), max_abs_diff(ours, reference)


def test_loop_without_noise_source_is_an_error():
    plan = EulerAncestralDiscreteScheduler.from_config(SD).plan(3)
    cond, _ = conditioning()
    with pytest.raises(ValueError, match="noise"):
        sample(FakeNetwork(), initial_noise() * plan.init_noise_sigma, plan, cond)


def test_sample_prediction_equals_epsilon_form_of_the_same_estimate():
    # diffusers' ancestral scheduler has no "sample" branch; ours takes x̂0 = output. Check it
    # against the reference fed the ε that implies the same x̂0: ε = (x − x̂0)/σ.
    ours = EulerAncestralDiscreteScheduler.from_config({**SD, "prediction_type": "sample"})
    reference = diffusers.EulerAncestralDiscreteScheduler.from_config(SD)
    ours.set_timesteps(5)
    reference.set_timesteps(5)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(SHAPE, generator=gen) * ours.init_noise_sigma
    for index, t in enumerate(reference.timesteps):
        denoised = torch.randn(SHAPE, generator=gen)
        epsilon = (x - denoised) / reference.sigmas[index]
        step = ours.step(denoised, t, x, generator=torch.Generator().manual_seed(index))
        step_ref = reference.step(epsilon, t, x, generator=torch.Generator().manual_seed(index))
        assert max_abs_diff(step.prev_sample, step_ref.prev_sample) <= 1e-5 * max(1.0, x.abs().max().item())
        x = step_ref.prev_sample


# ---------------------------------------------------------------------------- config IO
def test_defaults_are_diffusers_defaults():
    reference = diffusers.EulerAncestralDiscreteScheduler().config
    assert EulerAncestralDiscreteScheduler().config.to_diffusers() == public_options(reference)


def test_from_diffusers_config_and_from_euler_config():
    reference = diffusers.EulerAncestralDiscreteScheduler.from_config(SD, prediction_type="v_prediction")
    ours = EulerAncestralDiscreteScheduler.from_config(reference.config)
    assert isinstance(ours.config, EulerAncestralDiscreteConfig)
    assert ours.config.prediction_type == "v_prediction" and ours.config.steps_offset == 1
    # A pipeline's Euler config: Euler-only options are kept aside, not applied, and saved back.
    euler = EulerDiscreteScheduler.from_config(SD, use_karras_sigmas=True, interpolation_type="log_linear")
    ancestral = EulerAncestralDiscreteScheduler.from_config(euler.config)
    assert ancestral.config.extra["use_karras_sigmas"] is True
    assert ancestral.config.use_karras_sigmas is False and ancestral.config.interpolation_type == "linear"
    ancestral.set_timesteps(10)
    reference = diffusers.EulerAncestralDiscreteScheduler.from_config(euler.config.to_diffusers())
    reference.set_timesteps(10)
    assert torch.equal(ancestral.sigmas, reference.sigmas)
    assert EulerDiscreteScheduler.from_config(ancestral.config).config.use_karras_sigmas is True


def test_save_round_trip_loads_in_diffusers_and_vidiff(tmp_path):
    ours = EulerAncestralDiscreteScheduler.from_config(SD, prediction_type="v_prediction")
    ours.save_pretrained(tmp_path / "scheduler")
    raw = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert raw["_class_name"] == "EulerAncestralDiscreteScheduler"
    assert "interpolation_type" not in raw  # fixed options are not config keys
    again = EulerAncestralDiscreteScheduler.from_pretrained(tmp_path)
    assert again.config == ours.config
    reference = diffusers.EulerAncestralDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert reference.config.prediction_type == "v_prediction" and reference.config.steps_offset == 1
    reference.save_pretrained(tmp_path / "theirs")
    assert EulerAncestralDiscreteScheduler.from_pretrained(tmp_path / "theirs", subfolder=None).config == ours.config


@pytest.mark.parametrize(
    "option, value",
    [("beta_schedule", "cosine"), ("prediction_type", "original_sample"), ("timestep_spacing", "even")],
)
def test_unsupported_value_names_option_and_choices(option, value):
    with pytest.raises(ValueError, match=option) as error:
        EulerAncestralDiscreteScheduler.from_config(SD, **{option: value})
    assert "must be one of" in str(error.value)


def test_bad_requests():
    with pytest.raises(ValueError, match="num_train_timesteps"):
        EulerAncestralDiscreteScheduler(num_train_timesteps=0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        EulerAncestralDiscreteScheduler().plan(0)
    with pytest.raises(TypeError, match="use_karras_sigmas"):
        EulerAncestralDiscreteScheduler(use_karras_sigmas=True)  # not an option of this scheduler
    ours = EulerAncestralDiscreteScheduler()
    ours.set_timesteps(3)
    with pytest.raises(ValueError, match="index"):
        ours.step(torch.zeros(SHAPE), 0, torch.zeros(SHAPE))
