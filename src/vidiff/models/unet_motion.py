"""AnimateDiff's video denoiser ``UNetMotionModel``: an SD 1.5 UNet with a motion module after every layer.

The spatial layers run on each frame as an image; the motion modules (from a
:class:`~vidiff.models.motion_adapter.MotionAdapter`) mix each latent pixel across the frames of its
video. Build one with :meth:`UNetMotionModel.from_unet2d` (an SD UNet plus an adapter, as
``AnimateDiffPipeline`` does) or load a saved one with ``from_pretrained``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar
from collections.abc import Mapping, Sequence

import torch

from .. import loading
from ..config import COUNT, SIZE, WIDTH, Config, ranges
from ..layers.frames import images_to_video, video_to_images
from ..layers.chunking import Chunking
from ..layers.free_noise import FreeNoiseWindows
from ..layers.motion import MotionModule
from ..layers.unet_stage import DownStage, MidStage, UpStage
from . import ip_adapter
from .motion_adapter import MotionAdapter
from .unet_2d import ConditionalUNet, UNet2DConditionModel
from .unet_2d_blocks import (
    CrossAttentionOptions,
    MotionOptions,
    PerBlock,
    PerLayer,
    StageLayout,
    UNetLayout,
    check_config,
    per_block,
)


# Block type names of the config → whether the stage has image transformers.
_DOWN_BLOCK_ATTENTION = {"CrossAttnDownBlockMotion": True, "DownBlockMotion": False}
_UP_BLOCK_ATTENTION = {"CrossAttnUpBlockMotion": True, "UpBlockMotion": False}
_PER_BLOCK_OPTIONS = (
    "num_attention_heads",
    "cross_attention_dim",
    "layers_per_block",
    "motion_num_attention_heads",
    "transformer_layers_per_block",
    "reverse_transformer_layers_per_block",
    "temporal_transformer_layers_per_block",
    "reverse_temporal_transformer_layers_per_block",
)

# diffusers options vidiff's motion UNet does not implement → the values that mean "not used".
_UNSUPPORTED_UNLESS = {
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "addition_embed_type": (None,),
    "act_fn": ("silu", "swish"),
}

# Options of an SD UNet config that the motion UNet has no key for → the value it assumes.
_FIXED_IN_MOTION_UNET = {
    "only_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "center_input_sample": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "time_embedding_dim": None,
}


@dataclasses.dataclass(frozen=True)
class UNetMotionConfig(Config):
    """Hyper-parameters of :class:`UNetMotionModel`: diffusers' keys and defaults.

    Unlike the SD UNet config, ``num_attention_heads`` is the head count of the image transformers
    (``from_unet2d`` copies the SD config's ``attention_head_dim`` into it). ``motion_*`` and
    ``temporal_*`` keys shape the motion modules; ``reverse_motion_num_attention_heads`` is accepted
    but, as in diffusers, unused (up stages mirror ``motion_num_attention_heads``).
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "in_channels", "out_channels", "block_out_channels", "norm_num_groups",
                 "cross_attention_dim", "num_attention_heads", "motion_num_attention_heads",
                 "reverse_motion_num_attention_heads", "encoder_hid_dim", "addition_time_embed_dim",
                 "projection_class_embeddings_input_dim", "time_cond_proj_dim"),
        **ranges(COUNT, "layers_per_block", "transformer_layers_per_block", "reverse_transformer_layers_per_block",
                 "temporal_transformer_layers_per_block", "reverse_temporal_transformer_layers_per_block",
                 "transformer_layers_per_mid_block", "temporal_transformer_layers_per_mid_block",
                 "mid_block_layers"),
        **ranges(SIZE, "sample_size", "motion_max_seq_length"),
    }

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlockMotion",) * 3 + ("DownBlockMotion",)
    up_block_types: tuple[str, ...] = ("UpBlockMotion",) + ("CrossAttnUpBlockMotion",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: PerBlock = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: PerBlock = 1280
    transformer_layers_per_block: int | tuple[PerLayer, ...] = 1
    reverse_transformer_layers_per_block: int | tuple[PerLayer, ...] | None = None
    temporal_transformer_layers_per_block: int | tuple[PerLayer, ...] = 1
    reverse_temporal_transformer_layers_per_block: int | tuple[PerLayer, ...] | None = None
    transformer_layers_per_mid_block: PerLayer | None = None
    temporal_transformer_layers_per_mid_block: PerLayer | None = 1
    use_linear_projection: bool = False
    num_attention_heads: PerBlock = 8
    motion_max_seq_length: int = 32
    motion_num_attention_heads: PerBlock = 8
    reverse_motion_num_attention_heads: PerBlock | tuple[PerBlock, ...] | None = None
    use_motion_mid_block: bool = True
    mid_block_layers: int = 1
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    time_cond_proj_dim: int | None = None

    def __post_init__(self) -> None:
        check_config(self, _UNSUPPORTED_UNLESS, (_DOWN_BLOCK_ATTENTION, _UP_BLOCK_ATTENTION), _PER_BLOCK_OPTIONS)

    def layout(self) -> UNetLayout:
        """The stages this config describes: SD's image stages with motion modules in every layer."""
        heads, cross, layers, depth, motion_heads, temporal = (
            per_block(self, n)
            for n in ("num_attention_heads", "cross_attention_dim", "layers_per_block",
                      "transformer_layers_per_block", "motion_num_attention_heads",
                      "temporal_transformer_layers_per_block")
        )
        up_depth, up_temporal = (
            per_block(self, f"reverse_{name}") if getattr(self, f"reverse_{name}") is not None else values[::-1]
            for name, values in (
                ("transformer_layers_per_block", depth),
                ("temporal_transformer_layers_per_block", temporal),
            )
        )

        def stage(index: int, layers_: int, with_attention: bool, spatial: PerLayer, motion: PerLayer) -> StageLayout:
            attention = (
                CrossAttentionOptions(heads[index], cross[index], spatial, self.use_linear_projection)
                if with_attention
                else None
            )
            motion_options = MotionOptions(motion_heads[index], motion, self.motion_max_seq_length)
            return StageLayout(layers_, attention, motion_options)

        last = len(layers) - 1
        down = tuple(
            stage(i, layers[i], _DOWN_BLOCK_ATTENTION[t], depth[i], temporal[i])
            for i, t in enumerate(self.down_block_types)
        )
        up = tuple(
            stage(last - j, layers[last - j] + 1, _UP_BLOCK_ATTENTION[t], up_depth[j], up_temporal[j])
            for j, t in enumerate(self.up_block_types)
        )
        return UNetLayout(
            self.in_channels, self.out_channels, self.block_out_channels, down, self._mid_layout(heads, cross), up,
            norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps,
            downsample_padding=self.downsample_padding, mid_block_scale_factor=self.mid_block_scale_factor,
            time_cond_proj_dim=self.time_cond_proj_dim,
        )

    def _mid_layout(self, heads: tuple, cross: tuple) -> StageLayout:
        mid_depth = self.transformer_layers_per_mid_block
        if mid_depth is None:
            # diffusers: the last down stage's depth when it is one number, else 1
            last = per_block(self, "transformer_layers_per_block")[-1]
            mid_depth = last if isinstance(last, int) else 1
        attention = CrossAttentionOptions(heads[-1], cross[-1], mid_depth, self.use_linear_projection)
        motion = None
        if self.use_motion_mid_block:
            motion_heads = per_block(self, "motion_num_attention_heads")[-1]
            temporal = self.temporal_transformer_layers_per_mid_block
            motion = MotionOptions(motion_heads, temporal if temporal is not None else 1, self.motion_max_seq_length)
        return StageLayout(self.mid_block_layers, attention, motion)


class UNetMotionModel(ConditionalUNet):
    """AnimateDiff's video UNet; takes and returns vidiff's ``[B, C, F, H, W]`` layout."""

    config_class = UNetMotionConfig
    config: UNetMotionConfig

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        added_cond_kwargs: Mapping[str, Sequence[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Predict the network output (ε or v, as trained) for noisy video latents.

        Args:
            sample: ``[B, in_channels, F, H, W]`` noisy latents, ``F ≤ motion_max_seq_length``
                unless FreeNoise windows are set on the motion modules.
            timestep: the discrete timestep as a number, a 0-dim tensor or one per video ``[B]``.
            encoder_hidden_states: text-encoder states, either per video ``[B, L, cross_attention_dim]``
                (repeated over the frames here) or per frame ``[B·F, L, cross_attention_dim]``, frames of
                a video consecutive (what diffusers' ``AnimateDiffPipeline`` passes).
            timestep_cond: ``[B, time_cond_proj_dim]`` extra time condition (LCM-distilled UNets only).
            down_block_additional_residuals: ControlNet / SparseCtrl residuals on the frames as images,
                one per skip, each ``[(B·F), C, h, w]`` like that skip (frames of a video consecutive),
                as diffusers' ``UNetMotionModel`` takes them; added to the skips.
            mid_block_additional_residual: ``[(B·F), C, h, w]``, added to the mid stage's output.
            added_cond_kwargs: ``{"image_embeds": [...]}`` with an IP-Adapter loaded (required then):
                per adapter ``[B, n, D]`` CLIP image embeds or ``[B, n, L, D]`` hidden states, for n
                images per video (see :mod:`vidiff.models.ip_adapter`).

        Returns:
            ``[B, out_channels, F, H, W]`` in the parameters' dtype.
        """
        in_channels = self.config.in_channels
        if not isinstance(sample, torch.Tensor) or sample.ndim != 5 or sample.shape[1] != in_channels:
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"sample must be [B, {in_channels}, F, H, W] (vidiff's layout), got {shape}")
        batch, num_frames = sample.shape[0], sample.shape[2]
        if num_frames > self.config.motion_max_seq_length and not self._windows_frames():
            raise ValueError(
                f"sample has {num_frames} frames; the motion modules take at most "
                f"motion_max_seq_length={self.config.motion_max_seq_length} (enable FreeNoise for longer videos)"
            )
        self._check_context(encoder_hidden_states, (batch, batch * num_frames))
        dtype = self.conv_in.weight.dtype
        emb = self._time_embedding(timestep, batch, timestep_cond)  # [B, D]
        emb = emb.repeat_interleave(num_frames, dim=0)  # [(B·F), D]
        # [B, L, D] or [(B·F), L, D]: a per-video context stays per video; cross-attention shares it
        # with the video's frames and projects its keys/values once, not once per frame.
        context = encoder_hidden_states.to(dtype)
        images = video_to_images(sample.to(dtype))  # [(B·F), C, H, W]
        if getattr(self, "encoder_hid_proj", None) is None:
            out = self._run_stages(  # [(B·F), C_out, H, W]
                images, emb, context, num_frames,
                down_residuals=down_block_additional_residuals, mid_residual=mid_block_additional_residual,
            )
            return images_to_video(out, num_frames).contiguous()
        # IP-Adapter: image tokens appended to the context for this pass (vidiff.models.ip_adapter)
        image_embeds = (added_cond_kwargs or {}).get("image_embeds")
        if image_embeds is None:
            raise ValueError(
                "an IP-Adapter is loaded: pass added_cond_kwargs={'image_embeds': [...]} (one tensor per adapter)"
            )
        context = ip_adapter.attach_image_tokens(self, context, image_embeds, batch, num_frames)
        try:
            out = self._run_stages(
                images, emb, context, num_frames,
                down_residuals=down_block_additional_residuals, mid_residual=mid_block_additional_residual,
            )
        finally:
            ip_adapter.detach_image_tokens(self)
        return images_to_video(out, num_frames).contiguous()

    def set_free_noise_windows(
        self, context_length: int | None, context_stride: int = 4, weights: Sequence[float] = ()
    ) -> None:
        """Make every motion module attend within FreeNoise's windows of ``context_length`` frames,
        ``context_stride`` apart, fused with ``weights`` (one per frame of a window); None: plain again."""
        windows = None if context_length is None else FreeNoiseWindows(context_length, context_stride, tuple(weights))
        for module in self.modules():
            if isinstance(module, MotionModule):
                module.frame_windows = windows

    def set_split_inference(self, spatial_split_size: int | None, temporal_split_size: int | None) -> None:
        """FreeNoise's split inference; None turns a split off. The same numbers, smaller temporaries:

        - ``spatial_split_size``: the motion modules' ``proj_in``, blocks and ``proj_out`` run on
          slices of that many pixel sequences ``[(B·H·W), F, C]``;
        - ``temporal_split_size``: the resnets, image transformers and down/up samplers of every
          stage run on slices of that many images ``[(B·F), C, H, W]``.
        """
        sequences = None if spatial_split_size is None else Chunking(size=spatial_split_size, dim=0)
        images = None if temporal_split_size is None else Chunking(size=temporal_split_size, dim=0)
        for module in self.modules():
            if isinstance(module, MotionModule):
                module.sequence_chunking = sequences
            elif isinstance(module, (DownStage, MidStage, UpStage)):
                module.image_chunking = images

    def _windows_frames(self) -> bool:
        """Whether every motion module attends within FreeNoise's windows (each then checks that its
        windows fit its position table), so a call may exceed ``motion_max_seq_length`` frames."""
        modules = [m for m in self.modules() if isinstance(m, MotionModule)]
        return bool(modules) and all(m.frame_windows is not None for m in modules)

    @classmethod
    def from_unet2d(
        cls,
        unet: UNet2DConditionModel,
        motion_adapter: MotionAdapter | None = None,
        load_weights: bool = True,
    ) -> UNetMotionModel:
        """An SD UNet turned into a motion UNet, with the adapter's motion modules.

        The config is the UNet's with the block types renamed and the adapter's motion options.
        With ``load_weights`` the result holds copies of the UNet's weights and the adapter's motion
        modules (random ones without an adapter), in the UNet's dtype and on its device; without,
        it is randomly initialised (on the current default device, so ``with torch.device("meta")``
        builds it without memory). An adapter with ``conv_in_channels`` replaces the input conv's
        extra input channels.
        """
        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(f"unet must be a vidiff UNet2DConditionModel, got {type(unet).__name__}")
        if motion_adapter is not None and not isinstance(motion_adapter, MotionAdapter):
            raise TypeError(
                f"motion_adapter must be a vidiff MotionAdapter or None, got {type(motion_adapter).__name__}"
            )
        config = UNetMotionConfig.from_diffusers(motion_config_from_unet2d(unet.config, motion_adapter))
        if not load_weights:
            return cls(config)
        if motion_adapter is None:
            # Random motion modules (diffusers' behaviour); the UNet's weights replace the rest.
            model = cls(config).to(device=unet.device, dtype=unet.dtype)
            state = {**model.state_dict(), **unet.state_dict()}
        else:
            with torch.device("meta"):
                model = cls(config)
            state = {**unet.state_dict(), **_adapter_state(unet, motion_adapter)}
        state = {key: tensor.detach().clone() for key, tensor in state.items()}  # copies, not shared storage
        loading.load_state_dict_strict(model, state, dtype=unet.dtype, device=unet.device)
        return model.train(unet.training)


def motion_config_from_unet2d(unet_config: Config, motion_adapter: MotionAdapter | None) -> dict:
    """The diffusers-style ``UNetMotionModel`` config dict for an SD UNet config and an adapter."""
    for key, assumed in _FIXED_IN_MOTION_UNET.items():
        value = unet_config[key]
        values = value if isinstance(value, tuple) and key == "only_cross_attention" else (value,)
        if any(v != assumed for v in values):
            raise ValueError(
                f"the motion UNet has no {key} option (it assumes {assumed!r}); the UNet has {key}={value!r}"
            )
    if unet_config["mid_block_type"] is None:
        raise ValueError("the motion UNet needs a mid block; the UNet has mid_block_type=None")
    raw = unet_config.to_diffusers()
    names = {field.name for field in dataclasses.fields(UNetMotionConfig)}
    config = {key: value for key, value in raw.items() if key in names}
    config["down_block_types"] = [_motion_name(t, "Down") for t in raw["down_block_types"]]
    config["up_block_types"] = [_motion_name(t, "Up") for t in raw["up_block_types"]]
    # The SD config's legacy attention_head_dim is the head count the motion UNet calls num_attention_heads.
    config["num_attention_heads"] = raw["attention_head_dim"]
    if motion_adapter is not None:
        config.update(_adapter_options(unet_config, motion_adapter.config))
    return config


def _motion_name(block_type: str, direction: str) -> str:
    return f"CrossAttn{direction}BlockMotion" if "CrossAttn" in block_type else f"{direction}BlockMotion"


def _adapter_options(unet_config: Config, adapter_config: Config) -> dict:
    stages = len(unet_config["down_block_types"])
    if len(adapter_config["block_out_channels"]) != stages:
        raise ValueError(
            f"the motion adapter has {len(adapter_config['block_out_channels'])} stages, the UNet {stages}"
        )
    if per_block(adapter_config, "motion_layers_per_block") != per_block(unet_config, "layers_per_block"):
        raise ValueError(
            f"the motion adapter's motion_layers_per_block={adapter_config['motion_layers_per_block']} does not "
            f"match the UNet's layers_per_block={unet_config['layers_per_block']}"
        )
    adapter = adapter_config.to_diffusers()
    options = {
        "motion_num_attention_heads": adapter["motion_num_attention_heads"],
        "motion_max_seq_length": adapter["motion_max_seq_length"],
        "use_motion_mid_block": adapter["use_motion_mid_block"],
        "layers_per_block": adapter["motion_layers_per_block"],
        "temporal_transformer_layers_per_mid_block": adapter["motion_transformer_layers_per_mid_block"],
        "temporal_transformer_layers_per_block": adapter["motion_transformer_layers_per_block"],
    }
    if adapter["conv_in_channels"]:
        options["in_channels"] = adapter["conv_in_channels"]
    return options


def _adapter_state(unet: UNet2DConditionModel, motion_adapter: MotionAdapter) -> Mapping[str, torch.Tensor]:
    # The adapter's module paths are the motion UNet's (down_blocks.i.motion_modules.j...), so its
    # state dict merges as is; only its optional conv_in is combined with the UNet's.
    state = dict(motion_adapter.state_dict())
    if motion_adapter.conv_in is not None:
        unet_weight = unet.conv_in.weight  # [C0, in_channels, k, k]
        extra = motion_adapter.conv_in.weight[:, unet_weight.shape[1] :].to(unet_weight)  # the added inputs
        state["conv_in.weight"] = torch.cat([unet_weight, extra], dim=1)
        state["conv_in.bias"] = unet.conv_in.bias
    return state
