"""What the Stable-Diffusion-family video pipelines share (AnimateDiff, I2VGen-XL).

Both condition on CLIP text states with classifier-free guidance, sample with a VP scheduler
(DDIM by default; Euler, Euler-ancestral, DPM-Solver++ and LCM may be swapped in), and decode
every frame on its own with a 2-D ``AutoencoderKL``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..diffusion.loop import SamplingPlan
from ..diffusion.schedulers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)
from ..models.clip_text import CLIPTextModel
from ..models.vae_kl import AutoencoderKL
from ..tokenizer import CLIPTokenizer
from . import arguments
from . import frames as frames_io
from . import prompts as prompt_io
from .base import Pipeline
from .noise import GeneratorInput, randn

logger = logging.getLogger(__name__)

CALLBACK_TENSOR_INPUTS = ("latents",)
# The schedulers these pipelines accept, keyed by the class name model_index.json writes.
SCHEDULERS = {
    cls.__name__: cls
    for cls in (
        DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler, LCMScheduler,
    )
}
Scheduler = DDIMScheduler | EulerDiscreteScheduler | EulerAncestralDiscreteScheduler | DPMSolverMultistepScheduler | LCMScheduler


class TextVideoPipeline(Pipeline):
    """Base of pipelines with ``tokenizer``, ``text_encoder``, a 2-D ``vae`` and a VP ``scheduler``."""

    # Whether ``clip_skip`` also applies to the negative prompt: I2VGen-XL does, AnimateDiff
    # (Stable Diffusion's encode_prompt) encodes the negative prompt from the last layer.
    clip_skip_negative: bool = False

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: Scheduler

    def _text_conditioning(
        self,
        prompt: prompt_io.PromptInput | None,
        negative_prompt: prompt_io.PromptInput | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        guided: bool,
        clip_skip: int | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt (and, with guidance, negative-prompt) states [N, L, D], one row per prompt, in the
        text encoder's dtype; the negative states are None without guidance."""
        prompt_io.check_prompt_arguments(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        if prompt_embeds is None:
            prompt_embeds = prompt_io.encode_prompts(
                self.tokenizer, self.text_encoder, prompt_io.as_prompt_list(prompt), clip_skip=clip_skip, device=device
            )
        prompt_embeds = prompt_embeds.to(device=device, dtype=self.text_encoder.dtype)
        if not guided:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            negatives = prompt_io.negative_prompt_list(negative_prompt, prompt_embeds.shape[0], prompt)
            negative_prompt_embeds = prompt_io.encode_prompts(
                self.tokenizer, self.text_encoder, negatives, device=device, max_length=prompt_embeds.shape[1],
                clip_skip=clip_skip if self.clip_skip_negative else None, argument="negative_prompt",
            )
        return prompt_embeds, negative_prompt_embeds.to(device=device, dtype=self.text_encoder.dtype)

    def _plan(self, num_inference_steps: int, eta: float, device: torch.device) -> SamplingPlan:
        """The scheduler's sampling plan; ``eta`` goes to DDIM and is ignored (with a warning) elsewhere."""
        if isinstance(self.scheduler, DDIMScheduler):
            return self.scheduler.plan(num_inference_steps, eta=eta, device=device)
        if eta:
            logger.warning("eta=%s is ignored: only DDIMScheduler uses it (the scheduler is %s)", eta, type(self.scheduler).__name__)
        return self.scheduler.plan(num_inference_steps, device=device)

    @staticmethod
    def _initial_latents(
        shape: Sequence[int], latents: torch.Tensor | None, generator: GeneratorInput, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """The caller's ``latents`` (checked against ``shape``) or fresh noise ``[B, C, F, h, w]``
        (diffusers draws these pipelines' latents in this layout too)."""
        if latents is not None:
            return arguments.given_latents(latents, shape, device, dtype)
        return randn(shape, generator, device=device, dtype=dtype)

    def _decode(self, latents: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        """[B, C, F, h, w] → [B, 3, F, H, W] in [-1, 1], ``chunk_size`` frames per VAE call (None: all).

        The image VAE decodes every frame on its own, so the chunk size changes memory, not the result.
        """
        batch, _, num_frames = latents.shape[:3]
        flat = latents.permute(0, 2, 1, 3, 4).flatten(0, 1) / self.vae.config.scaling_factor  # [B·F, C, h, w]
        flat = flat.to(self.vae.dtype)
        chunk_size = flat.shape[0] if chunk_size is None else chunk_size
        starts = range(0, flat.shape[0], chunk_size)
        pieces = [self.vae.decode(flat[i : i + chunk_size]) for i in self.progress_bar(starts, total=len(starts), desc="decoding")]
        frames = torch.cat(pieces).float()  # [B·F, 3, H, W]
        return frames.unflatten(0, (batch, num_frames)).permute(0, 2, 1, 3, 4)

    def _check_arguments(
        self, height, width, num_frames, steps, guidance_scale, eta, videos, chunk, output_type, tensor_inputs
    ) -> None:
        """Validate the call arguments both pipelines share; errors name the argument."""
        arguments.check_size(height, width, self.vae_scale_factor)
        arguments.check_counts(num_frames=num_frames, num_inference_steps=steps, num_videos_per_prompt=videos)
        if chunk is not None:
            arguments.check_counts(decode_chunk_size=chunk)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not 0 <= guidance_scale < float("inf"):
            raise ValueError(f"`guidance_scale` must be a finite number ≥ 0 (≤ 1 turns guidance off), got {guidance_scale!r}")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"`eta` must be in [0, 1] (0 = deterministic DDIM), got {eta!r}")
        frames_io.check_output_type(output_type)
        arguments.check_callback_inputs(tensor_inputs, CALLBACK_TENSOR_INPUTS)
