"""UniPCMultistepScheduler against diffusers': its flow form (as every Wan checkpoint configures it)
and its VP form (DDPM-trained networks) — schedules, whole step sequences, the loop, strength,
config IO and refused options."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from tests.scheduler_checks import SHAPE, FakeNetwork, conditioning, initial_noise
from vidiff.diffusion.guidance import ClassifierFreeGuidance
from vidiff.diffusion.loop import sample
from vidiff.schedulers import FLOW_SCHEDULERS, UniPCMultistepConfig, UniPCMultistepScheduler

CONFIGS = Path(__file__).parent / "configs"
# The three distinct scheduler configs of the Wan-AI repositories (see tests/configs/README.md).
WAN_21, WAN_22_A14B, WAN_22 = "wan/Wan2.1-T2V-1.3B-Diffusers/scheduler/scheduler_config.json", "wan/Wan2.2-T2V-A14B-Diffusers/scheduler/scheduler_config.json", "wan/Wan2.2-TI2V-5B-Diffusers/scheduler/scheduler_config.json"
WAN_REPOS = [WAN_21, WAN_22_A14B, WAN_22]


def wan_config(repo: str = WAN_22, **changes) -> dict:
    """A released Wan scheduler config (its private keys dropped), with ``changes``."""
    config = json.loads((CONFIGS / repo).read_text())
    return {**{k: v for k, v in config.items() if k != "_source"}, **changes}


@pytest.fixture(autouse=True)
def quiet_reference():
    logging.getLogger("diffusers").setLevel(logging.ERROR)


def both(config: dict, num_steps: int | None, **kwargs):
    ours = UniPCMultistepScheduler.from_config(config)
    reference = diffusers.UniPCMultistepScheduler.from_config(config)
    ours.set_timesteps(num_steps, **kwargs)
    reference.set_timesteps(num_steps, **kwargs)
    return ours, reference


def assert_same_schedule(ours, reference, what) -> None:
    assert ours.timesteps.dtype == reference.timesteps.dtype == torch.int64, what
    assert torch.equal(ours.timesteps, reference.timesteps), what
    assert ours.sigmas.dtype == torch.float32 and torch.equal(ours.sigmas, reference.sigmas), what
    assert ours.num_inference_steps == reference.num_inference_steps, what


def step_both(ours, reference, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Both schedulers stepped over their whole schedule with the same seeded random outputs (a
    little of the sample mixed in, so a wrong sample path shows). Returns (ours, reference), each
    the final sample or the exception type the step raised."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(SHAPE, generator=gen)
    results = []
    for scheduler in (ours, reference):
        draws = torch.Generator().manual_seed(seed + 1)
        x = start.clone()
        try:
            for t in reference.timesteps:
                output = (torch.randn(SHAPE, generator=draws) + 0.1 * x).to(dtype)
                x = scheduler.step(output, t, x).prev_sample
        except Exception as error:  # noqa: BLE001 - a failure the reference shares is parity too
            x = type(error)
        results.append(x)
    return results


def assert_same_run(ours, reference, what) -> None:
    """Bit-identical final samples (NaN where the reference has NaN), or the same exception type."""
    if isinstance(reference, type):
        assert ours is reference, what
        return
    assert isinstance(ours, torch.Tensor) and ours.dtype == reference.dtype, what
    assert torch.equal(ours.nan_to_num(7.0), reference.nan_to_num(7.0)), what


# ---------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("repo", WAN_REPOS)
def test_wan_schedules_and_plans_equal_diffusers(repo):
    for flow_shift, num_steps in itertools.product((3.0, 5.0), (1, 2, 5, 10, 50)):
        config = wan_config(repo, flow_shift=flow_shift)
        ours, reference = both(config, num_steps)
        what = f"{repo} flow_shift={flow_shift} N={num_steps}"
        assert_same_schedule(ours, reference, what)
        plan = UniPCMultistepScheduler.from_config(config).plan(num_steps)
        assert plan.timesteps.dtype == torch.float32 and torch.equal(plan.timesteps, reference.timesteps.float()), what
        assert torch.equal(plan.sigmas, reference.sigmas), what
        assert plan.parameterization.space == "flow" and plan.init_noise_sigma == 1.0, what
        assert plan.sigmas[-1] == 0 and plan.sigmas[0] < 1, what


OPTION_CASES = {
    "dynamic exponential": ({"use_dynamic_shifting": True}, {"mu": 0.7}),
    "dynamic linear": ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.3}),
    "shift_terminal": ({"shift_terminal": 0.1}, {}),
    "karras": ({"use_karras_sigmas": True}, {}),
    "karras range": ({"use_karras_sigmas": True, "sigma_min": 0.01, "sigma_max": 50.0}, {}),
    "thresholding": ({"thresholding": True, "sample_max_value": 1.5}, {}),
    "sample prediction": ({"prediction_type": "sample"}, {}),
    "epsilon prediction": ({"prediction_type": "epsilon"}, {}),
    "epsilon, noise prediction": ({"prediction_type": "epsilon", "predict_x0": False, "final_sigmas_type": "sigma_min"}, {}),
    "final sigma_min": ({"final_sigmas_type": "sigma_min"}, {}),
    "custom sigmas": ({"flow_shift": 5.0}, {"sigmas": np.linspace(1.0, 0.1, 6)}),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_other_options_match_diffusers(case):
    changes, kwargs = OPTION_CASES[case]
    for num_steps in (3, 8):
        config = wan_config(**changes)
        ours, reference = both(config, None if "sigmas" in kwargs else num_steps, **kwargs)
        assert_same_schedule(ours, reference, case)
        plan = UniPCMultistepScheduler.from_config(config).plan(None if "sigmas" in kwargs else num_steps, **kwargs)
        assert torch.equal(plan.sigmas, reference.sigmas) and torch.equal(plan.timesteps, reference.timesteps.float())
        results = step_both(ours, reference, seed=num_steps)
        assert torch.isfinite(results[1]).all(), case
        assert_same_run(*results, case)


# ---------------------------------------------------------------------------- steps
def test_solver_options_step_like_diffusers():
    options = {
        "solver_order": [1, 2, 3], "solver_type": ["bh1", "bh2"], "lower_order_final": [True, False],
        "disable_corrector": [[], [0, 2]],
    }
    finite = 0
    for values in itertools.product(*options.values()):
        changes = dict(zip(options, values))
        for num_steps in (1, 2, 4, 7):
            ours, reference = both(wan_config(**changes), num_steps)
            results = step_both(ours, reference, seed=num_steps)
            assert_same_run(*results, f"{changes} N={num_steps}")
            finite += isinstance(results[1], torch.Tensor) and bool(torch.isfinite(results[1]).all())
    # A good share end finite; the others (bh1's B(h) = −h is infinite on the last step to t = 0;
    # order ≥ 2 there without lower_order_final) give NaN or a singular solve in the reference
    # too, and must do the same here.
    assert finite >= 30


@pytest.mark.parametrize("repo", [WAN_21, WAN_22])
def test_bfloat16_outputs_keep_float32_latents_as_diffusers(repo):
    ours, reference = both(wan_config(repo), 10)
    results = step_both(ours, reference, seed=3, dtype=torch.bfloat16)
    assert results[1].dtype == torch.float32
    assert_same_run(*results, "bfloat16 outputs")


def test_a_fresh_set_timesteps_restarts_the_history():
    ours, reference = both(wan_config(), 6)
    step_both(ours, reference, seed=1)
    ours.set_timesteps(6)
    reference.set_timesteps(6)
    assert_same_run(*step_both(ours, reference, seed=2), "second run")


# ---------------------------------------------------------------------------- the loop
def reference_loop(scheduler, scale: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """diffusers' Wan loop: float32 latents, the network in ``dtype``, guidance on its outputs, step."""
    network = FakeNetwork()
    cond, uncond = conditioning(dtype)
    inputs = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
    latents = initial_noise()
    for t in scheduler.timesteps:
        output = network(torch.cat([latents] * 2).to(dtype), t, inputs)
        output_uncond, output_cond = output.chunk(2)
        latents = scheduler.step(output_uncond + scale * (output_cond - output_uncond), t, latents).prev_sample
    return latents


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_with_a_plan_is_the_diffusers_loop(dtype):
    config = wan_config(WAN_21)
    reference = diffusers.UniPCMultistepScheduler.from_config(config)
    reference.set_timesteps(12)
    expected = reference_loop(reference, 5.0, dtype)
    plan = UniPCMultistepScheduler.from_config(config).plan(12)
    network = FakeNetwork()
    cond, uncond = conditioning(dtype)
    ours = sample(lambda x, t, inputs: network(x.to(dtype), t, inputs), initial_noise(), plan, cond, uncond,
                  ClassifierFreeGuidance(5.0))
    assert ours.dtype == torch.float32 and torch.isfinite(expected).all()
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("strength", [0.35, 0.8])
def test_strength_starts_part_way_as_diffusers_does(strength):
    config = wan_config()
    reference = diffusers.UniPCMultistepScheduler.from_config(config)
    reference.set_timesteps(10)
    start = 10 - int(10 * strength)
    reference.set_begin_index(start)
    network, cond = FakeNetwork(), conditioning()[0]
    latents = initial_noise()
    for t in reference.timesteps[start:]:
        latents = reference.step(network(latents, t, cond), t, latents).prev_sample
    plan = UniPCMultistepScheduler.from_config(config).plan(10, strength=strength)
    assert torch.equal(plan.timesteps, reference.timesteps[start:].float())
    assert torch.equal(sample(network, initial_noise(), plan, cond), latents)


# ---------------------------------------------------------------------------- config IO
def test_wan_repository_loads_by_class_name_and_round_trips(tmp_path):
    (tmp_path / "repo" / "scheduler").mkdir(parents=True)
    shutil.copy(CONFIGS / WAN_22, tmp_path / "repo" / "scheduler" / "scheduler_config.json")
    raw = json.loads((tmp_path / "repo" / "scheduler" / "scheduler_config.json").read_text())
    loaded = FLOW_SCHEDULERS[raw["_class_name"]].from_pretrained(tmp_path / "repo")
    assert isinstance(loaded, UniPCMultistepScheduler) and loaded.config.flow_shift == 5.0
    loaded.save_pretrained(tmp_path / "saved")
    again = UniPCMultistepScheduler.from_pretrained(tmp_path / "saved", subfolder=None)
    assert again.config == loaded.config
    reference = diffusers.UniPCMultistepScheduler.from_pretrained(tmp_path / "saved")
    assert reference.config.flow_shift == 5.0 and reference.config.use_flow_sigmas is True
    again.set_timesteps(7)
    reference.set_timesteps(7)
    assert_same_schedule(again, reference, "saved by vidiff, loaded by diffusers")
    tweaked = UniPCMultistepScheduler.from_config(loaded.config, flow_shift=3.0, solver_type="midpoint")
    assert tweaked.config.flow_shift == 3.0 and tweaked.config.solver_type == "bh2"  # the reference's mapping


@pytest.mark.parametrize(
    "changes, option",
    [({"predict_x0": False}, "predict_x0"), ({"use_flow_sigmas": False}, "prediction_type"),  # flow_prediction
     ({"prediction_type": "v_prediction"}, "prediction_type"), ({"prediction_type": "noise"}, "prediction_type"),
     ({"use_flow_sigmas": False, "prediction_type": "epsilon", "use_dynamic_shifting": True}, "use_dynamic_shifting"),
     ({"use_flow_sigmas": False, "prediction_type": "epsilon", "shift_terminal": 0.1}, "shift_terminal"),
     ({"use_flow_sigmas": False, "prediction_type": "epsilon", "timestep_spacing": "even"}, "timestep_spacing"),
     ({"solver_type": "rk4"}, "solver_type"), ({"solver_order": 4}, "solver_order"),
     ({"use_exponential_sigmas": True}, "use_exponential_sigmas"), ({"use_beta_sigmas": True}, "use_beta_sigmas"),
     ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "use_karras_sigmas"),
     ({"solver_p": "DPMSolverMultistepScheduler"}, "solver_p"), ({"final_sigmas_type": "one"}, "final_sigmas_type"),
     ({"time_shift_type": "cubic"}, "time_shift_type"), ({"flow_shift": 0.0}, "flow_shift"),
     ({"disable_corrector": [0.5]}, "disable_corrector")],
)
def test_bad_options_name_the_option(changes, option):
    with pytest.raises(ValueError, match=option):
        UniPCMultistepScheduler.from_config(wan_config(**changes))


def test_bad_requests_name_the_argument():
    scheduler = UniPCMultistepScheduler.from_config(wan_config())
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.plan(0)
    with pytest.raises(ValueError, match="cannot honour `timesteps`"):
        scheduler.plan(5, timesteps=[900, 500, 100])
    with pytest.raises(ValueError, match="sigmas"):
        scheduler.plan(sigmas=[1.5, 0.5])
    with pytest.raises(ValueError, match="mu"):
        UniPCMultistepScheduler.from_config(wan_config(use_dynamic_shifting=True)).plan(5)
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        UniPCMultistepScheduler().plan(sigmas=[0.9, 0.5])
    assert isinstance(UniPCMultistepConfig.from_diffusers(wan_config()), UniPCMultistepConfig)


# ---------------------------------------------------------------------------- the VP form
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def test_vp_form_grid_steps_like_diffusers():
    options = {
        "prediction_type": ["epsilon", "v_prediction", "sample"], "predict_x0": [True, False],
        "solver_order": [2, 3], "timestep_spacing": ["linspace", "leading", "trailing"], "steps_offset": [0, 1],
    }
    for values in itertools.product(*options.values()):
        changes = dict(zip(options, values))
        if not changes["predict_x0"]:  # the noise-prediction step to σ = 0 is NaN in the reference
            changes["final_sigmas_type"] = "sigma_min"
        for num_steps in (1, 6):
            ours, reference = both({**SD, **changes}, num_steps)
            assert_same_schedule(ours, reference, changes)
            plan = UniPCMultistepScheduler.from_config({**SD, **changes}).plan(num_steps)
            assert plan.parameterization.space == "vp" and torch.equal(plan.timesteps, reference.timesteps.float())
            results = step_both(ours, reference, seed=num_steps)
            assert torch.isfinite(results[1]).all(), changes
            assert_same_run(*results, f"{changes} N={num_steps}")


VP_CASES = {
    "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True},
    "karras sigma_min": {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
    "final sigma_min": {"final_sigmas_type": "sigma_min"}, "bh1": {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    "zero terminal SNR": {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    "thresholding": {"thresholding": True}, "disable_corrector": {"disable_corrector": [1, 3]},
    "order 1": {"solver_order": 1}, "defaults": {},
}


@pytest.mark.parametrize("case", VP_CASES)
def test_vp_form_options_step_like_diffusers(case):
    config = {**SD, **VP_CASES[case]} if case != "defaults" else {}
    for num_steps in (4, 25):
        ours, reference = both(config, num_steps)
        assert_same_schedule(ours, reference, case)
        results = step_both(ours, reference, seed=num_steps)
        assert torch.isfinite(results[1]).all(), case
        assert_same_run(*results, f"{case} N={num_steps}")


def test_vp_form_loop_and_half_precision_match_diffusers():
    reference = diffusers.UniPCMultistepScheduler.from_config(SD)
    reference.set_timesteps(10)
    expected = reference_loop(reference, 7.5)
    plan = UniPCMultistepScheduler.from_config(SD).plan(10)
    cond, uncond = conditioning()
    ours = sample(FakeNetwork(), initial_noise(), plan, cond, uncond, ClassifierFreeGuidance(7.5))
    assert torch.isfinite(expected).all() and torch.equal(ours, expected)
    assert_same_run(*step_both(*both(SD, 10), seed=5, dtype=torch.float16), "float16 outputs")


@pytest.mark.parametrize("config", [wan_config(), SD], ids=["flow", "vp"])
def test_add_noise_matches_diffusers(config):
    ours, reference = both(config, 8)
    x0, noise = initial_noise(), torch.randn(SHAPE, generator=torch.Generator().manual_seed(8))
    timesteps = reference.timesteps[[1, 5]]
    expected = reference.add_noise(x0, noise, timesteps)
    assert torch.equal(ours.add_noise(x0, noise, timesteps), expected) and not torch.equal(expected, x0)
