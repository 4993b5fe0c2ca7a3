"""LoRA on AnimateDiffPipeline against diffusers 0.42.1 (+ peft) on the tiny random checkpoint.

Each test loads fresh pipelines (vidiff and the diffusers oracle) from the session's tiny
AnimateDiff folder, loads the same LoRA file into both and compares ``np`` frames within 1e-4.
LoRA factors are random (``tests/lora_fixtures.py``), large enough that a LoRA visibly changes the
frames (checked), so a LoRA that was silently skipped cannot pass.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.animatediff_checkpoint import GUIDE_DDIM, SMALL_CALL, diffusers_pipeline
from tests.helpers import max_abs_diff
from tests.lora_fixtures import (
    MOTION_TARGETS,
    SD_TARGETS,
    TEXT_TARGETS,
    layer_paths,
    random_lora,
    to_kohya,
    to_motion_lora_repo,
    to_old_diffusers,
    to_original_motion_lora,
)

TOLERANCE = 1e-4
PROMPT = "a rocket flying into space"
CALL = dict(SMALL_CALL, num_inference_steps=2, prompt=PROMPT, negative_prompt="blurry")


@pytest.fixture()
def pipes(tiny_animatediff):
    """(diffusers oracle, vidiff pipeline), both fresh: tests load LoRAs and fuse weights."""
    from vidiff import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    root = tiny_animatediff[0]
    adapter = MotionAdapter.from_pretrained(root / "motion_adapter")
    ours = AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=adapter)
    ours.scheduler = DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
    ours.set_progress_bar_config(disable=True)
    return diffusers_pipeline(root), ours


def _frames(pipe, **overrides):
    return pipe(**{**CALL, **overrides}, generator=torch.Generator().manual_seed(3)).frames


def _unet_lora(oracle, seed=0, rank=2, motion=False):
    paths = layer_paths(oracle.unet, MOTION_TARGETS if motion else SD_TARGETS, motion=motion)
    assert len(paths) >= 8
    return random_lora(oracle.unet, "unet", paths, rank, seed)


def _text_lora(oracle, seed=5, rank=2):
    return random_lora(oracle.text_encoder, "text_encoder", layer_paths(oracle.text_encoder, TEXT_TARGETS), rank, seed)


def _assert_same(oracle, ours, **overrides):
    theirs, mine = _frames(oracle, **overrides), _frames(ours, **overrides)
    assert max_abs_diff(mine, theirs) <= TOLERANCE
    return mine


def test_unet_and_text_encoder_lora_file_with_peft_metadata(pipes, tmp_path):
    """A diffusers-saved file with PEFT metadata (lora_alpha 4 on rank 2: scale 2), UNet + text encoder."""
    from diffusers import AnimateDiffPipeline as DiffusersPipeline
    from peft import LoraConfig

    oracle, ours = pipes
    plain = _frames(ours)
    unet, text = _unet_lora(oracle), _text_lora(oracle)

    def strip(state, prefix):
        return {key.removeprefix(prefix): value for key, value in state.items()}

    def metadata(state):  # PEFT's config as diffusers stores it in the file
        targets = sorted({key.split(".lora_")[0].split(".", 1)[1] for key in state})
        return LoraConfig(r=2, lora_alpha=4, target_modules=targets).to_dict()

    DiffusersPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=strip(unet, "unet."), text_encoder_lora_layers=strip(text, "text_encoder."),
        unet_lora_adapter_metadata=metadata(unet), text_encoder_lora_adapter_metadata=metadata(text),
    )
    oracle.load_lora_weights(tmp_path, adapter_name="style")
    ours.load_lora_weights(tmp_path, adapter_name="style")
    assert ours.get_list_adapters() == {"unet": ["style"], "text_encoder": ["style"]}
    assert ours.get_active_adapters() == ["style"]
    frames = _assert_same(oracle, ours)
    assert max_abs_diff(frames, plain) > 1e-2  # the LoRA changed the video
    # cross_attention_kwargs={"scale": s} scales the UNet and the text encoder for one call
    _assert_same(oracle, ours, cross_attention_kwargs={"scale": 0.5})
    assert max_abs_diff(_frames(ours), frames) == 0  # the call-time scale did not stick


def test_two_adapters_with_weights_then_delete(pipes):
    oracle, ours = pipes
    first, second = _unet_lora(oracle, seed=1), {**_unet_lora(oracle, seed=2, rank=3), **_text_lora(oracle, seed=4)}
    for pipe in pipes:
        pipe.load_lora_weights(first, adapter_name="a")
        pipe.load_lora_weights(second, adapter_name="b")
    assert ours.get_active_adapters() == ["b"]  # loading activates the new adapter only, like diffusers
    _assert_same(oracle, ours)
    for pipe in pipes:
        pipe.set_adapters(["a", "b"], adapter_weights=[1.0, 0.7])
    assert ours.get_active_adapters() == ["a", "b"]
    _assert_same(oracle, ours)
    for pipe in pipes:
        pipe.delete_adapters("b")
    assert ours.get_list_adapters() == {"unet": ["a"]}
    _assert_same(oracle, ours)


def test_fuse_matches_and_unfuse_restores_bit_exactly(pipes):
    oracle, ours = pipes
    before = {name: value.clone() for name, value in ours.unet.state_dict().items()}
    text_before = {name: value.clone() for name, value in ours.text_encoder.state_dict().items()}
    lora = {**_unet_lora(oracle), **_text_lora(oracle)}
    for pipe in pipes:
        pipe.load_lora_weights(lora, adapter_name="x")
    unfused = _assert_same(oracle, ours)
    for pipe in pipes:
        pipe.fuse_lora(lora_scale=0.8)
    assert any(not torch.equal(before[n], v) for n, v in ours.unet.state_dict().items())
    _assert_same(oracle, ours)
    for pipe in pipes:
        pipe.unfuse_lora()
    assert all(torch.equal(before[n], v) for n, v in ours.unet.state_dict().items())
    assert all(torch.equal(text_before[n], v) for n, v in ours.text_encoder.state_dict().items())
    assert max_abs_diff(_frames(ours), unfused) == 0


def test_fuse_then_unload_keeps_the_fused_weights_like_diffusers(pipes):
    oracle, ours = pipes
    lora = _unet_lora(oracle, seed=7)
    for pipe in pipes:
        pipe.load_lora_weights(lora)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    assert ours.get_list_adapters() == {}
    _assert_same(oracle, ours)


def test_motion_lora_as_the_hub_spells_it(pipes, tmp_path):
    oracle, ours = pipes
    plain = _frames(ours)
    factors = _unet_lora(oracle, seed=9, motion=True)
    lora = to_motion_lora_repo(factors)
    assert all("motion_modules" in key and ".processor.to_" in key for key in lora)
    save_file(lora, tmp_path / "diffusion_pytorch_model.safetensors")
    for pipe in pipes:  # the folder's only .safetensors file is taken, as diffusers guesses it
        pipe.load_lora_weights(tmp_path, adapter_name="zoom-in")
    frames = _assert_same(oracle, ours)
    assert max_abs_diff(frames, plain) > 1e-2
    # the same factors in the older ".lora.down" spelling, and as an original AnimateDiff .ckpt
    torch.save(to_original_motion_lora(factors), tmp_path / "v2_lora_ZoomIn.ckpt")
    for index, variant in enumerate((to_old_diffusers(factors), tmp_path / "v2_lora_ZoomIn.ckpt")):
        ours.load_lora_weights(variant, adapter_name=f"variant-{index}")
        assert max_abs_diff(_frames(ours), frames) == 0


def test_kohya_unet_file_with_alphas_matches_diffusers(pipes, tmp_path):
    oracle, ours = pipes
    save_file(to_kohya(_unet_lora(oracle, seed=11), alpha=1.0), tmp_path / "style.safetensors")  # scale 0.5
    for pipe in pipes:
        pipe.load_lora_weights(tmp_path / "style.safetensors", adapter_name="kohya")
    _assert_same(oracle, ours)


def test_kohya_text_encoder_lora_equals_the_diffusers_format(pipes):
    """diffusers 0.42.1 (transformers 5) drops kohya text-encoder keys with only a load report, so
    the kohya file is checked against the same factors in the diffusers format (checked above)."""
    oracle, ours = pipes
    lora = {**_unet_lora(oracle, seed=13), **_text_lora(oracle, seed=12)}
    ours.load_lora_weights(to_kohya(lora, alpha=1.0), adapter_name="kohya")  # alpha 1 on rank 2: scale 0.5
    assert ours.get_list_adapters() == {"unet": ["kohya"], "text_encoder": ["kohya"]}
    kohya_frames = _frames(ours)
    ours.load_lora_weights(lora, adapter_name="diffusers")
    ours.set_adapters("diffusers", 0.5)
    assert max_abs_diff(_frames(ours), kohya_frames) <= TOLERANCE
    ours.set_adapters("diffusers", 1.0)
    assert max_abs_diff(_frames(ours), kohya_frames) > 1e-2


def test_unload_restores_the_plain_pipeline_bit_exactly(pipes):
    oracle, ours = pipes
    plain = _frames(ours)
    before = {name: value.clone() for name, value in ours.unet.state_dict().items()}
    ours.load_lora_weights({**_unet_lora(oracle), **_text_lora(oracle)}, adapter_name="x")
    assert set(ours.unet.state_dict()) == set(before)  # adapters never enter the checkpoint schema
    assert max_abs_diff(_frames(ours), plain) > 1e-2
    ours.disable_lora()
    assert max_abs_diff(_frames(ours), plain) == 0
    ours.enable_lora()
    ours.unload_lora_weights()
    assert ours.get_list_adapters() == {}
    assert all(type(module) in (torch.nn.Linear, torch.nn.Conv2d) for module in ours.unet.modules()
               if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)))
    assert all(torch.equal(before[n], v) for n, v in ours.unet.state_dict().items())
    assert max_abs_diff(_frames(ours), plain) == 0


def test_a_key_that_matches_no_layer_is_an_error_naming_it(pipes):
    oracle, ours = pipes
    bad = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn9.to_q.lora_A.weight"
    lora = {**_unet_lora(oracle), bad: torch.zeros(2, 32)}
    with pytest.raises(ValueError, match=r"attn9\.to_q\.lora_A"):
        ours.load_lora_weights(lora)
    kohya = {**to_kohya(_unet_lora(oracle)), "lora_unet_down_blocks_0_nowhere.lora_down.weight": torch.zeros(2, 32)}
    with pytest.raises(ValueError, match="lora_unet_down_blocks_0_nowhere"):
        ours.load_lora_weights(kohya)
    with pytest.raises(ValueError, match="vae.decoder"):
        ours.load_lora_weights({"vae.decoder.conv_in.lora_A.weight": torch.zeros(2, 4, 3, 3)})
    assert ours.get_list_adapters() == {}  # nothing half-loaded


def test_bad_arguments(pipes):
    oracle, ours = pipes
    ours.load_lora_weights(_unet_lora(oracle), adapter_name="a")
    with pytest.raises(ValueError, match="already loaded"):
        ours.load_lora_weights(_unet_lora(oracle), adapter_name="a")
    with pytest.raises(ValueError, match=r"\['nope'\]"):
        ours.set_adapters(["a", "nope"])
    with pytest.raises(ValueError, match="one per name"):
        ours.set_adapters(["a"], [0.5, 0.5])
    with pytest.raises(ValueError, match="only 'scale'"):
        ours(**CALL, cross_attention_kwargs={"scale": 1.0, "ip": 2})
    ours.fuse_lora()
    with pytest.raises(ValueError, match="already fused"):
        ours.fuse_lora()


def test_lora_refused_while_offloaded_and_fused_adapter_not_deletable(pipes):
    oracle, ours = pipes
    ours.load_lora_weights(_unet_lora(oracle), adapter_name="a")
    ours.fuse_lora()
    with pytest.raises(ValueError, match="unfuse_lora"):
        ours.delete_adapters("a")
    ours.unfuse_lora()
    ours._enable_offload("model", torch.device("cpu"))
    try:
        with pytest.raises(ValueError, match="disable_offload"):
            ours.load_lora_weights(_unet_lora(oracle, seed=1), adapter_name="b")
    finally:
        ours.disable_offload()


# ---------------------------------------------------------------- the formats and layers alone
class _Tiny(torch.nn.Module):
    """Two layers whose kohya spellings collide (``a.b_c`` and ``a_b.c`` are both ``a_b_c``)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.ModuleDict({"b_c": torch.nn.Linear(4, 4)})
        self.a_b = torch.nn.ModuleDict({"c": torch.nn.Linear(4, 4)})
        self.conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"lora_unet_a_b_c.lora_down.weight": torch.zeros(2, 4)}, "ambiguous"),
        ({"lora_unet_conv.hada_w1_a": torch.zeros(2, 4)}, "unknown kohya suffix"),
        ({"unet.conv.lora_A.weight": torch.zeros(2, 3, 3, 3), "unet.conv.dora_scale": torch.zeros(5)}, "DoRA"),
        ({"unet.conv.lora_A.weight": torch.zeros(2, 3, 3, 3)}, r"no up \(lora_B\)"),
        ({"unet.conv.lora_A.weight": torch.zeros(2, 3, 1, 1), "unet.conv.lora_B.weight": torch.zeros(5, 2, 1, 1)},
         "do not fit"),
        ({"lora_te2_text_model_x.lora_down.weight": torch.zeros(2, 4)}, "lora_te2_text_model_x"),
    ],
)
def test_format_errors_name_the_problem(state, message):
    from vidiff.models.lora_formats import parse_lora_state_dict

    with pytest.raises(ValueError, match=message):
        parse_lora_state_dict(state, {"unet": _Tiny()})


def test_conv_lora_runs_the_merged_convolution_and_unfuses_exactly():
    from vidiff.models import lora_adapters
    from vidiff.models.lora_formats import parse_lora_state_dict

    model, x = _Tiny(), torch.randn(2, 3, 9, 9)
    original = model.conv.weight.detach().clone()
    state = {"unet.conv.lora_A.weight": torch.randn(2, 3, 3, 3), "unet.conv.lora_B.weight": torch.randn(5, 2, 1, 1)}
    parsed = parse_lora_state_dict(state, {"unet": model}, {"unet.r": 2, "unet.lora_alpha": 1})  # scale 0.5
    lora_adapters.attach_adapter(model, "a", parsed["unet"])
    lora_adapters.set_active(model, {"a": 1.0})
    up, down = state["unet.conv.lora_B.weight"][:, :, 0, 0], state["unet.conv.lora_A.weight"]
    delta = 0.5 * torch.einsum("or,rikl->oikl", up, down)  # [5, 3, 3, 3]
    expected = torch.nn.functional.conv2d(x, original + delta, model.conv.bias, stride=2, padding=1)
    torch.testing.assert_close(model.conv(x), expected, atol=1e-5, rtol=1e-5)
    lora_adapters.fuse(model, 1.0, None)
    torch.testing.assert_close(model.conv.weight, original + delta, atol=1e-6, rtol=1e-6)
    lora_adapters.unfuse(model)
    assert torch.equal(model.conv.weight, original)
    lora_adapters.remove_all(model)
    assert type(model.conv) is torch.nn.Conv2d and torch.equal(model.conv.weight, original)


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_loaded_loras_run_under_cpu_offload(pipes, mode):
    """Adapter factors are the LoRA layer's own buffers, so offload moves them with the weight (parked
    on "meta": a factor left behind would fail loudly)."""
    oracle, ours = pipes
    ours.load_lora_weights({**_unet_lora(oracle), **_text_lora(oracle)}, adapter_name="a")
    expected = _frames(ours)
    ours._enable_offload(mode, torch.device("cpu"), park_device="meta")
    try:
        assert max_abs_diff(_frames(ours), expected) == 0
    finally:
        ours.disable_offload()
