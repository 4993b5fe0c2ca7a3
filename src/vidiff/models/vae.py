"""2-D VAE parts shared by the image VAE (SD 1.5 ``AutoencoderKL``) and SVD's temporal-decoder VAE.

The encoder maps images ``[N, 3, H, W]`` (values in [−1, 1]) to the moments of a diagonal
Gaussian over latents ``[N, C, H/2ⁿ, W/2ⁿ]``; the 2-D decoder maps latents back to images. Names
(``conv_in``, ``down_blocks.i.resnets.j``, ``mid_block.attentions.0``…) are the checkpoints'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..layers.attention import Attention
from ..layers.resnet import Downsample2D, ResBlock2D, Upsample2D


@dataclasses.dataclass(frozen=True)
class LatentDistribution:
    """A diagonal Gaussian over latents, as the VAE encoder predicts it.

    Channels are on dim 1: ``[N, C, h, w]`` for images, ``[B, C, f, h, w]`` for videos. The caller
    draws the noise for :meth:`sample`, so any RNG (torch or numpy) can be used.
    """

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> LatentDistribution:
        """Split encoder moments ``[N, 2C, ...]`` into mean and log-variance (clamped to [−30, 20])."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(-30.0, 20.0))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        """The most likely latent (the mean)."""
        return self.mean

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """``mean + std · noise`` for standard-normal ``noise`` shaped like :attr:`mean`."""
        if noise.shape != self.mean.shape:
            raise ValueError(f"noise must have shape {tuple(self.mean.shape)}, got {tuple(noise.shape)}")
        return self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)


def _resnet_stack(in_channels: int, out_channels: int, num_layers: int, groups: int, eps: float) -> nn.ModuleList:
    """``num_layers`` unconditioned resnets; the first one changes the width."""
    return nn.ModuleList(
        ResBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups=groups, eps=eps)
        for i in range(num_layers)
    )


class DownEncoderBlock2D(nn.Module):
    """Unconditioned resnets, then an optional stride-2 downsampling conv (padded bottom/right only)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        add_downsample: bool,
        norm_num_groups: int = 32,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.resnets = _resnet_stack(in_channels, out_channels, num_layers, norm_num_groups, eps)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=0)]) if add_downsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
        return hidden_states


class UpDecoderBlock2D(nn.Module):
    """Unconditioned resnets, then optional nearest ×2 upsampling with a conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        add_upsample: bool,
        norm_num_groups: int = 32,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.resnets = _resnet_stack(in_channels, out_channels, num_layers, norm_num_groups, eps)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


class VAEMidBlock2D(nn.Module):
    """Resnet, then (single-head self-attention over all pixels, resnet) ``num_layers`` times.

    The attention has its own GroupNorm and residual; ``add_attention=False`` drops it.
    """

    def __init__(
        self,
        channels: int,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        eps: float = 1e-6,
        add_attention: bool = True,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResBlock2D(channels, channels, None, groups=norm_num_groups, eps=eps) for _ in range(num_layers + 1)
        )
        self.attentions = (
            nn.ModuleList(vae_attention(channels, norm_num_groups, eps) for _ in range(num_layers))
            if add_attention
            else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states)
        for i, resnet in enumerate(self.resnets[1:]):
            if self.attentions is not None:
                hidden_states = self.attentions[i](hidden_states)
            hidden_states = resnet(hidden_states)
        return hidden_states


def vae_attention(channels: int, norm_num_groups: int = 32, eps: float = 1e-6) -> Attention:
    """The VAE's single-head, full-width self-attention with GroupNorm and residual."""
    return Attention(
        channels,
        heads=1,
        dim_head=channels,
        bias=True,
        norm_num_groups=norm_num_groups,
        eps=eps,
        residual_connection=True,
    )


class Encoder(nn.Module):
    """Images ``[N, in_channels, H, W]`` → moments ``[N, 2·out_channels, H/2ⁿ, W/2ⁿ]`` (n = stages − 1).

    ``double_z=False`` predicts only the mean (``out_channels`` outputs).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 4,
        block_out_channels: Sequence[int] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        double_z: bool = True,
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        channels = tuple(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(
                channels[max(i - 1, 0)],
                channels[i],
                layers_per_block,
                add_downsample=i < len(channels) - 1,
                norm_num_groups=norm_num_groups,
            )
            for i in range(len(channels))
        )
        self.mid_block = VAEMidBlock2D(
            channels[-1], norm_num_groups=norm_num_groups, add_attention=mid_block_add_attention
        )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(channels[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        hidden = self.conv_in(sample)
        for block in self.down_blocks:
            hidden = block(hidden)
        hidden = self.mid_block(hidden)
        return self.conv_out(F.silu(self.conv_norm_out(hidden)))


class Decoder(nn.Module):
    """Latents ``[N, in_channels, h, w]`` → images ``[N, out_channels, h·2ⁿ, w·2ⁿ]``, frame by frame."""

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        block_out_channels: Sequence[int] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        channels = tuple(reversed(block_out_channels))  # deepest first
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.mid_block = VAEMidBlock2D(
            channels[0], norm_num_groups=norm_num_groups, add_attention=mid_block_add_attention
        )
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(
                channels[max(i - 1, 0)],
                channels[i],
                layers_per_block + 1,
                add_upsample=i < len(channels) - 1,
                norm_num_groups=norm_num_groups,
            )
            for i in range(len(channels))
        )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # Channels-last from here on: convolutions at the large output sizes run markedly faster in
        # that layout (oneDNN on CPU ~2× here; cuDNN tensor cores for fp16). The output values are
        # the same up to float rounding; the caller gets a channels-last strided tensor.
        hidden = self.conv_in(latents).contiguous(memory_format=torch.channels_last)
        hidden = self.mid_block(hidden)
        for block in self.up_blocks:
            hidden = block(hidden)
        return self.conv_out(F.silu(self.conv_norm_out(hidden)))
