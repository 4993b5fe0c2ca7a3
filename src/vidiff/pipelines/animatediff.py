"""AnimateDiff: a prompt → a short video, with a Stable Diffusion 1.5 UNet plus a MotionAdapter.

Flow: CLIP-encode the prompt (and the negative prompt when guidance is on), draw the initial
latents ``[B, 4, F, H/8, W/8]``, run the one denoising loop with classifier-free guidance using the
pipeline's scheduler, decode the frames with the image VAE in chunks. Numbers match diffusers'
``AnimateDiffPipeline`` on the same weights and seed, except that ``num_videos_per_prompt`` is
honoured (diffusers forces it to 1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..diffusion.guidance import ClassifierFreeGuidance, NoGuidance
from ..diffusion.noise import GeneratorInput, check_generator, seeded_noise
from ..models.clip_text import CLIPTextModel
from ..models.motion_adapter import MotionAdapter
from ..models.unet_2d import UNet2DConditionModel
from ..models.unet_motion import UNetMotionModel
from ..models.vae_kl import AutoencoderKL
from ..tokenizer import CLIPTokenizer
from . import frames as frames_io
from .text_video import CALLBACK_TENSOR_INPUTS, SCHEDULERS, TextVideoPipeline

logger = logging.getLogger(__name__)


class AnimateDiffPipeline(TextVideoPipeline):
    """Text-to-video with AnimateDiff.

    Load a Stable Diffusion 1.5 checkpoint plus a motion adapter::

        adapter = MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-2")
        pipe = AnimateDiffPipeline.from_pretrained("emilianJR/epiCRealism", motion_adapter=adapter)

    or a pipeline saved with ``save_pretrained`` (its ``unet`` is already a UNetMotionModel).
    Components: ``vae`` (AutoencoderKL), ``text_encoder`` (CLIPTextModel), ``tokenizer``
    (CLIPTokenizer), ``unet`` (UNetMotionModel; a UNet2DConditionModel is combined with
    ``motion_adapter`` on construction), ``motion_adapter`` (optional once the UNet has its motion
    modules) and ``scheduler`` (DDIM, Euler, Euler-ancestral, DPM-Solver++, LCM or PNDM; assigning
    ``pipe.scheduler`` switches the sampler). A Stable Diffusion repository's ``safety_checker`` and
    ``feature_extractor`` are not used and never downloaded.
    """

    components = {
        "vae": {"AutoencoderKL": AutoencoderKL},
        "text_encoder": {"CLIPTextModel": CLIPTextModel},
        "tokenizer": {"CLIPTokenizer": CLIPTokenizer, "CLIPTokenizerFast": CLIPTokenizer},
        "unet": {"UNet2DConditionModel": UNet2DConditionModel, "UNetMotionModel": UNetMotionModel},
        "motion_adapter": {"MotionAdapter": MotionAdapter},
        "scheduler": SCHEDULERS,
    }
    optional_components = frozenset({"motion_adapter"})
    # cond/uncond: encoder_hidden_states [B, 77, D] only, shared by every frame: no frame-indexed input.
    frame_axes = {}

    unet: UNetMotionModel
    motion_adapter: MotionAdapter | None

    def __init__(self, **components: Any) -> None:
        super().__init__(**components)
        if isinstance(self.unet, UNet2DConditionModel):
            if self.motion_adapter is None:
                raise ValueError(
                    "AnimateDiffPipeline got a UNet2DConditionModel (a Stable Diffusion UNet) but no motion "
                    "adapter; pass motion_adapter=MotionAdapter.from_pretrained(...)"
                )
            self.unet = UNetMotionModel.from_unet2d(self.unet, self.motion_adapter)
        elif not isinstance(self.unet, UNetMotionModel):
            raise TypeError(f"`unet` must be a UNetMotionModel or UNet2DConditionModel, got {type(self.unet).__name__}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def _wants_component(cls, name: str, index: Mapping) -> bool:
        # A saved AnimateDiff pipeline's UNet already holds the motion modules: the separate
        # adapter copy would only cost memory, so it is left on disk.
        if name == "motion_adapter":
            unet_entry = index.get("unet") or [None, None]
            if unet_entry[1] == "UNetMotionModel":
                logger.info("the unet is a UNetMotionModel; not loading the separate motion_adapter copy")
                return False
        return super()._wants_component(name, index)


    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | Sequence[str] | None = None,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: GeneratorInput = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = CALLBACK_TENSOR_INPUTS,
        decode_chunk_size: int = 16,
    ) -> frames_io.VideoPipelineOutput | Any:
        """Generate ``num_frames`` frames for each prompt.

        Args:
            prompt: text or list of texts (one video each, times ``num_videos_per_prompt``); or
                pass ``prompt_embeds`` instead. Over 77 tokens is truncated, with a warning.
            num_frames: frames per video (16; the v1.5 motion modules were trained on 16).
            height, width: size in pixels, multiples of 8 (default: the UNet's ``sample_size`` × 8,
                512 for Stable Diffusion 1.5).
            num_inference_steps: denoising steps (50).
            guidance_scale: classifier-free guidance weight (7.5); guidance is off at ≤ 1.
            negative_prompt: what to steer away from (text or one per prompt; default ""); used
                only with guidance. ``negative_prompt_embeds``: precomputed instead.
            num_videos_per_prompt: videos per prompt (1; honoured, unlike diffusers which forces 1).
            eta: DDIM's η (0.0 = deterministic); other schedulers refuse a non-zero η.
            generator: torch or numpy generator, or a list of one per video. torch reproduces
                diffusers' draws; numpy gives the same video on every device.
            latents: initial noise ``[B, 4, F, H/8, W/8]`` (B = prompts × num_videos_per_prompt).
            prompt_embeds / negative_prompt_embeds: text-encoder outputs ``[N, 77, 768]``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (see VideoPipelineOutput).
            return_dict: return a VideoPipelineOutput (True) or the tuple ``(frames,)``.
            clip_skip: use the text encoder's hidden state this many layers before the last (None).
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict``; a returned
                ``"latents"`` replaces the latents. ``callback_on_step_end_tensor_inputs``: ["latents"].
            decode_chunk_size: frames per VAE decoder call (16); lower it to save memory.
        """
        height = self.unet.config.sample_size * self.vae_scale_factor if height is None else height
        width = self.unet.config.sample_size * self.vae_scale_factor if width is None else width
        self._check_arguments(
            height, width, num_frames, num_inference_steps, guidance_scale, eta, num_videos_per_prompt,
            decode_chunk_size, output_type, callback_on_step_end_tensor_inputs,
        )
        guided = guidance_scale > 1
        device = self.device
        prompt_embeds, negative_prompt_embeds = self._text_conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, clip_skip, device
        )
        prompt_embeds = prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)  # [B, 77, D]
        batch_size = prompt_embeds.shape[0]
        check_generator(generator, batch_size)
        cond = {"encoder_hidden_states": prompt_embeds}
        uncond = None
        if guided:
            uncond = {"encoder_hidden_states": negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)}

        plan = self._plan(num_inference_steps, eta, device)
        shape = (batch_size, *self.vae.latent_shape(num_frames, height, width))  # [B, C, f, h, w]
        latents = self._initial_latents(shape, latents, generator, device, prompt_embeds.dtype) * plan.init_noise_sigma

        latents = self._denoise(
            latents, plan, cond, uncond, ClassifierFreeGuidance(guidance_scale) if guided else NoGuidance(),
            callback_on_step_end, callback_on_step_end_tensor_inputs,
            noise=seeded_noise(generator, device, latents.dtype),
        )
        return self._finish(latents, output_type, return_dict, decode_chunk_size)

    # ------------------------------------------------------------------ steps of __call__
    def _network(self, x: torch.Tensor, timestep: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # x: [B', 4, F, h, w]; the text embedding [B', 77, D] is per video (the UNet gives it to every frame).
        return self.unet(x, timestep, cond["encoder_hidden_states"])
