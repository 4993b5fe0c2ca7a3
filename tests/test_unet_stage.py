"""The one UNet stage (``layers/unet_stage.py``): skip bookkeeping, resampling, the residual seam.

Stand-in parts (1×1 convs, additive and recording extras) check the control flow exactly; tiny
real UNets of every family check the channel bookkeeping and that the seam is inert when fed zeros.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import max_abs_diff, perturbed_pair
from vidiff.layers.unet_stage import (
    DownStage,
    ExtraPart,
    MidStage,
    ResnetPart,
    StageInputs,
    UpStage,
    call_with_frames,
    run_stages,
)
from vidiff.models import unet_2d, unet_i2vgen_xl, unet_svd
from vidiff.models.unet_2d import UNet2DConditionModel
from vidiff.models.unet_i2vgen_xl import I2VGenXLUNet
from vidiff.models.unet_motion import UNetMotionModel
from vidiff.models.unet_svd import UNetSpatioTemporalConditionModel


# ----------------------------------------------------------------------------- stand-in parts
def _conv_resnet(in_channels: int, out_channels: int) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


def _plain_call(module: nn.Module, hidden: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
    return module(hidden)


CONV_RESNET = ResnetPart(_conv_resnet, _plain_call)


class Shift(nn.Module):
    """Adds a learnable per-channel offset times the frame count, and logs each call."""

    def __init__(self, channels: int, log: list, tag: str) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.randn(channels))
        self.log, self.tag = log, tag

    def forward(self, hidden: torch.Tensor, num_frames: int) -> torch.Tensor:
        self.log.append(self.tag)
        return hidden + num_frames * self.offset[:, None, None]


def shifts(name: str, log: list, per_resnet: bool = False) -> ExtraPart:
    def build(channels: int, count: int) -> list[Shift]:
        return [Shift(channels, log, f"{name}{i}") for i in range(count)]

    return ExtraPart(name, build, call_with_frames, per_resnet=per_resnet)


def _inputs(num_frames: int = 2) -> StageInputs:
    return StageInputs(temb=torch.zeros(0), context=None, num_frames=num_frames)


def _stand_in_unet(seed: int = 0) -> tuple[nn.ModuleList, MidStage, nn.ModuleList]:
    """Two down stages (8 → 8, 8 → 16), a mid stage and two up stages, as a 2-level UNet wires them."""
    torch.manual_seed(seed)
    log: list = []
    down = nn.ModuleList(
        [
            DownStage(8, 8, 2, CONV_RESNET, [shifts("a", log)], add_downsample=True),
            DownStage(8, 16, 2, CONV_RESNET, [shifts("a", log)], add_downsample=False),
        ]
    )
    mid = MidStage(16, CONV_RESNET, [shifts("a", log)])
    up = nn.ModuleList(
        [
            UpStage(8, 16, 16, 3, CONV_RESNET, [shifts("a", log)], add_upsample=True),
            UpStage(8, 16, 8, 3, CONV_RESNET, [shifts("a", log)], add_upsample=False),
        ]
    )
    return down, mid, up


# ----------------------------------------------------------------------------- one stage
def test_down_stage_runs_resnet_then_extras_and_keeps_each_layer_as_a_skip():
    torch.manual_seed(0)
    log: list = []
    stage = DownStage(4, 8, 2, CONV_RESNET, [shifts("a", log), shifts("b", log)], add_downsample=True)
    hidden = torch.randn(6, 4, 10, 10)
    out, skips = stage(hidden, _inputs(num_frames=3))

    expected, layer_outputs = hidden, []
    for index in range(2):
        expected = stage.resnets[index](expected)
        expected = expected + 3 * stage.a[index].offset[:, None, None]
        expected = expected + 3 * stage.b[index].offset[:, None, None]
        layer_outputs.append(expected)
    expected = stage.downsamplers[0](expected)
    assert log == ["a0", "b0", "a1", "b1"]
    assert torch.equal(out, expected) and out.shape == (6, 8, 5, 5)
    assert len(skips) == 3 and all(torch.equal(s, e) for s, e in zip(skips, [*layer_outputs, expected]))
    assert stage.skip_channels == (8, 8, 8) == tuple(s.shape[1] for s in skips)


def test_state_dict_keys_are_the_checkpoint_names():
    stage = DownStage(4, 8, 1, CONV_RESNET, [shifts("attentions", [])], add_downsample=True, downsample_padding=0)
    assert sorted(stage.state_dict()) == [
        "attentions.0.offset",
        "downsamplers.0.conv.bias",
        "downsamplers.0.conv.weight",
        "resnets.0.bias",
        "resnets.0.weight",
    ]
    up = UpStage(4, 8, 8, 2, CONV_RESNET, add_upsample=True)
    assert {key.split(".")[0] for key in up.state_dict()} == {"resnets", "upsamplers"}


def test_a_part_the_stage_lacks_is_a_none_attribute_and_never_called():
    absent = ExtraPart("motion_modules", None, call_with_frames)
    stage = MidStage(8, CONV_RESNET, [absent, shifts("attentions", [])])
    assert stage.motion_modules is None and len(stage.attentions) == 1
    assert all(not key.startswith("motion_modules") for key in stage.state_dict())
    hidden = torch.randn(1, 8, 3, 3)
    with torch.no_grad():
        expected = stage.resnets[1](stage.attentions[0](stage.resnets[0](hidden), 2))
        assert torch.equal(stage(hidden, _inputs(num_frames=2)), expected)


def test_without_resampling_the_stage_keeps_the_size_and_adds_no_skip():
    down = DownStage(4, 8, 2, CONV_RESNET, add_downsample=False)
    out, skips = down(torch.randn(1, 4, 6, 6), _inputs())
    assert out.shape == (1, 8, 6, 6) and len(skips) == 2 and down.skip_channels == (8, 8)
    assert down.downsamplers is None


def test_mid_stage_puts_per_layer_extras_between_resnets_and_per_resnet_extras_after_each():
    torch.manual_seed(0)
    log: list = []

    def logged_call(module: nn.Module, hidden: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
        log.append("resnet")
        return module(hidden)

    extras = [shifts("conv", log, per_resnet=True), shifts("attn", log)]
    stage = MidStage(8, ResnetPart(_conv_resnet, logged_call), extras, num_layers=2)
    assert (len(stage.resnets), len(stage.conv), len(stage.attn)) == (3, 3, 2)
    hidden = torch.randn(2, 8, 4, 4)
    out = stage(hidden, _inputs(num_frames=1))
    assert log == ["resnet", "conv0", "attn0", "resnet", "conv1", "attn1", "resnet", "conv2"]
    expected = stage.conv[0](stage.resnets[0](hidden), 1)
    for index in (1, 2):
        expected = stage.conv[index](stage.resnets[index](stage.attn[index - 1](expected, 1)), 1)
    assert torch.equal(out, expected)


def test_up_stage_channel_arithmetic_and_skip_order():
    # arriving 16 channels; skips: out (8) for the first two resnets, the mirrored stage's input (4) last
    stage = UpStage(4, 16, 8, 3, CONV_RESNET, add_upsample=True)
    assert [r.in_channels for r in stage.resnets] == [16 + 8, 8 + 8, 8 + 4]
    assert stage.skip_channels == (4, 8, 8)  # in the order the down stages produced them
    torch.manual_seed(0)
    skips = [torch.randn(1, c, 5, 5) for c in stage.skip_channels]
    hidden = torch.randn(1, 16, 5, 5)
    out = stage(hidden, skips, _inputs(), upsample_size=(9, 11))
    expected = hidden
    for index, skip in enumerate(reversed(skips)):  # the deepest (last) skip meets the first resnet
        expected = stage.resnets[index](torch.cat([expected, skip], dim=1))
    expected = stage.upsamplers[0](expected, (9, 11))
    assert torch.equal(out, expected) and out.shape == (1, 8, 9, 11)


# ----------------------------------------------------------------------------- the stages together
def _skip_shapes(down_blocks, hidden, inputs) -> tuple[list[torch.Size], torch.Size]:
    shapes = [hidden.shape]
    for block in down_blocks:
        hidden, skips = block(hidden, inputs)
        shapes += [s.shape for s in skips]
    return shapes, hidden.shape  # the mid stage keeps its input's shape


@torch.no_grad()
def test_run_stages_round_trips_sides_that_are_not_powers_of_two():
    down, mid, up = _stand_in_unet()
    hidden = torch.randn(2, 8, 9, 7)
    assert run_stages(down, mid, up, hidden, torch.zeros(0), None, 2).shape == (2, 8, 9, 7)


@torch.no_grad()
def test_residuals_are_added_to_the_skips_and_the_mid_output_as_by_hand():
    down, mid, up = _stand_in_unet()
    inputs = _inputs(num_frames=2)
    hidden = torch.randn(2, 8, 8, 8)
    shapes, mid_shape = _skip_shapes(down, hidden, inputs)
    gen = torch.Generator().manual_seed(1)
    residuals = [torch.randn(shape, generator=gen) for shape in shapes]
    mid_residual = torch.randn(mid_shape, generator=gen)

    got = run_stages(down, mid, up, hidden, inputs.temb, None, 2, down_residuals=residuals, mid_residual=mid_residual)

    skips, h = [hidden], hidden
    for block in down:
        h, block_skips = block(h, inputs)
        skips += block_skips
    skips = [s + r for s, r in zip(skips, residuals)]
    h = mid(h, inputs) + mid_residual
    h = up[0](h, skips[-3:], inputs, tuple(skips[-4].shape[-2:]))
    expected = up[1](h, skips[:3], inputs, None)
    assert torch.equal(got, expected)
    assert not torch.equal(got, run_stages(down, mid, up, hidden, inputs.temb, None, 2))

    only_mid = run_stages(down, mid, up, hidden, inputs.temb, None, 2, mid_residual=mid_residual)
    assert not torch.equal(only_mid, got)  # the down residuals count on their own


def test_wrong_residuals_name_the_argument_and_the_expected_shapes():
    down, mid, up = _stand_in_unet()
    hidden = torch.randn(1, 8, 8, 8)
    shapes, mid_shape = _skip_shapes(down, hidden, _inputs())
    zeros = [torch.zeros(shape) for shape in shapes]
    expected = str([tuple(s) for s in shapes])
    with pytest.raises(ValueError, match=r"down_residuals must have 6 tensors") as error:
        run_stages(down, mid, up, hidden, torch.zeros(0), None, 2, down_residuals=zeros[:-1])
    assert expected in str(error.value)
    wrong = [*zeros[:-1], torch.zeros(1, 16, 8, 8)]
    with pytest.raises(ValueError, match="down_residuals") as error:
        run_stages(down, mid, up, hidden, torch.zeros(0), None, 2, down_residuals=wrong)
    assert expected in str(error.value) and "(1, 16, 8, 8)" in str(error.value)
    with pytest.raises(ValueError, match=r"mid_residual must have shape \(1, 16, 4, 4\)"):
        run_stages(down, mid, up, hidden, torch.zeros(0), None, 2, mid_residual=torch.zeros(1, 16, 8, 8))
    with pytest.raises(ValueError, match="mid_residual.*no mid block"):
        run_stages(down, None, up, hidden, torch.zeros(0), None, 2, mid_residual=torch.zeros(mid_shape))


# ----------------------------------------------------------------------------- real tiny UNets
SD = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=2,
    layers_per_block=1,
)
MOTION = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
    cross_attention_dim=32,
    num_attention_heads=2,
    motion_num_attention_heads=2,
    layers_per_block=1,
)
SVD = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    cross_attention_dim=32,
    num_attention_heads=(2, 4),
    in_channels=8,
    layers_per_block=1,
    addition_time_embed_dim=32,
    projection_class_embeddings_input_dim=96,
)
I2VGEN_XL = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    cross_attention_dim=32,
    attention_head_dim=16,
    layers_per_block=1,
)


def _sd_call():
    gen = torch.Generator().manual_seed(0)
    return UNet2DConditionModel.from_config(SD), unet_2d, dict(
        sample=torch.randn(2, 4, 8, 8, generator=gen), timestep=10, encoder_hidden_states=torch.randn(2, 5, 32, generator=gen)
    )


def _motion_call():
    gen = torch.Generator().manual_seed(0)
    return UNetMotionModel.from_config(MOTION), unet_2d, dict(
        sample=torch.randn(1, 4, 3, 8, 8, generator=gen), timestep=10, encoder_hidden_states=torch.randn(1, 5, 32, generator=gen)
    )


def _svd_call():
    gen = torch.Generator().manual_seed(0)
    return UNetSpatioTemporalConditionModel.from_config(SVD), unet_svd, dict(
        sample=torch.randn(1, 8, 3, 8, 8, generator=gen),
        timestep=0.5,
        encoder_hidden_states=torch.randn(1, 1, 32, generator=gen),
        added_time_ids=torch.tensor([[6.0, 127.0, 0.02]]),
    )


def _i2vgen_xl_call():
    gen = torch.Generator().manual_seed(0)
    return I2VGenXLUNet.from_config(I2VGEN_XL), unet_i2vgen_xl, dict(
        sample=torch.randn(1, 4, 3, 8, 8, generator=gen),
        timestep=10,
        fps=8,
        image_latents=torch.randn(1, 4, 3, 8, 8, generator=gen),
        image_embeddings=torch.randn(1, 32, generator=gen),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=gen),
    )


FAMILIES = {"sd": _sd_call, "motion": _motion_call, "svd": _svd_call, "i2vgen_xl": _i2vgen_xl_call}


@pytest.mark.parametrize("family", FAMILIES)
def test_real_unet_skip_channels_match_between_down_and_up_stages(family):
    model, _, _ = FAMILIES[family]()
    produced = [model.config.block_out_channels[0]]  # conv_in's output is the first skip
    for block in model.down_blocks:
        produced += block.skip_channels
    consumed = []
    for block in reversed(model.up_blocks):  # the shallowest up stage takes the first skips
        consumed += block.skip_channels
    assert produced == consumed


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_real_unet_with_zero_residuals_is_bit_identical(family, monkeypatch):
    model, module, call = FAMILIES[family]()
    model.eval()
    plain = model(**call)
    seen = []

    def with_zero_residuals(down, mid, up, hidden, temb, context, num_frames=1, **given):
        assert all(value is None for value in given.values())  # the forward passed no residuals
        shapes, mid_shape = _skip_shapes(down, hidden, StageInputs(temb, context, num_frames))
        seen.append(len(shapes))
        zeros = [torch.zeros(shape, dtype=hidden.dtype) for shape in shapes]
        return run_stages(
            down, mid, up, hidden, temb, context, num_frames, down_residuals=zeros, mid_residual=torch.zeros(mid_shape)
        )

    monkeypatch.setattr(module, "run_stages", with_zero_residuals)
    assert torch.equal(model(**call), plain)
    assert seen == [4]  # conv_in's output, stage 0's layer and downsample, stage 1's layer: the seam ran


@torch.no_grad()
def test_sd_unet_adds_controlnet_residuals_as_diffusers_does():
    from diffusers import UNet2DConditionModel as OracleUNet

    config = {**SD, "norm_num_groups": 8, "block_out_channels": (16, 32)}
    oracle, ours = perturbed_pair(OracleUNet, UNet2DConditionModel, config, seed=3)
    gen = torch.Generator().manual_seed(4)
    sample, context = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 5, 32, generator=gen)
    shapes, mid_shape = _skip_shapes(ours.down_blocks, ours.conv_in(sample), StageInputs(None, context, 1))
    residuals = tuple(0.5 * torch.randn(shape, generator=gen) for shape in shapes)
    mid_residual = 0.5 * torch.randn(mid_shape, generator=gen)
    controlled = dict(down_block_additional_residuals=residuals, mid_block_additional_residual=mid_residual)

    expected = oracle(sample, 321, context, **controlled).sample
    got = ours(sample, 321, context, **controlled)
    assert max_abs_diff(got, expected) <= 1e-4
    assert max_abs_diff(got, ours(sample, 321, context)) > 1e-2  # the residuals mattered
    with pytest.raises(ValueError, match="give both or neither"):
        ours(sample, 321, context, down_block_additional_residuals=residuals)
