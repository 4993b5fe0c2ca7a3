"""CPU offload (model and sequential) on all three pipelines, on CPU-only CI.

There is no accelerator here, so the execution device is the CPU itself and moves would be
invisible. Two things make them observable instead:

- **Parking on "meta"** (``pipe._enable_offload(mode, cpu, park_device="meta")``): a tensor the
  offloader has not loaded holds no data, so any computation that touches it fails (or yields a meta
  result and the frames comparison fails). A call whose frames equal the plain call's bit for bit
  therefore only ever read tensors the offloader's bookkeeping had loaded.
- **Probes**: forward pre-hooks registered after the offloader's, on every module, check at each
  forward that exactly the right things are loaded (model mode: the module's component is the one
  resident component; sequential: only modules now running, and their leaf children, are loaded).

The public levers (``enable_model_cpu_offload(device="cpu")``, home parking) are checked for equal
frames, device reporting, ``to()`` refusal and ``disable_offload``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.animatediff_checkpoint import GUIDE_DDIM
from tests.animatediff_checkpoint import SMALL_CALL as ANIMATEDIFF_CALL
from tests.i2vgen_xl_checkpoint import SMALL_CALL as I2VGEN_CALL
from tests.svd_checkpoint import SMALL_CALL as SVD_CALL
from tests.svd_checkpoint import random_image
from vidiff import (
    AnimateDiffPipeline,
    DDIMScheduler,
    I2VGenXLPipeline,
    MotionAdapter,
    StableVideoDiffusionPipeline,
)
from vidiff.pipelines import offload

CPU = torch.device("cpu")
PIPELINES = ("svd", "animatediff", "i2vgen_xl")
# The components each call runs, in order (image VAE encode for SVD / I2VGen-XL, decode at the end).
EXPECTED_ORDER = {
    "svd": ["image_encoder", "vae", "unet", "vae"],
    "animatediff": ["text_encoder", "unet", "vae"],
    "i2vgen_xl": ["text_encoder", "image_encoder", "vae", "unet", "vae"],
}


def _load(kind: str, request) -> object:
    """A fresh pipeline (offload changes it, so the session fixtures are not used directly)."""
    if kind == "svd":
        pipe = StableVideoDiffusionPipeline.from_pretrained(request.getfixturevalue("tiny_svd")[0])
    elif kind == "i2vgen_xl":
        pipe = I2VGenXLPipeline.from_pretrained(request.getfixturevalue("tiny_i2vgen_xl")[0])
    else:
        root = request.getfixturevalue("tiny_animatediff")[0]
        adapter = MotionAdapter.from_pretrained(root / "motion_adapter")
        pipe = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=adapter)
        pipe.scheduler = DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(kind: str, pipe) -> np.ndarray:
    generator = torch.Generator().manual_seed(7)
    if kind == "svd":
        return pipe(random_image(), generator=generator, **SVD_CALL).frames
    if kind == "i2vgen_xl":
        return pipe("a red fox", image=random_image(), generator=generator, **I2VGEN_CALL).frames
    return pipe("a red fox", generator=generator, **ANIMATEDIFF_CALL).frames


_PLAIN: dict[str, np.ndarray] = {}


def _plain(kind: str, request) -> np.ndarray:
    if kind not in _PLAIN:
        _PLAIN[kind] = _call(kind, _load(kind, request))
    return _PLAIN[kind]


def _all_parked_on_meta(pipe) -> bool:
    return all(
        t.is_meta for component in pipe._offloader.components.values() for t in [*component.parameters(), *component.buffers()]
    )


@pytest.mark.parametrize("kind", PIPELINES)
def test_model_offload_keeps_only_the_running_component_loaded(kind, request):
    plain = _plain(kind, request)
    pipe = _load(kind, request)
    pipe._enable_offload("model", CPU, park_device="meta")
    offloader = pipe._offloader
    seen: list[str] = []

    def probe(name):
        def check(module, args):
            assert offloader.resident == name, f"{type(module).__name__} of {name} ran while {offloader.resident} was loaded"
            assert all(not t.is_meta for t in module.parameters(recurse=False))
            if not seen or seen[-1] != name:
                seen.append(name)
        return check

    for name, component in offloader.components.items():
        for module in component.modules():
            module.register_forward_pre_hook(probe(name))
    assert _all_parked_on_meta(pipe)  # nothing loaded before the call

    frames = _call(kind, pipe)

    np.testing.assert_array_equal(frames, plain)
    assert seen == EXPECTED_ORDER[kind]
    expected_moves = [(move, name) for name in EXPECTED_ORDER[kind] for move in ("load", "unload")]
    assert offloader.moves == expected_moves  # one load per use, and released at the end of the call
    assert offloader.resident is None and _all_parked_on_meta(pipe)
    if kind == "animatediff":  # the separate adapter copy is not offloaded: it stays on the CPU, untouched
        assert all(p.device == CPU for p in pipe.motion_adapter.parameters())


@pytest.mark.parametrize("kind", PIPELINES)
def test_sequential_offload_loads_only_the_running_modules(kind, request):
    plain = _plain(kind, request)
    pipe = _load(kind, request)
    pipe._enable_offload("sequential", CPU, park_device="meta")
    offloader = pipe._offloader
    running: list[torch.nn.Module] = []
    checked = 0

    def enter(module, args):
        nonlocal checked
        running.append(module)
        assert all(not t.is_meta for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)])
        allowed = {id(m) for r in running for m in (r, *offload._leaf_children(r))}
        loaded = offloader.loaded_modules()
        assert {id(m) for m in loaded} <= allowed, "a module stayed loaded after its forward"
        checked += 1

    def leave(module, args, output):
        assert running.pop() is module

    for component in offloader.components.values():
        for module in component.modules():
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)

    frames = _call(kind, pipe)

    np.testing.assert_array_equal(frames, plain)
    assert checked > 50 and offloader.transfers > checked // 2
    assert offloader.loaded_modules() == [] and _all_parked_on_meta(pipe)


@pytest.mark.parametrize("mode", ["model", "sequential"])
@pytest.mark.parametrize("kind", PIPELINES)
def test_public_levers_give_the_plain_frames(kind, mode, request):
    plain = _plain(kind, request)
    pipe = _load(kind, request)
    getattr(pipe, f"enable_{mode}_cpu_offload")(device="cpu")
    assert pipe._offloader.mode == mode and pipe.device == CPU
    np.testing.assert_array_equal(_call(kind, pipe), plain)
    np.testing.assert_array_equal(_call(kind, pipe), plain)  # a second call: hooks still right


def test_device_reports_the_execution_device_not_the_weights(request):
    pipe = _load("svd", request)
    pipe._enable_offload("model", CPU, park_device="meta")
    assert pipe.unet.device.type == "meta"  # where the (parked) weights are
    assert pipe.device == CPU  # where inputs and outputs are made


def test_disable_offload_restores_the_plain_pipeline(request):
    plain = _plain("animatediff", request)
    pipe = _load("animatediff", request)
    before = {id(t) for m in pipe._modules() for t in [*m.parameters(), *m.buffers()]}
    pipe.enable_sequential_cpu_offload(device="cpu")
    pipe.enable_model_cpu_offload(device="cpu")  # switching modes replaces the hooks
    assert pipe._offloader.mode == "model"
    hooked = sum(len(m._forward_hooks) for c in pipe._offloader.components.values() for m in c.modules())
    assert hooked == 0  # no sequential post-hooks left behind
    pipe.disable_offload()
    assert pipe._offloader is None
    after = {id(t) for m in pipe._modules() for t in [*m.parameters(), *m.buffers()]}
    assert after == before  # the very same tensors, on the CPU
    assert all(not m._forward_pre_hooks and not m._forward_hooks for c in pipe._modules() for m in c.modules())
    pipe.to("cpu")  # allowed again
    np.testing.assert_array_equal(_call("animatediff", pipe), plain)
    pipe.disable_offload()  # a no-op when off


def test_to_is_refused_while_offloading(request):
    pipe = _load("svd", request)
    pipe.enable_model_cpu_offload(device="cpu")
    with pytest.raises(ValueError, match="disable_offload"):
        pipe.to("cpu")
    with pytest.raises(ValueError, match="disable_offload"):
        pipe.to(torch.float16)


def test_default_device_needs_an_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="enable_model_cpu_offload.*no accelerator"):
        offload.execution_device(None, "enable_model_cpu_offload")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert offload.execution_device(None, "x") == torch.device("cuda", 1)
    assert offload.execution_device("cuda:0", "x") == torch.device("cuda", 0)


@pytest.mark.parametrize("device", ["meta", "not-a-device", 2.5])
def test_bad_devices_are_refused(device):
    with pytest.raises(ValueError, match="device"):
        offload.execution_device(device, "enable_sequential_cpu_offload")


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    # Nested, like real blocks: sequential offload loads a running module with its leaf children.
    net = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU()), torch.nn.Sequential(torch.nn.Linear(8, 2))
    )
    net.register_buffer("offset", torch.ones(2))
    return net


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_tensors_really_move_to_the_execution_device_and_back(mode):
    """With "meta" standing in for the accelerator (no data, but a device of its own), the running
    module's tensors are seen on it during its forward and the very home tensors are back after."""
    net, other = _tiny_net(), _tiny_net()
    homes = {id(t) for t in [*net.parameters(), *net.buffers()]}
    offloader = offload.Offloader(mode, {"net": net, "other": other}, torch.device("meta"))
    seen = []
    probe = net[1][0].register_forward_pre_hook(
        lambda m, args: seen.append((m.weight.device.type, net[0][0].weight.device.type, net.offset.device.type))
    )
    out = net(torch.zeros(3, 4, device="meta"))
    assert out.is_meta
    # model: the whole component is loaded; sequential: the running Linear and its running parents'
    # own tensors (the root's buffer), not the first Linear, which is done
    assert seen == [("meta", "meta" if mode == "model" else "cpu", "meta")]
    assert all(p.device == CPU for p in other.parameters())  # never ran, never moved
    offloader.release()
    assert {id(t) for t in [*net.parameters(), *net.buffers()]} == homes
    assert offloader.transfers == (1 if mode == "model" else 3)  # sequential: root buffer + 2 Linears
    probe.remove()
    offloader.remove()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in net.modules())


def test_a_deep_copy_of_an_offloaded_module_runs_on_the_execution_device():
    """A copy made while offloading (the float32 VAE copy for ``force_upcast``) shares the hooks, not
    the offloader, and moves its own tensors to the execution device when it runs."""
    import copy

    net = _tiny_net()
    offloader = offload.Offloader("model", {"net": net}, torch.device("meta"))
    twin = copy.deepcopy(net)
    assert next(iter(twin[0][0]._forward_pre_hooks.values())).offloader is offloader
    assert twin(torch.zeros(3, 4, device="meta")).is_meta
    assert all(p.is_meta for p in twin.parameters())
    assert offloader.resident is None and all(p.device == CPU for p in net.parameters())


def test_float16_svd_with_upcast_vae_under_model_offload(request):
    plain_pipe = _load("svd", request).to(torch.float16)
    plain = _call("svd", plain_pipe)
    pipe = _load("svd", request).to(torch.float16)
    assert pipe.vae.config.force_upcast
    pipe.enable_model_cpu_offload(device="cpu")
    np.testing.assert_array_equal(_call("svd", pipe), plain)
    assert pipe.unet.dtype == pipe.vae.dtype == torch.float16


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_composes_with_vae_tiling_and_forward_chunking(mode, request):
    """The other memory levers run under offload (parked on "meta") and give the same frames."""
    call = {**SVD_CALL, "height": 64, "width": 96}

    def run(pipe):
        pipe.enable_vae_tiling(tile_sample_min_size=32)
        pipe.enable_forward_chunking(1, dim=1)
        return pipe(random_image(), generator=torch.Generator().manual_seed(1), **call).frames

    plain = run(_load("svd", request))
    pipe = _load("svd", request)
    pipe._enable_offload(mode, CPU, park_device="meta")
    np.testing.assert_array_equal(run(pipe), plain)
