"""Stable Video Diffusion (SVD / SVD-XT): one image → a short video.

Flow: CLIP-embed the image and VAE-encode a noise-augmented copy (the conditioning), draw the
initial latents, run the one denoising loop with SVD's frame-wise guidance ramp, decode in chunks.
Numbers match diffusers' ``StableVideoDiffusionPipeline`` on the same weights and seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..diffusion.guidance import FrameRampGuidance, NoGuidance
from ..diffusion.noise import GeneratorInput, check_generator, randn, seeded_noise
from ..diffusion.parameterization import ContinuousTimesteps, Parameterization
from ..schedulers import SCHEDULERS, AnyScheduler
from ..image_processing import CLIPImageProcessor
from ..models.clip import CLIPVisionModelWithProjection
from ..models.unet_svd import UNetSpatioTemporalConditionModel
from ..models.vae_temporal import AutoencoderKLTemporalDecoder
from ..models.video_vae import upcast_if_forced
from . import arguments
from . import frames as frames_io
from . import svd_preprocessing
from .base import Pipeline

CALLBACK_TENSOR_INPUTS = ("latents",)
# SVD's UNet convention, whatever the scheduler's config says: v-prediction, told c_noise = ¼·ln σ
# (Karras et al. 2022, Table 1). Every scheduler builds its σ schedule around it.
NETWORK = Parameterization("v_prediction", ContinuousTimesteps())


class StableVideoDiffusionPipeline(Pipeline):
    """Image-to-video with Stable Video Diffusion; loads ``stabilityai/stable-video-diffusion-img2vid(-xt)``.

    Components: ``vae`` (AutoencoderKLTemporalDecoder), ``image_encoder`` (CLIP vision tower),
    ``unet`` (UNetSpatioTemporalConditionModel), ``scheduler`` (EulerDiscreteScheduler) and
    ``feature_extractor`` (CLIPImageProcessor, whose mean/std normalise the CLIP input).
    """

    components = {
        "vae": {"AutoencoderKLTemporalDecoder": AutoencoderKLTemporalDecoder},
        "image_encoder": {"CLIPVisionModelWithProjection": CLIPVisionModelWithProjection},
        "unet": {"UNetSpatioTemporalConditionModel": UNetSpatioTemporalConditionModel},
        # Euler as released, listed first as the usual one (diffusers' parity); any other scheduler
        # samples in σ-space around NETWORK.
        "scheduler": {"EulerDiscreteScheduler": SCHEDULERS["EulerDiscreteScheduler"], **SCHEDULERS},
        # transformers without torchvision names its processor CLIPImageProcessorPil; same config.
        "feature_extractor": {"CLIPImageProcessor": CLIPImageProcessor, "CLIPImageProcessorPil": CLIPImageProcessor},
    }

    # cond/uncond: image_embeddings [B, 1, D], added_time_ids [B, 3] (per video), and
    # image_latents [B, 4, F, h, w], the conditioning latent beside every frame (frame axis 2).
    frame_axes = {"image_latents": 2}

    vae: AutoencoderKLTemporalDecoder
    image_encoder: CLIPVisionModelWithProjection
    unet: UNetSpatioTemporalConditionModel
    scheduler: AnyScheduler
    feature_extractor: CLIPImageProcessor

    @classmethod
    def from_single_file(cls, path: str | os.PathLike, **kwargs: Any) -> StableVideoDiffusionPipeline:
        """Build from an original ``svd.safetensors`` / ``svd_xt.safetensors`` / ``svd_xt_1_1.safetensors``.

        ``config`` (a diffusers SVD folder, or ``{component: config}`` such as
        ``{"unet": {"num_frames": 14}}`` for the 14-frame SVD), ``dtype``/``torch_dtype``, ``device`` and
        components as keywords, as in :func:`vidiff.pipelines.single_file.svd_from_single_file`.
        """
        from .single_file import svd_from_single_file  # loading helper, kept out of the import block

        return svd_from_single_file(cls, path, **kwargs)

    @torch.no_grad()
    def __call__(
        self,
        image: frames_io.ImageInput,
        height: int = 576,
        width: int = 1024,
        num_frames: int | None = None,
        num_inference_steps: int = 25,
        sigmas: Sequence[float] | None = None,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        decode_chunk_size: int | None = None,
        num_videos_per_prompt: int = 1,
        generator: GeneratorInput = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = CALLBACK_TENSOR_INPUTS,
        return_dict: bool = True,
        eta: float = 0.0,
    ) -> frames_io.VideoPipelineOutput | Any:
        """Generate ``num_frames`` frames that continue ``image``.

        Args:
            image: PIL image, list of PIL images (one video each), numpy ``[H, W, 3]``/``[N, H, W, 3]``
                (uint8, uint16 or float in [0, 1]) or tensor ``[3, H, W]``/``[N, 3, H, W]`` in [0, 1];
                finite, each side ≥ 8 pixels, aspect ratio at most 1:64 (see ``frames.images_to_tensor``).
            height, width: output size in pixels, multiples of 8 (default 576 × 1024).
            num_frames: frames per video (default: the UNet's ``num_frames``, 25 for SVD-XT).
            num_inference_steps: denoising steps (25). ``sigmas``: custom noise levels instead.
            min_guidance_scale, max_guidance_scale: classifier-free guidance ramps linearly from
                min (first frame) to max (last frame); guidance is off when max ≤ 1 (1.0, 3.0).
            fps: frame rate the UNet is conditioned on (7; the model was trained on ``fps - 1``).
            motion_bucket_id: amount of motion (127). noise_aug_strength: noise added to the
                conditioning image (0.02); more noise, more motion, less fidelity.
            decode_chunk_size: frames decoded per VAE call (default: all at once; SVD's temporal
                decoder mixes the frames of a chunk, so this changes the output, as in diffusers).
            num_videos_per_prompt: videos per input image (1).
            generator: torch or numpy generator, or a list of one per video. torch reproduces
                diffusers' draws; numpy gives the same video on every device.
            latents: initial noise ``[B, 4, F, H/8, W/8]`` (B = images × num_videos_per_prompt).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (see VideoPipelineOutput).
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict``; a returned
                ``"latents"`` replaces the latents. ``callback_on_step_end_tensor_inputs``: ["latents"].
            return_dict: return a VideoPipelineOutput (True) or the tuple ``(frames,)``.
            eta: DDIM's η (0.0 = deterministic; not a diffusers SVD option); other schedulers
                refuse a non-zero η.
        """
        num_frames = self.unet.config.num_frames if num_frames is None else num_frames
        decode_chunk_size = num_frames if decode_chunk_size is None else decode_chunk_size
        self._check_arguments(
            height, width, num_frames, num_inference_steps, min_guidance_scale, max_guidance_scale,
            decode_chunk_size, num_videos_per_prompt, output_type, callback_on_step_end_tensor_inputs,
        )
        _check_conditioning_numbers(fps, motion_bucket_id, noise_aug_strength, sigmas)
        self._check_context_frames(num_frames)
        # [N, 3, H0, W0] in [0, 1], box-shrunk when huge (it only feeds CLIP's 224² input); the full-size
        # PIL images (when given) are resized straight to the output size for the VAE.
        pixels, pils = frames_io.images_to_tensor(image, max_pixels=frames_io.CLIP_SOURCE_MAX_PIXELS)
        batch_size = pixels.shape[0] * num_videos_per_prompt
        check_generator(generator, batch_size)
        device, dtype = self.device, self.image_encoder.dtype
        guided = max_guidance_scale > 1  # diffusers runs the unconditional branch only then

        image_embeddings = self._encode_clip(pixels, device, dtype)
        image_latents = self._encode_condition(pixels, pils, height, width, noise_aug_strength, generator, device)
        image_embeddings = image_embeddings.repeat_interleave(num_videos_per_prompt, dim=0)  # [B, 1, D]
        image_latents = image_latents.to(dtype).repeat_interleave(num_videos_per_prompt, dim=0)  # [B, 4, h, w]
        # The UNet is micro-conditioned on (fps - 1, motion bucket, noise augmentation).
        time_ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=dtype, device=device)
        time_ids = time_ids.repeat(batch_size, 1)  # [B, 3]
        # [B, 4, h, w] → [B, 4, F, h, w]: the same conditioning latent beside every frame.
        image_latents = image_latents.unsqueeze(2).expand(-1, -1, num_frames, -1, -1)
        cond = {"image_embeddings": image_embeddings, "image_latents": image_latents, "added_time_ids": time_ids}
        uncond = None
        if guided:
            # SVD's unconditional branch: zeroed image embedding and image latents, same time ids.
            uncond = {**cond, "image_embeddings": torch.zeros_like(image_embeddings), "image_latents": torch.zeros_like(image_latents)}

        # eta only when non-zero: the released Euler scheduler has none and refuses it by name.
        plan = self.scheduler.plan(num_inference_steps, sigmas=sigmas, eta=eta or None, device=device, network=NETWORK)
        shape = (batch_size, *self.vae.latent_shape(num_frames, height, width))  # [B, C, f, h, w]
        latents = self._initial_latents(shape, latents, generator, device, dtype) * plan.init_noise_sigma
        guidance = FrameRampGuidance(min_guidance_scale, max_guidance_scale, num_frames) if guided else NoGuidance()

        latents = self._denoise(
            latents, plan, cond, uncond, guidance,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
            # Stochastic schedulers' step noise, drawn [B, F, C, h, w] as diffusers' SVD latents are laid out.
            noise=seeded_noise(generator, device, latents.dtype, frames_first=True),
            # FreeInit's fast sampling re-plans with fewer steps (custom `sigmas` keep their own schedule).
            replan=lambda steps: self.scheduler.plan(steps, sigmas=sigmas, eta=eta or None, device=device, network=NETWORK),
            num_inference_steps=num_inference_steps,
        )
        return self._finish(latents, output_type, return_dict, decode_chunk_size)

    # ------------------------------------------------------------------ steps of __call__
    def _network(self, x: torch.Tensor, timestep: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # x: [B', 4, F, h, w] scaled noisy latents; the conditioning latents [B', 4, F, h, w] ride
        # along as 4 more channels; the UNet gives every frame its video's image embedding.
        sample_in = torch.cat([x, cond["image_latents"]], dim=1)
        return self.unet(sample_in, timestep, cond["image_embeddings"], cond["added_time_ids"])

    def _encode_clip(self, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[N, 3, H0, W0] in [0, 1] → CLIP image embeddings [N, 1, D]."""
        clip_input = svd_preprocessing.svd_clip_input(self.feature_extractor, pixels)  # [N, 3, 224, 224], normalised
        embeds = self.image_encoder(clip_input.to(device=device, dtype=dtype))
        return embeds.unsqueeze(1)

    def _encode_condition(self, pixels, pils, height, width, noise_aug_strength, generator, device) -> torch.Tensor:
        """The noise-augmented conditioning image → VAE latent mode [N, 4, h, w] (unscaled, as SVD was trained)."""
        image = frames_io.resize_images(pixels, pils, height, width).to(device) * 2.0 - 1.0  # [-1, 1]
        # First draw of the run: the augmentation noise, shaped like the image batch (diffusers' order).
        image = image + noise_aug_strength * randn(image.shape, generator, device=device, dtype=image.dtype)
        # fp16 VAEs marked force_upcast overflow when encoding: encode with a float32 copy (self.vae,
        # which other code may share, keeps its dtype throughout).
        vae = upcast_if_forced(self.vae)
        return vae.encode(image.to(vae.dtype)).mode()

    def _initial_latents(self, shape, latents, generator, device, dtype) -> torch.Tensor:
        if latents is not None:
            return arguments.given_latents(latents, shape, device, dtype)
        # diffusers draws [B, F, C, h, w]; draw the same numbers in vidiff's [B, C, F, h, w] layout.
        return randn(shape, generator, device=device, dtype=dtype, frames_first=True)

    @staticmethod
    def _check_arguments(height, width, num_frames, steps, min_scale, max_scale, chunk, videos, output_type, tensor_inputs) -> None:
        arguments.check_size(height, width, 8)
        arguments.check_counts(num_frames=num_frames, num_inference_steps=steps, decode_chunk_size=chunk, num_videos_per_prompt=videos)
        arguments.check_number("min_guidance_scale", min_scale)
        arguments.check_number("max_guidance_scale", max_scale)
        if min_scale < 0 or max_scale < 0:
            raise ValueError(f"guidance scales must be ≥ 0, got min_guidance_scale={min_scale}, max_guidance_scale={max_scale}")
        if min_scale > max_scale:
            raise ValueError(f"`min_guidance_scale` ({min_scale}) must not exceed `max_guidance_scale` ({max_scale})")
        frames_io.check_output_type(output_type)
        arguments.check_callback_inputs(tensor_inputs, CALLBACK_TENSOR_INPUTS)


def _check_conditioning_numbers(fps: Any, motion_bucket_id: Any, noise_aug_strength: Any, sigmas: Any) -> None:
    """The micro-conditioning numbers and custom ``sigmas`` must be finite (NaN gives a NaN video)."""
    arguments.check_number("fps", fps)
    arguments.check_number("motion_bucket_id", motion_bucket_id)
    arguments.check_number("noise_aug_strength", noise_aug_strength)
    if sigmas is not None:
        arguments.check_finite("sigmas", sigmas)
