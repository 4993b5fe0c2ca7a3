"""Wan text-to-video: ``WanPipeline`` (Wan 2.1 T2V 1.3B/14B, Wan 2.2 T2V A14B and TI2V 5B from text).

Flow: clean and UMT5-encode the prompt (and, with guidance, the negative prompt) to 512 zero-padded
states; draw float32 noise [B, C, (F − 1)/4 + 1, H/s, W/s] (the only random draw); run the one
denoising loop (flow-matching UniPC by default) with the transformer — or the two experts of Wan 2.2
A14B — and classifier-free guidance; de-normalise with the VAE's latent mean/std and decode. Numbers
match diffusers' ``WanPipeline`` on the same weights and draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..diffusion.noise import GeneratorInput
from . import frames as frames_io
from .prompts import PromptInput
from .wan_base import CALLBACK_TENSOR_INPUTS, WanPipelineBase, per_video
from .wan_prompts import DEFAULT_MAX_SEQUENCE_LENGTH


class WanPipeline(WanPipelineBase):
    """Text-to-video with Wan; loads e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``.

    Components: ``tokenizer`` (UMT5's), ``text_encoder`` (UMT5EncoderModel), ``vae``
    (AutoencoderKLWan), ``scheduler`` (UniPCMultistepScheduler in flow form as released, or
    FlowMatchEulerDiscreteScheduler), ``transformer`` and, for Wan 2.2 A14B, ``transformer_2``
    (WanTransformer3DModel). Settings from model_index.json: ``boundary_ratio`` (two experts) and
    ``expand_timesteps`` (Wan 2.2 TI2V's per-token timesteps).
    """

    # cond/uncond: "text" [B, L, D] per video (no frame axis).
    frame_axes: dict[str, int] = {}

    @torch.no_grad()
    def __call__(
        self,
        prompt: PromptInput | None = None,
        negative_prompt: PromptInput | None = None,
        height: int = 480,
        width: int = 832,
        num_frames: int = 81,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: GeneratorInput = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = CALLBACK_TENSOR_INPUTS,
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
    ) -> frames_io.VideoPipelineOutput | Any:
        """Generate ``num_frames`` frames that follow ``prompt``.

        Args:
            prompt: text or list of texts (or ``prompt_embeds`` instead); cleaned as the module
                :mod:`vidiff.pipelines.wan_prompts` says, truncated (with a warning) past
                ``max_sequence_length`` tokens.
            negative_prompt: what to steer away from (text or one per prompt; default ""); used only
                with guidance. ``negative_prompt_embeds``: precomputed instead.
            height, width: output size in pixels (480 × 832): multiples of the VAE factor × the
                patch size (16; 32 for Wan 2.2 TI2V). Other sizes are refused with the nearest valid ones.
            num_frames: frames per video (81); must be 4k + 1, others are rounded down with a warning.
            num_inference_steps: denoising steps (50).
            guidance_scale: classifier-free guidance weight (5.0); guidance is off at ≤ 1.
            guidance_scale_2: the low-noise expert's weight (two-expert checkpoints only; default:
                ``guidance_scale``).
            num_videos_per_prompt: videos per prompt (1).
            generator: torch or numpy generator, or a list of one per video. It draws the initial
                latents only; torch reproduces diffusers' numbers, numpy the same video on any device.
            latents: initial noise ``[B, C, (F − 1)/4 + 1, H/s, W/s]`` (B = prompts × videos per prompt).
            prompt_embeds / negative_prompt_embeds: UMT5 states ``[N, L, D]`` (zero-padded as above).
            output_type: ``"np"`` (default, as diffusers' Wan), ``"pil"``, ``"pt"`` or ``"latent"``.
            return_dict: return a VideoPipelineOutput (True) or the tuple ``(frames,)``.
            attention_kwargs: accepted for diffusers compatibility; must be None or empty (vidiff's
                Wan has no attention processors to pass it to; LoRA scales are not supported for Wan yet).
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict``; a returned
                ``"latents"`` replaces the latents.
            max_sequence_length: text tokens per prompt, padded with zero states (512).
        """
        self._check_call(
            height, width, num_inference_steps, guidance_scale, guidance_scale_2, num_videos_per_prompt,
            output_type, callback_on_step_end_tensor_inputs, max_sequence_length, attention_kwargs,
        )
        num_frames = self._frame_count(num_frames)
        batch_size = self._num_prompts(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds) * num_videos_per_prompt
        shape = self._latent_shape(batch_size, self._main_transformer.config.in_channels, num_frames, height, width)
        self._check_noise_inputs(shape, latents, generator)
        self._check_context_frames(shape[2])  # windows count latent frames
        guided = guidance_scale > 1
        device = self.device
        plan = self._plan(num_inference_steps, device)
        prompt_embeds, negative_prompt_embeds = self._text_conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, max_sequence_length, device
        )
        cond = {"text": per_video(prompt_embeds, num_videos_per_prompt)}
        uncond = None if negative_prompt_embeds is None else {"text": per_video(negative_prompt_embeds, num_videos_per_prompt)}

        latents = self._initial_latents(shape, latents, generator, device)
        # FreeInit (the only re-planning user of _denoise) is refused for Wan: no replan needed.
        latents = self._denoise(
            latents * plan.init_noise_sigma, plan, cond, uncond, self._guidance(guidance_scale, guidance_scale_2),
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        return self._finish(latents, output_type, return_dict, None)
