"""The hyper-parameters of Stable Diffusion 1.x/2.x ControlNets (``ControlNetModel``), diffusers' keys.

A ControlNet is the encoder half of the UNet it steers (``conv_in``, time embedding, down stages,
mid stage) plus a small image encoder for the control image and zero-initialised 1×1 convolutions.
Its config therefore shares most keys with the UNet's; :meth:`ControlNetConfig.unet_config` states
that shared part as a :class:`~vidiff.models.unet_2d.UNet2DConditionConfig`, so the UNet's checks and
stage layout apply unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ..config import COUNT, WIDTH, Config, ranges
from .unet_2d import UNet2DConditionConfig
from .unet_2d_blocks import PerBlock, StageLayout, UNetLayout

# Down block type → the up block type a UNet with the same encoder mirrors it with.
_MIRRORED_UP_BLOCK = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}
# Mid block types a ControlNet may have: with cross-attention (SD's), or a single resnet.
_MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")
_CHANNEL_ORDERS = ("rgb", "bgr")

# Keys the ControlNet shares with the UNet config, with the same meaning.
_SHARED_WITH_UNET = (
    "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
    "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
    "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block", "encoder_hid_dim",
    "encoder_hid_dim_type", "use_linear_projection", "class_embed_type", "addition_embed_type",
    "addition_time_embed_dim", "num_class_embeds", "upcast_attention", "resnet_time_scale_shift",
    "projection_class_embeddings_input_dim", "addition_embed_type_num_heads",
)


@dataclasses.dataclass(frozen=True)
class ControlNetConfig(Config):
    """Hyper-parameters of :class:`~vidiff.models.controlnet.ControlNetModel`: diffusers' keys and defaults.

    The UNet-like keys mean what they mean for the SD UNet (``attention_head_dim`` is the head count;
    ``num_attention_heads``, when given, overrides it as diffusers does). ControlNet's own keys:
    ``conditioning_channels`` (channels of the control image, 3 for RGB),
    ``conditioning_embedding_out_channels`` (widths of the control-image encoder; it halves the
    image's sides once per entry after the first, so ``(16, 32, 96, 256)`` maps 512×512 pixels onto
    64×64 latents), ``controlnet_conditioning_channel_order`` (``"bgr"``: the control image's
    channels are reversed before encoding) and ``global_pool_conditions`` (residuals averaged over
    height and width, and ``guess_mode``'s ramp not applied).
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "in_channels", "conditioning_channels", "block_out_channels", "norm_num_groups",
                 "cross_attention_dim", "attention_head_dim", "num_attention_heads", "encoder_hid_dim",
                 "addition_time_embed_dim", "projection_class_embeddings_input_dim",
                 "conditioning_embedding_out_channels", "addition_embed_type_num_heads"),
        **ranges(COUNT, "layers_per_block", "transformer_layers_per_block", "num_class_embeds"),
    }

    in_channels: int = 4
    conditioning_channels: int = 3
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    attention_head_dim: PerBlock = 8
    num_attention_heads: PerBlock | None = None
    use_linear_projection: bool = False
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    num_class_embeds: int | None = None
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    projection_class_embeddings_input_dim: int | None = None
    controlnet_conditioning_channel_order: str = "rgb"
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    global_pool_conditions: bool = False
    addition_embed_type_num_heads: int = 64

    def __post_init__(self) -> None:
        if self.mid_block_type not in _MID_BLOCK_TYPES:
            raise ValueError(f"mid_block_type={self.mid_block_type!r} is not valid; valid: {list(_MID_BLOCK_TYPES)}")
        if self.controlnet_conditioning_channel_order not in _CHANNEL_ORDERS:
            raise ValueError(
                f"controlnet_conditioning_channel_order={self.controlnet_conditioning_channel_order!r} is not "
                f"valid; valid: {list(_CHANNEL_ORDERS)}"
            )
        if not self.conditioning_embedding_out_channels:
            raise ValueError("conditioning_embedding_out_channels must list at least one width, got ()")
        unknown = [t for t in self.down_block_types if t not in _MIRRORED_UP_BLOCK]
        if unknown:
            raise ValueError(f"down_block_types has unsupported entries {unknown}; valid: {sorted(_MIRRORED_UP_BLOCK)}")
        try:
            self.unet_config()
        except ValueError as error:  # the UNet's checks, restated as this config's
            raise ValueError(f"ControlNetModel config: {error}".replace("UNet2DConditionConfig", "ControlNetConfig"))

    def unet_config(self) -> UNet2DConditionConfig:
        """The config of a UNet whose encoder half is this ControlNet's (up stages mirror the down ones)."""
        shared: dict[str, Any] = {name: getattr(self, name) for name in _SHARED_WITH_UNET}
        return UNet2DConditionConfig(
            **shared,
            attention_head_dim=self.num_attention_heads or self.attention_head_dim,
            up_block_types=tuple(_MIRRORED_UP_BLOCK[t] for t in reversed(self.down_block_types)),
            mid_block_type="UNetMidBlock2DCrossAttn" if self.mid_block_type == "UNetMidBlock2DCrossAttn" else None,
        )

    def layout(self) -> UNetLayout:
        """The UNet's layout without up stages; ``UNetMidBlock2D`` is a mid stage of one resnet, no attention."""
        layout = self.unet_config().layout()
        mid = layout.mid if self.mid_block_type == "UNetMidBlock2DCrossAttn" else StageLayout(0)
        return dataclasses.replace(layout, mid=mid, up=())

    @property
    def conditioning_downscale(self) -> int:
        """How many control-image pixels make one latent pixel along each side (8 for SD's ControlNets)."""
        return 2 ** (len(self.conditioning_embedding_out_channels) - 1)
