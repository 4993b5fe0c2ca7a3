"""AnimateDiff with ControlNet: text-to-video and video-to-video steered by control videos
(diffusers' ``AnimateDiffControlNetPipeline`` and ``AnimateDiffVideoToVideoControlNetPipeline``).

Each is the matching AnimateDiff pipeline plus :class:`~vidiff.pipelines.control.ControlNetMixin`,
which adds the ``controlnet`` component and feeds its residuals to the UNet inside the one loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..diffusion.noise import GeneratorInput
from ..models.controlnet import ControlNetModel, MultiControlNetModel
from . import frames as frames_io
from .animatediff import AnimateDiffPipeline
from .animatediff_video2video import AnimateDiffVideoToVideoPipeline
from .control import ControlNetMixin
from .text_video import CALLBACK_TENSOR_INPUTS

CONTROLNET_CLASSES = {"ControlNetModel": ControlNetModel, "MultiControlNetModel": MultiControlNetModel}
CONTROL_ARGUMENTS_DOC = """
            conditioning_frames: the control video, one frame per output frame (PIL images, as
                ``canny_frames`` or ``load_video`` return, or ``[H, W, 3]`` arrays / ``[3, H, W]`` tensors
                in [0, 1]), resized to the output size and shared by every video of the call; with
                several ControlNets, a list of such videos, one each.
            controlnet_conditioning_scale: factor on the ControlNet residuals (1.0), or one per ControlNet.
            guess_mode: let the ControlNet recognise the content without the prompt: its residuals are
                ramped from 0.1 (shallow) to 1 (deep) and, with guidance, it runs on the conditional half
                only (False; always on for ``global_pool_conditions`` ControlNets).
            control_guidance_start / control_guidance_end: the fraction of the steps over which each
                ControlNet acts (0.0 and 1.0), a number for all or one per ControlNet.
"""


class AnimateDiffControlNetPipeline(ControlNetMixin, AnimateDiffPipeline):
    """Text-to-video with AnimateDiff and one or more ControlNets::

        controlnet = ControlNetModel.from_pretrained("lllyasviel/sd-controlnet-canny")
        pipe = AnimateDiffControlNetPipeline.from_pretrained(base, motion_adapter=adapter, controlnet=controlnet)
        out = pipe(prompt="...", conditioning_frames=canny_frames(video), controlnet_conditioning_scale=0.8)

    ``controlnet``: a ControlNetModel, a list of them (their residuals are summed) or a
    MultiControlNetModel; the other components are :class:`AnimateDiffPipeline`'s.
    """

    components = {**AnimateDiffPipeline.components, "controlnet": CONTROLNET_CLASSES}
    frame_axes = {**AnimateDiffPipeline.frame_axes, "control_frames": 3}
    model_cpu_offload_seq = "text_encoder->image_encoder->controlnet->unet->vae"

    def __init__(self, **components: Any) -> None:
        super().__init__(**components)
        self._init_controlnet()

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
        conditioning_frames: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | Sequence[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = CALLBACK_TENSOR_INPUTS,
        decode_chunk_size: int = 16,
    ) -> frames_io.VideoPipelineOutput | Any:
        with self._lora_scale(cross_attention_kwargs):  # LoRA scale for this call
            return self._generate(
                prompt=prompt, num_frames=num_frames, height=height, width=width, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
                eta=eta, generator=generator, latents=latents, prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds, output_type=output_type, return_dict=return_dict,
                clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, decode_chunk_size=decode_chunk_size,
                ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
                add_inputs=self._control_hook(
                    conditioning_frames, controlnet_conditioning_scale, guess_mode, control_guidance_start, control_guidance_end
                ),
            )

    __call__.__doc__ = (
        """Generate ``num_frames`` frames per prompt, steered by the control video(s).

        Args:""" + CONTROL_ARGUMENTS_DOC + """
        The other arguments are :class:`AnimateDiffPipeline`'s.
        """
    )


class AnimateDiffVideoToVideoControlNetPipeline(ControlNetMixin, AnimateDiffVideoToVideoPipeline):
    """Video-to-video with AnimateDiff and one or more ControlNets: ``video`` is re-rendered as
    :class:`AnimateDiffVideoToVideoPipeline` does while the ControlNet(s) follow ``conditioning_frames``
    (one frame per frame of ``video``). The guidance window is taken over the steps that run."""

    components = {**AnimateDiffPipeline.components, "controlnet": CONTROLNET_CLASSES}
    frame_axes = {**AnimateDiffPipeline.frame_axes, "control_frames": 3}
    model_cpu_offload_seq = "text_encoder->image_encoder->controlnet->unet->vae"

    def __init__(self, **components: Any) -> None:
        super().__init__(**components)
        self._init_controlnet()

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
        conditioning_frames: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | Sequence[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = CALLBACK_TENSOR_INPUTS,
        decode_chunk_size: int = 16,
    ) -> frames_io.VideoPipelineOutput | Any:
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
                add_inputs=self._control_hook(
                    conditioning_frames, controlnet_conditioning_scale, guess_mode, control_guidance_start, control_guidance_end
                ),
            )

    __call__.__doc__ = (
        """Re-render ``video`` following ``prompt``, steered by the control video(s).

        Args:""" + CONTROL_ARGUMENTS_DOC + """
        The other arguments are :class:`AnimateDiffVideoToVideoPipeline`'s.
        """
    )
