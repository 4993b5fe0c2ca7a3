"""What the Stable-Diffusion-family video pipelines share (AnimateDiff, I2VGen-XL).

Both condition on CLIP text states with classifier-free guidance, sample with any scheduler
(DDIM by default; Euler, Euler-ancestral, DPM-Solver++, LCM and PNDM may be swapped in), and decode
every frame on its own with a 2-D ``AutoencoderKL``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..diffusion.loop import SamplingPlan
from ..diffusion.noise import GeneratorInput, randn
from ..schedulers import SCHEDULERS, AnyScheduler
from ..models.clip_text import CLIPTextModel
from ..models.vae_kl import AutoencoderKL
from ..tokenizer import CLIPTokenizer
from . import arguments
from . import frames as frames_io
from . import prompts as prompt_io
from .base import Pipeline

logger = logging.getLogger(__name__)

CALLBACK_TENSOR_INPUTS = ("latents",)
# SCHEDULERS (every public scheduler) is what these pipelines accept.
__all__ = ["CALLBACK_TENSOR_INPUTS", "SCHEDULERS", "TextVideoPipeline"]


class TextVideoPipeline(Pipeline):
    """Base of pipelines with ``tokenizer``, ``text_encoder``, a 2-D ``vae`` and a VP ``scheduler``."""

    # Whether ``clip_skip`` also applies to the negative prompt: I2VGen-XL does, AnimateDiff
    # (Stable Diffusion's encode_prompt) encodes the negative prompt from the last layer.
    clip_skip_negative: bool = False

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: AnyScheduler

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
        """The scheduler's sampling plan; ``eta`` is asked for only when non-zero (a scheduler without
        η refuses it by name), so the default call suits every scheduler."""
        return self.scheduler.plan(num_inference_steps, eta=eta or None, device=device)

    @staticmethod
    def _initial_latents(
        shape: Sequence[int], latents: torch.Tensor | None, generator: GeneratorInput, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """The caller's ``latents`` (checked against ``shape``) or fresh noise ``[B, C, F, h, w]``
        (diffusers draws these pipelines' latents in this layout too)."""
        if latents is not None:
            return arguments.given_latents(latents, shape, device, dtype)
        return randn(shape, generator, device=device, dtype=dtype)

    def _check_arguments(
        self, height, width, num_frames, steps, guidance_scale, eta, videos, chunk, output_type, tensor_inputs
    ) -> None:
        """Validate the call arguments both pipelines share; errors name the argument."""
        arguments.check_size(height, width, self.vae_scale_factor)
        arguments.check_counts(num_frames=num_frames, num_inference_steps=steps, num_videos_per_prompt=videos)
        self._check_context_frames(num_frames)  # context windows: context_length ≤ num_frames
        if chunk is not None:
            arguments.check_counts(decode_chunk_size=chunk)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not 0 <= guidance_scale < float("inf"):
            raise ValueError(f"`guidance_scale` must be a finite number ≥ 0 (≤ 1 turns guidance off), got {guidance_scale!r}")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"`eta` must be in [0, 1] (0 = deterministic DDIM), got {eta!r}")
        frames_io.check_output_type(output_type)
        arguments.check_callback_inputs(tensor_inputs, CALLBACK_TENSOR_INPUTS)
