"""The image VAE of Stable Diffusion 1.x (AutoencoderKL), with sliced and tiled encode / decode.

Images ``[N, 3, H, W]`` in [−1, 1] ↔ latents ``[N, 4, H/8, W/8]`` (for the released four-stage
model). Latents are unscaled here: pipelines multiply encoder latents by ``config.scaling_factor``
(after subtracting ``shift_factor`` when it is set) and undo that before decoding.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from . import video_vae
from .base import PretrainedModel
from .legacy_keys import rename_vae_attention
from .vae import Decoder, Encoder, LatentDistribution
from .vae_tiling import DEFAULT_OVERLAP, TileLayout, map_tiles, resolve_tile_options


def _check_choice(name: str, values: tuple[str, ...], valid: str) -> None:
    unknown = sorted({v for v in values if v != valid})
    if unknown:
        raise ValueError(f"{name} supports only {valid!r}, got {unknown}")


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig(Config):
    """Hyper-parameters of :class:`AutoencoderKL`; defaults are SD 1.5's released values.

    Options missing from SD 1.5's config take diffusers' defaults: no ``shift_factor``, no
    per-channel ``latents_mean`` / ``latents_std``, both 1×1 quant convs, mid-block attention on.
    ``sample_size`` (pixels) is the tile size of tiled encode / decode; ``force_upcast`` asks
    pipelines to run this VAE in float32.
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "in_channels", "out_channels", "block_out_channels", "latent_channels", "norm_num_groups"),
        **ranges(COUNT, "layers_per_block"),
        **ranges(SIZE, "sample_size"),
    }

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 512
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        if self.act_fn != "silu":
            raise ValueError(f"act_fn supports only 'silu', got {self.act_fn!r}")
        _check_choice("down_block_types", self.down_block_types, "DownEncoderBlock2D")
        _check_choice("up_block_types", self.up_block_types, "UpDecoderBlock2D")
        stages = {len(self.down_block_types), len(self.up_block_types), len(self.block_out_channels)}
        if len(stages) != 1:
            raise ValueError(
                "down_block_types, up_block_types and block_out_channels must have equal lengths, got "
                f"{len(self.down_block_types)}, {len(self.up_block_types)} and {len(self.block_out_channels)}"
            )
        uneven = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if uneven:
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} must divide every block_out_channels entry, "
                f"not {uneven}"
            )
        for name in ("latents_mean", "latents_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.latent_channels:
                raise ValueError(
                    f"{name} must have one entry per latent channel ({self.latent_channels}), got {len(value)}"
                )

    @property
    def downsample_factor(self) -> int:
        """Image pixels per latent pixel along each side (8 for SD 1.5)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def tile_size(self) -> int:
        """Default tile side in image pixels: ``sample_size`` (its first entry if it is a pair)."""
        return self.sample_size if isinstance(self.sample_size, int) else int(self.sample_size[0])




class AutoencoderKL(PretrainedModel, video_vae.FrameEncodedVAE):
    """SD's image VAE: :meth:`encode` images to a latent Gaussian, :meth:`decode` latents to images.

    Memory savers (off by default; results match the plain path within float noise for slicing,
    and match diffusers' tiling for tiling): :meth:`enable_slicing` runs one image at a time;
    :meth:`enable_tiling` runs overlapping tiles when an input is larger than a tile. Their state is
    readable as ``use_slicing``, ``use_tiling``, ``tile_sample_min_size`` (pixels),
    ``tile_latent_min_size`` (latent pixels) and ``tile_overlap_factor``.
    """

    config_class = AutoencoderKLConfig
    config: AutoencoderKLConfig

    def __init__(self, config: AutoencoderKLConfig) -> None:
        super().__init__(config)
        shared = dict(
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            mid_block_add_attention=config.mid_block_add_attention,
        )
        self.encoder = Encoder(in_channels=config.in_channels, out_channels=config.latent_channels, **shared)
        self.decoder = Decoder(in_channels=config.latent_channels, out_channels=config.out_channels, **shared)
        moments = 2 * config.latent_channels  # mean and log-variance
        self.quant_conv = nn.Conv2d(moments, moments, kernel_size=1) if config.use_quant_conv else None
        latent = config.latent_channels
        self.post_quant_conv = nn.Conv2d(latent, latent, kernel_size=1) if config.use_post_quant_conv else None
        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_size = config.tile_size
        self.tile_latent_min_size = int(config.tile_size / config.downsample_factor)
        self.tile_overlap_factor = DEFAULT_OVERLAP

    @classmethod
    def rename_legacy_keys(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename ``query`` / ``key`` / ``value`` / ``proj_attn`` of both mid-block attentions.

        SD 1.x-era checkpoints hold those ``[C, C]`` linear layers under the names diffusers used before
        ``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0`` (the table is in :mod:`.legacy_keys`).
        """
        return rename_vae_attention(state, ("encoder.mid_block", "decoder.mid_block"))

    # ---- memory savers --------------------------------------------------------------------------

    def enable_tiling(
        self,
        tile_sample_min_size: int | None = None,
        tile_overlap_factor: float = DEFAULT_OVERLAP,
        tile_latent_min_size: int | None = None,
    ) -> None:
        """Encode / decode inputs larger than a tile as overlapping tiles with cross-faded seams.

        ``tile_sample_min_size`` is the tile side in image pixels (default ``config.sample_size``);
        ``tile_latent_min_size`` the decoder's tile side in latent pixels (default the image tile
        divided by the downsampling factor); ``tile_overlap_factor`` the shared fraction of a tile.
        Tiled results differ slightly from untiled ones (each tile sees only its window).
        """
        sample_tile, overlap, latent_tile = resolve_tile_options(
            self.config.tile_size,
            self.config.downsample_factor,
            tile_sample_min_size,
            tile_overlap_factor,
            tile_latent_min_size,
        )
        self.tile_sample_min_size = sample_tile
        self.tile_latent_min_size = latent_tile
        self.tile_overlap_factor = overlap
        self.use_tiling = True

    def disable_tiling(self) -> None:
        """Process every input whole again."""
        self.use_tiling = False

    # ---- encode / decode ------------------------------------------------------------------------

    def _moments(self, images: torch.Tensor) -> torch.Tensor:
        # [N, 3, H, W] → [N, 2C, H/f, W/f], untiled
        moments = self.encoder(images)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def _images(self, latents: torch.Tensor) -> torch.Tensor:
        # [N, C, h, w] → [N, 3, h·f, w·f], untiled
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    def _encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(images.shape[-2:]) > self.tile_sample_min_size:
            layout = TileLayout(self.tile_sample_min_size, self.tile_latent_min_size, self.tile_overlap_factor)
            return map_tiles(self._moments, images, layout)
        return self._moments(images)

    def _decode_batch(self, latents: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(latents.shape[-2:]) > self.tile_latent_min_size:
            layout = TileLayout(self.tile_latent_min_size, self.tile_sample_min_size, self.tile_overlap_factor)
            return map_tiles(self._images, latents, layout)
        return self._images(latents)

    def encode(self, images: torch.Tensor) -> LatentDistribution:
        """Images ``[N, in_channels, H, W]`` in [−1, 1] → the Gaussian over latents ``[N, C, H/f, W/f]``.

        ``f`` is :attr:`AutoencoderKLConfig.downsample_factor` (8 for SD 1.5). Latents are unscaled.
        """
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be [N, {self.config.in_channels}, H, W], got {tuple(images.shape)}")
        images = images.to(self.dtype)
        if self.use_slicing and images.shape[0] > 1:
            moments = torch.cat([self._encode_batch(one) for one in images.split(1)])
        else:
            moments = self._encode_batch(images)
        return LatentDistribution.from_moments(moments)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents ``[N, latent_channels, h, w]`` → images ``[N, out_channels, h·f, w·f]``.

        Images come out roughly in [−1, 1] (not clamped).
        """
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latents must be [N, {self.config.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        latents = latents.to(self.dtype)
        if self.use_slicing and latents.shape[0] > 1:
            return torch.cat([self._decode_batch(one) for one in latents.split(1)])
        return self._decode_batch(latents)

    # ---- the video interface (vidiff.models.video_vae.VideoVAE; the rest in FrameEncodedVAE) ------

    def decode_video(
        self,
        latents: torch.Tensor,
        chunk_size: int | None = None,
        progress: video_vae.ChunkProgress | None = None,
    ) -> torch.Tensor:
        """Unscaled latents ``[B, C, F, h, w]`` → videos ``[B, out_channels, F, 8h, 8w]`` in this VAE's dtype.

        Frames are decoded ``chunk_size`` at a time (None: all at once); each on its own, so the
        chunk size changes memory, not the frames. ``progress`` wraps the chunk starts (e.g. tqdm).
        """
        video_vae.check_video("latents", latents, self.config.latent_channels)
        video_vae.check_chunk_size(chunk_size)
        return video_vae.decode_frame_chunks(self.decode, latents.to(self.dtype), chunk_size, progress)

    def forward(
        self, images: torch.Tensor, sample_posterior: bool = False, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reconstruct ``images`` ``[N, 3, H, W]``: encode, take the mean (or a sample), decode.

        With ``sample_posterior=True`` the latent is ``mean + std · noise``; ``noise`` (shaped like the
        latents) defaults to ``torch.randn`` from the global generator.
        """
        distribution = self.encode(images)
        if not sample_posterior:
            if noise is not None:
                raise ValueError("noise is only used with sample_posterior=True")
            return self.decode(distribution.mode())
        if noise is None:
            noise = torch.randn_like(distribution.mean)
        return self.decode(distribution.sample(noise))
