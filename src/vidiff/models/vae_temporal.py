"""SVD's VAE: the image encoder of SD plus a decoder that mixes neighbouring frames.

``AutoencoderKLTemporalDecoder.decode`` takes latents of whole videos as an image batch
``[(B·F), C, h, w]`` (frames of a video consecutive): its temporal resnets and final 3-D conv
see all ``num_frames`` frames of a video at once, so how a pipeline chunks frames changes the
output (SVD's ``decode_chunk_size``). ``decode_video`` (the video interface of
``vidiff.models.video_vae``) takes ``[B, C, F, h, w]`` and does that chunking as diffusers' pipeline does.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..config import COUNT, SIZE, WIDTH, Config, ranges
from ..layers.frames import images_to_video, video_to_images
from ..layers.resnet import Upsample2D
from ..layers.temporal import SpatioTemporalResBlock, TemporalConv
from . import video_vae
from .base import PretrainedModel
from .legacy_keys import rename_vae_attention
from .vae import Encoder, LatentDistribution, vae_attention
from .vae_tiling import DEFAULT_OVERLAP, AlignedTileLayout, map_tiles, resolve_tile_options


@dataclasses.dataclass(frozen=True)
class AutoencoderKLTemporalDecoderConfig(Config):
    """Hyper-parameters of :class:`AutoencoderKLTemporalDecoder`; defaults are SVD-XT's released values.

    ``scaling_factor`` multiplies encoder latents before diffusion (and divides them before
    decoding); ``force_upcast`` asks pipelines to run this VAE in float32.
    """

    int_ranges: ClassVar = {
        **ranges(WIDTH, "in_channels", "out_channels", "block_out_channels", "latent_channels"),
        **ranges(COUNT, "layers_per_block"),
        **ranges(SIZE, "sample_size"),
    }

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    sample_size: int = 768
    scaling_factor: float = 0.18215
    force_upcast: bool = True

    def __post_init__(self) -> None:
        unknown = [t for t in self.down_block_types if t != "DownEncoderBlock2D"]
        if unknown:
            raise ValueError(f"down_block_types supports only 'DownEncoderBlock2D', got {unknown}")
        if len(self.down_block_types) != len(self.block_out_channels):
            raise ValueError(
                f"down_block_types and block_out_channels must have equal lengths, got "
                f"{len(self.down_block_types)} and {len(self.block_out_channels)}"
            )


def _decoder_resblock(in_channels: int, out_channels: int) -> SpatioTemporalResBlock:
    # The decoder's blend starts at α = sigmoid(0) = ½ and weighs the temporal branch by α.
    return SpatioTemporalResBlock(
        in_channels,
        out_channels,
        temb_channels=None,
        eps=1e-6,
        temporal_eps=1e-5,
        merge_factor=0.0,
        switch_spatial_to_temporal_mix=True,
    )


class MidBlockTemporalDecoder(nn.Module):
    """``num_layers`` video resnets with one full-width self-attention after the first.

    The attention exists (and is in checkpoints) even when ``num_layers == 1``, where it is unused.
    """

    def __init__(self, channels: int, num_layers: int = 1) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([vae_attention(channels)])
        self.resnets = nn.ModuleList(_decoder_resblock(channels, channels) for _ in range(num_layers))

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, None, num_frames)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = resnet(attention(hidden_states), None, num_frames)
        return hidden_states


class UpBlockTemporalDecoder(nn.Module):
    """Video resnets, then optional nearest ×2 upsampling with a conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            _decoder_resblock(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, None, num_frames)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


class TemporalDecoder(nn.Module):
    """Latents ``[(B·F), C, h, w]`` → images ``[(B·F), 3, H, W]``, mixing the frames of each video."""

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
    ) -> None:
        super().__init__()
        channels = tuple(reversed(block_out_channels))  # deepest first
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.mid_block = MidBlockTemporalDecoder(channels[0], num_layers=layers_per_block)
        self.up_blocks = nn.ModuleList(
            UpBlockTemporalDecoder(
                channels[max(i - 1, 0)], channels[i], layers_per_block + 1, add_upsample=i < len(channels) - 1
            )
            for i in range(len(channels))
        )
        self.conv_norm_out = nn.GroupNorm(32, channels[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, kernel_size=3, padding=1)
        # Final smoothing across frames: a (3,1,1) conv on [B, 3, F, H, W].
        self.time_conv_out = TemporalConv(out_channels, out_channels)

    def forward(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        hidden = self.mid_block(self.conv_in(latents), num_frames)
        for block in self.up_blocks:
            hidden = block(hidden, num_frames)
        images = self.conv_out(F.silu(self.conv_norm_out(hidden)))  # [(B·F), 3, H, W]
        return video_to_images(self.time_conv_out(images_to_video(images, num_frames)))


class AutoencoderKLTemporalDecoder(PretrainedModel, video_vae.FrameEncodedVAE):
    """SVD's VAE: :meth:`encode` single images, :meth:`decode` whole videos.

    Memory savers, off by default (diffusers' class has neither): :meth:`enable_slicing` encodes one
    image and decodes one video at a time (the same numbers); :meth:`enable_tiling` encodes and
    decodes inputs larger than a tile as overlapping spatial tiles with cross-faded seams. A decoder
    tile spans every frame of the decode call, so frames are mixed exactly as untiled (within the
    call); tiled frames differ from untiled ones by what each tile cannot see (attention and group
    norms over the tile, not the frame). State: ``use_slicing``, ``use_tiling``,
    ``tile_sample_min_size`` (pixels), ``tile_latent_min_size`` (latent pixels), ``tile_overlap_factor``.
    """

    config_class = AutoencoderKLTemporalDecoderConfig
    config: AutoencoderKLTemporalDecoderConfig

    def __init__(self, config: AutoencoderKLTemporalDecoderConfig) -> None:
        super().__init__(config)
        self.encoder = Encoder(
            in_channels=config.in_channels,
            out_channels=config.latent_channels,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
        )
        self.decoder = TemporalDecoder(
            in_channels=config.latent_channels,
            out_channels=config.out_channels,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
        )
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, kernel_size=1)
        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_size, self.tile_overlap_factor, self.tile_latent_min_size = resolve_tile_options(
            self.default_tile_size, self.spatial_scale_factor, None, DEFAULT_OVERLAP, None
        )

    @classmethod
    def rename_legacy_keys(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename ``query`` / ``key`` / ``value`` / ``proj_attn`` of the encoder's mid-block attention.

        The encoder is SD's image encoder, whose attention older checkpoints stored under those names
        (the table is in :mod:`.legacy_keys`); the temporal decoder's attention never had them, so old
        names there stay unexpected keys, as in diffusers.
        """
        return rename_vae_attention(state, ("encoder.mid_block",))

    # ---- memory savers --------------------------------------------------------------------------

    @property
    def default_tile_size(self) -> int:
        """The image tile side :meth:`enable_tiling` uses by default: half of ``config.sample_size``
        (384 pixels released), rounded down to whole latent pixels, and at least eight of them (a
        smaller tile is mostly seam, and a sliver at the border would leave the decoder's group norms
        a single value per channel).

        Half, not the whole (as ``AutoencoderKL`` has it), because this decoder works on every frame of
        a chunk at once: at SVD-XT's 576 × 1024 a 768-pixel tile would cut the decode in only two
        tiles, while 384-pixel ones (48 latent pixels, a step of 36) hold a quarter of the frame each.
        """
        scale = self.spatial_scale_factor
        return max(self.config.sample_size // 2 // scale * scale, 8 * scale)

    def enable_tiling(
        self,
        tile_sample_min_size: int | None = None,
        tile_overlap_factor: float = DEFAULT_OVERLAP,
        tile_latent_min_size: int | None = None,
    ) -> None:
        """Encode / decode inputs larger than a tile as overlapping spatial tiles with cross-faded seams.

        ``tile_sample_min_size`` is the tile side in image pixels (default :attr:`default_tile_size`),
        a multiple of :attr:`spatial_scale_factor` (8 released); ``tile_latent_min_size`` the same
        side in latent pixels (give either, or both when they agree); ``tile_overlap_factor`` the
        fraction of a tile shared with each neighbour, over which the seam fades linearly from one
        tile into the next. Decoder memory then follows one tile (times the frames decoded
        together), not the frame. Seams are placed exactly (see
        :class:`~vidiff.models.vae_tiling.AlignedTileLayout`), unlike diffusers' 2-D tiling.
        """
        scale = self.spatial_scale_factor
        latent_given = isinstance(tile_latent_min_size, int) and not isinstance(tile_latent_min_size, bool)
        if tile_sample_min_size is None and latent_given and tile_latent_min_size > 0:
            tile_sample_min_size = tile_latent_min_size * scale  # else the check below names the latent tile
        sample_tile, overlap, latent_tile = resolve_tile_options(
            self.default_tile_size, scale, tile_sample_min_size, tile_overlap_factor, tile_latent_min_size
        )
        if sample_tile != latent_tile * scale:
            raise ValueError(
                f"tile_sample_min_size ({sample_tile} pixels) must be tile_latent_min_size ({latent_tile}) × "
                f"{scale}, this VAE's spatial scale: give one of them, or a multiple of {scale} pixels"
            )
        self.tile_sample_min_size, self.tile_overlap_factor, self.tile_latent_min_size = sample_tile, overlap, latent_tile
        self.use_tiling = True

    def disable_tiling(self) -> None:
        """Encode and decode every input whole again."""
        self.use_tiling = False

    # ---- encode / decode ------------------------------------------------------------------------

    def _moments(self, images: torch.Tensor) -> torch.Tensor:
        # [N, 3, H, W] → [N, 2C, H/8, W/8], tiled when tiling is on and a side exceeds a tile
        if self.use_tiling and max(images.shape[-2:]) > self.tile_sample_min_size:
            layout = AlignedTileLayout.for_scale(
                self.tile_latent_min_size, self.tile_overlap_factor, self.spatial_scale_factor, decode=False
            )
            return map_tiles(self._moments_whole, images, layout)
        return self._moments_whole(images)

    def _moments_whole(self, images: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(images))

    def _frames(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        # [N, C, h, w] (N / num_frames whole videos) → [N, 3, 8h, 8w]. A tile keeps all N frames, so
        # the temporal layers see the same frames as untiled; only the spatial extent is cut.
        if self.use_tiling and max(latents.shape[-2:]) > self.tile_latent_min_size:
            layout = AlignedTileLayout.for_scale(
                self.tile_latent_min_size, self.tile_overlap_factor, self.spatial_scale_factor, decode=True
            )
            return map_tiles(lambda tile: self.decoder(tile, num_frames), latents, layout)
        return self.decoder(latents, num_frames)

    def encode(self, images: torch.Tensor) -> LatentDistribution:
        """Images ``[N, in_channels, H, W]`` in [−1, 1] → the latent distribution over ``[N, C, H/8, W/8]``.

        Latents are unscaled: multiply by ``config.scaling_factor`` before diffusion.
        """
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"images must be [N, {self.config.in_channels}, H, W], got {tuple(images.shape)}"
            )
        images = images.to(self.quant_conv.weight.dtype)
        if self.use_slicing and images.shape[0] > 1:
            return LatentDistribution.from_moments(torch.cat([self._moments(one) for one in images.split(1)]))
        return LatentDistribution.from_moments(self._moments(images))

    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Latents ``[N, C, h, w]`` of ``N / num_frames`` whole videos → images ``[N, out_channels, 8h, 8w]``.

        Frames of a video must be consecutive; latents are unscaled (divide by ``scaling_factor`` first).
        """
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latents must be [N, {self.config.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        if num_frames < 1 or latents.shape[0] % num_frames:
            raise ValueError(
                f"num_frames must be ≥ 1 and divide the latent batch ({latents.shape[0]}), got {num_frames}"
            )
        latents = latents.to(self.quant_conv.weight.dtype)
        if self.use_slicing and latents.shape[0] > num_frames:
            return torch.cat([self._frames(video, num_frames) for video in latents.split(num_frames)])
        return self._frames(latents, num_frames)

    # ---- the video interface (vidiff.models.video_vae.VideoVAE; the rest in FrameEncodedVAE) ------

    def decode_video(
        self,
        latents: torch.Tensor,
        chunk_size: int | None = None,
        progress: video_vae.ChunkProgress | None = None,
    ) -> torch.Tensor:
        """Unscaled latents ``[B, C, F, h, w]`` → videos ``[B, out_channels, F, 8h, 8w]`` in this VAE's dtype.

        As in diffusers' SVD pipeline, the frames of all videos form one sequence cut into chunks of
        ``chunk_size`` frames (None: ``F``, so each video is one chunk), and each chunk is decoded
        as one temporal window, even when it spans two videos: the chunk size changes the output.
        ``progress`` wraps the chunk starts (e.g. tqdm).
        """
        video_vae.check_video("latents", latents, self.config.latent_channels)
        video_vae.check_chunk_size(chunk_size)
        chunk_size = latents.shape[2] if chunk_size is None else chunk_size

        def decode_window(frames: torch.Tensor) -> torch.Tensor:
            return self.decode(frames, num_frames=frames.shape[0])  # one chunk = one temporal window

        return video_vae.decode_frame_chunks(decode_window, latents.to(self.dtype), chunk_size, progress)
