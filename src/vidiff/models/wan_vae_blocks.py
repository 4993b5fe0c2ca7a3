"""The blocks of Wan's causal video VAE, on video tensors ``[B, C, F, H, W]``.

Every block runs streamed: ``forward(x, cache)`` takes one chunk of frames and a
:class:`~vidiff.layers.causal_conv.FeatureCache` that carries what its causal layers saw of the
earlier chunks (see :mod:`vidiff.models.wan_vae` for how the VAE cuts a video into chunks).
Attribute names are the checkpoints' (diffusers' ``AutoencoderKLWan``): ``norm1``, ``conv1``,
``resample.1``, ``time_conv``, ``avg_shortcut``, …

Wan 2.1 blocks downsample / upsample with convolutions; Wan 2.2's residual blocks
(``is_residual``) add a parameter-free shortcut that moves pixels into channels (and back).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..layers.causal_conv import CausalConv3d, FeatureCache
from ..layers.frames import images_to_video, video_to_images


class ChannelRMSNorm(nn.Module):
    """``x / ‖x‖₂ · √C · gamma`` over the channel axis (dim 1) at every position.

    ``gamma`` is ``[C, 1, 1, 1]`` for videos (``spatial_dims=3``), ``[C, 1, 1]`` for image batches.
    Half-precision inputs are normalised in float32 (their sum of squares overflows or loses bits).
    """

    def __init__(self, channels: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.scale = channels**0.5
        self.gamma = nn.Parameter(torch.ones(channels, *(1,) * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upcast = x.dtype.itemsize < 4
        normalized = F.normalize(x.float() if upcast else x, dim=1).to(x.dtype)
        return normalized * self.scale * self.gamma


class WanResidualBlock(nn.Module):
    """norm → SiLU → causal 3×3×3 conv, twice, plus a (1×1×1 conv) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = ChannelRMSNorm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        shortcut = self.conv_shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), cache)
        x = self.conv2(self.dropout(F.silu(self.norm2(x))), cache)
        return x + shortcut


class WanFrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across frames)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(channels, spatial_dims=2)
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        qkv = self.to_qkv(self.norm(video_to_images(x)))  # [(B·F), 3C, H, W]
        # [(B·F), 1 head, H·W, 3C], made contiguous: the attention kernel (and so its rounding in
        # half precision) depends on the memory layout of q, k, v
        tokens = qkv.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        query, key, value = tokens.chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(query, key, value)  # [(B·F), 1, H·W, C]
        images = attended.squeeze(1).transpose(1, 2).reshape(batch * frames, channels, height, width)
        return images_to_video(self.proj(images), frames) + x


class _NearestUpsample2x(nn.Module):
    """×2 nearest-neighbour upsampling of ``[N, C, H, W]``, computed in float32."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images.float(), scale_factor=2.0, mode="nearest-exact").to(images.dtype)


class WanResample(nn.Module):
    """×2 spatial resampling of every frame, with ×2 temporal resampling for the ``…3d`` modes.

    ``mode``: ``"upsample2d"`` / ``"upsample3d"`` (nearest ×2 then a 3×3 conv to ``out_channels``),
    ``"downsample2d"`` / ``"downsample3d"`` (pad right/bottom by one, 3×3 conv with stride 2).

    Temporal upsampling (before the spatial step) doubles the frames with a causal (3, 1, 1) conv
    to ``2·C`` channels whose halves become even and odd frames; the stream's first chunk passes
    through unchanged (one latent frame → one frame). Temporal downsampling (after the spatial
    step) runs a stride-2 (3, 1, 1) conv over the previous chunk's last frame and this chunk; the
    stream's first chunk again passes through.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, channels: int, mode: str, out_channels: int | None = None) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):
            out_channels = channels // 2 if out_channels is None else out_channels
            self.resample = nn.Sequential(_NearestUpsample2x(), nn.Conv2d(channels, out_channels, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(channels, 2 * channels, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(channels, channels, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        frames = x.shape[2]
        x = images_to_video(self.resample(video_to_images(x)), frames)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache)
        return x

    def _double_frames(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if not cache.seen(self):
            cache.remember(self, None)
            return x
        channels = x.shape[1]
        doubled = self.time_conv(x, cache)  # [B, 2C, F, H, W]: frame 2t from the first C channels
        return doubled.unflatten(1, (2, channels)).permute(0, 2, 3, 1, 4, 5).flatten(2, 3)  # [B, C, 2F, H, W]

    def _halve_frames(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        previous = cache.recall(self)
        cache.remember(self, x[:, :, -1:].clone())
        if previous is None:
            return x
        return self.time_conv(torch.cat([previous, x], dim=2))  # (1 + F) frames → F / 2


class AverageDownShortcut(nn.Module):
    """Parameter-free ``[B, C, F, H, W]`` → ``[B, C_out, F/ft, H/fs, W/fs]``: pixels into channels, averaged.

    Each ``ft × fs × fs`` block of a channel becomes ``ft·fs²`` channels (time offset, then row,
    then column); consecutive groups of those ``C·ft·fs²`` channels are averaged down to
    ``C_out``. Time is first padded with zero frames in front to a multiple of ``ft``.
    """

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        if in_channels * factor_t * factor_s**2 % out_channels:
            raise ValueError(
                f"in_channels ({in_channels}) × the downsampling factor ({factor_t * factor_s**2}) must be "
                f"a multiple of out_channels ({out_channels})"
            )
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = F.pad(x, (0, 0, 0, 0, -x.shape[2] % ft, 0))
        batch, channels, frames, height, width = x.shape
        x = x.view(batch, channels, frames // ft, ft, height // fs, fs, width // fs, fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # [B, C, ft, fs, fs, F', H', W']
        grouped = x.reshape(batch, self.out_channels, -1, frames // ft, height // fs, width // fs)
        return grouped.mean(dim=2)


class DuplicateUpShortcut(nn.Module):
    """Parameter-free ``[B, C, F, H, W]`` → ``[B, C_out, F·ft, H·fs, W·fs]``: channels repeated into pixels.

    The inverse arrangement of :class:`AverageDownShortcut`, with each channel repeated
    ``C_out·ft·fs² / C`` times. On the stream's first chunk the first ``ft − 1`` frames are
    dropped (the first latent frame decodes to one frame, as the temporal upsampler passes it).
    """

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        if out_channels * factor_t * factor_s**2 % in_channels:
            raise ValueError(
                f"out_channels ({out_channels}) × the upsampling factor ({factor_t * factor_s**2}) must be "
                f"a multiple of in_channels ({in_channels})"
            )
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        self.repeats = out_channels * factor_t * factor_s**2 // in_channels

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        batch, _, frames, height, width = x.shape
        x = x.repeat_interleave(self.repeats, dim=1)
        x = x.view(batch, self.out_channels, ft, fs, fs, frames, height, width)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # [B, C_out, F, ft, H, fs, W, fs]
        x = x.reshape(batch, self.out_channels, frames * ft, height * fs, width * fs)
        first_chunk = not cache.seen(self)
        cache.remember(self, None)
        return x[:, :, ft - 1 :] if first_chunk else x


def _resnets(in_channels: int, out_channels: int, count: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList(
        WanResidualBlock(in_channels if i == 0 else out_channels, out_channels, dropout) for i in range(count)
    )


class WanMidBlock(nn.Module):
    """resnet → per-frame attention → resnet, at the lowest resolution."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.resnets = _resnets(channels, channels, 2, dropout)
        self.attentions = nn.ModuleList([WanFrameAttention(channels)])

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.resnets[0](x, cache)
        return self.resnets[1](self.attentions[0](x), cache)


class WanResidualDownBlock(nn.Module):
    """Wan 2.2 encoder stage: resnets, optional ×2 downsampling, plus an :class:`AverageDownShortcut`."""

    def __init__(
        self, in_channels: int, out_channels: int, num_res_blocks: int, dropout: float, temporal: bool, down: bool
    ) -> None:
        super().__init__()
        self.avg_shortcut = AverageDownShortcut(in_channels, out_channels, 2 if temporal else 1, 2 if down else 1)
        self.resnets = _resnets(in_channels, out_channels, num_res_blocks, dropout)
        mode = "downsample3d" if temporal else "downsample2d"
        self.downsampler = WanResample(out_channels, mode) if down else None

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        shortcut = self.avg_shortcut(x)
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.downsampler is not None:
            x = self.downsampler(x, cache)
        return x + shortcut


class WanUpBlock(nn.Module):
    """Wan 2.1 decoder stage: ``num_res_blocks + 1`` resnets, then optional ×2 upsampling (halving channels)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_res_blocks: int, dropout: float, upsample_mode: str | None
    ) -> None:
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_res_blocks + 1, dropout)
        self.upsamplers = None if upsample_mode is None else nn.ModuleList([WanResample(out_channels, upsample_mode)])

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        return x if self.upsamplers is None else self.upsamplers[0](x, cache)


class WanResidualUpBlock(nn.Module):
    """Wan 2.2 decoder stage: resnets, optional ×2 upsampling, plus a :class:`DuplicateUpShortcut`."""

    def __init__(
        self, in_channels: int, out_channels: int, num_res_blocks: int, dropout: float, temporal: bool, up: bool
    ) -> None:
        super().__init__()
        self.avg_shortcut = DuplicateUpShortcut(in_channels, out_channels, 2 if temporal else 1, 2) if up else None
        self.resnets = _resnets(in_channels, out_channels, num_res_blocks + 1, dropout)
        mode = "upsample3d" if temporal else "upsample2d"
        self.upsampler = WanResample(out_channels, mode, out_channels=out_channels) if up else None

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        shortcut = x
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.upsampler is not None:
            x = self.upsampler(x, cache)
        if self.avg_shortcut is not None:
            x = x + self.avg_shortcut(shortcut, cache)
        return x
