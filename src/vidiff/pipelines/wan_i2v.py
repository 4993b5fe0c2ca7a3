"""Wan image-to-video: ``WanImageToVideoPipeline`` (Wan 2.1 I2V 14B, Wan 2.2 I2V A14B and TI2V 5B).

Flow: encode the prompts as :class:`~vidiff.pipelines.wan.WanPipeline` does; resize the image (and
``last_image``) to exactly ``width × height`` (Lanczos for PIL images, as diffusers' processor) and
VAE-encode the conditioning video, taking the posterior *mode* (no random draw), normalised with the
VAE's latent mean/std. Then, by checkpoint:

* Wan 2.1 / 2.2 A14B I2V: the condition is [image, zeros…, (last_image)] encoded as one video, and
  4 mask channels mark the given frames; both are appended to the latents' channels at every step.
  Wan 2.1's transformer also attends to CLIP states of the image(s) (the penultimate layer, no
  post-layernorm).
* Wan 2.2 TI2V (``expand_timesteps``): only the image is encoded (one latent frame); at every step
  latent frame 0 is replaced by it and its tokens get timestep 0; after the loop it is put back once
  more.

The only random draw is the initial latents. Numbers match diffusers' ``WanImageToVideoPipeline``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..diffusion.noise import GeneratorInput
from ..image_processing import CLIPImageProcessor
from ..models.clip import CLIPVisionModelWithProjection
from . import frames as frames_io
from .prompts import PromptInput
from .wan_base import CALLBACK_TENSOR_INPUTS, WanPipelineBase, per_video
from .wan_prompts import DEFAULT_MAX_SEQUENCE_LENGTH


class WanImageToVideoPipeline(WanPipelineBase):
    """Image(-and-text)-to-video with Wan; loads e.g. ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``.

    Components: those of :class:`~vidiff.pipelines.wan.WanPipeline`, plus, for Wan 2.1 I2V,
    ``image_encoder`` (CLIP ViT-H/14 vision tower) and ``image_processor`` (CLIPImageProcessor).
    """

    components = {
        **WanPipelineBase.components,
        "image_encoder": {"CLIPVisionModelWithProjection": CLIPVisionModelWithProjection},
        # transformers without torchvision names its processor CLIPImageProcessorPil; same config.
        "image_processor": {"CLIPImageProcessor": CLIPImageProcessor, "CLIPImageProcessorPil": CLIPImageProcessor},
    }
    optional_components = WanPipelineBase.optional_components | {"image_encoder", "image_processor"}
    # cond/uncond: "text" [B, L, D]; "image_embeds" [B, T, D'] (Wan 2.1); "condition" [B, C', f, h, w]
    # and "mask" [B, 1, f, h, w] (TI2V), both with their latent frames on axis 2.
    frame_axes = {"condition": 2, "mask": 2}

    image_encoder: CLIPVisionModelWithProjection | None
    image_processor: CLIPImageProcessor | None

    def _expected_in_channels(self) -> int:
        # Wan 2.1 / A14B I2V: latents + 4 mask channels + the condition latents; TI2V: latents only.
        z_dim = self.vae.config.z_dim
        return z_dim if self.config.expand_timesteps else 2 * z_dim + 4

    def _channel_note(self) -> str:
        return "" if self.config.expand_timesteps else " × 2 + 4 mask channels"

    @property
    def _uses_clip(self) -> bool:
        """Whether the transformer has Wan 2.1's image branch (``image_dim``)."""
        return self.transformer is not None and self.transformer.config.image_dim is not None

    @torch.no_grad()
    def __call__(
        self,
        image: frames_io.ImageInput | None = None,
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
        image_embeds: torch.Tensor | None = None,
        last_image: frames_io.ImageInput | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = CALLBACK_TENSOR_INPUTS,
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
    ) -> frames_io.VideoPipelineOutput | Any:
        """Generate ``num_frames`` frames that start from ``image`` (and, optionally, end on ``last_image``).

        Args:
            image: the first frame: a PIL image, numpy ``[H, W, 3]`` or tensor ``[3, H, W]`` in [0, 1]
                (a list/batch: one image per prompt). Resized to exactly ``width × height``.
            last_image: the last frame (same forms; not with ``expand_timesteps`` checkpoints).
            image_embeds: precomputed CLIP states ``[N, 257·k, D']`` for Wan 2.1's image branch
                (k = 2 with ``last_image``), instead of encoding ``image``.
            The other arguments are :meth:`WanPipeline.__call__`'s, with the same defaults.
        """
        self._check_call(
            height, width, num_inference_steps, guidance_scale, guidance_scale_2, num_videos_per_prompt,
            output_type, callback_on_step_end_tensor_inputs, max_sequence_length, attention_kwargs,
        )
        self._check_images(image, last_image, image_embeds, num_frames)
        num_frames = self._frame_count(num_frames)
        num_prompts = self._num_prompts(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        first = self._pixels(image, height, width, "image")  # [N, 3, H, W] in [-1, 1]
        last = None if last_image is None else self._pixels(last_image, height, width, "last_image")
        videos = _pair(num_prompts, first.shape[0], last)
        batch_size = videos * num_videos_per_prompt
        shape = self._latent_shape(batch_size, self.vae.config.z_dim, num_frames, height, width)
        self._check_noise_inputs(shape, latents, generator)
        self._check_context_frames(shape[2])  # windows count latent frames
        guided = guidance_scale > 1
        device = self.device
        plan = self._plan(num_inference_steps, device)
        prompt_embeds, negative_prompt_embeds = self._text_conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, max_sequence_length, device
        )

        def rows(tensor: torch.Tensor) -> torch.Tensor:  # one per prompt/image → one per video
            return per_video(tensor.expand(videos, *tensor.shape[1:]), num_videos_per_prompt)

        cond = {"text": rows(prompt_embeds)}
        if self._uses_clip:
            cond["image_embeds"] = rows(self._clip_states(image, last_image, image_embeds, device))
        condition = self._condition_latents(first, last, num_frames, device)  # [N, C', f, h, w]
        cond["condition"] = rows(condition)
        if self.config.expand_timesteps:
            mask = torch.ones((1, 1, *condition.shape[2:]), dtype=torch.float32, device=device)
            mask[:, :, 0] = 0  # latent frame 0 is given
            cond["mask"] = mask.expand(batch_size, -1, -1, -1, -1)
        uncond = None
        if negative_prompt_embeds is not None:
            uncond = {**cond, "text": rows(negative_prompt_embeds)}

        latents = self._initial_latents(shape, latents, generator, device)
        # FreeInit (the only re-planning user of _denoise) is refused for Wan: no replan needed.
        latents = self._denoise(
            latents * plan.init_noise_sigma, plan, cond, uncond, self._guidance(guidance_scale, guidance_scale_2),
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        if self.config.expand_timesteps:
            latents = (1 - cond["mask"]) * cond["condition"] + cond["mask"] * latents
        return self._finish(latents, output_type, return_dict, None)

    # ------------------------------------------------------------------ steps of __call__
    def _check_images(self, image: Any, last_image: Any, image_embeds: Any, num_frames: Any) -> None:
        if image is None:
            raise ValueError("`image` is required: the first frame of the video (a PIL image, array or tensor)")
        if last_image is not None and isinstance(num_frames, int) and num_frames < 2:
            raise ValueError(f"`num_frames` must be ≥ 2 with a `last_image` (the first and last frames differ), got {num_frames}")
        if last_image is not None and self.config.expand_timesteps:
            raise ValueError(
                "`last_image` is not supported by this checkpoint (expand_timesteps: Wan 2.2 TI2V conditions on "
                "the first frame only); leave it None"
            )
        if image_embeds is not None:
            if not self._uses_clip:
                raise ValueError(
                    "`image_embeds` feeds Wan 2.1's CLIP image branch, which this checkpoint's transformer does "
                    "not have (image_dim is None); leave it None"
                )
            if not isinstance(image_embeds, torch.Tensor) or image_embeds.ndim != 3:
                raise ValueError(f"`image_embeds` must be a tensor [N, T, D] of CLIP states, got {image_embeds!r:.80}")
        elif self._uses_clip and (self.image_encoder is None or self.image_processor is None):
            raise ValueError(
                "this Wan 2.1 I2V transformer needs CLIP states of the image, but the pipeline has no "
                "`image_encoder`/`image_processor`; load them or pass `image_embeds`"
            )

    def _pixels(self, image: Any, height: int, width: int, argument: str) -> torch.Tensor:
        """``image`` as [N, 3, height, width] float32 in [-1, 1] (PIL: Lanczos; arrays/tensors: resized
        by interpolation, as diffusers' video processor does)."""
        try:
            pixels, pils = frames_io.images_to_tensor(image)
        except (TypeError, ValueError) as err:
            raise type(err)(str(err).replace("`image`", f"`{argument}`")) from err
        return frames_io.resize_images(pixels, pils, height, width) * 2.0 - 1.0

    def _clip_states(self, image: Any, last_image: Any, image_embeds: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """CLIP states [N, 257·k, D'] of the image (and last image, concatenated along the tokens)."""
        if image_embeds is None:
            pils = frames_io.images_to_pils(image)
            if last_image is not None:
                pils = [*pils, *frames_io.images_to_pils(last_image)]
            pixel_values = self.image_processor(pils).to(device=self.image_encoder.device, dtype=self.image_encoder.dtype)
            image_embeds = self.image_encoder.penultimate_hidden_states(pixel_values)  # [n, 257, D']
            if last_image is not None:  # [first…, last…] → per video [first ‖ last] along the tokens
                half = image_embeds.shape[0] // 2
                image_embeds = torch.cat([image_embeds[:half], image_embeds[half:]], dim=1)
        return image_embeds.to(device=device, dtype=self.dtype)  # the transformer's, once for every step

    def _condition_latents(self, first: torch.Tensor, last: torch.Tensor | None, num_frames: int, device: torch.device) -> torch.Tensor:
        """The normalised VAE-mode latents of the conditioning video, with Wan 2.1's mask channels
        in front: [N, 4 + C, f, h, w]; TI2V: the image's own latent frame [N, C, 1, h, w]."""
        count, _, height, width = first.shape
        if self.config.expand_timesteps:
            video = first.unsqueeze(2)  # [N, 3, 1, H, W]
        else:
            middle = first.new_zeros(count, 3, num_frames - 1 - (last is not None), height, width)
            parts = [first.unsqueeze(2), middle] + ([] if last is None else [last.unsqueeze(2)])
            video = torch.cat(parts, dim=2)  # [N, 3, F, H, W]: the given frames, zeros between
        video = video.to(device=self.vae.device, dtype=self.vae.dtype)
        latents = self.vae.encode_video(video).mode().to(device=device, dtype=torch.float32)
        latents = self.normalize_latents(latents)  # [N, C, f, h, w]
        if self.config.expand_timesteps:
            # [N, C, 1, h, w] → zeros after the given frame, so that every input has all f latent frames
            # (context windows slice them). Where the mask is 1 the zeros meet a factor 0: same numbers.
            num_latent_frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
            padding = latents.new_zeros(count, latents.shape[1], num_latent_frames - 1, *latents.shape[-2:])
            return torch.cat([latents, padding], dim=2)
        return torch.cat([self._frame_mask(count, num_frames, last is not None, latents), latents], dim=1)

    def _frame_mask(self, count: int, num_frames: int, has_last: bool, like: torch.Tensor) -> torch.Tensor:
        """Which pixel frames are given, folded to latent frames: [N, 4, f, h, w].

        Pixel frame 0 is repeated ×4 so that (1 + 4k) frames fill (k + 1) latent frames of 4 channels
        each — channel j of latent frame i is pixel frame 4i + j of the padded sequence.
        """
        step = self.vae_scale_factor_temporal
        height, width = like.shape[-2:]
        given = torch.zeros(num_frames)
        given[0] = 1
        if has_last:
            given[-1] = 1
        padded = torch.cat([given[:1].repeat(step), given[1:]])  # [F + step − 1]
        mask = padded.view(-1, step).t()  # [step, f]
        return mask.view(1, step, -1, 1, 1).expand(count, -1, -1, height, width).to(like.device, like.dtype)


def _pair(num_prompts: int, num_images: int, last: torch.Tensor | None) -> int:
    """Distinct videos before ``num_videos_per_prompt`` (:func:`frames.pair_prompts_and_images`), with
    one ``last_image`` per image."""
    if last is not None and last.shape[0] != num_images:
        raise ValueError(f"`last_image` holds {last.shape[0]} images but `image` {num_images}; give one last image per image")
    return frames_io.pair_prompts_and_images(num_prompts, num_images)
