"""Video-to-video: start the one loop part-way, from the user's video encoded and noised to that level.

``strength`` s in (0, 1] says how much of the schedule runs: with ``N = num_inference_steps`` the
plan keeps its last ``min(int(N·s), N)`` steps (diffusers' ``get_timesteps``); with
``enforce_inference_steps=True`` it plans ``int(N / s)`` steps and keeps the last ``N``, so exactly
N steps run. The video's latents are noised to the first kept step's level with the scheduler's
forward process (VP: ``sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·n``; σ-space: ``x0 + σ·n``).

Random draws, in diffusers 0.42.1's order (so torch generators give its numbers):

1. per video, per chunk of ``decode_chunk_size`` frames, one VAE posterior sample ``[n, 4, h, w]``
   (a list of generators: video b draws from generator b);
2. the added noise, drawn as ``[B, F, C, h, w]`` (frames before channels) and permuted.

Given ``latents`` are used as they are (already noised; nothing is drawn), or with
``enforce_inference_steps=True`` noised with a ``[B, C, F, h, w]`` draw, as diffusers does.
"""

from __future__ import annotations

from typing import Any

import torch

from ..diffusion import free_init as forward_process
from ..diffusion.loop import SamplingPlan
from ..diffusion.noise import GeneratorInput, randn
from ..diffusion.plan import strength_start
from . import arguments


def check_strength(strength: Any) -> None:
    """ValueError naming ``strength`` unless it is a number in (0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(
            f"`strength` must be a number in (0, 1] (1 = ignore the video's content, small = stay close to it), got {strength!r}"
        )


class VideoToVideoMixin:
    """The strength-cut plan and the noised video latents for video-to-video pipelines."""

    scheduler: Any
    vae: Any

    def _strength_plan(
        self,
        num_inference_steps: int,
        strength: float,
        enforce_inference_steps: bool,
        timesteps: Any,
        sigmas: Any,
        eta: float,
        device: torch.device,
    ) -> SamplingPlan:
        """The plan the loop runs: the scheduler's plan (``timesteps`` / ``sigmas`` if given, else the
        step count) with its first steps cut as ``strength`` says (see the module docstring)."""
        check_strength(strength)
        if not isinstance(enforce_inference_steps, bool):
            raise TypeError(f"`enforce_inference_steps` must be True or False, got {enforce_inference_steps!r}")
        if timesteps is not None and sigmas is not None:
            raise ValueError("Pass at most one of `timesteps` and `sigmas`, not both")
        custom = timesteps is not None or sigmas is not None
        steps = None if custom else (int(num_inference_steps / strength) if enforce_inference_steps else num_inference_steps)
        options = dict(timesteps=timesteps, sigmas=sigmas, eta=eta or None, device=device)
        full = self.scheduler.plan(steps, **options)
        if enforce_inference_steps:  # the last num_inference_steps evaluations
            start = max(full.num_steps - num_inference_steps, 0)
        else:  # of N steps (a custom schedule's length; PNDM's N + 1 evaluations count as N) skip N − int(N·s)
            start = strength_start(full.num_steps if custom else num_inference_steps, strength)
        try:
            return self.scheduler.plan_tail(steps, start, **options)
        except ValueError as err:
            raise ValueError(f"video-to-video needs a scheduler that can start part-way: {err}") from None

    def _video_latents(
        self,
        pixels: torch.Tensor | None,
        plan: SamplingPlan,
        generator: GeneratorInput,
        latents: torch.Tensor | None,
        enforce_inference_steps: bool,
        chunk_size: int,
        shape: tuple[int, ...],
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The loop's initial latents ``shape`` = ``[B, C, F, h, w]``, noised to ``plan``'s first level.

        ``pixels``: the videos ``[B, 3, F, H, W]`` in [-1, 1] (None when ``latents`` are given).
        """
        if latents is not None:
            latents = arguments.given_latents(latents, shape, device, dtype)
            if not enforce_inference_steps:
                return latents
            return self._add_noise(latents, randn(shape, generator, device=device, dtype=dtype), plan)
        clean = self._encode_videos(pixels.to(device=device, dtype=self.vae.dtype), generator, chunk_size).to(dtype)
        noise = randn(shape, generator, device=device, dtype=dtype, frames_first=True)
        return self._add_noise(clean, noise, plan)

    def _encode_videos(self, pixels: torch.Tensor, generator: GeneratorInput, chunk_size: int) -> torch.Tensor:
        """Videos ``[B, 3, F, H, W]`` in [-1, 1] → scaled latents ``[B, 4, F, h, w]``, one posterior
        sample per video per chunk of ``chunk_size`` frames, drawn in that order."""
        videos = []
        for index, video in enumerate(pixels.permute(0, 2, 1, 3, 4)):  # video [F, 3, H, W]
            video_generator = generator[index] if isinstance(generator, (list, tuple)) and len(generator) > 1 else generator
            chunks = []
            for start in range(0, video.shape[0], chunk_size):
                distribution = self.vae.encode(video[start : start + chunk_size])  # over [n, 4, h, w]
                noise = randn(distribution.mean.shape, video_generator, device=video.device, dtype=distribution.mean.dtype)
                chunks.append(distribution.sample(noise))
            videos.append(torch.cat(chunks))  # [F, 4, h, w]
        return torch.stack(videos).permute(0, 2, 1, 3, 4) * self.vae.config.scaling_factor

    @staticmethod
    def _add_noise(clean: torch.Tensor, noise: torch.Tensor, plan: SamplingPlan) -> torch.Tensor:
        """``clean`` latents diffused to the plan's first noise level with ``noise`` (same shape)."""
        if plan.parameterization.space == "vp":
            return forward_process.diffuse_vp(clean, noise, plan.alphas_cumprod[0])
        return forward_process.diffuse_ve(clean, noise, plan.sigmas[0])
