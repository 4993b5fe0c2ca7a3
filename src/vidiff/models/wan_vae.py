"""Wan 2.1 / 2.2's causal video VAE (``AutoencoderKLWan``): videos ↔ latents compressed 4× in time.

Videos ``[B, 3, F, H, W]`` in [−1, 1] ↔ latents ``[B, z, (F − 1)/4 + 1, H/s, W/s]``: Wan 2.1 has
z = 16, s = 8; Wan 2.2 (TI2V-5B) z = 48, s = 16, reached by a 2 × 2 patchify (pixels into channels)
before the 8× encoder and its inverse after the decoder. The first frame gets a latent frame of
its own; every later latent frame stands for four frames.

Everything is causal in time, so the VAE streams: the encoder takes chunks of 1, 4, 4, … frames and
the decoder one latent frame at a time, carrying each layer's last frames in a feature cache
(:mod:`.wan_vae_passes`). Latents are *unnormalised* here; pipelines normalise with
``config.latents_mean`` / ``config.latents_std`` (per channel), which this model only carries.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from ..layers.causal_conv import CausalConv3d
from . import video_vae
from .base import PretrainedModel
from .vae import LatentDistribution
from .wan_vae_coders import WanDecoder, WanEncoder
from .wan_vae_passes import decode_grid, encode_grid, patchify, stream_decode, stream_encode, ticker, unpatchify
from .wan_vae_sizes import check_decode_input, check_encode_input, check_tile_options

# Wan 2.1's per-channel latent statistics (diffusers' defaults; every Wan 2.1 and Wan 2.2 A14B repo).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class AutoencoderKLWanConfig(Config):
    """Hyper-parameters of :class:`AutoencoderKLWan`; defaults are Wan 2.1's released VAE.

    Keys are diffusers' (``temperal_downsample`` spelled as there: one flag per spatial down stage,
    ``True`` = that stage also halves time; the decoder reads the list reversed).
    Wan 2.2 TI2V-5B sets ``base_dim=160``, ``decoder_base_dim=256``, ``z_dim=48``, ``is_residual``,
    ``patch_size=2`` (so ``in_channels`` / ``out_channels`` = 3·2² = 12) and ``scale_factor_spatial=16``.
    ``scale_factor_spatial`` / ``scale_factor_temporal`` are what pipelines and tiling use as the
    compression factors (as in diffusers). The key ``clip_output`` of diffusers 0.35 configs is kept
    but has no effect: diffusers 0.42.1 ignores it too and always clamps in ``decode``.
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "base_dim", "decoder_base_dim", "z_dim", "dim_mult", "in_channels", "out_channels"),
        **ranges(COUNT, "num_res_blocks"),
        **ranges(SIZE, "patch_size", "scale_factor_temporal", "scale_factor_spatial"),
    }

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8

    def __post_init__(self) -> None:
        if not self.dim_mult:
            raise ValueError("dim_mult must list at least one stage multiplier, got []")
        if len(self.temperal_downsample) < len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs one flag per down stage ({len(self.dim_mult) - 1} for "
                f"dim_mult={list(self.dim_mult)}), got {list(self.temperal_downsample)}"
            )
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ValueError(f"{name} must have z_dim={self.z_dim} entries, got {len(getattr(self, name))}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        patch_area = self.patch ** 2
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % patch_area:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be a multiple of patch_size² = {patch_area} "
                    "(the video's channels times the pixels of a patch)"
                )

    @property
    def patch(self) -> int:
        """Pixels per patch side (1 without patchifying)."""
        return self.patch_size or 1

    @property
    def downsamples(self) -> int:
        """Spatial halvings in the encoder."""
        return len(self.dim_mult) - 1


@dataclasses.dataclass(frozen=True)
class AutoencoderKLOutput:
    """What :meth:`AutoencoderKLWan.encode` returns (diffusers' name): the posterior ``latent_dist``."""

    latent_dist: LatentDistribution


@dataclasses.dataclass(frozen=True)
class DecoderOutput:
    """What :meth:`AutoencoderKLWan.decode` returns (diffusers' name): the videos as ``sample``."""

    sample: torch.Tensor


class AutoencoderKLWan(PretrainedModel):
    """Wan's causal video VAE, with diffusers' API and vidiff's video-VAE interface.

    diffusers' API on ``[B, C, F, H, W]``: :meth:`encode` → an :class:`AutoencoderKLOutput` whose
    ``latent_dist`` is the posterior over ``[B, z, f, h, w]``; :meth:`decode` → a
    :class:`DecoderOutput` with videos clamped to [−1, 1] (``return_dict=False``: one-element tuples).
    vidiff's interface (:class:`~vidiff.models.video_vae.VideoVAE`): :meth:`encode_video`,
    :meth:`decode_video` (not clamped), :meth:`latent_shape`, :attr:`spatial_scale_factor`,
    :attr:`temporal_scale_factor`.

    Memory savers, off by default, numerically diffusers' own: :meth:`enable_slicing` (one video
    of the batch at a time) and :meth:`enable_tiling` (overlapping spatial tiles; state in
    ``tile_sample_min_height`` / ``_width`` and ``tile_sample_stride_height`` / ``_width``, pixels).
    """

    config_class = AutoencoderKLWanConfig
    config: AutoencoderKLWanConfig

    def __init__(self, config: AutoencoderKLWanConfig) -> None:
        super().__init__(config)
        z_dim = config.z_dim
        shared = dict(dim_mult=config.dim_mult, num_res_blocks=config.num_res_blocks, dropout=config.dropout)
        self.encoder = WanEncoder(
            config.in_channels, config.base_dim, 2 * z_dim, attn_scales=config.attn_scales,
            temperal_downsample=config.temperal_downsample, is_residual=config.is_residual, **shared,
        )  # fmt: skip
        self.quant_conv = CausalConv3d(2 * z_dim, 2 * z_dim, 1)
        self.post_quant_conv = CausalConv3d(z_dim, z_dim, 1)
        decoder_dim = config.base_dim if config.decoder_base_dim is None else config.decoder_base_dim
        self.decoder = WanDecoder(
            decoder_dim, z_dim, temperal_upsample=config.temperal_downsample[::-1],
            out_channels=config.out_channels, is_residual=config.is_residual, **shared,
        )  # fmt: skip
        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_height = self.tile_sample_min_width = 256  # diffusers' defaults, pixels
        self.tile_sample_stride_height = self.tile_sample_stride_width = 192

    # ---- sizes ------------------------------------------------------------------------------------

    @property
    def spatial_scale_factor(self) -> int:
        """Video pixels per latent cell along each side: ``config.scale_factor_spatial`` (8 for Wan 2.1,
        16 for Wan 2.2), or the architecture's ``patch · 2^downsamples`` when the config sets none."""
        given = self.config.scale_factor_spatial
        return given if given is not None else self.config.patch * 2**self.config.downsamples

    @property
    def temporal_scale_factor(self) -> int:
        """Frames per latent frame after the first: ``config.scale_factor_temporal`` (4), or 2 per
        temporal down stage when the config sets none."""
        given = self.config.scale_factor_temporal
        flags = self.config.temperal_downsample[: self.config.downsamples]
        return given if given is not None else 2 ** sum(bool(f) for f in flags)

    @property
    def spatial_compression_ratio(self) -> int:
        """diffusers' name for :attr:`spatial_scale_factor`."""
        return self.spatial_scale_factor

    @property
    def video_channels(self) -> int:
        """Channels of the videos this VAE encodes and decodes (3; ``in_channels`` counts patch pixels)."""
        return self.config.in_channels // self.config.patch**2

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(z_dim, (F − 1)/t + 1, H // s, W // s)``; ``num_frames`` must be ``t·k + 1``."""
        return video_vae.latent_shape(
            self.config.z_dim, self.spatial_scale_factor, self.temporal_scale_factor, num_frames, height, width
        )

    # ---- memory savers --------------------------------------------------------------------------

    def enable_slicing(self) -> None:
        """Encode and decode one video of a batch at a time (same numbers, less peak memory)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        """Encode and decode whole batches again."""
        self.use_slicing = False

    def enable_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_stride_height: int | None = None,
        tile_sample_stride_width: int | None = None,
    ) -> None:
        """Encode / decode videos larger than a tile as overlapping spatial tiles (diffusers' scheme).

        Sizes are video pixels (None keeps the current value; defaults 256 × 256 tiles every 192
        pixels); each tile is a full streamed pass over all frames, and the ``min − stride`` pixels
        shared by neighbours are cross-faded. Tiling starts when the height or width exceeds the
        tile. As in diffusers, Wan 2.2's encoder measures tiles in patchified pixels (a 256 tile
        covers 512 video pixels there). Tiled results differ slightly from untiled ones.
        """
        sizes = {
            "tile_sample_min_height": tile_sample_min_height or self.tile_sample_min_height,
            "tile_sample_min_width": tile_sample_min_width or self.tile_sample_min_width,
            "tile_sample_stride_height": tile_sample_stride_height or self.tile_sample_stride_height,
            "tile_sample_stride_width": tile_sample_stride_width or self.tile_sample_stride_width,
        }
        check_tile_options(sizes, self.spatial_scale_factor)
        for name, value in sizes.items():
            setattr(self, name, value)
        self.use_tiling = True

    def disable_tiling(self) -> None:
        """Encode and decode whole frames again."""
        self.use_tiling = False

    # ---- diffusers' API -----------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[LatentDistribution]:
        """Videos ``[B, C, F, H, W]`` in [−1, 1] → the posterior over ``[B, z, 1 + (F − 1)//4, H/s, W/s]``.

        As in diffusers, frames after the last whole chunk of 4 (when ``F`` is not ``4k + 1``) are
        ignored. Sizes the encoder cannot take are refused with a ValueError naming valid ones.
        """
        check_encode_input(x, self.config, self.video_channels)
        x = x.to(self.dtype)
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode_moments(one) for one in x.split(1)])
        else:
            moments = self._encode_moments(x)
        posterior = LatentDistribution.from_moments(moments)
        return AutoencoderKLOutput(posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Unnormalised latents ``[B, z, f, h, w]`` → videos ``[B, C, 1 + t·(f − 1), h·s, w·s]`` clamped to
        [−1, 1], as diffusers returns them."""
        video = self._decode_raw(z, None).clamp(-1.0, 1.0)
        return DecoderOutput(video) if return_dict else (video,)

    def forward(
        self, sample: torch.Tensor, sample_posterior: bool = False, noise: torch.Tensor | None = None
    ) -> DecoderOutput:
        """Reconstruct ``sample``: encode, take the mean (or ``mean + std · noise``), decode (clamped)."""
        posterior = self.encode(sample).latent_dist
        if not sample_posterior:
            if noise is not None:
                raise ValueError("noise is only used with sample_posterior=True")
            return self.decode(posterior.mode())
        return self.decode(posterior.sample(torch.randn_like(posterior.mean) if noise is None else noise))

    # ---- the video interface (vidiff.models.video_vae.VideoVAE) -----------------------------------

    def encode_video(self, video: torch.Tensor) -> LatentDistribution:
        """Videos ``[B, 3, F, H, W]`` in [−1, 1], ``F = 4k + 1`` → the posterior over ``[B, z, k + 1, H/s, W/s]``.

        The raw posterior (not normalised with ``latents_mean`` / ``latents_std``); slicing and
        tiling apply.
        """
        video_vae.check_video("video", video, self.video_channels)
        self.latent_shape(video.shape[2], video.shape[3], video.shape[4])  # refuses F ≠ t·k + 1
        return self.encode(video).latent_dist

    def decode_video(
        self,
        latents: torch.Tensor,
        chunk_size: int | None = None,
        progress: video_vae.ChunkProgress | None = None,
    ) -> torch.Tensor:
        """Unnormalised latents ``[B, z, f, h, w]`` → videos ``[B, 3, 1 + t·(f − 1), h·s, w·s]``, not clamped.

        The decoder always runs one latent frame per call with its causal feature cache (diffusers'
        schedule; any other cut would change the frames), so ``chunk_size`` (checked, positive int
        or None) does not change the work. ``progress`` wraps ``range(n)`` over the ``n`` decoder
        calls (latent frames × tiles × slices), e.g. a tqdm bar.
        """
        video_vae.check_chunk_size(chunk_size)
        return self._decode_raw(latents, progress)

    # ---- passes -----------------------------------------------------------------------------------

    def _encode_moments(self, video: torch.Tensor) -> torch.Tensor:
        # [b, C, F, H, W] → [b, 2z, f, H/s, W/s]; the tiling test uses the video's size, as diffusers does
        height, width = video.shape[-2:]
        patches = patchify(video, self.config.patch)
        if self.use_tiling and (width > self.tile_sample_min_width or height > self.tile_sample_min_height):
            ratio = self.spatial_scale_factor // self.config.patch
            grid = encode_grid(
                (self.tile_sample_min_height, self.tile_sample_min_width),
                (self.tile_sample_stride_height, self.tile_sample_stride_width),
                ratio,
            )
            moments = grid.map(lambda tile: stream_encode(self.encoder, tile, self.quant_conv), patches)
            return moments[..., : patches.shape[-2] // ratio, : patches.shape[-1] // ratio]
        return self.quant_conv(stream_encode(self.encoder, patches))

    def _decode_raw(self, latents: torch.Tensor, progress: video_vae.ChunkProgress | None) -> torch.Tensor:
        # [B, z, f, h, w] → [B, C, F, H, W], unclamped
        check_decode_input(latents, self.config.z_dim)
        latents = latents.to(self.dtype)
        slices = latents.split(1) if self.use_slicing and latents.shape[0] > 1 else (latents,)
        scale, patch = self.spatial_scale_factor, self.config.patch
        grid = decode_grid(
            (self.tile_sample_min_height, self.tile_sample_min_width),
            (self.tile_sample_stride_height, self.tile_sample_stride_width),
            scale,
            patch,
        )
        height, width = latents.shape[-2:]
        tiled = self.use_tiling and (height > grid.window[0] or width > grid.window[1])
        calls = len(slices) * latents.shape[2] * (grid.count(height, width) if tiled else 1)
        tick, finish = ticker(progress, calls)

        def decode_one(tile: torch.Tensor) -> torch.Tensor:
            return stream_decode(self.decoder, self.post_quant_conv, tile, tick, per_frame=tiled)

        videos = []
        for part in slices:
            if tiled:
                out = grid.map(decode_one, part)[..., : height * scale // patch, : width * scale // patch]
            else:
                out = decode_one(part)
            videos.append(unpatchify(out, patch))
        finish()
        return torch.cat(videos)
