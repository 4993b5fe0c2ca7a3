"""DDIMScheduler against diffusers': timesteps, the VP-space loop, stateful steps, config IO."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

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
    scaled_diff,
    seeded_noise,
    vidiff_loop,
)
from vidiff.diffusion.loop import sample
from vidiff.schedulers import DDIMConfig, DDIMScheduler, EulerDiscreteScheduler

CONFIGS = Path(__file__).parent / "configs"
I2VGEN_XL = json.loads((CONFIGS / "i2vgenxl_scheduler.json").read_text())
ANIMATEDIFF = json.loads((CONFIGS / "animatediff_scheduler.json").read_text())


def reference_loop(config, num_steps, cond, uncond, scale=None, eta=0.0, seed=None, dtype=torch.float32, **step_kwargs):
    """diffusers' pipeline loop around its DDIMScheduler."""
    scheduler = diffusers.DDIMScheduler.from_config(config)
    scheduler.set_timesteps(num_steps)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return diffusers_loop(scheduler, cond, uncond, scale, generator, dtype, eta=eta, **step_kwargs)


def run_ours(config, num_steps, cond, uncond, scale=None, eta=0.0, seed=None, dtype=torch.float32, **plan_kwargs):
    plan = DDIMScheduler.from_config(config).plan(num_steps, eta=eta, **plan_kwargs)
    return vidiff_loop(plan, cond, uncond, scale, None if seed is None else seeded_noise(seed, dtype), dtype)


# ---------------------------------------------------------------------------- the two released configs
@pytest.mark.parametrize("num_steps", [1, 25, 50])
def test_i2vgen_xl_schedule_samples_like_diffusers(num_steps):
    # v-prediction, zero terminal SNR, leading spacing + steps_offset, set_alpha_to_one.
    cond, uncond = conditioning()
    ours = run_ours(I2VGEN_XL, num_steps, cond, uncond, scale=9.0)
    reference = reference_loop(I2VGEN_XL, num_steps, cond, uncond, scale=9.0)
    assert scaled_diff(ours, reference) <= 1e-6


@pytest.mark.parametrize("num_steps", [1, 25, 50])
def test_animatediff_schedule_samples_like_diffusers(num_steps):
    # ε-prediction, linspace spacing (rounded) with steps_offset, set_alpha_to_one=False.
    cond, uncond = conditioning()
    ours = run_ours(ANIMATEDIFF, num_steps, cond, uncond, scale=7.5)
    reference = reference_loop(ANIMATEDIFF, num_steps, cond, uncond, scale=7.5)
    assert scaled_diff(ours, reference) <= 1e-6


def test_linspace_steps_land_below_the_next_timestep():
    # diffusers' DDIM steps from t to t − T//N, not to the next scheduled timestep: 999 → 959 while
    # the next step is told 957. The plan must follow that, or the AnimateDiff case above drifts.
    plan = DDIMScheduler.from_config(ANIMATEDIFF).plan(25)
    reference = diffusers.DDIMScheduler.from_config(ANIMATEDIFF)
    assert plan.timesteps[:2].tolist() == [999.0, 957.0]
    assert plan.stepper.alphas_cumprod_prev[0] == reference.alphas_cumprod[959]
    assert plan.alphas_cumprod[1] == reference.alphas_cumprod[957]
    assert plan.alphas_cumprod[-1] == reference.alphas_cumprod[0]  # set_alpha_to_one=False


def test_zero_terminal_snr_first_step_is_finite_for_v_prediction():
    config = {**I2VGEN_XL, "timestep_spacing": "trailing"}
    plan = DDIMScheduler.from_config(config).plan(10)
    assert plan.alphas_cumprod[0] == 0 and plan.sigmas[0] == float("inf")
    cond, uncond = conditioning()
    ours = run_ours(config, 10, cond, uncond, scale=9.0)
    reference = reference_loop(config, 10, cond, uncond, scale=9.0)
    assert torch.isfinite(ours).all()
    assert scaled_diff(ours, reference) <= 1e-6


# ---------------------------------------------------------------------------- grids of options
OPTIONS = {
    "timestep_spacing": ["leading", "linspace", "trailing"],
    "steps_offset": [0, 1],
    "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2"],
    "prediction_type": ["epsilon", "v_prediction", "sample"],
    "set_alpha_to_one": [False, True],
    "rescale_betas_zero_snr": [False, True],
    "clip_sample": [False, True],
    "thresholding": [False, True],
}


def _grid(count: int = 48):
    """A seeded sample of option combinations in which every value of every option occurs.

    ε-prediction at ᾱ = 0 (zero SNR with linspace / trailing) divides by zero in the reference too,
    so those combinations are left out.
    """
    combos = [dict(zip(OPTIONS, values)) for values in itertools.product(*OPTIONS.values())]
    combos = [
        c for c in combos
        if not (c["prediction_type"] == "epsilon" and c["rescale_betas_zero_snr"] and c["timestep_spacing"] != "leading")
    ]
    chosen = random.Random(1).sample(combos, count)
    for name, values in OPTIONS.items():
        assert {c[name] for c in chosen} == set(values), name
    return [{"beta_start": 0.00085, "beta_end": 0.012, "sample_max_value": 2.5, **c} for c in chosen]


def test_timesteps_and_alpha_tables_match_for_every_step_count():
    for spacing, offset in itertools.product(OPTIONS["timestep_spacing"], (0, 1)):
        config = {"timestep_spacing": spacing, "steps_offset": offset, "set_alpha_to_one": False}
        ours, reference = DDIMScheduler.from_config(config), diffusers.DDIMScheduler.from_config(config)
        assert torch.equal(ours.alphas_cumprod, reference.alphas_cumprod)
        for num_steps in range(1, 1001, 3):
            reference.set_timesteps(num_steps)
            if reference.timesteps.max() >= 1000:  # leading + steps_offset overflows the table
                with pytest.raises(ValueError, match="steps_offset"):
                    ours.plan(num_steps)
                continue
            plan = ours.plan(num_steps)
            assert torch.equal(plan.timesteps.to(torch.int64), reference.timesteps), (spacing, offset, num_steps)
            assert torch.equal(plan.alphas_cumprod[:-1], reference.alphas_cumprod[reference.timesteps])


def test_option_grid_samples_like_diffusers():
    cond, uncond = conditioning()
    for config in _grid():
        for num_steps in (1, 7):
            ours = run_ours(config, num_steps, cond, uncond, scale=4.0)
            reference = reference_loop(config, num_steps, cond, uncond, scale=4.0)
            assert scaled_diff(ours, reference) <= 1e-6, (config, num_steps)


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("config", [I2VGEN_XL, ANIMATEDIFF, {"timestep_spacing": "trailing", "prediction_type": "sample"}])
def test_eta_draws_the_same_noise_as_diffusers(config, eta):
    cond, uncond = conditioning()
    ours = run_ours(config, 8, cond, uncond, scale=3.0, eta=eta, seed=5)
    reference = reference_loop(config, 8, cond, uncond, scale=3.0, eta=eta, seed=5)
    assert scaled_diff(ours, reference) <= 1e-6
    deterministic = reference_loop(config, 8, cond, uncond, scale=3.0)
    assert max_abs_diff(ours, deterministic) > 1e-3  # the noise really entered


def test_use_clipped_model_output_matches_diffusers():
    config = {"clip_sample": True, "clip_sample_range": 0.5, "prediction_type": "v_prediction"}
    cond, uncond = conditioning()
    ours = run_ours(config, 6, cond, uncond, eta=0.5, seed=2, use_clipped_model_output=True)
    reference = reference_loop(config, 6, cond, uncond, eta=0.5, seed=2, use_clipped_model_output=True)
    assert scaled_diff(ours, reference) <= 1e-6
    unclipped = run_ours(config, 6, cond, uncond, eta=0.5, seed=2)
    assert max_abs_diff(ours, unclipped) > 1e-3


def test_eta_needs_a_noise_source():
    cond, _ = conditioning()
    plan = DDIMScheduler().plan(3, eta=0.5)
    with pytest.raises(ValueError, match="noise"):
        sample(FakeNetwork(), initial_noise(), plan, cond)


def test_float16_loop_close_to_diffusers():
    # The reference steps in float16 here; vidiff steps in float32 and casts back, as for Euler.
    cond, uncond = conditioning(torch.float16)
    ours = run_ours(ANIMATEDIFF, 10, cond, uncond, scale=7.5, dtype=torch.float16)
    reference = reference_loop(ANIMATEDIFF, 10, cond, uncond, scale=7.5, dtype=torch.float16)
    assert ours.dtype == reference.dtype == torch.float16
    assert scaled_diff(ours, reference) <= 5e-3


# ---------------------------------------------------------------------------- stateful surface
@pytest.mark.parametrize("config", [I2VGEN_XL, ANIMATEDIFF, {"thresholding": True, "sample_max_value": 1.5}])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_stateful_step_matches_reference(config, eta):
    ours, reference = DDIMScheduler.from_config(config), diffusers.DDIMScheduler.from_config(config)
    ours.set_timesteps(6)
    reference.set_timesteps(6)
    assert torch.equal(ours.timesteps, reference.timesteps) and ours.timesteps.dtype == torch.int64
    assert ours.init_noise_sigma == reference.init_noise_sigma == 1.0
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=gen)
    for t in ours.timesteps:
        assert ours.scale_model_input(x, t) is x
        output = torch.randn(SHAPE, generator=gen)
        step = ours.step(output, t, x, eta=eta, generator=torch.Generator().manual_seed(int(t)))
        step_ref = reference.step(output, t, x, eta=eta, generator=torch.Generator().manual_seed(int(t)))
        assert scaled_diff(step.prev_sample, step_ref.prev_sample) <= 1e-6
        assert scaled_diff(step.pred_original_sample, step_ref.pred_original_sample) <= 1e-6
        x = step_ref.prev_sample  # both continue from the reference's sample


def test_stateful_step_takes_variance_noise_and_any_timestep():
    ours, reference = DDIMScheduler(), diffusers.DDIMScheduler()
    ours.set_timesteps(10)
    reference.set_timesteps(10)
    gen = torch.Generator().manual_seed(4)
    x, output, noise = (torch.randn(SHAPE, generator=gen) for _ in range(3))
    for t in (901, 455, 3):  # the reference computes from t itself, scheduled or not
        prev, denoised = ours.step(output, t, x, eta=1.0, variance_noise=noise, return_dict=False)
        prev_ref, denoised_ref = reference.step(output, t, x, eta=1.0, variance_noise=noise, return_dict=False)
        assert scaled_diff(prev, prev_ref) <= 1e-6 and scaled_diff(denoised, denoised_ref) <= 1e-6
    with pytest.raises(ValueError, match="not both"):
        ours.step(output, 901, x, eta=1.0, variance_noise=noise, generator=gen)


def test_initial_state_and_errors_before_set_timesteps():
    for config in (I2VGEN_XL, ANIMATEDIFF):
        ours, reference = DDIMScheduler.from_config(config), diffusers.DDIMScheduler.from_config(config)
        assert torch.equal(ours.timesteps, reference.timesteps)
        assert torch.equal(ours.alphas_cumprod, reference.alphas_cumprod)
        assert torch.equal(ours.final_alpha_cumprod, reference.final_alpha_cumprod)
        assert len(ours) == len(reference)
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(x, 999, x)


# ---------------------------------------------------------------------------- config IO
def test_defaults_are_diffusers_defaults():
    assert DDIMScheduler().config.to_diffusers() == public_options(diffusers.DDIMScheduler().config)


def test_from_config_of_diffusers_and_of_another_scheduler():
    reference = diffusers.DDIMScheduler.from_config(I2VGEN_XL)
    ours = DDIMScheduler.from_config(reference.config)
    assert isinstance(ours.config, DDIMConfig) and ours.config.rescale_betas_zero_snr is True
    euler = EulerDiscreteScheduler.from_config(ANIMATEDIFF, timestep_spacing="leading")
    switched = DDIMScheduler.from_config(euler.config, timestep_spacing="trailing")
    assert switched.config.beta_start == 0.00085 and switched.config.clip_sample is False
    assert switched.config.timestep_spacing == "trailing" and "interpolation_type" in switched.config.extra
    back = EulerDiscreteScheduler.from_config(switched.config)  # DDIM-only keys ride along in .extra
    assert back.config.interpolation_type == euler.config.interpolation_type


def test_save_round_trip_loads_in_diffusers_and_vidiff(tmp_path):
    ours = DDIMScheduler.from_config(I2VGEN_XL, timestep_spacing="trailing")
    ours.save_pretrained(tmp_path / "scheduler")
    raw = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert raw["_class_name"] == "DDIMScheduler" and raw["timestep_spacing"] == "trailing"
    reference = diffusers.DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    again = DDIMScheduler.from_pretrained(tmp_path)
    assert again.config == ours.config
    reference.set_timesteps(12)
    assert torch.equal(again.plan(12).timesteps.to(torch.int64), reference.timesteps)
    reference.save_pretrained(tmp_path / "from_diffusers")
    loaded = DDIMScheduler.from_pretrained(tmp_path / "from_diffusers", subfolder=None)
    assert loaded.config.to_diffusers() == public_options(reference.config)


@pytest.mark.parametrize(
    "option, value",
    [("beta_schedule", "cosine"), ("prediction_type", "x0"), ("timestep_spacing", "even")],
)
def test_unsupported_value_names_option_and_choices(option, value):
    with pytest.raises(ValueError, match=option) as error:
        DDIMScheduler.from_config(I2VGEN_XL, **{option: value})
    assert "must be one of" in str(error.value)


def test_bad_numbers_are_value_errors():
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIMScheduler().plan(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIMScheduler().plan(1001)
    with pytest.raises(ValueError, match="eta"):
        DDIMScheduler().plan(4, eta=-0.1)
    with pytest.raises(ValueError, match="dynamic_thresholding_ratio"):
        DDIMScheduler(thresholding=True, dynamic_thresholding_ratio=1.5)
    with pytest.raises(ValueError, match="trained_betas"):
        DDIMScheduler(trained_betas=[0.01] * 10)
    with pytest.raises(TypeError, match="clip_samples"):
        DDIMScheduler.from_config(I2VGEN_XL, clip_samples=True)
