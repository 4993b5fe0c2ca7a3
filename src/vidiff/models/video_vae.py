"""The one video-VAE interface: videos ``[B, 3, F, H, W]`` ↔ latents ``[B, C, f, h, w]``.

Every VAE a pipeline uses offers, beside diffusers' image API (``encode`` / ``decode`` on image
batches ``[N, C, H, W]``, kept as diffusers has it), the members of :class:`VideoVAE`:

* ``encode_video(video)`` → a :class:`~vidiff.models.vae.LatentDistribution` over ``[B, C, f, h, w]``;
* ``decode_video(latents, chunk_size=None, progress=None)`` → ``[B, 3, F, H, W]``;
* ``latent_shape(num_frames, height, width)`` → ``(C, f, h, w)``;
* ``spatial_scale_factor`` (pixels per latent cell along each side) and ``temporal_scale_factor``
  (frames per latent frame after the first: 1 for image VAEs, 4 for a causal video VAE such as
  Wan's, where the first frame has a latent frame of its own: f = (F − 1) / t + 1).

Latents are unscaled on both sides (pipelines apply ``config.scaling_factor``). The video methods
have names of their own rather than dispatching on the input's rank: diffusers' image ``decode``
of SVD's VAE takes ``num_frames`` as its second argument, where ``decode_video`` takes ``chunk_size``.

Image VAEs sit behind the interface frame by frame through :func:`encode_frames` and
:func:`decode_frame_chunks`. :func:`upcast_if_forced` gives a float32 twin of an fp16 VAE that asks
for it (``force_upcast``) without touching the module other code shares.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from ..layers.frames import images_to_video, video_to_images
from .vae import LatentDistribution

# Wraps the sequence of chunk starts the decoder walks through (e.g. in a tqdm bar).
ChunkProgress = Callable[[Sequence[int]], Iterable[int]]
M = TypeVar("M", bound=nn.Module)


@runtime_checkable
class VideoVAE(Protocol):
    """What pipelines use of a VAE; see the module docstring for the contract."""

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def spatial_scale_factor(self) -> int: ...

    @property
    def temporal_scale_factor(self) -> int: ...

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]: ...

    def encode_video(self, video: torch.Tensor) -> LatentDistribution: ...

    def decode_video(
        self, latents: torch.Tensor, chunk_size: int | None = None, progress: ChunkProgress | None = None
    ) -> torch.Tensor: ...


class FrameEncodedVAE:
    """The interface members shared by VAEs whose encoder is 2-D (every frame on its own, no time
    compression): vidiff's ``AutoencoderKL`` and SVD's ``AutoencoderKLTemporalDecoder``.

    A host class has a ``config`` with ``block_out_channels``, ``latent_channels`` and
    ``in_channels``, and diffusers' image ``encode``; it writes its own ``decode_video``.
    """

    config: object
    use_slicing: bool

    def enable_slicing(self) -> None:
        """Encode one image and decode one batch entry (SVD: one video) at a time: the same numbers,
        less peak memory."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        """Encode and decode whole batches at once again."""
        self.use_slicing = False

    @property
    def spatial_scale_factor(self) -> int:
        """Image pixels per latent cell along each side: 2 per down block after the first (8 released)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def temporal_scale_factor(self) -> int:
        """1: one latent frame per frame."""
        return 1

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(latent_channels, num_frames, height // s, width // s)``, s = :attr:`spatial_scale_factor`."""
        return latent_shape(self.config.latent_channels, self.spatial_scale_factor, 1, num_frames, height, width)

    def encode_video(self, video: torch.Tensor) -> LatentDistribution:
        """Videos ``[B, in_channels, F, H, W]`` in [−1, 1] → the Gaussian over ``[B, C, F, H/s, W/s]``.

        Every frame is encoded on its own (an image VAE's slicing and tiling apply); latents are unscaled.
        """
        check_video("video", video, self.config.in_channels)
        return encode_frames(self.encode, video)


def check_video(name: str, video: torch.Tensor, channels: int) -> None:
    """``video`` must be a 5-D ``[B, channels, F, H, W]`` tensor; the error names ``name``."""
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, {channels}, F, H, W], got {type(video).__name__}")
    if video.ndim != 5 or video.shape[1] != channels:
        hint = " (for an image batch [N, C, H, W] use encode/decode)" if video.ndim == 4 else ""
        raise ValueError(f"{name} must be [B, {channels}, F, H, W], got {tuple(video.shape)}{hint}")


def check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int (latent frames per decoder call) or None, got {chunk_size!r}")


def latent_shape(
    channels: int, spatial_scale_factor: int, temporal_scale_factor: int, num_frames: int, height: int, width: int
) -> tuple[int, int, int, int]:
    """``(C, f, h, w)`` for a video of ``num_frames`` frames of ``height × width`` pixels.

    ``f = (F − 1) / t + 1`` (``F`` for t = 1); ``num_frames − 1`` must be a multiple of ``t``, since
    a causal VAE decodes ``f`` latent frames to ``t·(f − 1) + 1`` frames. Pixels round down (h = ⌊H / s⌋),
    as diffusers' pipelines do; the pipelines check that sizes are multiples of ``s`` first.
    """
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if (num_frames - 1) % temporal_scale_factor:
        raise ValueError(
            f"num_frames must be {temporal_scale_factor}·k + 1 for this VAE (it compresses time "
            f"{temporal_scale_factor}×), e.g. {num_frames - (num_frames - 1) % temporal_scale_factor}; got {num_frames}"
        )
    latent_frames = (num_frames - 1) // temporal_scale_factor + 1
    return channels, latent_frames, height // spatial_scale_factor, width // spatial_scale_factor


def encode_frames(
    encode_images: Callable[[torch.Tensor], LatentDistribution], video: torch.Tensor
) -> LatentDistribution:
    """An image VAE over a video: ``[B, 3, F, H, W]`` → one batch of frames → a Gaussian over ``[B, C, F, h, w]``.

    All ``B·F`` frames go through ``encode_images`` as one image batch (the image VAE's slicing
    and tiling apply to it); mean and log-variance come back as strided views in video layout.
    """
    num_frames = video.shape[2]
    distribution = encode_images(video_to_images(video))  # over [(B·F), C, h, w]
    return LatentDistribution(
        images_to_video(distribution.mean, num_frames), images_to_video(distribution.logvar, num_frames)
    )


def decode_frame_chunks(
    decode_images: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    chunk_size: int | None,
    progress: ChunkProgress | None = None,
) -> torch.Tensor:
    """``[B, C, F, h, w]`` → ``[B, 3, F, H, W]``, ``chunk_size`` frames per ``decode_images`` call.

    The frames of all videos form one sequence ``[(B·F), C, h, w]`` (video-major) that is cut into
    consecutive chunks (None: one chunk); a chunk may span two videos. For a per-frame decoder
    that only trades memory for calls; SVD's temporal decoder treats each chunk as one window of
    frames, so there it changes the output (as in diffusers).
    """
    num_frames = latents.shape[2]
    frames = video_to_images(latents)  # [(B·F), C, h, w]
    chunk_size = frames.shape[0] if chunk_size is None else chunk_size
    starts: Iterable[int] = range(0, frames.shape[0], chunk_size)
    if progress is not None:
        starts = progress(starts)
    images = torch.cat([decode_images(frames[start : start + chunk_size]) for start in starts])
    return images_to_video(images, num_frames)  # [B, 3, F, H, W], a strided view


def float32_copy(module: M) -> M:
    """A copy of ``module`` with float32 copies of its floating parameters and buffers.

    ``module`` itself is only read: its tensors keep their dtype, identity and attribute slots, so
    other code holding or running it never sees a cast, even while the copy runs or if it fails.
    The copy is made by deep-copying with the float32 tensors already in the memo, so the
    original-precision tensors are never duplicated; tied weights stay tied.
    """
    memo: dict[int, object] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if id(tensor) in memo or not tensor.is_floating_point():
            continue
        upcast = tensor.detach().to(torch.float32, copy=True)
        memo[id(tensor)] = nn.Parameter(upcast, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else upcast
    return copy.deepcopy(module, memo)


def upcast_if_forced(vae: M) -> M:
    """``vae`` itself, or a float32 copy of it when it is float16 and its config sets ``force_upcast``.

    Released SD / SVD VAEs overflow in float16 on some inputs, which ``force_upcast`` marks; the
    copy leaves the shared module untouched (see :func:`float32_copy`).
    """
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return float32_copy(vae)
    return vae
