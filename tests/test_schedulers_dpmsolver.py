"""DPMSolverMultistepScheduler against diffusers': schedules, solver steps of every kind, the loop, config IO."""

from __future__ import annotations

import itertools
import json
import logging
import random

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
    DPMSolverMultistepConfig,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}
# The AnimateDiff guide's DPM++ SDE Karras setup on the SD-1.5 table.
ANIMATEDIFF_SDE_KARRAS = {
    **SD, "beta_schedule": "linear", "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True,
}


@pytest.fixture(autouse=True)
def quiet_reference():
    """diffusers logs a deprecation for algorithm_type="dpmsolver" on every construction."""
    logging.getLogger("diffusers").setLevel(logging.ERROR)


def both(config: dict, **kwargs):
    return set_up_both(DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler, config, **kwargs)


def assert_same_schedule(ours, reference, what) -> None:
    assert ours.timesteps.dtype == reference.timesteps.dtype == torch.int64, what
    assert torch.equal(ours.timesteps, reference.timesteps), what
    assert torch.equal(ours.sigmas, reference.sigmas), what
    assert ours.num_inference_steps == reference.num_inference_steps, what


def seeded_sample(options: dict, fraction: int, seed: int = 0) -> list[dict]:
    """A seeded 1/``fraction`` of all combinations in which every value of every option occurs."""
    combos = [dict(zip(options, values)) for values in itertools.product(*options.values())]
    chosen = random.Random(seed).sample(combos, len(combos) // fraction)
    for name, values in options.items():
        assert {repr(c[name]) for c in chosen} == {repr(v) for v in values}, name
    return chosen


# ---------------------------------------------------------------------------- schedules
SIGMA_SCHEDULES = {
    "table": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "lu": {"use_lu_lambdas": True},
}


def test_schedule_grid_is_bit_exact():
    options = {
        "timestep_spacing": ["leading", "trailing", "linspace"],
        "steps_offset": [0, 1],
        "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2"],
        "rescale_betas_zero_snr": [False, True],
        "sigmas": list(SIGMA_SCHEDULES),
        "final_sigmas_type": ["zero", "sigma_min"],
    }
    for combo in seeded_sample(options, 8):
        config = {"beta_start": 0.00085, "beta_end": 0.012, **combo, **SIGMA_SCHEDULES[combo.pop("sigmas")]}
        for num_steps in (1, 6, 25, 61):  # 61 with "trailing": one extra timestep, in both
            ours, reference = both(config, num_inference_steps=num_steps)
            assert_same_schedule(ours, reference, f"{config}, {num_steps} steps")
            plan = ours.plan(num_steps)
            assert torch.equal(plan.sigmas, reference.sigmas)
            assert torch.equal(plan.timesteps, reference.timesteps.float())
            assert plan.init_noise_sigma == reference.init_noise_sigma == 1.0
            assert plan.parameterization.space == "vp"


def test_karras_first_timestep_is_truncated_like_the_reference():
    # Cosine table + Karras: t(σ_max) is 998.99999… in float64; the reference truncates it to 998.
    ours, reference = both({"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}, num_inference_steps=5)
    assert reference.timesteps[0] == 998
    assert_same_schedule(ours, reference, "cosine karras")


@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
        {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "timestep_spacing": "trailing"},
        {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "timestep_spacing": "leading"},
        {"trained_betas": torch.linspace(0.001, 0.03, 50).tolist(), "num_train_timesteps": 50},
        {**SD, "timestep_spacing": "leading", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
    ],
)
def test_other_schedule_options(config):
    for num_steps in (1, 4, 20):
        ours, reference = both(config, num_inference_steps=num_steps)
        assert_same_schedule(ours, reference, f"{config}, {num_steps} steps")


def test_custom_timesteps():
    for config in ({}, SD, {"final_sigmas_type": "sigma_min"}):
        ours, reference = both(config, timesteps=[901, 700, 400, 13])
        assert_same_schedule(ours, reference, f"{config}, custom timesteps")
    plan = DPMSolverMultistepScheduler().plan(timesteps=torch.tensor([800, 300]))
    assert plan.timesteps.tolist() == [800.0, 300.0] and len(plan.sigmas) == 3
    with pytest.raises(ValueError, match="custom timesteps"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True).plan(timesteps=[900, 500])
    with pytest.raises(ValueError, match="exactly one"):
        DPMSolverMultistepScheduler().plan(4, timesteps=[900])


def test_sigma_range_carried_from_another_schedulers_config():
    # diffusers keeps unknown keys of a compatible scheduler's config and its Karras σ then use
    # them: an SVD-style Euler config's sigma_min / sigma_max change the DPM schedule.
    euler = EulerDiscreteScheduler.from_config(SD, sigma_min=0.1, sigma_max=10.0)
    ours = DPMSolverMultistepScheduler.from_config(euler.config, use_karras_sigmas=True)
    reference = diffusers.DPMSolverMultistepScheduler.from_config(euler.config.to_diffusers(), use_karras_sigmas=True)
    ours.set_timesteps(8)
    reference.set_timesteps(8)
    assert abs(reference.sigmas[0].item() - 10.0) < 1e-5  # the carried σ_max was used
    assert_same_schedule(ours, reference, "σ range from an Euler config")


def test_initial_state_matches_reference():
    ours = DPMSolverMultistepScheduler.from_config(SD)
    reference = diffusers.DPMSolverMultistepScheduler.from_config(SD)
    assert torch.equal(ours.sigmas, reference.sigmas) and torch.equal(ours.timesteps, reference.timesteps)
    assert ours.init_noise_sigma == reference.init_noise_sigma == 1.0
    assert ours.num_inference_steps is reference.num_inference_steps is None


# ---------------------------------------------------------------------------- solver steps
SOLVERS = {
    "algorithm_type": ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"],
    "solver_order": [1, 2, 3],
    "solver_type": ["midpoint", "heun"],
    "prediction_type": ["epsilon", "v_prediction", "sample"],
    "final_sigmas_type": ["zero", "sigma_min"],
    "lower_order_final": [True, False],
    "euler_at_final": [False, True],
    "thresholding": [False, True],
    "use_karras_sigmas": [False, True],
}


def _valid(config: dict) -> bool:
    if config["algorithm_type"] == "sde-dpmsolver" and config["solver_order"] == 3:
        return False  # no such solver in the reference either
    return config["algorithm_type"].endswith("++") or config["final_sigmas_type"] == "sigma_min"


def step_both(config: dict, num_steps: int, dtype=torch.float32) -> None:
    """Step ours and the reference side by side; each from the reference's previous sample."""
    ours, reference = both(config, num_inference_steps=num_steps)
    gen = torch.Generator().manual_seed(0)
    ours_gen, reference_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x = torch.randn(SHAPE, generator=gen).to(dtype)
    for t_ours, t_ref in zip(ours.timesteps, reference.timesteps):
        assert torch.equal(ours.scale_model_input(x, t_ours), reference.scale_model_input(x, t_ref))
        output = (0.3 * x.float() + torch.randn(SHAPE, generator=gen)).to(dtype)
        step = ours.step(output, t_ours, x, generator=ours_gen).prev_sample
        step_ref = reference.step(output, t_ref, x, generator=reference_gen).prev_sample
        assert step.dtype == step_ref.dtype == dtype
        assert torch.isfinite(step_ref).all(), f"{config}: pick a finite case"
        what = f"{config}, {num_steps} steps, t={int(t_ref)}: {max_abs_diff(step, step_ref)}"
        assert torch.equal(step, step_ref), what
        x = step_ref
    assert ours.step_index == reference.step_index == num_steps
    assert torch.equal(torch.randn(3, generator=ours_gen), torch.randn(3, generator=reference_gen))  # same draws


def test_solver_step_grid_is_bit_exact():
    # 4 steps: warm-up and lower_order_final both decide; 16 steps: the full order is reached and
    # only final_sigmas_type / euler_at_final lower the last step.
    configs = [c for c in seeded_sample(SOLVERS, 12) if _valid(c)]
    assert len(configs) > 60
    for config in configs:
        config = {**SD, "sample_max_value": 2.0, **config}
        if config["use_karras_sigmas"] and config["final_sigmas_type"] == "sigma_min":
            continue  # see test_karras_ending_on_sigma_min
        step_both(config, 4)
        step_both(config, 16)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_karras_ending_on_sigma_min(solver_type):
    # Karras σ end at the table's σ_min, and final_sigmas_type="sigma_min" appends it again: the
    # last step has h = 0. A first-order last step leaves x as it is; a second-order one is 0·∞
    # (midpoint: finite) or 0/0 (heun: NaN) in the reference, and the same in vidiff.
    config = {**SD, "use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "solver_type": solver_type}
    step_both(config, 6)  # lower_order_final: the last step is first order
    ours, reference = both({**config, "lower_order_final": False}, num_inference_steps=20)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for t_ours, t_ref in zip(ours.timesteps, reference.timesteps):
        step, step_ref = ours.step(x, t_ours, x).prev_sample, reference.step(x, t_ref, x).prev_sample
        assert torch.equal(step.isnan(), step_ref.isnan())
        assert torch.equal(step.nan_to_num(), step_ref.nan_to_num())
        x = step_ref
    assert x.isnan().all() == (solver_type == "heun")


@pytest.mark.parametrize(
    "config",
    [{}, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, {"solver_type": "heun", "solver_order": 3},
     {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"}],
)
def test_solver_steps_in_float16(config):
    step_both({**SD, **config}, 16, dtype=torch.float16)


def test_variance_noise_replaces_the_generator():
    ours, reference = both({**SD, "algorithm_type": "sde-dpmsolver++"}, num_inference_steps=3)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    step = ours.step(x, ours.timesteps[0], x, variance_noise=noise, return_dict=False)
    step_ref = reference.step(x, reference.timesteps[0], x, variance_noise=noise, return_dict=False)
    assert isinstance(step, tuple) and len(step) == 1
    assert torch.equal(step[0], step_ref[0])


def test_begin_index_and_unknown_timestep():
    ours, reference = both(SD, num_inference_steps=6)
    assert ours.index_for_timestep(12345) == reference.index_for_timestep(12345) == 5  # not found: last
    ours.set_begin_index(2)
    reference.set_begin_index(2)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    step, step_ref = ours.step(x, ours.timesteps[2], x), reference.step(x, reference.timesteps[2], x)
    assert torch.equal(step.prev_sample, step_ref.prev_sample)
    assert ours.step_index == reference.step_index == 3


# ---------------------------------------------------------------------------- the one loop
def reference_loop(config, num_steps, scale, seed, dtype=torch.float32):
    """diffusers' pipeline loop around its DPM scheduler; SDE noise from a seeded generator."""
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(config)
    scheduler.set_timesteps(num_steps)
    cond, uncond = conditioning(dtype)
    return diffusers_loop(scheduler, cond, uncond, scale, torch.Generator().manual_seed(seed), dtype)


def run_ours(config, num_steps, scale, seed, dtype=torch.float32):
    plan = DPMSolverMultistepScheduler.from_config(config).plan(num_steps)
    cond, uncond = conditioning(dtype)
    # The reference draws its SDE noise in float32 whatever the latents' dtype.
    return vidiff_loop(plan, cond, uncond, scale, seeded_noise(seed, torch.float32), dtype)


LOOP_CASES = [
    ({**SD}, 7.5),  # the defaults: DPM-Solver++(2M), final σ 0
    (ANIMATEDIFF_SDE_KARRAS, 7.5),
    ({**SD, "use_karras_sigmas": True, "solver_order": 3, "solver_type": "heun", "lower_order_final": False}, None),
    ({**SD, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "timestep_spacing": "leading"}, 5.0),
    ({**SD, "algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "use_lu_lambdas": True}, 5.0),
    ({"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
      "euler_at_final": True, "final_sigmas_type": "sigma_min"}, 9.0),
    ({**SD, "thresholding": True, "sample_max_value": 1.5, "use_exponential_sigmas": True}, 3.0),
]


@pytest.mark.parametrize("config, scale", LOOP_CASES)
@pytest.mark.parametrize("num_steps", [1, 3, 20])
def test_loop_matches_reference_loop(config, scale, num_steps):
    ours = run_ours(config, num_steps, scale, seed=123)
    reference = reference_loop(config, num_steps, scale, seed=123)
    assert torch.isfinite(reference).all()
    assert torch.equal(ours, reference), max_abs_diff(ours, reference)


def test_loop_in_float16_matches_reference():
    for config in (SD, ANIMATEDIFF_SDE_KARRAS):
        ours = run_ours(config, 10, 7.5, seed=5, dtype=torch.float16)
        reference = reference_loop(config, 10, 7.5, seed=5, dtype=torch.float16)
        assert ours.dtype == reference.dtype == torch.float16
        assert torch.equal(ours, reference), max_abs_diff(ours, reference)


def test_multistep_history_matters():
    # The same network and noise with solver_order 1 vs 2 must differ (the loop hands history on).
    first = run_ours({**SD, "solver_order": 1}, 8, 7.5, seed=0)
    second = run_ours({**SD, "solver_order": 2}, 8, 7.5, seed=0)
    assert max_abs_diff(first, second) > 1e-3


def test_sde_loop_needs_a_noise_source():
    plan = DPMSolverMultistepScheduler.from_config(ANIMATEDIFF_SDE_KARRAS).plan(3)
    cond, _ = conditioning()
    with pytest.raises(ValueError, match="noise"):
        sample(FakeNetwork(), initial_noise(), plan, cond)


# ---------------------------------------------------------------------------- config IO
def test_defaults_are_diffusers_defaults():
    reference = diffusers.DPMSolverMultistepScheduler().config
    assert DPMSolverMultistepScheduler().config.to_diffusers() == public_options(reference)


def test_from_diffusers_config_and_sibling_options():
    reference = diffusers.DPMSolverMultistepScheduler.from_config(ANIMATEDIFF_SDE_KARRAS)
    ours = DPMSolverMultistepScheduler.from_config(reference.config)
    assert isinstance(ours.config, DPMSolverMultistepConfig)
    assert ours.config.algorithm_type == "sde-dpmsolver++" and ours.config.use_karras_sigmas is True
    # A DEIS config maps onto DPM-Solver++ with the midpoint rule, as in the reference.
    deis = diffusers.DEISMultistepScheduler.from_config(SD)
    ours = DPMSolverMultistepScheduler.from_config(deis.config)
    reference = diffusers.DPMSolverMultistepScheduler.from_config(deis.config)
    assert (ours.config.algorithm_type, ours.config.solver_type) == ("dpmsolver++", "midpoint")
    assert (reference.config.algorithm_type, reference.config.solver_type) == ("dpmsolver++", "midpoint")


def test_save_round_trip_loads_in_diffusers_and_vidiff(tmp_path):
    ours = DPMSolverMultistepScheduler.from_config(ANIMATEDIFF_SDE_KARRAS, solver_order=3, lambda_min_clipped=-5.1)
    ours.save_pretrained(tmp_path / "scheduler")
    raw = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert raw["_class_name"] == "DPMSolverMultistepScheduler" and raw["solver_order"] == 3
    again = DPMSolverMultistepScheduler.from_pretrained(tmp_path)
    assert again.config == ours.config
    reference = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    ours.set_timesteps(12)
    reference.set_timesteps(12)
    assert_same_schedule(ours, reference, "saved by vidiff, loaded by diffusers")
    # diffusers' save (lambda_min_clipped = −inf written as -Infinity) loads in vidiff.
    diffusers.DPMSolverMultistepScheduler.from_config(SD).save_pretrained(tmp_path / "theirs")
    loaded = DPMSolverMultistepScheduler.from_pretrained(tmp_path / "theirs", subfolder=None)
    assert loaded.config.lambda_min_clipped == -float("inf") and loaded.config.steps_offset == 1


@pytest.mark.parametrize(
    "options, option",
    [({"algorithm_type": "dpmsolver+"}, "algorithm_type"), ({"solver_type": "rk4"}, "solver_type"),
     ({"solver_order": 4}, "solver_order"), ({"prediction_type": "flow_prediction"}, "prediction_type"),
     ({"variance_type": "learned_range"}, "variance_type"), ({"use_beta_sigmas": True}, "use_beta_sigmas"),
     ({"use_flow_sigmas": True}, "use_flow_sigmas"), ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
     ({"final_sigmas_type": "one"}, "final_sigmas_type"), ({"timestep_spacing": "even"}, "timestep_spacing"),
     ({"algorithm_type": "dpmsolver"}, "final_sigmas_type"),  # "zero" needs a ++ algorithm
     ({"algorithm_type": "sde-dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"}, "solver_order"),
     ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "use_karras_sigmas")],
)
def test_bad_options_name_the_option(options, option):
    with pytest.raises(ValueError, match=option):
        DPMSolverMultistepScheduler(**options)


def test_bad_requests():
    scheduler = DPMSolverMultistepScheduler()
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.plan(0)
    with pytest.raises(ValueError, match="mu"):
        scheduler.set_timesteps(5, mu=0.5)
    with pytest.raises(TypeError, match="sigma_min"):
        DPMSolverMultistepScheduler(sigma_min=0.1)  # not an option of this scheduler
