"""AnimateDiff with SparseCtrl: a few conditioned key frames steer a whole video
(diffusers' ``AnimateDiffSparseControlNetPipeline``).

``conditioning_frames[k]`` conditions frame ``controlnet_frame_indices[k]``; the other frames get a
zero condition and a zero mask channel. RGB SparseCtrl (``use_simplified_condition_embedding``)
takes the key frames' VAE latents: one posterior *sample*, drawn before the initial latents from
``generator`` (diffusers draws it from torch's global RNG; with both seeded alike the numbers are
the same); with a list of generators, one sample per video from its own generator. Scribble
SparseCtrl takes the images themselves in [0, 1]. The SparseControlNet sees zeros instead of the
noisy latents; its residuals enter the UNet at the one residual seam.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..diffusion.noise import GeneratorInput, randn
from ..models.controlnet import check_residuals_fit
from ..models.controlnet_sparsectrl import SparseControlNetModel
from . import frames as frames_io
from .animatediff import AnimateDiffPipeline
from .control import ACTIVE, conditioning_scales, residuals_on_rows
from .text_video import CALLBACK_TENSOR_INPUTS
from .video_input import is_frame, video_frames


class AnimateDiffSparseControlNetPipeline(AnimateDiffPipeline):
    """Text-to-video with AnimateDiff steered by SparseCtrl key frames::

        sparse = SparseControlNetModel.from_pretrained("guoyww/animatediff-sparsectrl-scribble")
        pipe = AnimateDiffSparseControlNetPipeline.from_pretrained(base, motion_adapter=adapter, controlnet=sparse)
        out = pipe(prompt="...", conditioning_frames=[scribble0, scribble15], controlnet_frame_indices=[0, 15])
    """

    components = {**AnimateDiffPipeline.components, "controlnet": {"SparseControlNetModel": SparseControlNetModel}}
    # sparse_cond [B, C, F, H_c, W_c] and sparse_mask [B, 1, F, H_c, W_c]: per frame, frame axis 2
    frame_axes = {**AnimateDiffPipeline.frame_axes, "sparse_cond": 2, "sparse_mask": 2}
    model_cpu_offload_seq = "text_encoder->image_encoder->controlnet->unet->vae"

    controlnet: SparseControlNetModel
    _sparse: tuple[float, bool] = (1.0, False)  # this call's (scale, guess mode)

    def __init__(self, **components: Any) -> None:
        super().__init__(**components)
        if not isinstance(self.controlnet, SparseControlNetModel):
            raise TypeError(f"`controlnet` must be a SparseControlNetModel, got {type(self.controlnet).__name__}")
        # its residuals are added to the motion UNet's skips, so widths and text width must match
        check_residuals_fit(self.controlnet, self.unet, "controlnet")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | Mapping[int, str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 16,
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
        controlnet_conditioning_scale: float = 1.0,
        controlnet_frame_indices: Sequence[int] = (0,),
        guess_mode: bool = False,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = CALLBACK_TENSOR_INPUTS,
        decode_chunk_size: int = 16,
    ) -> frames_io.VideoPipelineOutput | Any:
        """Generate ``num_frames`` frames per prompt, with key frames conditioned by SparseCtrl.

        Args:
            conditioning_frames: the key-frame conditions: one image or a list (PIL images, or
                ``[H, W, 3]`` arrays / ``[3, H, W]`` tensors in [0, 1]), resized to the output size:
                scribbles for a scribble SparseCtrl, pictures for an RGB one.
            controlnet_frame_indices: the frame each condition steers, in the order given (``[0]``);
                as many as ``conditioning_frames``, distinct, each in ``[0, num_frames)``.
            controlnet_conditioning_scale: factor on the SparseCtrl residuals (1.0).
            guess_mode: ramp the residuals from 0.1 (shallow) to 1 (deep); with guidance the
                SparseControlNet runs on the conditional half only (False).
            decode_chunk_size: frames per VAE decoder call (16; vidiff's, diffusers decodes by 16).

        The other arguments are :class:`AnimateDiffPipeline`'s.
        """
        with self._lora_scale(cross_attention_kwargs):  # LoRA scale for this call
            return self._generate(
                prompt=prompt, num_frames=num_frames, height=height, width=width, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, negative_prompt=negative_prompt, num_videos_per_prompt=num_videos_per_prompt,
                eta=eta, generator=generator, latents=latents, prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds, output_type=output_type, return_dict=return_dict,
                clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, decode_chunk_size=decode_chunk_size,
                ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
                add_inputs=self._sparse_hook(
                    conditioning_frames, controlnet_frame_indices, controlnet_conditioning_scale, guess_mode, generator
                ),
            )

    # ------------------------------------------------------------------ preparing a call
    def _sparse_hook(self, conditioning_frames: Any, indices: Any, scale: Any, guess_mode: Any, generator: GeneratorInput):
        """Check the SparseCtrl arguments now; returns the ``add_inputs`` hook that builds the condition."""
        if not isinstance(guess_mode, bool):
            raise TypeError(f"`guess_mode` must be True or False, got {guess_mode!r}")
        if isinstance(scale, (list, tuple)):
            scale = list(scale)[:1]  # one SparseControlNet: a list's first value, as in diffusers
        (scale,) = conditioning_scales(scale, 1)
        images = _condition_images(conditioning_frames)
        indices = _frame_indices(indices, len(images))
        guess_mode = guess_mode or bool(self.controlnet.config.global_pool_conditions)

        def add_inputs(cond, uncond, plan, num_frames: int, height: int, width: int) -> None:
            outside = [i for i in indices if i >= num_frames]
            if outside:
                raise ValueError(
                    f"`controlnet_frame_indices` {outside} lie outside the video's {num_frames} frames; use indices in [0, {num_frames})"
                )
            condition, mask = self._sparse_condition(images, indices, num_frames, height, width, generator)
            batch = next(iter(cond.values())).shape[0]
            for branch in (cond, uncond) if uncond is not None else (cond,):
                branch["sparse_cond"] = condition.expand(batch, *condition.shape[1:])
                branch["sparse_mask"] = mask.expand(batch, *mask.shape[1:])
                branch[ACTIVE] = torch.ones(batch, device=condition.device)
            if uncond is not None and guess_mode:
                uncond[ACTIVE] = torch.zeros(batch, device=condition.device)
            self._sparse = (scale, guess_mode)

        return add_inputs

    def _sparse_condition(self, images, indices, num_frames, height, width, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition ``[G, C, F, H_c, W_c]`` (zeros on unconditioned frames) and mask ``[1, 1, F, H_c, W_c]``.

        G is 1 (one condition for every video), except for RGB SparseCtrl with a list of generators:
        then video b's key-frame latents are a posterior sample drawn from generator b, so each video
        of a batch is what a call with its own generator gives.
        """
        net = self.controlnet
        pixels = video_frames(images, height, width, "conditioning_frames").to(self.device)  # [N, 3, H, W] in [0, 1]
        if net.config.use_simplified_condition_embedding:  # RGB SparseCtrl: the frames' scaled VAE latents
            distribution = self.vae.encode(pixels.to(self.vae.dtype) * 2 - 1)
            generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
            samples = [
                distribution.sample(randn(distribution.mean.shape, one, device=pixels.device, dtype=distribution.mean.dtype))
                for one in generators
            ]
            frames = torch.stack(samples) * self.vae.config.scaling_factor  # [G, N, 4, h, w]
        else:
            frames = pixels[None]  # [1, N, 3, H, W]
        frames = frames.to(net.dtype)
        condition = frames.new_zeros((frames.shape[0], frames.shape[2], num_frames, *frames.shape[3:]))
        mask = frames.new_zeros((1, 1, num_frames, *frames.shape[3:]))
        condition[:, :, list(indices)] = frames.transpose(1, 2)
        mask[:, :, list(indices)] = 1
        return condition, mask

    # ------------------------------------------------------------------ during the loop
    def _control_residuals(
        self, x: torch.Tensor, timestep: torch.Tensor, cond: Mapping[str, torch.Tensor], context: torch.Tensor
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        scale, guess_mode = self._sparse
        if scale == 0:
            return None, None

        def run(latents: torch.Tensor, text: torch.Tensor, inputs: Mapping[str, torch.Tensor]):
            down, mid = self.controlnet(
                latents, timestep, text, inputs["sparse_cond"], scale, inputs["sparse_mask"], guess_mode
            )
            return list(down), mid

        inputs = {"sparse_cond": cond["sparse_cond"], "sparse_mask": cond["sparse_mask"]}
        return residuals_on_rows(x, context, cond[ACTIVE], inputs, run)


def _condition_images(conditioning_frames: Any) -> list[Any]:
    """``conditioning_frames`` as a non-empty list of images."""
    if conditioning_frames is None:
        raise ValueError("`conditioning_frames` is required: the key-frame image(s) SparseCtrl conditions on")
    if is_frame(conditioning_frames):
        return [conditioning_frames]
    if isinstance(conditioning_frames, (list, tuple)) and conditioning_frames and all(is_frame(f) for f in conditioning_frames):
        return list(conditioning_frames)
    raise TypeError(
        "`conditioning_frames` must be an image or a non-empty list of images (PIL, [H, W, 3] arrays or "
        f"[3, H, W] tensors), got {type(conditioning_frames).__name__}"
    )


def _frame_indices(indices: Any, count: int) -> list[int]:
    """``controlnet_frame_indices`` checked against ``count`` conditioning frames: distinct ints ≥ 0."""
    if isinstance(indices, int) and not isinstance(indices, bool):
        indices = [indices]
    if not isinstance(indices, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise TypeError(f"`controlnet_frame_indices` must be a list of frame numbers (ints), got {indices!r}")
    if len(indices) != count:
        raise ValueError(
            f"`controlnet_frame_indices` has {len(indices)} entries for {count} `conditioning_frames`; give one frame "
            "index per conditioning frame"
        )
    if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"`controlnet_frame_indices` must be distinct frame numbers ≥ 0, got {list(indices)}")
    return list(indices)
