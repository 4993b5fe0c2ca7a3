"""FreeNoise for AnimateDiff (Qiu et al. 2023, "FreeNoise: Tuning-Free Longer Video Diffusion via
Noise Rescheduling"), with diffusers 0.42.1's API and numbers.

Two parts: the motion modules attend within overlapping windows of ``context_length`` frames and
fuse them (:mod:`vidiff.layers.free_noise`, switched on the UNet), and the initial noise repeats
shuffled blocks of frames so windows far apart start from related noise (:func:`free_noise_latents`).
Split inference bounds the activations of long videos by running the UNet's layers on slices.

diffusers traps reproduced here (see also :mod:`vidiff.layers.free_noise`):

- ``noise_type="repeat_context"`` draws exactly like ``"random"``: diffusers' guard compares
  ``context_length`` with the string ``"repeat_context"``, so it draws ``num_frames`` frames and
  the repetition that follows keeps them as they are;
- ``"shuffle_context"`` draws all frames first, then for each block of ``context_stride`` frames
  from ``context_length`` on, draws ``randperm(context_stride)`` from the generator and copies the
  permuted block ``context_length`` frames back into it, in place (so later blocks copy copies; a
  block running past the end is cut);
- given ``latents`` with all ``num_frames`` frames are used as they are (no shuffle, any noise type);
  with ``context_length`` frames they are tiled for ``"repeat_context"`` (diffusers crashes for the
  other noise types; vidiff raises a ValueError).

vidiff's own choices where diffusers fails or says otherwise: ``context_length=None`` reads the UNet
config's ``motion_max_seq_length`` (what diffusers documents; it raises instead); a
``context_length`` above that limit, an odd one with ``"delayed_reverse_sawtooth"`` (diffusers
crashes) and a ``context_stride`` above ``context_length`` (frames in no window) are ValueErrors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion.noise import GeneratorInput, randn
from ..diffusion.windows import WEIGHTINGS, window_weights
from . import arguments

NOISE_TYPES = ("shuffle_context", "repeat_context", "random")
# cb(start_frame, end_frame, start_tensor [1, L, D], end_tensor [1, L, D]) -> [end - start + 1, L, D]
PromptInterpolation = Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FreeNoiseSettings:
    """What :meth:`AnimateDiffFreeNoiseMixin.enable_free_noise` set (its arguments, checked)."""

    context_length: int
    context_stride: int
    weighting_scheme: str
    noise_type: str


class AnimateDiffFreeNoiseMixin:
    """FreeNoise switches for :class:`~vidiff.pipelines.animatediff.AnimateDiffPipeline` (diffusers' names)."""

    _free_noise: FreeNoiseSettings | None = None
    _free_noise_prompt_interpolation_callback: PromptInterpolation | None = None

    def enable_free_noise(
        self,
        context_length: int | None = 16,
        context_stride: int = 4,
        weighting_scheme: str = "pyramid",
        noise_type: str = "shuffle_context",
        prompt_interpolation_callback: PromptInterpolation | None = None,
    ) -> None:
        """Generate videos longer than the motion modules were trained on, with FreeNoise.

        Args:
            context_length: frames per attention window (None: the UNet config's
                ``motion_max_seq_length``); at most that limit. Calls need at least this many frames.
            context_stride: frames between the starts of consecutive windows, 1..``context_length``
                (16 and 4 denoise 24 frames as windows [0, 16), [4, 20), [8, 24)).
            weighting_scheme: how overlapping windows are averaged per frame: ``"flat"`` (all 1),
                ``"pyramid"`` (1, 2, …, 2, 1) or ``"delayed_reverse_sawtooth"`` (0.01 for the first
                half, then falling; needs an even ``context_length``).
            noise_type: initial noise: ``"shuffle_context"`` (blocks of ``context_stride`` frames
                repeat the frames ``context_length`` earlier, shuffled), ``"repeat_context"`` (as
                diffusers 0.42.1 computes it: the same as ``"random"``) or ``"random"``.
            prompt_interpolation_callback: ``cb(start_frame, end_frame, start_tensor, end_tensor)``
                returning the text states of frames ``start_frame..end_frame`` for prompt travel;
                None: linear interpolation.

        FreeNoise and context windows exclude each other: call ``disable_context_windows()`` first.
        """
        if getattr(self, "context_windows_enabled", False):
            raise ValueError("context windows are enabled; call disable_context_windows() before enable_free_noise()")
        limit = self.unet.config.motion_max_seq_length
        length = limit if context_length is None else context_length
        settings = _checked_settings(length, context_stride, weighting_scheme, noise_type, limit)
        if prompt_interpolation_callback is not None and not callable(prompt_interpolation_callback):
            raise TypeError(
                "`prompt_interpolation_callback` must be callable as cb(start_frame, end_frame, start_tensor, "
                f"end_tensor) or None, got {type(prompt_interpolation_callback).__name__}"
            )
        weights = window_weights(settings.context_length, settings.weighting_scheme)
        self.unet.set_free_noise_windows(settings.context_length, settings.context_stride, weights)
        self._free_noise = settings
        self._free_noise_prompt_interpolation_callback = prompt_interpolation_callback

    def disable_free_noise(self) -> None:
        """Back to plain AnimateDiff: no windows, no shuffled noise, and no split inference either."""
        self.unet.set_free_noise_windows(None)
        self.disable_free_noise_split_inference()
        self._free_noise = None
        self._free_noise_prompt_interpolation_callback = None

    @property
    def free_noise_enabled(self) -> bool:
        """Whether :meth:`enable_free_noise` is in effect."""
        return self._free_noise is not None

    def enable_free_noise_split_inference(self, spatial_split_size: int = 256, temporal_split_size: int = 16) -> None:
        """Bound the UNet's activations by running its layers on slices; the frames do not change.

        Args:
            spatial_split_size: pixel sequences ``[(B·H·W), F, C]`` per slice in the motion modules
                (``proj_in``, transformer blocks, ``proj_out``).
            temporal_split_size: images ``[(B·F), C, H, W]`` per slice in the resnets, image
                transformers and down/up samplers.

        Undone by :meth:`disable_free_noise_split_inference` or :meth:`disable_free_noise`.
        """
        arguments.check_counts(spatial_split_size=spatial_split_size, temporal_split_size=temporal_split_size)
        self.unet.set_split_inference(spatial_split_size, temporal_split_size)

    def disable_free_noise_split_inference(self) -> None:
        """Run the UNet's layers unsplit again."""
        self.unet.set_split_inference(None, None)

    # ------------------------------------------------------------------ hooks of __call__
    def _check_arguments(self, height, width, num_frames, *rest) -> None:
        super()._check_arguments(height, width, num_frames, *rest)  # type: ignore[misc]
        length = None if self._free_noise is None else self._free_noise.context_length
        if length is not None and isinstance(num_frames, int) and num_frames < length:
            raise ValueError(
                f"num_frames={num_frames} is less than the FreeNoise context_length={length}; "
                "generate at least that many frames or enable_free_noise with a smaller context_length"
            )

    def _prepare_initial_latents(
        self,
        shape: Sequence[int],
        latents: torch.Tensor | None,
        generator: GeneratorInput,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Initial latents ``[B, C, F, h, w]`` (unscaled): FreeNoise's when it is on, else the plain ones."""
        if self._free_noise is None:
            return self._initial_latents(shape, latents, generator, device, dtype)  # type: ignore[attr-defined]
        return free_noise_latents(self._free_noise, shape, latents, generator, device, dtype)


def _checked_settings(
    context_length: object, context_stride: object, weighting_scheme: object, noise_type: object, limit: int
) -> FreeNoiseSettings:
    for name, value in (("context_length", context_length), ("context_stride", context_stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    if context_length > limit:
        raise ValueError(
            f"`context_length`={context_length} exceeds the motion modules' motion_max_seq_length={limit}; "
            f"use at most {limit} (or None for exactly that)"
        )
    if context_stride > context_length:
        raise ValueError(
            f"`context_stride`={context_stride} must not exceed `context_length`={context_length}, or frames fall "
            "between the windows"
        )
    if weighting_scheme not in WEIGHTINGS:
        raise ValueError(f"`weighting_scheme` must be one of {list(WEIGHTINGS)}, got {weighting_scheme!r}")
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"`noise_type` must be one of {list(NOISE_TYPES)}, got {noise_type!r}")
    if weighting_scheme == "delayed_reverse_sawtooth" and context_length % 2:
        raise ValueError(
            f"weighting_scheme='delayed_reverse_sawtooth' needs an even `context_length`, got {context_length}"
        )
    return FreeNoiseSettings(context_length, context_stride, weighting_scheme, noise_type)


def free_noise_latents(
    settings: FreeNoiseSettings,
    shape: Sequence[int],
    latents: torch.Tensor | None,
    generator: GeneratorInput,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """FreeNoise's initial latents ``shape`` = ``[B, C, F, h, w]`` (before the scheduler's scaling).

    Given ``latents`` with ``F`` frames are used as they are; with ``context_length`` frames (only for
    ``noise_type="repeat_context"``) they are tiled over the video. Otherwise all ``F`` frames are
    drawn from ``generator`` and, for ``"shuffle_context"``, shuffled block by block (see the module
    docstring). The permutations come from the generator that drew the noise: ``torch.randperm`` for
    a torch generator (or torch's global RNG for None), ``Generator.permutation`` for a numpy one; a
    list of one generator per video shuffles each video with its own generator.
    """
    num_frames = shape[2]
    if latents is not None:
        return _given_latents(settings, shape, latents, device, dtype)
    noise = randn(shape, generator, device=device, dtype=dtype)  # all F frames, whatever the noise type
    if settings.noise_type != "shuffle_context":
        return noise  # "repeat_context" included: diffusers' guard never repeats a drawn context
    if isinstance(generator, (list, tuple)) and len(generator) > 1:
        for video, video_generator in zip(noise, generator):  # video [C, F, h, w], a view into noise
            _shuffle_blocks(video.unsqueeze(0), settings, num_frames, video_generator)
    else:
        single = generator[0] if isinstance(generator, (list, tuple)) else generator
        _shuffle_blocks(noise, settings, num_frames, single)
    return noise


def _given_latents(
    settings: FreeNoiseSettings, shape: Sequence[int], latents: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    num_frames, length = shape[2], settings.context_length
    frames = latents.shape[2] if isinstance(latents, torch.Tensor) and latents.ndim == 5 else None
    if frames == length and frames != num_frames:
        if settings.noise_type != "repeat_context":
            raise ValueError(
                f"`latents` with context_length={length} frames are tiled only for noise_type='repeat_context' "
                f"(this pipeline has noise_type={settings.noise_type!r}); pass all num_frames={num_frames} frames"
            )
        context = arguments.given_latents(latents, (*shape[:2], length, *shape[3:]), device, dtype)
        repeats = -(-num_frames // length)  # ceil
        return torch.cat([context] * repeats, dim=2)[:, :, :num_frames]
    if frames not in (None, num_frames):
        raise ValueError(
            f"`latents` under FreeNoise must have num_frames={num_frames} frames (or context_length={length} with "
            f"noise_type='repeat_context'), got shape {list(latents.shape)}"
        )
    return arguments.given_latents(latents, shape, device, dtype)


def _shuffle_blocks(
    noise: torch.Tensor,
    settings: FreeNoiseSettings,
    num_frames: int,
    generator: torch.Generator | np.random.Generator | None,
) -> None:
    """Copy shuffled earlier frames into each block of ``context_stride`` frames, in place.

    ``noise`` ``[B, C, F, h, w]``. Block ``[i, i + stride)`` for ``i = L, L + stride, …`` receives
    frames ``[i - L, i - L + stride)`` in a fresh random order (one permutation per block, shared
    by the batch), cut at ``F``.
    """
    length, stride = settings.context_length, settings.context_stride
    for start in range(length, num_frames, stride):
        source_start = start - length  # ≥ 0 since start ≥ L
        source_stop = min(num_frames, source_start + stride)
        order = _permutation(source_stop - source_start, generator)
        sources = (torch.arange(source_start, source_stop)[order])[: min(num_frames, start + stride) - start]
        noise[:, :, start : start + sources.numel()] = noise[:, :, sources.to(noise.device)]


def _permutation(count: int, generator: torch.Generator | np.random.Generator | None) -> torch.Tensor:
    """A random order of ``count`` items drawn from ``generator`` (one draw, as diffusers makes it)."""
    if isinstance(generator, np.random.Generator):
        return torch.from_numpy(generator.permutation(count))
    if generator is None:
        return torch.randperm(count)
    return torch.randperm(count, generator=generator, device=generator.device).cpu()
