"""FlowMatchEulerDiscreteScheduler against diffusers': schedules, steps (deterministic and
stochastic), the loop, the from_config trap, config IO, refused options; and the flow space of
the core (parameterization, plans)."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from tests.scheduler_checks import SHAPE, FakeNetwork, conditioning, initial_noise, seeded_noise
from vidiff.diffusion.guidance import ClassifierFreeGuidance
from vidiff.diffusion.loop import sample
from vidiff.diffusion.parameterization import Parameterization
from vidiff.diffusion.plan import plan_in_space
from vidiff.schedulers import (
    FLOW_SCHEDULERS,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteConfig,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

WAN_UNIPC = Path(__file__).parent / "configs" / "wan/Wan2.1-T2V-1.3B-Diffusers/scheduler/scheduler_config.json"


def both(config: dict, num_steps: int | None, **kwargs):
    ours = FlowMatchEulerDiscreteScheduler.from_config(config)
    reference = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    ours.set_timesteps(num_steps, **kwargs)
    reference.set_timesteps(num_steps, **kwargs)
    return ours, reference


def assert_same_schedule(ours, reference, what) -> None:
    assert ours.timesteps.dtype == reference.timesteps.dtype == torch.float32, what
    assert torch.equal(ours.timesteps, reference.timesteps), what
    assert torch.equal(ours.sigmas, reference.sigmas), what
    assert ours.num_inference_steps == reference.num_inference_steps, what


def step_both(ours, reference, seed: int = 0, dtype: torch.dtype = torch.float32, seeded: bool = False):
    """Both schedulers over their whole schedule with the same random outputs; final samples."""
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    results = []
    for scheduler in (ours, reference):
        draws, noise = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 2)
        x = start.clone()
        for t in reference.timesteps:
            output = (torch.randn(SHAPE, generator=draws) + 0.1 * x.float()).to(dtype)
            x = scheduler.step(output, t, x, generator=noise if seeded else None).prev_sample
        results.append(x)
    return results


# ---------------------------------------------------------------------------- schedules and steps
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_schedules_plans_and_steps_equal_diffusers(shift):
    for num_steps in (1, 2, 5, 10, 50):
        what = f"shift={shift} N={num_steps}"
        ours, reference = both({"shift": shift}, num_steps)
        assert_same_schedule(ours, reference, what)
        plan = FlowMatchEulerDiscreteScheduler(shift=shift).plan(num_steps)
        assert torch.equal(plan.timesteps, reference.timesteps) and torch.equal(plan.sigmas, reference.sigmas), what
        assert plan.parameterization.space == "flow" and plan.init_noise_sigma == 1.0, what
        mine, theirs = step_both(ours, reference, seed=num_steps)
        assert torch.isfinite(theirs).all() and torch.equal(mine, theirs), what


OPTION_CASES = {
    "custom sigmas": ({"shift": 3.0}, {"sigmas": np.linspace(1.0, 0.05, 7)}),
    "custom timesteps": ({"shift": 3.0}, {"timesteps": [900.0, 700.0, 400.0, 100.0]}),
    "sigmas and timesteps": ({"shift": 3.0}, {"sigmas": [0.9, 0.6, 0.3], "timesteps": [800.0, 500.0, 200.0]}),
    "dynamic exponential": ({"use_dynamic_shifting": True}, {"mu": 0.9}),
    "dynamic linear": ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.5}),
    "shift_terminal": ({"shift": 2.0, "shift_terminal": 0.05}, {}),
    "karras": ({"use_karras_sigmas": True, "shift": 3.0}, {}),
    "exponential": ({"use_exponential_sigmas": True, "shift": 3.0}, {}),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_and_custom_schedules_match_diffusers(case):
    config, kwargs = OPTION_CASES[case]
    custom = "sigmas" in kwargs or "timesteps" in kwargs
    ours, reference = both(config, None if custom else 6, **kwargs)
    assert_same_schedule(ours, reference, case)
    plan = FlowMatchEulerDiscreteScheduler.from_config(config).plan(None if custom else 6, **kwargs)
    assert torch.equal(plan.timesteps, reference.timesteps) and torch.equal(plan.sigmas, reference.sigmas), case
    mine, theirs = step_both(ours, reference, seed=4)
    assert torch.isfinite(theirs).all() and torch.equal(mine, theirs), case


def test_bfloat16_outputs_give_bfloat16_samples_as_diffusers():
    mine, theirs = step_both(*both({"shift": 5.0}, 8), seed=5, dtype=torch.bfloat16)
    assert mine.dtype == theirs.dtype == torch.bfloat16 and torch.equal(mine, theirs)


def test_stochastic_sampling_draws_as_diffusers():
    mine, theirs = step_both(*both({"shift": 3.0, "stochastic_sampling": True}, 8), seed=6, seeded=True)
    assert torch.isfinite(theirs).all() and torch.equal(mine, theirs)
    deterministic, _ = step_both(*both({"shift": 3.0}, 8), seed=6)
    assert not torch.equal(mine, deterministic)


def test_set_shift_and_scale_noise_follow_diffusers():
    ours, reference = both({"shift": 3.0}, 5)
    ours.set_shift(2.0)
    reference.set_shift(2.0)
    ours.set_timesteps(5)
    reference.set_timesteps(5)
    assert ours.shift == 2.0 and torch.equal(ours.timesteps, reference.timesteps)
    x0, noise = initial_noise(), torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    t = reference.timesteps[2:3].expand(SHAPE[0])
    assert torch.equal(ours.scale_noise(x0, t, noise), reference.scale_noise(x0, t, noise))


# ---------------------------------------------------------------------------- the loop
def reference_loop(scheduler, scale: float, generator=None) -> torch.Tensor:
    """diffusers' flow pipeline loop: unit-noise latents, both branches, guidance, step."""
    network = FakeNetwork()
    cond, uncond = conditioning()
    inputs = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
    latents = initial_noise()
    for t in scheduler.timesteps:
        output_uncond, output_cond = network(torch.cat([latents] * 2), t, inputs).chunk(2)
        output = output_uncond + scale * (output_cond - output_uncond)
        latents = scheduler.step(output, t, latents, generator=generator).prev_sample
    return latents


@pytest.mark.parametrize("stochastic", [False, True])
def test_sample_with_a_plan_is_the_diffusers_loop(stochastic):
    config = {"shift": 5.0, "stochastic_sampling": stochastic}
    reference = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    reference.set_timesteps(9)
    expected = reference_loop(reference, 4.5, torch.Generator().manual_seed(21))
    plan = FlowMatchEulerDiscreteScheduler.from_config(config).plan(9)
    cond, uncond = conditioning()
    ours = sample(FakeNetwork(), initial_noise(), plan, cond, uncond, ClassifierFreeGuidance(4.5), noise=seeded_noise(21))
    assert torch.isfinite(expected).all() and torch.equal(ours, expected)


# ---------------------------------------------------------------------------- configs
def test_from_config_of_a_unipc_config_ignores_flow_shift_as_diffusers_does():
    unipc = {k: v for k, v in json.loads(WAN_UNIPC.read_text()).items() if k != "_source"}
    assert unipc["flow_shift"] == 3.0
    ours = FlowMatchEulerDiscreteScheduler.from_config(unipc)
    reference = diffusers.FlowMatchEulerDiscreteScheduler.from_config(unipc)
    assert ours.shift == reference.shift == 1.0  # the option is called `shift`
    ours.set_timesteps(10)
    reference.set_timesteps(10)
    assert_same_schedule(ours, reference, "from a UniPC config")
    shifted = FlowMatchEulerDiscreteScheduler(shift=3.0).plan(10)
    assert not torch.equal(shifted.sigmas, ours.sigmas)
    # Converting back the other way keeps UniPC's own options (flow_shift came along as an extra key).
    assert UniPCMultistepScheduler.from_config(ours.config).config.flow_shift == 3.0


def test_save_round_trip_loads_in_diffusers_and_vidiff(tmp_path):
    ours = FlowMatchEulerDiscreteScheduler(shift=3.0, shift_terminal=0.02, use_karras_sigmas=True)
    ours.save_pretrained(tmp_path / "scheduler")
    raw = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert raw["_class_name"] == "FlowMatchEulerDiscreteScheduler" and raw["shift"] == 3.0
    again = FLOW_SCHEDULERS[raw["_class_name"]].from_pretrained(tmp_path)
    assert again.config == ours.config
    reference = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    again.set_timesteps(6)
    reference.set_timesteps(6)
    assert_same_schedule(again, reference, "saved by vidiff, loaded by diffusers")


@pytest.mark.parametrize(
    "options, option",
    [({"invert_sigmas": True}, "invert_sigmas"), ({"use_beta_sigmas": True}, "use_beta_sigmas"),
     ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "use_karras_sigmas"),
     ({"time_shift_type": "cubic"}, "time_shift_type"), ({"shift": 0.0}, "shift"),
     ({"shift_terminal": 1.5}, "shift_terminal"), ({"num_train_timesteps": 0}, "num_train_timesteps")],
)
def test_bad_options_name_the_option(options, option):
    with pytest.raises(ValueError, match=option):
        FlowMatchEulerDiscreteScheduler(**options)


def test_bad_requests_name_the_argument():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="integer index"):
        scheduler.step(x, 3, x)
    with pytest.raises(ValueError, match="per_token_timesteps"):
        scheduler.step(x, scheduler.timesteps[0], x, per_token_timesteps=torch.ones(SHAPE[0]))
    with pytest.raises(ValueError, match="same length"):
        scheduler.plan(sigmas=[0.9, 0.5], timesteps=[900.0])
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.plan(5, sigmas=[0.9, 0.5])
    with pytest.raises(ValueError, match="mu"):
        FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).plan(5)
    with pytest.raises(ValueError, match="cannot honour `eta`"):
        scheduler.plan(5, eta=0.5)
    with pytest.raises(ValueError, match="cannot honour `mu`"):
        EulerDiscreteScheduler().plan(5, mu=0.5)
    assert isinstance(FlowMatchEulerDiscreteScheduler().config, FlowMatchEulerDiscreteConfig)


# ---------------------------------------------------------------------------- the flow space
def test_flow_parameterization_and_plans_refuse_other_spaces():
    x, t = torch.randn(SHAPE), torch.tensor(0.3)
    flow = Parameterization("flow_prediction", FlowMatchEulerDiscreteScheduler().parameterization.timestep_map, "flow")
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    noisy = (1 - t) * x0 + t * noise
    assert torch.allclose(flow.denoised(noise - x0, noisy, t), x0, atol=1e-6)  # v = ε − x0
    assert torch.equal(flow.scale_input(x, t), x)
    assert torch.allclose(Parameterization("epsilon", flow.timestep_map, "flow").denoised(noise, noisy, t), x0, atol=1e-5)
    with pytest.raises(ValueError, match="flow_prediction"):
        Parameterization("flow_prediction", flow.timestep_map, "ve")
    with pytest.raises(ValueError, match="v_prediction"):
        Parameterization("v_prediction", flow.timestep_map, "flow")
    plan = FlowMatchEulerDiscreteScheduler().plan(4)
    with pytest.raises(ValueError, match="flow"):
        plan_in_space(plan, "ve")
    # A flow network's convention cannot drive a VE scheduler's plan, nor a VE one a flow plan.
    with pytest.raises(ValueError, match="flow_prediction"):
        EulerDiscreteScheduler().plan(4, network=flow)
    with pytest.raises(ValueError, match="prediction"):
        FlowMatchEulerDiscreteScheduler().plan(4, network=EulerDiscreteScheduler(prediction_type="v_prediction").parameterization)


def test_truncated_flow_timesteps_are_unipcs_network_timesteps():
    unipc = UniPCMultistepScheduler.from_config({k: v for k, v in json.loads(WAN_UNIPC.read_text()).items() if k != "_source"})
    plan = unipc.plan(20)
    mapped = plan.parameterization.timestep(plan.sigmas[:-1])
    # From float32 t the cut may differ by one where t·T sits within an ulp of a whole number.
    assert (mapped - plan.timesteps).abs().max() <= 1 and torch.equal(mapped, mapped.round())


def test_both_schedulers_are_public_and_listed_for_flow_pipelines():
    import vidiff

    assert vidiff.FlowMatchEulerDiscreteScheduler is FlowMatchEulerDiscreteScheduler
    assert vidiff.UniPCMultistepScheduler is UniPCMultistepScheduler
    assert set(FLOW_SCHEDULERS) == {"FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler"}
