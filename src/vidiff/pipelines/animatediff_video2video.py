"""AnimateDiff video-to-video: restyle an existing clip (diffusers' ``AnimateDiffVideoToVideoPipeline``).

The clip is resized to the output size, VAE-encoded frame by frame, noised to the level ``strength``
picks and denoised with the prompt by the one loop (:mod:`.video_to_video` holds the plan cut and
the draws). FreeNoise, context windows, FreeInit and prompt travel work as in text-to-video.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..diffusion.guidance import ClassifierFreeGuidance, NoGuidance
from ..diffusion.noise import GeneratorInput, check_generator, seeded_noise
from . import frames as frames_io
from .animatediff import AddInputs, AnimateDiffPipeline
from .text_video import CALLBACK_TENSOR_INPUTS
from .video_input import videos_to_tensor
from .video_to_video import VideoToVideoMixin, check_strength


class AnimateDiffVideoToVideoPipeline(VideoToVideoMixin, AnimateDiffPipeline):
    """Video-to-video with AnimateDiff; components and loading as :class:`AnimateDiffPipeline`::

        pipe = AnimateDiffVideoToVideoPipeline.from_pretrained(base, motion_adapter=adapter)
        out = pipe(video=load_video("dance.mp4"), prompt="a marble statue dancing", strength=0.6)
    """

    @torch.no_grad()
    def __call__(
        self,
        video: Any = None,
        prompt: str | Sequence[str] | Mapping[int, str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        enforce_inference_steps: bool = False,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
        guidance_scale: float = 7.5,
        strength: float = 0.8,
        negative_prompt: str | Sequence[str] | Mapping[int, str] | None = None,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: GeneratorInput = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: Sequence[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = CALLBACK_TENSOR_INPUTS,
        decode_chunk_size: int = 16,
    ) -> frames_io.VideoPipelineOutput | Any:
        """Re-render ``video`` following ``prompt``; the result has the video's frame count.

        Args:
            video: the clip: a list of frames (PIL images, as ``load_video`` returns; or ``[H, W, 3]``
                arrays / ``[3, H, W]`` tensors in [0, 1]), a ``[F, H, W, 3]`` array or ``[F, 3, H, W]``
                tensor; or a list of clips, one per prompt. Resized to ``height`` × ``width``.
            height, width: output size in pixels, multiples of 8 (default: the UNet's, 512 for SD 1.5).
            num_inference_steps: the schedule's steps (50); ``strength`` decides how many run.
            enforce_inference_steps: run exactly ``num_inference_steps`` steps, taken from the end of an
                ``int(num_inference_steps / strength)``-step schedule (False).
            timesteps / sigmas: a custom schedule instead (schedulers that take one), cut the same way.
            strength: in (0, 1]: how far the video is noised, so how much may change (0.8); 1 ignores it.
            latents: already-noised latents ``[B, 4, F, H/8, W/8]`` instead of ``video`` (used as they are,
                or noised again with ``enforce_inference_steps``).
            decode_chunk_size: frames per VAE call when encoding the clip and decoding the result (16);
                with a torch generator, one posterior sample is drawn per chunk, as diffusers does.

        The other arguments are :class:`AnimateDiffPipeline`'s (``prompt`` may be a prompt-travel dict).
        """
        with self._lora_scale(cross_attention_kwargs):  # LoRA scale for this call
            return self._generate_from_video(
                video=video, prompt=prompt, height=height, width=width, num_inference_steps=num_inference_steps,
                enforce_inference_steps=enforce_inference_steps, timesteps=timesteps, sigmas=sigmas,
                guidance_scale=guidance_scale, strength=strength, negative_prompt=negative_prompt,
                num_videos_per_prompt=num_videos_per_prompt, eta=eta, generator=generator, latents=latents,
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, output_type=output_type,
                return_dict=return_dict, clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, decode_chunk_size=decode_chunk_size,
                ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            )

    def _generate_from_video(
        self, *, video, prompt, height, width, num_inference_steps, enforce_inference_steps, timesteps, sigmas,
        guidance_scale, strength, negative_prompt, num_videos_per_prompt, eta, generator, latents, prompt_embeds,
        negative_prompt_embeds, output_type, return_dict, clip_skip, callback_on_step_end,
        callback_on_step_end_tensor_inputs, decode_chunk_size, add_inputs: AddInputs | None = None,
        ip_adapter_image: Any = None, ip_adapter_image_embeds: Any = None,
    ) -> frames_io.VideoPipelineOutput | Any:
        """The body of ``__call__``; ``add_inputs`` as in ``AnimateDiffPipeline._generate`` (called
        after the video latents are drawn)."""
        height, width = self._default_size(height, width)
        pixels, num_frames = self._input_video(video, latents, height, width)
        self._check_video_fits_free_noise(num_frames, "video" if latents is None else "latents")
        self._check_arguments(
            height, width, num_frames, num_inference_steps, guidance_scale, eta, num_videos_per_prompt,
            decode_chunk_size, output_type, callback_on_step_end_tensor_inputs,
        )
        check_strength(strength)
        guided = guidance_scale > 1
        device, dtype = self.device, self.dtype
        cond, uncond = self._text_inputs(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, clip_skip, device, num_frames,
            num_videos_per_prompt,
        )
        self._add_ip_adapter_inputs(cond, uncond, ip_adapter_image, ip_adapter_image_embeds, num_videos_per_prompt, device)
        batch_size = next(iter(cond.values())).shape[0]
        check_generator(generator, batch_size)

        def plan_for(steps: int):
            return self._strength_plan(steps, strength, enforce_inference_steps, timesteps, sigmas, eta, device)

        plan = plan_for(num_inference_steps)
        if pixels is not None:
            pixels = _videos_for_batch(pixels, batch_size // num_videos_per_prompt, num_videos_per_prompt) * 2 - 1
        shape = (batch_size, *self.vae.latent_shape(num_frames, height, width))  # [B, C, F, h, w]
        latents = self._video_latents(
            pixels, plan, generator, latents, enforce_inference_steps, decode_chunk_size, shape, device, dtype
        )
        if add_inputs is not None:
            add_inputs(cond, uncond, plan, num_frames, height, width)
        latents = self._denoise(
            latents, plan, cond, uncond, ClassifierFreeGuidance(guidance_scale) if guided else NoGuidance(),
            callback_on_step_end, callback_on_step_end_tensor_inputs,
            noise=seeded_noise(generator, device, latents.dtype), replan=plan_for, num_inference_steps=num_inference_steps,
        )
        return self._finish(latents, output_type, return_dict, decode_chunk_size)

    def _check_video_fits_free_noise(self, num_frames: int, argument: str) -> None:
        """The output has the video's frame count, so FreeNoise needs at least a window's worth of them."""
        free_noise = getattr(self, "_free_noise", None)
        if free_noise is not None and num_frames < free_noise.context_length:
            raise ValueError(
                f"`{argument}` has {num_frames} frames, fewer than the FreeNoise context_length="
                f"{free_noise.context_length}; give a longer video or enable_free_noise with context_length ≤ {num_frames}"
            )

    @staticmethod
    def _input_video(video: Any, latents: Any, height: int, width: int) -> tuple[torch.Tensor | None, int]:
        """The clip(s) as ``[V, 3, F, H, W]`` in [0, 1] (None when ``latents`` are given) and the frame count."""
        if video is not None and latents is not None:
            raise ValueError("Pass either `video` or (already noised) `latents`, not both")
        if latents is not None:
            if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
                shape = list(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"`latents` must be a tensor [B, 4, F, H/8, W/8], got {shape}")
            return None, latents.shape[2]
        if video is None:
            raise ValueError("`video` is required: the clip to re-render (a list of frames, e.g. from vidiff.load_video)")
        pixels = videos_to_tensor(video, height, width, "video")
        return pixels, pixels.shape[2]


def _videos_for_batch(pixels: torch.Tensor, num_prompts: int, per_prompt: int) -> torch.Tensor:
    """``[V, 3, F, H, W]`` → one clip per video made: V = 1 serves every prompt, else one clip per prompt."""
    count = pixels.shape[0]
    if count not in (1, num_prompts):
        raise ValueError(f"`video` holds {count} clips for {num_prompts} prompts; give one clip, or one per prompt")
    if count == 1:
        pixels = pixels.expand(num_prompts, *pixels.shape[1:])
    return pixels.repeat_interleave(per_prompt, dim=0)
