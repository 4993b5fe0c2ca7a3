"""Context windows (long videos): which windows each step uses, how their outputs fuse, and the
settings' errors. A recording fake network shows which frames every call sees and what each frame
gets back; the expected windows and weights below are worked out by hand, not by the code under test.
(The pipelines on their tiny checkpoints: test_context_windows_pipelines.py.)
"""

from __future__ import annotations

import pytest
import torch

from vidiff.diffusion.window_schedules import context_windows, van_der_corput
from vidiff.diffusion.windows import ContextWindows, sliding_windows
from vidiff.pipelines.context_windows import ContextWindowsMixin

T = torch.tensor(0.5)


def _run(wrapper: ContextWindows, num_frames: int, steps: int = 1, inputs=None, axes=None):
    """Call the wrapped fake network ``steps`` times (as the loop does once per step) on latents whose
    value is the frame index. Window ``i`` of a call (in call order) returns ``i + 1`` everywhere.
    Returns (frames seen per call, per step; fused outputs per step; window inputs seen)."""
    seen: list[list[tuple[int, ...]]] = []
    seen_inputs: list[dict] = []

    def network(x, timestep, window_inputs):
        seen[-1].append(tuple(int(v) for v in x[0, 0, :, 0, 0]))
        seen_inputs.append(dict(window_inputs))
        return torch.full_like(x, float(len(seen[-1])))

    x = torch.arange(float(num_frames)).view(1, 1, -1, 1, 1).expand(2, 3, -1, 2, 2).contiguous()
    wrapped = wrapper(network, axes or {})
    outputs = []
    for _ in range(steps):
        seen.append([])
        outputs.append(wrapped(x, T, inputs or {}))
    return seen, outputs, seen_inputs


def _per_frame(output):
    assert torch.equal(output, output[:1, :1, :, :1, :1].expand_as(output))  # one value per frame
    return output[0, 0, :, 0, 0].tolist()


# ---------------------------------------------------------------------- schedules
def test_van_der_corput_halves_the_gaps_in_order():
    assert [van_der_corput(i) for i in range(8)] == [0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]


def test_static_windows_are_the_sliding_windows_at_every_step():
    seen, _, _ = _run(ContextWindows(4, 1, schedule="static"), 10, steps=3)
    assert seen == [[(0, 1, 2, 3), (3, 4, 5, 6), (6, 7, 8, 9)]] * 3
    for frames, length, overlap in [(10, 4, 2), (9, 4, 0), (17, 5, 2), (24, 8, 2)]:
        windows = context_windows(frames, length, overlap, "static")
        assert [(w[0], w[-1] + 1) for w in windows] == sliding_windows(frames, length, length - overlap)


def test_uniform_windows_move_their_seams_from_step_to_step():
    # F = 10, L = 4, stride 3. Step s shifts the grid by round(10 · h(s)) = 0, 5, 2, 8; a window that
    # would wrap moves back to (6..9), and (0..3) is added where frame 0 was left out.
    seen, _, _ = _run(ContextWindows(4, 1, schedule="uniform", fuse="flat"), 10, steps=4)
    def run(start):
        return tuple(range(start, start + 4))

    assert seen == [
        [run(0), run(3), run(6)],
        [run(0), run(1), run(5), run(6)],
        [run(0), run(2), run(5), run(6)],
        [run(0), run(1), run(4), run(6)],
    ]


def test_closed_loop_windows_wrap_round_to_frame_zero():
    seen, _, _ = _run(ContextWindows(4, 1, schedule="static", closed_loop=True), 10)
    assert seen == [[(0, 1, 2, 3), (3, 4, 5, 6), (6, 7, 8, 9), (9, 0, 1, 2)]]
    # uniform, step 1: offset 5 → starts 5, 8, 11 ≡ 1, 14 ≡ 4, kept wrapped
    seen, _, _ = _run(ContextWindows(4, 1, schedule="uniform", closed_loop=True), 10, steps=2)
    assert seen[1] == [(1, 2, 3, 4), (4, 5, 6, 7), (5, 6, 7, 8), (8, 9, 0, 1)]


def test_every_schedule_covers_every_frame_with_whole_windows():
    for frames, length, overlap in [(10, 4, 1), (12, 4, 2), (25, 8, 3), (13, 12, 5)]:
        for step in range(9):
            for schedule in ("uniform", "static"):
                for closed in (False, True):
                    windows = context_windows(frames, length, overlap, schedule, step, closed)
                    assert {f for w in windows for f in w} == set(range(frames))
                    assert all(len(w) == length == len(set(w)) for w in windows)
                    assert len(set(windows)) == len(windows)
                    assert closed or all(w == tuple(range(w[0], w[0] + length)) for w in windows)


# ---------------------------------------------------------------------- fusing
def test_pyramid_fuse_weights_overlaps_by_position_in_the_window():
    # windows (0..3), (2..5), (4..7), (6..9); pyramid weights 1 2 2 1. Frame 2: 1st window at its
    # 3rd place (weight 2, value 1), 2nd at its 1st (weight 1, value 2) → (2·1 + 1·2) / 3 = 4/3.
    _, (out,), _ = _run(ContextWindows(4, 2, schedule="static", fuse="pyramid"), 10)
    expected = [1, 1, 4 / 3, 5 / 3, 7 / 3, 8 / 3, 10 / 3, 11 / 3, 4, 4]
    assert _per_frame(out) == pytest.approx(expected, abs=1e-6)


def test_flat_fuse_averages_overlaps():
    _, (out,), _ = _run(ContextWindows(4, 2, schedule="static", fuse="flat"), 10)
    assert _per_frame(out) == pytest.approx([1, 1, 1.5, 1.5, 2.5, 2.5, 3.5, 3.5, 4, 4], abs=1e-6)


def test_closed_loop_fuses_the_wrapped_window_into_the_first_frames():
    # windows (0..3) (3..6) (6..9) (9,0,1,2), pyramid 1 2 2 1: frame 0 = (1·1 + 2·4) / 3, frame 1 =
    # (2·1 + 2·4) / 4, frame 2 = (2·1 + 1·4) / 3, frame 9 = (1·3 + 1·4) / 2.
    _, (out,), _ = _run(ContextWindows(4, 1, schedule="static", closed_loop=True), 10)
    assert _per_frame(out) == pytest.approx([3, 2.5, 2, 1.5, 2, 2, 2.5, 3, 3, 3.5], abs=1e-6)


def test_frame_inputs_are_cut_like_the_latents_even_when_a_window_wraps():
    inputs = {"per_frame": torch.arange(10.0).view(1, 10, 1).expand(2, 10, 3), "whole": torch.ones(2, 7)}
    axes = {"per_frame": 1, "absent_with_prompt_travel": 1}
    seen, _, seen_inputs = _run(ContextWindows(4, 1, schedule="static", closed_loop=True), 10, inputs=inputs, axes=axes)
    for frames, window_inputs in zip(seen[0], seen_inputs):
        assert tuple(int(v) for v in window_inputs["per_frame"][0, :, 0]) == frames
        assert window_inputs["whole"] is inputs["whole"]
        assert "absent_with_prompt_travel" not in window_inputs


def test_a_frame_input_of_the_wrong_length_is_refused():
    inputs = {"per_frame": torch.zeros(2, 9, 3)}
    with pytest.raises(ValueError, match="ContextWindows: input 'per_frame'.*10 frames"):
        _run(ContextWindows(4, 1), 10, inputs=inputs, axes={"per_frame": 1})


@pytest.mark.parametrize("fuse", ["pyramid", "flat"])
@pytest.mark.parametrize("closed_loop", [False, True])
def test_one_window_over_all_frames_is_the_network_bit_for_bit(fuse, closed_loop):
    generator = torch.Generator().manual_seed(0)
    x, per_frame = torch.randn(2, 3, 6, 2, 3, generator=generator), torch.randn(2, 6, 3, generator=generator)

    def network(x_window, timestep, inputs):  # mixes frames, so a cut would show
        return x_window.cumsum(2) * timestep + inputs["per_frame"].transpose(1, 2)[..., None, None]

    wrapped = ContextWindows(6, 2, closed_loop=closed_loop, fuse=fuse)(network, {"per_frame": 1})
    for _ in range(3):
        assert torch.equal(wrapped(x, T, {"per_frame": per_frame}), network(x, T, {"per_frame": per_frame}))


def test_each_call_holds_exactly_one_window():
    seen, _, _ = _run(ContextWindows(8, 2), 40, steps=5)
    assert all(len(frames) == 8 for step in seen for frames in step)


def test_half_precision_outputs_fuse_in_float32_and_come_back_in_their_dtype():
    def network(x, timestep, inputs):
        return (x + 0.1).half()

    out = ContextWindows(4, 2, schedule="static")(network, {})(torch.zeros(1, 1, 8, 1, 1), T, {})
    assert out.dtype == torch.float16 and torch.equal(out, torch.full_like(out, 0.1))


# ---------------------------------------------------------------------- settings and errors
class _Pipe(ContextWindowsMixin):
    network_wrapper = None
    free_noise_enabled = False


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(context_length=0), "`context_length` must be ≥ 1"),
        (dict(context_length=8, context_overlap=8), r"`context_overlap` must be in \[0, context_length\)"),
        (dict(context_length=8, context_overlap=-1), "`context_overlap`"),
        (dict(schedule="looped"), "`schedule` must be one of"),
        (dict(fuse="gauss"), "`fuse` must be one of"),
        (dict(context_overlap=0, closed_loop=True), "closed_loop needs `context_overlap` ≥ 1"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs, message):
    pipe = _Pipe()
    with pytest.raises(ValueError, match=message):
        pipe.enable_context_windows(**kwargs)
    assert not pipe.context_windows_enabled


@pytest.mark.parametrize("kwargs", [dict(context_length=8.0), dict(context_overlap="2"), dict(closed_loop=1)])
def test_settings_of_the_wrong_type_are_refused_by_name(kwargs):
    with pytest.raises(TypeError, match=f"`{next(iter(kwargs))}` must be"):
        _Pipe().enable_context_windows(**kwargs)


def test_enable_and_disable():
    pipe = _Pipe()
    pipe.enable_context_windows(12, 3, schedule="static", closed_loop=True, fuse="flat")
    assert pipe.context_windows_enabled
    assert pipe.context_windows == ContextWindows(12, 3, "static", True, "flat")
    pipe.disable_context_windows()
    assert not pipe.context_windows_enabled and pipe.network_wrapper is None
    assert ContextWindows() == ContextWindows(16, 4, "uniform", False, "pyramid")  # the defaults


def test_windows_are_refused_while_free_noise_is_on():
    pipe = _Pipe()
    pipe.free_noise_enabled = True
    with pytest.raises(ValueError, match=r"disable_free_noise\(\)"):
        pipe.enable_context_windows()
    assert not pipe.context_windows_enabled


def test_a_context_longer_than_the_video_is_refused_by_name():
    pipe = _Pipe()
    pipe.enable_context_windows(16, 4)
    with pytest.raises(ValueError, match=r"`context_length` \(16\) is longer than the video: `num_frames` is 12"):
        pipe._check_context_frames(12)
    pipe._check_context_frames(16)
    with pytest.raises(ValueError, match="`context_length`.*`num_frames`"):
        _run(ContextWindows(16, 4), 12)
