"""AnimateDiff: a prompt → a short video, with a Stable Diffusion 1.5 UNet plus a MotionAdapter.

Flow: CLIP-encode the prompt (and the negative prompt when guidance is on), draw the initial
latents ``[B, 4, F, H/8, W/8]``, run the one denoising loop with classifier-free guidance using the
pipeline's scheduler, decode the frames with the image VAE in chunks. Numbers match diffusers'
``AnimateDiffPipeline`` on the same weights and seed, except that ``num_videos_per_prompt`` is
honoured (diffusers forces it to 1).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..diffusion.guidance import ClassifierFreeGuidance, NoGuidance
from ..diffusion.loop import SamplingPlan
from ..diffusion.noise import GeneratorInput, check_generator, seeded_noise
from ..models.clip_text import CLIPTextModel
from ..models.motion_adapter import MotionAdapter
from ..models.unet_2d import UNet2DConditionModel
from ..models.unet_motion import UNetMotionModel
from ..models.vae_kl import AutoencoderKL
from ..tokenizer import CLIPTokenizer
from . import frames as frames_io
from . import prompt_travel
from . import prompts as prompt_io
from .free_noise import AnimateDiffFreeNoiseMixin
from .ip_adapter import IPAdapterMixin
from .lora import LoraLoaderMixin
from .text_video import CALLBACK_TENSOR_INPUTS, SCHEDULERS, TextVideoPipeline

logger = logging.getLogger(__name__)
# (cond, uncond, plan, num_frames, height, width) -> None: adds a pipeline's own per-video inputs
AddInputs = Callable[[dict, "dict | None", SamplingPlan, int, int, int], None]


class AnimateDiffPipeline(LoraLoaderMixin, IPAdapterMixin, AnimateDiffFreeNoiseMixin, TextVideoPipeline):
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
    # cond/uncond: either encoder_hidden_states [B, 77, D], shared by every frame, or (prompt travel)
    # frame_context [B, F, 77, D], text states per frame.
    frame_axes = {"frame_context": 1}

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

    @classmethod
    def from_single_file(
        cls, path: str | os.PathLike, *, motion_adapter: MotionAdapter | None = None, **kwargs: Any
    ) -> AnimateDiffPipeline:
        """Build from an original single-file SD 1.x checkpoint (``model.diffusion_model.…``,
        ``first_stage_model.…``, ``cond_stage_model.transformer.…``) plus a motion adapter.

        ``config`` (a diffusers SD 1.5 folder, or ``{component: config}``), ``dtype``/``torch_dtype``,
        ``device``, ``local_files_only`` and components (``tokenizer=``, ``scheduler=``, ``vae=`` …) as
        in :func:`vidiff.pipelines.single_file.animatediff_from_single_file`, which documents where
        the tokenizer and scheduler come from.
        """
        from .single_file import animatediff_from_single_file  # loading helper, kept out of the import block

        return animatediff_from_single_file(cls, path, motion_adapter=motion_adapter, **kwargs)


    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | Mapping[int, str] | None = None,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
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
        """Generate ``num_frames`` frames for each prompt.

        Args:
            prompt: text or list of texts (one video each, times ``num_videos_per_prompt``); or
                pass ``prompt_embeds`` instead. Over 77 tokens is truncated, with a warning. Prompt
                travel: a dict ``{frame: text}`` starting at frame 0 makes one video whose text
                states blend from key frame to key frame (``negative_prompt`` may be a dict too);
                diffusers needs FreeNoise for this, vidiff does not.
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
            ip_adapter_image: with an IP-Adapter loaded (:meth:`load_ip_adapter`), the image prompt: one
                image (PIL, array or tensor) or list of images per adapter (a list with one entry per
                adapter); shared by every video.
            ip_adapter_image_embeds: instead, per adapter a tensor ``[m, n, D]`` (base) or ``[m, n, L, D]``
                (plus) for n images, m = 1 or one per prompt; with guidance the negative rows come
                first (``torch.cat([negative, positive])``), as diffusers takes them.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (see VideoPipelineOutput).
            return_dict: return a VideoPipelineOutput (True) or the tuple ``(frames,)``.
            cross_attention_kwargs: ``{"scale": s}`` multiplies every unfused LoRA's contribution (UNet
                and text encoder) for this call, as diffusers does; no other key is accepted.
            clip_skip: use the text encoder's hidden state this many layers before the last (None).
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict``; a returned
                ``"latents"`` replaces the latents. ``callback_on_step_end_tensor_inputs``: ["latents"].
            decode_chunk_size: frames per VAE decoder call (16); lower it to save memory.
        """
        with self._lora_scale(cross_attention_kwargs):  # LoRA scale for this call (text encoder + UNet)
            return self._generate(
                prompt=prompt, num_frames=num_frames, height=height, width=width, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
                eta=eta, generator=generator, latents=latents, prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds, output_type=output_type, return_dict=return_dict,
                clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, decode_chunk_size=decode_chunk_size,
                ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            )

    def _default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """``height`` / ``width``, each defaulting to the UNet's ``sample_size`` × the VAE's scale (512 for SD 1.5)."""
        default = self.unet.config.sample_size * self.vae_scale_factor
        return (default if height is None else height), (default if width is None else width)

    def _generate(
        self, *, prompt, num_frames, height, width, num_inference_steps, guidance_scale, negative_prompt,
        num_videos_per_prompt, eta, generator, latents, prompt_embeds, negative_prompt_embeds, output_type,
        return_dict, clip_skip, callback_on_step_end, callback_on_step_end_tensor_inputs, decode_chunk_size,
        add_inputs: AddInputs | None = None, ip_adapter_image: Any = None, ip_adapter_image_embeds: Any = None,
    ) -> frames_io.VideoPipelineOutput | Any:
        """Text-to-video: the body of ``__call__`` (arguments as documented there).

        ``add_inputs(cond, uncond, plan, num_frames, height, width)`` lets a pipeline put its own
        per-video conditioning (control frames) into the loop's inputs; it runs after the plan is
        made and before the initial latents are drawn (the order diffusers draws in).
        """
        height, width = self._default_size(height, width)
        self._check_arguments(
            height, width, num_frames, num_inference_steps, guidance_scale, eta, num_videos_per_prompt,
            decode_chunk_size, output_type, callback_on_step_end_tensor_inputs,
        )
        guided = guidance_scale > 1
        device = self.device
        cond, uncond = self._text_inputs(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, clip_skip, device, num_frames,
            num_videos_per_prompt,
        )
        self._add_ip_adapter_inputs(cond, uncond, ip_adapter_image, ip_adapter_image_embeds, num_videos_per_prompt, device)
        prompt_embeds = next(iter(cond.values()))  # [B, 77, D] or, per frame, [B, F, 77, D]
        batch_size = prompt_embeds.shape[0]
        check_generator(generator, batch_size)

        plan = self._plan(num_inference_steps, eta, device)
        if add_inputs is not None:
            add_inputs(cond, uncond, plan, num_frames, height, width)
        shape = (batch_size, *self.vae.latent_shape(num_frames, height, width))  # [B, C, f, h, w]
        latents = self._prepare_initial_latents(shape, latents, generator, device, prompt_embeds.dtype) * plan.init_noise_sigma

        latents = self._denoise(
            latents, plan, cond, uncond, ClassifierFreeGuidance(guidance_scale) if guided else NoGuidance(),
            callback_on_step_end, callback_on_step_end_tensor_inputs,
            noise=seeded_noise(generator, device, latents.dtype),
            replan=lambda steps: self._plan(steps, eta, device), num_inference_steps=num_inference_steps,
        )
        return self._finish(latents, output_type, return_dict, decode_chunk_size)

    # ------------------------------------------------------------------ steps of __call__
    def _text_inputs(
        self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, clip_skip, device, num_frames,
        num_videos_per_prompt,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """The loop's text inputs for ``B`` = prompts × ``num_videos_per_prompt`` videos: per video
        ``{"encoder_hidden_states": [B, 77, D]}``, or with a prompt schedule ``{"frame_context": [B, F, 77, D]}``;
        the unconditional ones (same keys) with guidance, else None."""
        if prompt_travel.is_schedule(prompt) or prompt_travel.is_schedule(negative_prompt):
            cond, uncond = self._frame_text_inputs(
                prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, clip_skip, device, num_frames
            )
        else:
            cond, uncond = self._video_text_inputs(
                prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, clip_skip, device
            )
        cond = {name: value.repeat_interleave(num_videos_per_prompt, dim=0) for name, value in cond.items()}
        if uncond is not None:
            uncond = {name: value.repeat_interleave(num_videos_per_prompt, dim=0) for name, value in uncond.items()}
        return cond, uncond

    def _video_text_inputs(
        self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, clip_skip, device
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Text states per prompt, shared by every frame: ``{"encoder_hidden_states": [N, 77, D]}``."""
        prompt_embeds, negative_prompt_embeds = self._text_conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, clip_skip, device
        )
        uncond = {"encoder_hidden_states": negative_prompt_embeds} if guided else None
        return {"encoder_hidden_states": prompt_embeds}, uncond

    def _frame_text_inputs(
        self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, clip_skip, device, num_frames
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Prompt travel: text states per frame, ``{"frame_context": [1, F, 77, D]}`` (one video).

        A dict prompt (or negative prompt) is encoded at its key frames and interpolated between them
        (:mod:`.prompt_travel`, with FreeNoise's ``prompt_interpolation_callback`` when one is set); a
        plain text, or precomputed embeddings ``[1, 77, D]``, holds for every frame.
        """
        callback = getattr(self, "_free_noise_prompt_interpolation_callback", None)
        if prompt is not None and not isinstance(prompt, (str, Mapping)):
            raise TypeError(
                "a prompt schedule ({frame: text}) makes one video: give `prompt` as a dict or one text, "
                f"not a {type(prompt).__name__}"
            )
        positive = self._frame_states(prompt, prompt_embeds, num_frames, "prompt", clip_skip, callback, device)
        if not guided:
            return {"frame_context": positive[None]}, None
        if negative_prompt is None and negative_prompt_embeds is None:
            negative_prompt = ""
        negative = self._frame_states(
            negative_prompt, negative_prompt_embeds, num_frames, "negative_prompt", None, callback, device,
            max_length=positive.shape[1],
        )
        return {"frame_context": positive[None]}, {"frame_context": negative[None]}

    def _frame_states(self, text, embeds, num_frames, argument, clip_skip, callback, device, max_length=None) -> torch.Tensor:
        """``[F, L, D]`` text states for one video from a schedule, a text or embeddings ``[1, L, D]``."""
        if text is not None and embeds is not None:
            raise ValueError(f"Pass at most one of `{argument}` and `{argument}_embeds`, not both")
        if text is None:
            if embeds is None:
                raise ValueError("Pass exactly one of `prompt` and `prompt_embeds`; got neither")
            if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[0] != 1:
                shape = list(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
                raise ValueError(f"with a prompt schedule, `{argument}_embeds` must be one video's states [1, L, D], got {shape}")
            return embeds.to(device=device, dtype=self.text_encoder.dtype).expand(num_frames, -1, -1)
        if not isinstance(text, (str, Mapping)):
            raise TypeError(f"with a prompt schedule, `{argument}` must be a dict {{frame: text}} or one text, got {type(text).__name__}")
        schedule = prompt_travel.check_schedule(text, num_frames, argument) if isinstance(text, Mapping) else {0: text}
        states = prompt_io.encode_prompts(
            self.tokenizer, self.text_encoder, list(schedule.values()), clip_skip=clip_skip, device=device,
            max_length=max_length, argument=argument,
        )  # [K, L, D]
        return prompt_travel.interpolate(list(schedule), states, num_frames, callback)

    def _network(self, x: torch.Tensor, timestep: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # x: [B', 4, F, h, w]. Text states per video [B', 77, D] (the UNet gives them to every frame), or
        # with prompt travel per frame [B', F, 77, D] → [(B'·F), 77, D], frames of a video consecutive.
        if "frame_context" in cond:
            context = cond["frame_context"].flatten(0, 1)
        else:
            context = cond["encoder_hidden_states"]
        down, mid = self._control_residuals(x, timestep, cond, context)  # ControlNets see the text only
        return self.unet(
            x, timestep, context, down_block_additional_residuals=down, mid_block_additional_residual=mid,
            added_cond_kwargs=self._ip_adapter_embeds(cond),  # IP-Adapter image inputs, when loaded
        )

    def _control_residuals(
        self, x: torch.Tensor, timestep: torch.Tensor, cond: Mapping[str, torch.Tensor], context: torch.Tensor
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        """Residuals for the UNet's skips and mid stage, each ``[(B'·F), C, h, w]``: none here; the
        ControlNet and SparseCtrl pipelines compute them from their control inputs in ``cond``."""
        return None, None
