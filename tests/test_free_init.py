"""FreeInit: the low-pass filter's numbers, the frequency mix, ``enable_free_init``'s checks, the
iterations around the one loop (step counts, callbacks, progress bars, RNG draws), and runs of
every pipeline family on the tiny checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import max_abs_diff
from vidiff.diffusion.free_init import diffuse_ve, diffuse_vp, low_pass_filter, mix_frequencies


# ---------------------------------------------------------------------------- the filter
def _direct_filter(frames: int, height: int, width: int, method: str, order: float, d_s: float, d_t: float) -> torch.Tensor:
    """The filter evaluated bin by bin from its formula (d² from the centre of the shifted grid)."""
    out = torch.zeros(frames, height, width)
    for t in range(frames):
        for h in range(height):
            for w in range(width):
                d2 = ((d_s / d_t) * (2 * t / frames - 1)) ** 2 + (2 * h / height - 1) ** 2 + (2 * w / width - 1) ** 2
                if method == "butterworth":
                    out[t, h, w] = 1 / (1 + (d2 / d_s**2) ** order)
                elif method == "gaussian":
                    out[t, h, w] = math.exp(-d2 / (2 * d_s**2))
                else:
                    out[t, h, w] = 1.0 if d2 <= 2 * d_s else 0.0
    return out


@pytest.mark.parametrize("method", ["butterworth", "ideal", "gaussian"])
@pytest.mark.parametrize("size", [(4, 4, 6), (5, 7, 8), (16, 3, 9)])
@pytest.mark.parametrize("order, d_s, d_t", [(4, 0.25, 0.25), (2, 0.4, 0.1), (1.5, 0.25, 0.6), (7, 1.0, 1.0)])
def test_filter_values_are_the_formula(method, size, order, d_s, d_t):
    ours = low_pass_filter((2, 3, *size), method, order, d_s, d_t)
    assert ours.shape == (2, 3, *size) and ours.dtype == torch.float32
    expected = _direct_filter(*size, method, order, d_s, d_t)
    for b in range(2):
        for c in range(3):  # the same filter in every leading index
            if method == "ideal":
                assert torch.equal(ours[b, c], expected)
            else:
                torch.testing.assert_close(ours[b, c], expected, rtol=0, atol=1e-7)


def test_filter_traps_of_the_reference():
    # 4 × 4 × 4 bins: offsets (2i/4 − 1) ∈ {−1, −0.5, 0, 0.5}; the centre is bin (2, 2, 2).
    ideal = low_pass_filter((4, 4, 4), "ideal", 4, 0.25, 0.25)
    # d² = 0.25 + 0.25 = 0.5 = 2·d_s is kept although d = 0.71 > d_s (the paper's cut would drop it).
    assert ideal[2, 1, 3] == 1 and ideal[2, 2, 2] == 1
    assert ideal[1, 1, 1] == 0  # d² = 0.75 > 0.5
    # butterworth raises the ratio of *squared* distances to the order: 1/2 where d² = d_s².
    butter = low_pass_filter((4, 4, 4), "butterworth", 4, 0.5, 0.5)
    assert butter[2, 2, 1] == pytest.approx(1 / (1 + (0.25 / 0.25) ** 4))  # d² = 0.25 = d_s²: one half
    assert butter[2, 2, 0] == pytest.approx(1 / (1 + (1 / 0.25) ** 4))  # d² = 1
    # a stop frequency of 0 keeps nothing
    assert not low_pass_filter((1, 4, 4, 4), "gaussian", 4, 0.0, 0.25).any()
    assert not low_pass_filter((1, 4, 4, 4), "butterworth", 4, 0.25, 0.0).any()


def test_filter_rejects_bad_shape_and_method():
    with pytest.raises(ValueError, match="method"):
        low_pass_filter((1, 4, 4, 4), "box")
    with pytest.raises(ValueError, match="frames, height and width"):
        low_pass_filter((4, 4))


# ---------------------------------------------------------------------------- the mix and the diffusion
def test_mix_keeps_low_frequencies_of_latents_and_high_of_noise():
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 6, 8, 10, generator=gen), torch.randn(2, 4, 6, 8, 10, generator=gen)
    ones, zeros = torch.ones(1, 4, 6, 8, 10), torch.zeros(1, 4, 6, 8, 10)
    torch.testing.assert_close(mix_frequencies(latents, noise, ones), latents, rtol=0, atol=1e-5)
    torch.testing.assert_close(mix_frequencies(latents, noise, zeros), noise, rtol=0, atol=1e-5)
    filt = low_pass_filter((1, 4, 6, 8, 10), "ideal", 4, 0.25, 0.25)
    mixed = mix_frequencies(latents, noise, filt)
    assert mixed.dtype == torch.float32 and mixed.shape == latents.shape

    def spectrum(x):
        return torch.fft.fftshift(torch.fft.fftn(x, dim=(-3, -2, -1)), dim=(-3, -2, -1))

    keep = filt.bool().expand_as(latents)
    torch.testing.assert_close(spectrum(mixed)[keep], spectrum(latents)[keep], rtol=0, atol=1e-3)
    torch.testing.assert_close(spectrum(mixed)[~keep], spectrum(noise)[~keep], rtol=0, atol=1e-3)


def test_diffusion_formulas():
    x, n = torch.full((2, 3), 2.0), torch.full((2, 3), -1.0)
    alpha = torch.tensor(0.04)
    torch.testing.assert_close(diffuse_vp(x, n, alpha), torch.full((2, 3), 0.2 * 2 - 0.96**0.5))
    torch.testing.assert_close(diffuse_ve(x, n, torch.tensor(14.5)), torch.full((2, 3), 2 - 14.5))
    assert diffuse_vp(x.half(), n.half(), alpha).dtype == torch.float16


# ---------------------------------------------------------------------------- enable_free_init
@pytest.fixture
def animatediff(vidiff_animatediff):
    """A fresh AnimateDiff pipeline around the session's networks (FreeInit never leaks into the fixture)."""
    from vidiff import AnimateDiffPipeline, DDIMScheduler

    pipe = vidiff_animatediff
    ours = AnimateDiffPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
    )
    ours.set_progress_bar_config(disable=True)
    return ours


@pytest.mark.parametrize(
    "options, word",
    [
        (dict(num_iters=0), "num_iters"),
        (dict(num_iters=2.0), "num_iters"),
        (dict(num_iters=True), "num_iters"),
        (dict(method="box"), "butterworth"),
        (dict(order=0), "order"),
        (dict(order=float("nan")), "order"),
        (dict(order=float("inf")), "order"),
        (dict(spatial_stop_frequency=1.5), "spatial_stop_frequency"),
        (dict(temporal_stop_frequency=-0.1), "temporal_stop_frequency"),
        (dict(temporal_stop_frequency="0.2"), "temporal_stop_frequency"),
    ],
)
def test_bad_options_are_named(animatediff, options, word):
    with pytest.raises(ValueError, match=word):
        animatediff.enable_free_init(**options)
    assert not animatediff.free_init_enabled


def test_use_fast_sampling_must_be_a_bool(animatediff):
    with pytest.raises(TypeError, match="use_fast_sampling"):
        animatediff.enable_free_init(use_fast_sampling="yes")


def test_enable_and_disable(animatediff):
    assert not animatediff.free_init_enabled
    animatediff.enable_free_init()
    assert animatediff.free_init_enabled
    animatediff.disable_free_init()
    assert not animatediff.free_init_enabled


# ---------------------------------------------------------------------------- the iterations
SMALL = dict(prompt="a rocket", height=32, width=48, num_frames=4, output_type="latent")


def _recorded_steps(pipe, **call) -> list[list[int]]:
    """Step indices the callback saw, split into runs of the loop (a new run starts at index 0)."""
    runs: list[list[int]] = []

    def record(_pipe, step, _timestep, tensors):
        if step == 0:
            runs.append([])
        runs[-1].append(step)
        return {}

    pipe(**SMALL, **call, generator=torch.Generator().manual_seed(0), callback_on_step_end=record)
    return runs


@pytest.mark.parametrize(
    "steps, iters, expected",
    [(5, 3, [1, 3, 5]), (3, 3, [1, 2, 3]), (7, 2, [3, 7]), (2, 3, [1, 1, 2]), (4, 1, [4])],
)
def test_fast_sampling_step_counts(animatediff, steps, iters, expected):
    animatediff.enable_free_init(num_iters=iters, use_fast_sampling=True)
    runs = _recorded_steps(animatediff, num_inference_steps=steps)
    assert [len(run) for run in runs] == expected
    assert all(run == list(range(len(run))) for run in runs)  # the step index restarts per iteration


def test_every_iteration_runs_all_steps_without_fast_sampling(animatediff):
    animatediff.enable_free_init(num_iters=3)
    assert _recorded_steps(animatediff, num_inference_steps=4) == [[0, 1, 2, 3]] * 3


def test_progress_bar_names_the_iteration(animatediff, monkeypatch):
    descriptions = []
    original = animatediff.progress_bar

    def spy(iterable=None, total=None, **kwargs):
        descriptions.append((kwargs.get("desc"), total))
        return original(iterable, total=total, **kwargs)

    monkeypatch.setattr(animatediff, "progress_bar", spy)
    animatediff.enable_free_init(num_iters=2, use_fast_sampling=True)
    animatediff(**SMALL, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert descriptions == [("denoising (FreeInit 1/2)", 2), ("denoising (FreeInit 2/2)", 4)]


def test_one_iteration_is_the_plain_call(animatediff):
    plain = animatediff(**SMALL, num_inference_steps=3, generator=torch.Generator().manual_seed(1))[0]
    animatediff.enable_free_init(num_iters=1)
    once = animatediff(**SMALL, num_inference_steps=3, generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(plain, once)


def test_each_extra_iteration_draws_one_latents_shaped_float32_noise(animatediff):
    animatediff.enable_free_init(num_iters=3)
    generator = torch.Generator().manual_seed(4)
    latents = animatediff(**SMALL, num_inference_steps=2, generator=generator)[0]
    expected = torch.Generator().manual_seed(4)
    for _ in range(3):  # the initial latents, then one fresh draw per extra iteration
        torch.randn(latents.shape, generator=expected)
    assert torch.equal(generator.get_state(), expected.get_state())


def test_without_a_generator_the_global_rng_draws(animatediff):
    animatediff.enable_free_init(num_iters=2)
    torch.manual_seed(11)
    first = animatediff(**SMALL, num_inference_steps=2)[0]
    torch.manual_seed(11)
    second = animatediff(**SMALL, num_inference_steps=2)[0]
    assert torch.equal(first, second)
    torch.manual_seed(11)
    for _ in range(2):
        torch.randn(first.shape)
    expected_state = torch.get_rng_state()
    torch.manual_seed(11)
    animatediff(**SMALL, num_inference_steps=2)
    assert torch.equal(torch.get_rng_state(), expected_state)


def test_numpy_generator_reproduces_and_differs_from_plain(animatediff):
    def run():
        return animatediff(**SMALL, num_inference_steps=2, generator=np.random.Generator(np.random.PCG64(3)))[0]

    plain = run()
    animatediff.enable_free_init(num_iters=2, method="gaussian")
    first, second = run(), run()
    assert torch.equal(first, second)
    assert max_abs_diff(first, plain) > 1e-2


# ---------------------------------------------------------------------------- the other families
def _copy(pipe):
    """A pipeline of the same class around the same components (the session fixture stays untouched)."""
    copy = type(pipe)(**{name: getattr(pipe, name) for name in pipe.components})
    copy.set_progress_bar_config(disable=True)
    return copy


def test_svd_with_free_init(vidiff_svd):
    from tests.svd_checkpoint import SMALL_CALL, random_image

    pipe = _copy(vidiff_svd)
    call = {**SMALL_CALL, "image": random_image(), "num_inference_steps": 3}
    plain = pipe(**call, generator=torch.Generator().manual_seed(2)).frames
    pipe.enable_free_init(num_iters=2)
    freed = pipe(**call, generator=torch.Generator().manual_seed(2)).frames
    assert freed.shape == plain.shape == (1, SMALL_CALL["num_frames"], 32, 48, 3)
    assert np.isfinite(freed).all() and max_abs_diff(freed, plain) > 1e-2
    # fast sampling re-plans SVD's EDM schedule with fewer steps
    pipe.enable_free_init(num_iters=3, use_fast_sampling=True)
    counts = []
    pipe(**{**call, "output_type": "latent"}, generator=torch.Generator().manual_seed(2),
         callback_on_step_end=lambda _p, step, _t, _x: counts.append(step) or {})
    assert counts == [0, 0, 1, 0, 1, 2]


def test_svd_terminal_sigma_is_the_edm_sigma_max(vidiff_svd):
    pipe = _copy(vidiff_svd)
    assert vidiff_svd.scheduler.config.sigma_max == 700.0
    assert pipe._terminal_sigma().item() == 700.0


def test_i2vgen_xl_with_free_init(vidiff_i2vgen_xl):
    from tests.i2vgen_xl_checkpoint import SMALL_CALL
    from tests.svd_checkpoint import random_image

    pipe = _copy(vidiff_i2vgen_xl)
    call = {**SMALL_CALL, "prompt": "papers in the air", "image": random_image(80, 56)}
    plain = pipe(**call, generator=torch.Generator().manual_seed(2)).frames
    pipe.enable_free_init(num_iters=2, method="ideal", use_fast_sampling=True)
    freed = pipe(**call, generator=torch.Generator().manual_seed(2)).frames
    assert freed.shape == plain.shape == (1, SMALL_CALL["num_frames"], 32, 48, 3)
    assert np.isfinite(freed).all() and max_abs_diff(freed, plain) > 1e-2
