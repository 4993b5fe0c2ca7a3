"""The Stable Diffusion 1.x/2.x denoiser ``UNet2DConditionModel``, and the UNet skeleton it shares with AnimateDiff.

:class:`ConditionalUNet` is the skeleton: input conv, timestep embedding, down stages, mid stage, up
stages fed by skip connections, output conv. A config resolves into a
:class:`~vidiff.models.unet_2d_blocks.UNetLayout` (what each stage holds); :class:`UNet2DConditionModel`
runs the skeleton on images, :class:`~vidiff.models.unet_motion.UNetMotionModel` on the frames of
videos, with motion modules in every stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from ..layers.embeddings import TimestepEmbedding, batch_timesteps, sinusoidal_embedding
from ..layers.unet_stage import DownStage, MidStage, ResnetPart, UpStage, run_stages
from .base import PretrainedModel
from .unet_2d_blocks import (
    CrossAttentionOptions,
    PerLayer,
    ResnetOptions,
    PerBlock,
    StageLayout,
    UNetLayout,
    check_config,
    per_block,
)


# Block type names of the config → whether the stage has image transformers.
_DOWN_BLOCK_ATTENTION = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP_BLOCK_ATTENTION = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
_PER_BLOCK_OPTIONS = (
    "attention_head_dim",
    "cross_attention_dim",
    "layers_per_block",
    "only_cross_attention",
    "transformer_layers_per_block",
    "reverse_transformer_layers_per_block",
)

# diffusers options vidiff does not implement → the values that mean "not used". Any other value is
# an error naming the key, never silently ignored.
_UNSUPPORTED_UNLESS = {
    "num_attention_heads": (None,),  # diffusers rejects it too: attention_head_dim is the head count
    "dual_cross_attention": (False,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "addition_embed_type": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "attention_type": ("default",),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", None),
    "act_fn": ("silu", "swish"),
}


@dataclasses.dataclass(frozen=True)
class UNet2DConditionConfig(Config):
    """Hyper-parameters of :class:`UNet2DConditionModel`: diffusers' keys and defaults.

    A key left out of a ``config.json`` means what it means to diffusers, so the defaults are
    diffusers' (SD 1.5's file sets ``cross_attention_dim=768`` and ``sample_size=64``). Legacy naming:
    ``attention_head_dim`` is the number of heads per stage (SD 1.5: 8), and ``num_attention_heads``
    must stay None. Options that take one value or one per stage: ``attention_head_dim``,
    ``cross_attention_dim``, ``layers_per_block``, ``only_cross_attention`` and
    ``transformer_layers_per_block`` (whose entries may be per-layer tuples, with
    ``reverse_transformer_layers_per_block`` then giving the up stages'). Options of diffusers'
    other block types (``dropout``, ``resnet_skip_time_act``, ``resnet_out_scale_factor``,
    ``cross_attention_norm``, ``mid_block_only_cross_attention``, ...) do not affect these blocks.
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "in_channels", "out_channels", "block_out_channels", "norm_num_groups",
                 "cross_attention_dim", "attention_head_dim", "num_attention_heads", "encoder_hid_dim",
                 "addition_time_embed_dim", "time_embedding_dim", "time_cond_proj_dim",
                 "projection_class_embeddings_input_dim", "addition_embed_type_num_heads"),
        **ranges(COUNT, "layers_per_block", "transformer_layers_per_block",
                 "reverse_transformer_layers_per_block", "conv_in_kernel", "conv_out_kernel"),
        **ranges(SIZE, "sample_size", "num_class_embeds"),
    }

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: PerBlock = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: PerBlock = 1280
    transformer_layers_per_block: int | tuple[PerBlock, ...] = 1
    reverse_transformer_layers_per_block: tuple[PerBlock, ...] | None = None
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    attention_head_dim: PerBlock = 8
    num_attention_heads: PerBlock | None = None
    dual_cross_attention: bool = False
    use_linear_projection: bool = False
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    num_class_embeds: int | None = None
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    projection_class_embeddings_input_dim: int | None = None
    attention_type: str = "default"
    class_embeddings_concat: bool = False
    mid_block_only_cross_attention: bool | None = None
    cross_attention_norm: str | None = None
    addition_embed_type_num_heads: int = 64

    def __post_init__(self) -> None:
        if self.norm_num_groups is None:
            raise ValueError("norm_num_groups=None (no output GroupNorm) is not supported; give the group count")
        check_config(self, _UNSUPPORTED_UNLESS, (_DOWN_BLOCK_ATTENTION, _UP_BLOCK_ATTENTION), _PER_BLOCK_OPTIONS)
        for name in ("conv_in_kernel", "conv_out_kernel"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd (same-size padding), got {getattr(self, name)}")
        depth = self.transformer_layers_per_block
        nested = isinstance(depth, tuple) and any(isinstance(v, tuple) for v in depth)
        if nested and self.reverse_transformer_layers_per_block is None:
            raise ValueError(
                "per-layer transformer_layers_per_block entries need reverse_transformer_layers_per_block "
                "for the up stages"
            )

    def layout(self) -> UNetLayout:
        """The stages this config describes (heads from the legacy ``attention_head_dim``)."""
        layers, depth, only_cross = (
            per_block(self, n) for n in ("layers_per_block", "transformer_layers_per_block", "only_cross_attention")
        )
        up_depth = self.reverse_transformer_layers_per_block or depth[::-1]
        last = len(layers) - 1
        down = tuple(
            StageLayout(layers[i], self._attention(i, depth[i], only_cross[i]) if _DOWN_BLOCK_ATTENTION[t] else None)
            for i, t in enumerate(self.down_block_types)
        )
        up = tuple(
            StageLayout(
                layers[last - j] + 1,
                self._attention(last - j, up_depth[j], only_cross[last - j]) if _UP_BLOCK_ATTENTION[t] else None,
            )
            for j, t in enumerate(self.up_block_types)
        )
        # The mid stage never uses only_cross_attention; a per-layer depth entry gives its first value.
        mid_depth = depth[-1] if isinstance(depth[-1], int) else depth[-1][0]
        mid = StageLayout(1, self._attention(last, mid_depth, False)) if self.mid_block_type is not None else None
        return UNetLayout(
            self.in_channels,
            self.out_channels,
            self.block_out_channels,
            down,
            mid,
            up,
            norm_num_groups=self.norm_num_groups,
            norm_eps=self.norm_eps,
            downsample_padding=self.downsample_padding,
            mid_block_scale_factor=self.mid_block_scale_factor,
            time_embed_dim=self.time_embedding_dim,
            time_cond_proj_dim=self.time_cond_proj_dim,
            flip_sin_to_cos=self.flip_sin_to_cos,
            freq_shift=self.freq_shift,
            conv_in_kernel=self.conv_in_kernel,
            conv_out_kernel=self.conv_out_kernel,
        )

    def _attention(self, stage: int, transformer_layers: PerLayer, only_cross: bool) -> CrossAttentionOptions:
        return CrossAttentionOptions(
            num_attention_heads=per_block(self, "attention_head_dim")[stage],
            cross_attention_dim=per_block(self, "cross_attention_dim")[stage],
            transformer_layers=transformer_layers,
            use_linear_projection=self.use_linear_projection,
            only_cross_attention=only_cross,
            upcast_attention=self.upcast_attention,
        )


def build_down_stages(layout: UNetLayout, resnet: ResnetOptions) -> nn.ModuleList:
    """The down stages of ``layout`` (every one but the last halves H and W): the UNet's encoder half,
    shared with ControlNets, which copy it."""
    channels = layout.block_out_channels
    return nn.ModuleList(
        DownStage(
            channels[max(i - 1, 0)],
            channels[i],
            stage.num_layers,
            ResnetPart(resnet.build),
            stage.extras(layout.norm_num_groups),
            add_downsample=i < len(channels) - 1,
            downsample_padding=layout.downsample_padding,
        )
        for i, stage in enumerate(layout.down)
    )


def build_mid_stage(layout: UNetLayout, resnet: ResnetOptions) -> MidStage | None:
    """The mid stage of ``layout`` at the deepest width (None when the layout has none)."""
    if layout.mid is None:
        return None
    mid_resnet = dataclasses.replace(resnet, output_scale_factor=layout.mid_block_scale_factor)
    return MidStage(
        layout.block_out_channels[-1],
        ResnetPart(mid_resnet.build),
        layout.mid.extras(layout.norm_num_groups),
        num_layers=layout.mid.num_layers,
    )


class ConditionalUNet(PretrainedModel):
    """The SD UNet skeleton on image batches ``[N, C, H, W]``; subclasses supply the config and the public forward.

    ``N`` is ``B·F`` for video UNets, whose stages' motion modules regroup the batch into videos.
    """

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        layout: UNetLayout = config.layout()
        channels = layout.block_out_channels
        time_embed_dim = layout.time_embed_dim or 4 * channels[0]
        self._time_features = dict(flip_sin_to_cos=layout.flip_sin_to_cos, downscale_freq_shift=layout.freq_shift)
        self.conv_in = nn.Conv2d(
            layout.in_channels, channels[0], layout.conv_in_kernel, padding=layout.conv_in_kernel // 2
        )
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim, cond_proj_dim=layout.time_cond_proj_dim)
        resnet = ResnetOptions(time_embed_dim, layout.norm_num_groups, layout.norm_eps)
        self.down_blocks = build_down_stages(layout, resnet)
        self.mid_block = build_mid_stage(layout, resnet)
        self.up_blocks = self._build_up_blocks(layout, resnet)
        self.conv_norm_out = nn.GroupNorm(layout.norm_num_groups, channels[0], eps=layout.norm_eps)
        self.conv_out = nn.Conv2d(
            channels[0], layout.out_channels, layout.conv_out_kernel, padding=layout.conv_out_kernel // 2
        )

    @staticmethod
    def _build_up_blocks(layout: UNetLayout, resnet: ResnetOptions) -> nn.ModuleList:
        channels = layout.block_out_channels[::-1]  # from the lowest resolution up
        last = len(channels) - 1
        return nn.ModuleList(
            UpStage(
                channels[min(j + 1, last)],  # the deepest skip this stage takes
                channels[max(j - 1, 0)],  # what arrives from the stage below
                channels[j],
                stage.num_layers,
                ResnetPart(resnet.build),
                stage.extras(layout.norm_num_groups),
                add_upsample=j < last,
            )
            for j, stage in enumerate(layout.up)
        )

    def _run_stages(
        self,
        images: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor,
        num_frames: int = 1,
        down_residuals: Sequence[torch.Tensor] | None = None,
        mid_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``images`` ``[N, C_in, H, W]``, ``emb`` ``[N, D]``, context ``[N, L, D_ctx]`` → ``[N, C_out, H, W]``.

        The residuals are :func:`~vidiff.layers.unet_stage.run_stages`' (ControlNet's seam).
        """
        hidden = self.conv_in(images)  # [N, C0, H, W]
        hidden = run_stages(
            self.down_blocks, self.mid_block, self.up_blocks, hidden, emb, context, num_frames,
            down_residuals=down_residuals, mid_residual=mid_residual,
        )
        return self.conv_out(F.silu(self.conv_norm_out(hidden)))

    def _time_embedding(
        self, timestep: torch.Tensor | float | int, batch: int, timestep_cond: torch.Tensor | None
    ) -> torch.Tensor:
        """``[batch, D]`` embeddings of a number, a 0-dim tensor or ``[batch]`` timesteps (+ ``timestep_cond``)."""
        device, dtype = self.conv_in.weight.device, self.conv_in.weight.dtype
        timesteps = batch_timesteps(timestep, batch, device)
        features = sinusoidal_embedding(timesteps, self.config.block_out_channels[0], **self._time_features)
        if timestep_cond is not None:
            cond_dim = self.config.time_cond_proj_dim
            if cond_dim is None or tuple(timestep_cond.shape) != (batch, cond_dim):
                raise ValueError(
                    f"timestep_cond must be [{batch}, time_cond_proj_dim] with time_cond_proj_dim={cond_dim} "
                    f"(None: this UNet takes no timestep_cond), got {tuple(timestep_cond.shape)}"
                )
            timestep_cond = timestep_cond.to(device=device, dtype=dtype)
        return self.time_embedding(features.to(dtype), timestep_cond)

    def _check_context(self, encoder_hidden_states: torch.Tensor, batches: tuple[int, ...]) -> None:
        widths = sorted(set(per_block(self.config, "cross_attention_dim")))
        shape = tuple(getattr(encoder_hidden_states, "shape", ()))
        if (
            not isinstance(encoder_hidden_states, torch.Tensor)
            or len(shape) != 3
            or shape[0] not in batches
            or (len(widths) == 1 and shape[-1] != widths[0])
        ):
            raise ValueError(
                f"encoder_hidden_states must be [{' or '.join(map(str, batches))}, L, "
                f"{'/'.join(map(str, widths))}], got {shape if shape else type(encoder_hidden_states).__name__}"
            )


class UNet2DConditionModel(ConditionalUNet):
    """Stable Diffusion's text-conditioned image UNet (SD 1.x/2.x checkpoints' ``unet/`` folder)."""

    config_class = UNet2DConditionConfig
    config: UNet2DConditionConfig

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the network output (ε or v, as trained) for noisy latents.

        Args:
            sample: ``[B, in_channels, H, W]`` noisy latents.
            timestep: the discrete timestep as a number, a 0-dim tensor or one per sample ``[B]``.
            encoder_hidden_states: ``[B, L, cross_attention_dim]`` text-encoder states.
            timestep_cond: ``[B, time_cond_proj_dim]`` extra time condition (LCM-distilled UNets only).
            down_block_additional_residuals: a ControlNet's residuals, one per skip (``conv_in``'s
                output, then every down stage's), each shaped like that skip; added to the skips.
            mid_block_additional_residual: a ControlNet's residual added to the mid block's output;
                given together with ``down_block_additional_residuals``, as diffusers requires.

        Returns:
            ``[B, out_channels, H, W]`` in the parameters' dtype.
        """
        config = self.config
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4 or sample.shape[1] != config.in_channels:
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"sample must be [B, {config.in_channels}, H, W], got {shape}")
        batch = sample.shape[0]
        self._check_context(encoder_hidden_states, (batch,))
        dtype = self.conv_in.weight.dtype
        emb = self._time_embedding(timestep, batch, timestep_cond)  # [B, D]
        sample = sample.to(dtype)
        if config.center_input_sample:
            sample = 2 * sample - 1.0
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            # diffusers reads down residuals without a mid one as T2I-Adapter's, which vidiff lacks
            raise ValueError(
                "down_block_additional_residuals and mid_block_additional_residual are a ControlNet's outputs: "
                "give both or neither (T2I-Adapter residuals are not supported)"
            )
        return self._run_stages(
            sample,
            emb,
            encoder_hidden_states.to(dtype),
            down_residuals=down_block_additional_residuals,
            mid_residual=mid_block_additional_residual,
        )
