"""Every scheduler on every pipeline, and every deterministic scheduler on an exact denoiser.

1. Each scheduler (built from the pipeline's own scheduler config, as users switch samplers) runs
   each pipeline end to end on the tiny checkpoints and gives finite frames of the right shape.
2. On Gaussian data x0 ~ N(μ, s²) the ideal denoiser is known, x̂0(x, σ) = μ + s²/(s² + σ²)·(x − μ),
   and so is the probability-flow ODE's endpoint: (x − μ)/sqrt(s² + σ²) is constant along it.
   Every deterministic scheduler, through ``vidiff.diffusion.loop.sample`` in VP and VE space,
   converges to it as steps grow, and all reach the same sample from the same σ_max.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import max_abs_diff
from vidiff.diffusion.loop import sample
from vidiff.diffusion.parameterization import ContinuousTimesteps, Parameterization
from vidiff.diffusion.plan import SamplingPlan, plan_in_space
from vidiff.diffusion.steppers import euler
from vidiff.pipelines.svd import NETWORK as SVD_NETWORK
from vidiff.schedulers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

# name: (class, config overrides, call overrides)
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}, {}),
    "ddim_eta": (DDIMScheduler, {}, {"eta": 0.5}),
    "euler": (EulerDiscreteScheduler, {}, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"use_karras_sigmas": False}, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, {}),
    "dpmpp_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}, {}),
    "lcm": (LCMScheduler, {}, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}, {}),
}
PIPELINES = ("svd", "i2vgen_xl", "animatediff")


def _with_scheduler(pipe, scheduler):
    """A new pipeline sharing ``pipe``'s loaded components, with ``scheduler`` (the fixture stays untouched)."""
    parts = {name: getattr(pipe, name, None) for name in type(pipe).components}
    parts = {name: part for name, part in parts.items() if part is not None}
    copy = type(pipe)(**{**parts, "scheduler": scheduler})
    copy.set_progress_bar_config(disable=True)
    return copy


def _call(kind: str) -> dict:
    from tests.svd_checkpoint import random_image

    base = dict(height=16, width=24, num_frames=2, num_inference_steps=2, output_type="np")
    if kind == "svd":
        return dict(base, image=random_image(seed=1))
    if kind == "i2vgen_xl":
        return dict(base, image=random_image(40, 32, seed=2), prompt="a boat", negative_prompt="blurry")
    return dict(base, prompt="a rocket", negative_prompt="blurry")


@pytest.fixture(scope="module")
def pipelines(vidiff_svd, vidiff_i2vgen_xl, vidiff_animatediff):
    return {"svd": vidiff_svd, "i2vgen_xl": vidiff_i2vgen_xl, "animatediff": vidiff_animatediff}


@pytest.mark.parametrize("kind", PIPELINES)
def test_every_scheduler_runs_every_pipeline(pipelines, kind):
    pipe = pipelines[kind]
    frames = {}
    for name, (cls, options, call) in SCHEDULERS.items():
        scheduler = cls.from_config(pipe.scheduler.config, **options)
        out = _with_scheduler(pipe, scheduler)(**_call(kind), **call, generator=torch.Generator().manual_seed(0)).frames
        assert torch.isfinite(torch.as_tensor(out)).all(), name
        frames[name] = torch.as_tensor(out)
    shapes = {name: tuple(value.shape) for name, value in frames.items()}
    assert len(set(shapes.values())) == 1, shapes
    assert shapes["ddim"][:2] == (1, 2)  # one video of num_frames frames
    # The samplers differ: the run did use the scheduler it was given.
    assert max_abs_diff(frames["ddim"], frames["euler_ancestral"]) > 1e-4


def test_svd_schedulers_tell_the_unet_its_continuous_timesteps():
    """SVD's UNet reads ¼·ln σ with v-prediction, whatever scheduler plans the σ."""
    from tests.svd_checkpoint import SCHEDULER_CONFIG

    import json

    config = json.loads(SCHEDULER_CONFIG.read_text())
    for name, (cls, options, call) in SCHEDULERS.items():
        plan = cls.from_config(config, **options).plan(4, network=SVD_NETWORK, **call)
        assert plan.parameterization.prediction == "v_prediction", name
        expected = 0.25 * plan.sigmas[:-1].log()
        assert torch.equal(plan.timesteps, expected), name
    # DPM-Solver reads SVD's Karras range (σ_max = 700), as its config says.
    plan = DPMSolverMultistepScheduler.from_config(config).plan(4, network=SVD_NETWORK)
    assert plan.sigmas[0].item() == pytest.approx(700.0)


def test_svd_refuses_options_the_scheduler_cannot_honour(vidiff_svd):
    with pytest.raises(ValueError, match="EulerDiscreteScheduler cannot honour `eta`"):
        vidiff_svd(**_call("svd"), eta=0.5)
    pipe = _with_scheduler(vidiff_svd, DDIMScheduler.from_config(vidiff_svd.scheduler.config))
    with pytest.raises(ValueError, match="DDIMScheduler cannot honour `sigmas`"):
        pipe(**_call("svd"), sigmas=[10.0, 1.0, 0.0])


# ---------------------------------------------------------------------------- the exact denoiser
MU, SPREAD = 0.3, 0.8  # data x0 ~ N(μ, s²) in every element
GAUSSIAN_NETWORK = Parameterization("epsilon", ContinuousTimesteps())  # told ¼·ln σ, predicts ε
TABLE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing")
DETERMINISTIC = {
    "euler": EulerDiscreteScheduler(**TABLE),
    "ddim": DDIMScheduler(**TABLE, set_alpha_to_one=True, clip_sample=False),
    "dpmpp_2m": DPMSolverMultistepScheduler(**TABLE),
    "pndm": PNDMScheduler(**TABLE, skip_prk_steps=True, set_alpha_to_one=True),
}


def gaussian_network(x_in, timestep, inputs):
    """ε̂ of the ideal denoiser for x0 ~ N(μ, s²): ε̂ = σ·(x − μ)/(s² + σ²), x = x_in·sqrt(σ² + 1)."""
    sigma = torch.exp(4 * timestep.to(torch.float64))
    x = x_in.to(torch.float64) * torch.sqrt(sigma**2 + 1)
    return (sigma * (x - MU) / (SPREAD**2 + sigma**2)).to(x_in.dtype)


def _start(sigma_max: float) -> torch.Tensor:
    """A VE sample at σ_max: μ + sqrt(s² + σ_max²)·z, float64 [1, 2, 2, 4, 4]."""
    z = torch.randn(1, 2, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return MU + math.sqrt(SPREAD**2 + sigma_max**2) * z


def _run(plan: SamplingPlan, start_ve: torch.Tensor) -> torch.Tensor:
    """The plan's final sample from the VE sample ``start_ve`` at σ_0, returned as a VE sample."""
    alphas = plan.alphas_cumprod if plan.alphas_cumprod is not None else 1 / (plan.sigmas**2 + 1)
    vp = plan.parameterization.space == "vp"
    latents = (start_ve * float(alphas[0]) ** 0.5 if vp else start_ve).to(torch.float32)
    final = sample(gaussian_network, latents, plan, {}).to(torch.float64)
    return final / float(alphas[-1]) ** 0.5 if vp else final


def _exact(plan: SamplingPlan, start_ve: torch.Tensor) -> torch.Tensor:
    sigma_start, sigma_end = float(plan.sigmas[0]), float(plan.sigmas[-1])
    return MU + (start_ve - MU) * math.sqrt(SPREAD**2 + sigma_end**2) / math.sqrt(SPREAD**2 + sigma_start**2)


@pytest.mark.parametrize("space", ["ve", "vp"])  # one of them is the scheduler's own
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_schedulers_converge_to_the_ode_endpoint(name, space):
    errors = {}
    for steps in (10, 100, 500):
        plan = DETERMINISTIC[name].plan(steps, network=GAUSSIAN_NETWORK)
        plan = plan_in_space(plan, space)
        start = _start(float(plan.sigmas[0]))
        errors[steps] = max_abs_diff(_run(plan, start), _exact(plan, start))
    # The last step jumps from the schedule's smallest σ (∝ sqrt(T/N) for trailing spacing) to 0, so
    # the error falls like 1/N even for the multistep solvers.
    assert errors[500] < 0.015, errors
    assert errors[10] > errors[100] > errors[500] and errors[500] < errors[10] / 10, errors


@pytest.mark.parametrize("space", ["ve", "vp"])
def test_deterministic_schedulers_reach_the_same_sample_from_one_sigma_max(space):
    spread = {}
    for steps in (10, 500):
        plans = {name: plan_in_space(s.plan(steps, network=GAUSSIAN_NETWORK), space) for name, s in DETERMINISTIC.items()}
        sigma_max = {name: plan.sigmas[0].item() for name, plan in plans.items()}
        assert max(sigma_max.values()) - min(sigma_max.values()) < 1e-4 * max(sigma_max.values()), sigma_max
        assert all(plan.sigmas[-1] == 0 for plan in plans.values())
        start = _start(sigma_max["euler"])
        finals = {name: _run(plan, start) for name, plan in plans.items()}
        spread[steps] = max(max_abs_diff(final, finals["euler"]) for final in finals.values())
        # Not trivially: the sample moved far from where it started.
        assert max_abs_diff(finals["euler"], start) > 1.0
    assert spread[500] < 0.015 and spread[500] < spread[10] / 10, spread


def test_ddim_in_ve_space_is_euler_on_the_same_sigmas():
    """DDIM with η = 0 is Euler's step in σ (Song et al. 2021, §4.3): converted to VE, the same numbers."""
    # 10 trailing steps: every DDIM step lands on the next plan point (T // N = the trailing stride).
    ddim = plan_in_space(DETERMINISTIC["ddim"].plan(10, network=GAUSSIAN_NETWORK), "ve")
    as_euler = SamplingPlan(ddim.sigmas, ddim.timesteps, ddim.parameterization, euler, ddim.init_noise_sigma)
    start = _start(float(ddim.sigmas[0]))
    assert max_abs_diff(_run(ddim, start), _run(as_euler, start)) < 1e-4
    assert max_abs_diff(_run(ddim, start), _exact(ddim, start)) > 1e-3  # 10 steps are not exact: a real comparison


def test_a_plan_refuses_a_stepper_of_the_other_space():
    plan = DETERMINISTIC["ddim"].plan(4)
    with pytest.raises(ValueError, match=r"works in \['vp'\] space"):
        SamplingPlan(plan.sigmas, plan.timesteps, Parameterization("epsilon", ContinuousTimesteps()), plan.stepper, 1.0)
    euler_plan = DETERMINISTIC["euler"].plan(4)
    with pytest.raises(ValueError, match=r"works in \['ve'\] space"):
        SamplingPlan(
            euler_plan.sigmas, euler_plan.timesteps, plan.parameterization, euler, 1.0,
            alphas_cumprod=1 / (euler_plan.sigmas**2 + 1),
        )


# ---------------------------------------------------------------------------- pairings diffusers has
I2VGEN_XL_CASES = {
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, {}),
    "ddim_eta": ("DDIMScheduler", {}, {"eta": 0.5}),
    "dpmpp_sde_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, {"num_inference_steps": 4}),
    "lcm": ("LCMScheduler", {}, {"num_inference_steps": 2, "guidance_scale": 1.0}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, {}),
}


@pytest.mark.parametrize("case", I2VGEN_XL_CASES)
def test_i2vgen_xl_schedulers_match_diffusers(tiny_i2vgen_xl, vidiff_i2vgen_xl, case):
    """I2VGen-XL's stochastic samplers draw their step noise frame-major, as diffusers does."""
    import diffusers

    import vidiff
    from tests.test_pipeline_i2vgen_xl_parity import NEGATIVE, TOLERANCE, run_both

    name, options, call = I2VGEN_XL_CASES[case]
    oracle = tiny_i2vgen_xl[1]
    ours = _with_scheduler(vidiff_i2vgen_xl, getattr(vidiff, name).from_config(vidiff_i2vgen_xl.scheduler.config, **options))
    oracle_parts = {n: getattr(oracle, n) for n in oracle.components if n != "scheduler"}
    theirs = diffusers.I2VGenXLPipeline(
        **oracle_parts, scheduler=getattr(diffusers, name).from_config(oracle.scheduler.config, **options)
    )
    theirs.set_progress_bar_config(disable=True)
    a, b = run_both(theirs, ours, negative_prompt=NEGATIVE, **call)
    assert max_abs_diff(a, b) <= TOLERANCE
