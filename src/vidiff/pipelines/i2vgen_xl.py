"""I2VGen-XL: an image plus a prompt → a short video.

Flow: CLIP-encode the prompt and the negative prompt (both with ``clip_skip``, default 1); CLIP-embed
a square centre crop of the image; VAE-encode a ``width × height`` centre crop of it (sampling the
latent distribution with the caller's generator — the first draw of the run) and extend it along
time with frame-position planes; draw the initial latents; run the one denoising loop with
classifier-free guidance (the unconditional branch gets the negative prompt and a zero image
embedding); decode every frame with the image VAE. Numbers match diffusers' ``I2VGenXLPipeline`` on
the same weights, given the same random draws (diffusers takes the image latent's noise from torch's
global RNG instead of ``generator``; vidiff does not copy that).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import PIL.Image
import torch

from ..diffusion.guidance import ClassifierFreeGuidance, NoGuidance
from ..image_processing import CLIPImageProcessor
from ..models.clip import CLIPVisionModelWithProjection
from ..models.clip_text import CLIPTextModel
from ..models.unet_i2vgen_xl import I2VGenXLUNet
from ..models.vae_kl import AutoencoderKL
from ..tokenizer import CLIPTokenizer
from . import frames as frames_io
from ..diffusion.noise import GeneratorInput, check_generator, randn, seeded_noise
from .prompts import PromptInput
from .text_video import CALLBACK_TENSOR_INPUTS, SCHEDULERS, TextVideoPipeline


class I2VGenXLPipeline(TextVideoPipeline):
    """Image-and-text-to-video with I2VGen-XL; loads ``ali-vilab/i2vgen-xl``.

    Components: ``vae`` (AutoencoderKL; its config's ``scaling_factor``, 0.18125 for the release),
    ``text_encoder`` (CLIPTextModel) and ``tokenizer``, ``image_encoder`` (CLIP vision tower with
    projection), ``feature_extractor`` (CLIPImageProcessor: its crop size and mean/std shape the CLIP
    input), ``unet`` (I2VGenXLUNet) and ``scheduler`` (DDIM as released: v-prediction, zero terminal
    SNR, leading spacing; Euler, Euler-ancestral, DPM-Solver++ or LCM may be assigned instead).
    """

    components = {
        "vae": {"AutoencoderKL": AutoencoderKL},
        "text_encoder": {"CLIPTextModel": CLIPTextModel},
        "tokenizer": {"CLIPTokenizer": CLIPTokenizer, "CLIPTokenizerFast": CLIPTokenizer},
        "image_encoder": {"CLIPVisionModelWithProjection": CLIPVisionModelWithProjection},
        # transformers without torchvision names its processor CLIPImageProcessorPil; same config.
        "feature_extractor": {"CLIPImageProcessor": CLIPImageProcessor, "CLIPImageProcessorPil": CLIPImageProcessor},
        "unet": {"I2VGenXLUNet": I2VGenXLUNet},
        "scheduler": SCHEDULERS,
    }
    clip_skip_negative = True
    # cond/uncond: context [B, L', D] and fps [B] per video; image_features [B, C, F, h, w], the
    # encoded image latents of each frame (frame axis 2).
    frame_axes = {"image_features": 2}

    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor
    unet: I2VGenXLUNet

    @torch.no_grad()
    def __call__(
        self,
        prompt: PromptInput | None = None,
        image: frames_io.ImageInput | None = None,
        height: int | None = 704,
        width: int | None = 1280,
        target_fps: int = 16,
        num_frames: int = 16,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        negative_prompt: PromptInput | None = None,
        eta: float = 0.0,
        num_videos_per_prompt: int = 1,
        decode_chunk_size: int | None = 1,
        generator: GeneratorInput = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        clip_skip: int | None = 1,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = CALLBACK_TENSOR_INPUTS,
    ) -> frames_io.VideoPipelineOutput | Any:
        """Generate ``num_frames`` frames that start from ``image`` and follow ``prompt``.

        Args:
            prompt: text or list of texts (or ``prompt_embeds`` instead). Over 77 tokens is
                truncated, with a warning.
            image: PIL image, list of PIL images, numpy ``[H, W, 3]``/``[N, H, W, 3]`` (uint8 or float
                in [0, 1]) or tensor ``[3, H, W]``/``[N, 3, H, W]`` in [0, 1]. One image serves every
                prompt; otherwise give one image per prompt (one prompt may also serve many images).
                It is scaled to cover ``width × height`` and centre-cropped (aspect ratio kept).
                uint16 arrays are accepted too; sizes and values are checked as for SVD.
            height, width: output size in pixels, multiples of 8 (704 × 1280; None: the UNet's
                ``sample_size`` × 8).
            target_fps: frame rate the UNet is conditioned on (16); export at this rate.
            num_frames: frames per video (16).
            num_inference_steps: denoising steps (50).
            guidance_scale: classifier-free guidance weight (9.0); guidance is off at ≤ 1.
            negative_prompt: what to steer away from (text or one per prompt; default ""); used
                only with guidance. ``negative_prompt_embeds``: precomputed instead.
            eta: DDIM's η (0.0 = deterministic); other schedulers refuse a non-zero η.
            num_videos_per_prompt: videos per prompt (1).
            decode_chunk_size: frames per VAE decoder call (1; None = all at once). Each frame is
                decoded on its own, so this trades memory for speed and never changes the frames.
            generator: torch or numpy generator, or a list of one per video. The first draw is the
                image's VAE latent ``[N, 4, H/8, W/8]``, then the initial latents; torch reproduces
                diffusers' numbers (see the module docstring), numpy is the same on every device.
            latents: initial noise ``[B, C, F, H/8, W/8]`` (B = prompts × num_videos_per_prompt).
            prompt_embeds / negative_prompt_embeds: text-encoder states ``[N, 77, D]``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (see VideoPipelineOutput).
            return_dict: return a VideoPipelineOutput (True) or the tuple ``(frames,)``.
            clip_skip: use the text encoder's hidden state this many layers before the last, then its
                final layer norm (1, I2VGen-XL's training setup; None = the last layer). Applies to
                the negative prompt too.
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict``; a returned
                ``"latents"`` replaces the latents. ``callback_on_step_end_tensor_inputs``: ["latents"].
        """
        height = self.unet.config.sample_size * self.vae_scale_factor if height is None else height
        width = self.unet.config.sample_size * self.vae_scale_factor if width is None else width
        self._check_arguments(
            height, width, num_frames, num_inference_steps, guidance_scale, eta, num_videos_per_prompt,
            decode_chunk_size, output_type, callback_on_step_end_tensor_inputs,
        )
        _check_fps(target_fps)
        if image is None:
            raise ValueError("`image` is required: the picture the video starts from (a PIL image, array or tensor)")
        pils = frames_io.images_to_pils(image)
        guided = guidance_scale > 1
        device = self.device
        prompt_embeds, negative_prompt_embeds = self._text_conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided, clip_skip, device
        )
        videos = frames_io.pair_prompts_and_images(prompt_embeds.shape[0], len(pils))
        batch_size = videos * num_videos_per_prompt
        check_generator(generator, batch_size)

        image_embeddings = self._encode_clip(pils, width, device)  # [N, D]
        image_latents = self._encode_image_latents(pils, height, width, num_frames, generator, device)  # [N, 4, F, h, w]

        def per_video(rows: torch.Tensor) -> torch.Tensor:
            # one row per prompt or image → one row per video: [videos · num_videos_per_prompt, ...]
            return rows.expand(videos, *rows.shape[1:]).repeat_interleave(num_videos_per_prompt, dim=0)

        # Everything the UNet derives from the conditioning alone is encoded once here, not every step.
        latents_in = per_video(image_latents)  # [B, 4, F, h, w]
        image_embeds = per_video(image_embeddings)  # [B, D]
        cond = {
            "context": self.unet.encode_context(latents_in, image_embeds, per_video(prompt_embeds)),  # [B, L', D]
            "image_features": self.unet.encode_image_latents(latents_in),  # [B, C, F, h, w]
            "fps": torch.full((batch_size,), float(target_fps), device=device),  # [B]
        }
        uncond = None
        if guided:
            # The unconditional branch: negative prompt and a zero image embedding; same image latents and fps.
            negative_context = self.unet.encode_context(latents_in, torch.zeros_like(image_embeds), per_video(negative_prompt_embeds))
            uncond = {**cond, "context": negative_context}

        plan = self._plan(num_inference_steps, eta, device)
        dtype = prompt_embeds.dtype
        shape = (batch_size, *self.vae.latent_shape(num_frames, height, width))  # [B, C, f, h, w]
        latents = self._initial_latents(shape, latents, generator, device, dtype) * plan.init_noise_sigma

        latents = self._denoise(
            latents, plan, cond, uncond, ClassifierFreeGuidance(guidance_scale) if guided else NoGuidance(),
            callback_on_step_end, callback_on_step_end_tensor_inputs,
            # diffusers' I2VGen-XL latents are [B, F, C, h, w]: step noise is drawn frame-major.
            noise=seeded_noise(generator, device, latents.dtype, frames_first=True),
            replan=lambda steps: self._plan(steps, eta, device), num_inference_steps=num_inference_steps,
        )
        return self._finish(latents, output_type, return_dict, decode_chunk_size)

    # ------------------------------------------------------------------ steps of __call__
    def _network(self, x: torch.Tensor, timestep: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # x: [B', C, F, h, w]; per video of the (doubled) batch: fps [B'], context [B', L', D] (the UNet
        # gives it to every frame) and image features [B', C, F, h, w] (frame axis 2).
        return self.unet.denoise(x, timestep, cond["fps"], cond["context"], cond["image_features"])

    def _encode_clip(self, pils: list[PIL.Image.Image], width: int, device: torch.device) -> torch.Tensor:
        """CLIP image embeddings [N, D] of the images' ``width × width`` centre crops.

        The square crop is resized bilinearly (PIL) to the feature extractor's crop size and only
        normalised by its mean/std, as I2VGen-XL was trained.
        """
        crop = self.feature_extractor.config.crop_size
        squares = frames_io.cover_and_center_crop(pils, width, width)
        small = [square.resize((crop["width"], crop["height"]), resample=PIL.Image.Resampling.BILINEAR) for square in squares]
        pixel_values = self.feature_extractor.normalize(frames_io.pils_to_tensor(small))  # [N, 3, 224, 224]
        return self.image_encoder(pixel_values.to(device=device, dtype=self.image_encoder.dtype))

    def _encode_image_latents(self, pils: list[PIL.Image.Image], height: int, width: int, num_frames: int, generator, device) -> torch.Tensor:
        """The conditioning latents [N, 4, F, h, w]: frame 0 is the image's scaled VAE latent (sampled
        with the run's first draw), frame k ≥ 1 a constant plane k / (F − 1) marking its position."""
        pixels = frames_io.pils_to_tensor(frames_io.cover_and_center_crop(pils, width, height))
        pixels = pixels.to(device=device, dtype=self.vae.dtype) * 2.0 - 1.0  # [N, 3, H, W] in [-1, 1]
        distribution = self.vae.encode(pixels)
        noise = randn(distribution.mean.shape, generator, device=device, dtype=distribution.mean.dtype)
        first = distribution.sample(noise) * self.vae.config.scaling_factor  # [N, 4, h, w]
        positions = torch.tensor([k / (num_frames - 1) for k in range(1, num_frames)], device=device, dtype=first.dtype)
        planes = torch.ones_like(first).unsqueeze(2) * positions.view(1, 1, -1, 1, 1)  # [N, 4, F-1, h, w]
        return torch.cat([first.unsqueeze(2), planes], dim=2)


def _check_fps(target_fps: Any) -> None:
    if isinstance(target_fps, bool) or not isinstance(target_fps, (int, float)) or not 0 < target_fps < float("inf"):
        raise ValueError(f"`target_fps` must be a positive, finite number of frames per second (e.g. 16), got {target_fps!r}")
