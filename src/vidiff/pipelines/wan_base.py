"""What Wan's text-to-video and image-to-video pipelines share.

Wan (2.1 and 2.2) is a diffusion transformer trained with flow matching: the sample is
x = (1 − t)·x0 + t·ε, the transformer predicts the velocity ε − x0, and the default scheduler is
UniPC in its flow form (``flow_shift`` 3.0 or 5.0). The causal video VAE compresses time 4× (latent
frames (F − 1)/4 + 1) and space 8× (Wan 2.1) or 16× (Wan 2.2 TI2V); its latents are normalised with
the VAE config's ``latents_mean`` / ``latents_std``.

Two-expert checkpoints (Wan 2.2 A14B) hold ``transformer`` (high noise) and ``transformer_2`` (low
noise) and a ``boundary_ratio`` in ``model_index.json``: ``transformer`` runs while the step's
timestep t ≥ boundary_ratio · num_train_timesteps, with ``guidance_scale``; then ``transformer_2``
with ``guidance_scale_2`` (default: ``guidance_scale``). TI2V (Wan 2.2 5B) sets ``expand_timesteps``:
every latent token gets its own timestep, 0 for the tokens of a given first frame.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..diffusion.guidance import ClassifierFreeGuidance, Guidance, NoGuidance, SwitchedGuidance
from ..diffusion.loop import SamplingPlan
from ..diffusion.noise import GeneratorInput, check_generator, randn
from ..models.umt5 import UMT5EncoderModel
from ..models.wan_transformer import WanTransformer3DModel
from ..models.wan_vae import AutoencoderKLWan
from ..schedulers import FLOW_SCHEDULERS, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from ..tokenizer import T5TokenizerFast
from . import arguments
from . import frames as frames_io
from . import prompts as prompt_io
from . import wan_prompts
from .base import Pipeline

logger = logging.getLogger(__name__)

CALLBACK_TENSOR_INPUTS = ("latents",)
# The schedulers that step a flow-matching model, by the class names a checkpoint may write.
WAN_SCHEDULERS = FLOW_SCHEDULERS
TOKENIZERS = {"T5TokenizerFast": T5TokenizerFast, "T5Tokenizer": T5TokenizerFast, "UMT5Tokenizer": T5TokenizerFast}


@dataclass(frozen=True)
class WanPipelineConfig:
    """The settings a Wan ``model_index.json`` holds beside its components (diffusers reads them as
    ``pipe.config.boundary_ratio`` / ``pipe.config.expand_timesteps``)."""

    boundary_ratio: float | None = None
    expand_timesteps: bool = False


class WanPipelineBase(Pipeline):
    """Base of :class:`WanPipeline` and :class:`WanImageToVideoPipeline` (see the module docstring)."""

    components = {
        "tokenizer": TOKENIZERS,
        "text_encoder": {"UMT5EncoderModel": UMT5EncoderModel},
        "vae": {"AutoencoderKLWan": AutoencoderKLWan},
        "scheduler": WAN_SCHEDULERS,
        "transformer": {"WanTransformer3DModel": WanTransformer3DModel},
        "transformer_2": {"WanTransformer3DModel": WanTransformer3DModel},
    }
    optional_components = frozenset({"transformer", "transformer_2"})
    options = {"boundary_ratio": None, "expand_timesteps": False}
    model_cpu_offload_seq = "text_encoder->image_encoder->transformer->transformer_2->vae"

    tokenizer: T5TokenizerFast
    text_encoder: UMT5EncoderModel
    vae: AutoencoderKLWan
    scheduler: UniPCMultistepScheduler | FlowMatchEulerDiscreteScheduler
    transformer: WanTransformer3DModel | None
    transformer_2: WanTransformer3DModel | None

    def __init__(self, **components: Any) -> None:
        super().__init__(**components)
        self.config = WanPipelineConfig(**self._options)
        self._check_experts()
        self._check_transformer_inputs()

    def _expected_in_channels(self) -> int:
        """Latent channels the transformer must take in this pipeline (text-to-video: the VAE's z_dim)."""
        return self.vae.config.z_dim

    def _check_transformer_inputs(self) -> None:
        """A transformer trained for another task (an I2V one in the text pipeline, or the other way
        round) would fail deep inside a convolution; refuse it here, naming the right pipeline."""
        expected = self._expected_in_channels()
        for name in ("transformer", "transformer_2"):
            model = getattr(self, name)
            if model is not None and model.config.in_channels != expected:
                other = "WanImageToVideoPipeline (pass an image)" if type(self).__name__ == "WanPipeline" else "WanPipeline (text only, no image)"
                raise ValueError(
                    f"`{name}` takes {model.config.in_channels} input channels but {type(self).__name__} feeds it "
                    f"{expected} (VAE z_dim {self.vae.config.z_dim}{self._channel_note()}); this checkpoint is for "
                    f"{other}"
                )

    def _channel_note(self) -> str:
        return ""

    def _check_experts(self) -> None:
        """At least one transformer; ``transformer_2`` needs ``boundary_ratio`` and the other way round."""
        ratio = self.config.boundary_ratio
        if self.transformer is None and self.transformer_2 is None:
            raise ValueError(f"{type(self).__name__} needs a `transformer` (and, for Wan 2.2 A14B, a `transformer_2`)")
        if ratio is not None:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
                raise ValueError(f"`boundary_ratio` must be a number in [0, 1] (Wan 2.2 A14B: 0.875 or 0.9), got {ratio!r}")
            if self.transformer is None or self.transformer_2 is None:
                missing = "transformer_2" if self.transformer_2 is None else "transformer"
                raise ValueError(
                    f"`boundary_ratio` is {ratio}, so the pipeline switches between two experts, but `{missing}` is "
                    f"missing; load a two-expert checkpoint (Wan 2.2 A14B) or set boundary_ratio=None"
                )
        elif self.transformer_2 is not None and self.transformer is not None:
            raise ValueError(
                "the pipeline has a `transformer_2` but `boundary_ratio` is None, so it would never run; set "
                "boundary_ratio (Wan 2.2 A14B: 0.875 for T2V, 0.9 for I2V) or drop transformer_2"
            )

    # ------------------------------------------------------------------ the networks
    @property
    def _main_transformer(self) -> WanTransformer3DModel:
        return self.transformer if self.transformer is not None else self.transformer_2

    @property
    def device(self) -> torch.device:
        if self._offloader is not None:
            return self._offloader.device
        return self._main_transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self._main_transformer.dtype

    @property
    def vae_scale_factor_spatial(self) -> int:
        return self.vae.spatial_scale_factor

    @property
    def vae_scale_factor_temporal(self) -> int:
        return self.vae.temporal_scale_factor

    def enable_vae_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_stride_height: int | None = None,
        tile_sample_stride_width: int | None = None,
    ) -> None:
        """Encode and decode videos larger than a tile as overlapping spatial tiles (the Wan VAE's
        ``enable_tiling``: diffusers' 256-pixel tiles every 192 pixels by default, seams cross-faded).
        Frames differ slightly from untiled ones; peak VAE memory follows the tile, not the frame."""
        self.vae.enable_tiling(
            tile_sample_min_height=tile_sample_min_height, tile_sample_min_width=tile_sample_min_width,
            tile_sample_stride_height=tile_sample_stride_height, tile_sample_stride_width=tile_sample_stride_width,
        )

    def _boundary_timestep(self) -> float | None:
        ratio = self.config.boundary_ratio
        return None if ratio is None else ratio * self.scheduler.config.num_train_timesteps

    def _expert(self, timestep: torch.Tensor) -> WanTransformer3DModel:
        """The transformer that denoises at ``timestep``: ``transformer`` at or above the boundary (and
        always without one), ``transformer_2`` below it."""
        boundary = self._boundary_timestep()
        if self.transformer is None:
            return self.transformer_2
        if boundary is None or float(timestep) >= boundary:
            return self.transformer
        return self.transformer_2

    def _guidance(self, guidance_scale: float, guidance_scale_2: float | None) -> Guidance:
        """CFG with ``guidance_scale`` (off at ≤ 1); with two experts, ``guidance_scale_2`` below the boundary."""
        high = ClassifierFreeGuidance(guidance_scale) if guidance_scale > 1 else NoGuidance()
        boundary = self._boundary_timestep()
        if boundary is None:
            return high
        low_scale = guidance_scale if guidance_scale_2 is None else guidance_scale_2
        return SwitchedGuidance(high, ClassifierFreeGuidance(low_scale), boundary)

    def _denoiser_input(
        self, x: torch.Tensor, timestep: torch.Tensor, cond: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's latent input and timestep for the loop's ``x`` [B', C, f, h, w].

        Without ``expand_timesteps``: ``x`` (I2V: with the condition channels appended) and ``t`` per
        video. With it: ``(1 − m)·condition + m·x`` and per-token timesteps ``m·t`` [B', f·h·w/4], where
        ``m`` is 0 on a given first latent frame and 1 elsewhere (text-to-video: 1 everywhere).
        """
        batch = x.shape[0]
        if not self.config.expand_timesteps:
            if "condition" in cond:
                x = torch.cat([x, cond["condition"]], dim=1)  # [B', C + C_cond, f, h, w]
            return x, timestep.expand(batch)
        _, patch_h, patch_w = self._main_transformer.config.patch_size
        mask = cond.get("mask")
        if mask is None:  # text-to-video: every token at t
            frames, height, width = x.shape[2:]
            tokens = frames * (height // patch_h) * (width // patch_w)
            return x, timestep.to(torch.float32).expand(batch, tokens)
        x = (1 - mask) * cond["condition"] + mask * x
        # One timestep per token: the mask of the first video at every patch's top-left cell.
        tokens = (mask[0, 0][:, ::patch_h, ::patch_w] * timestep).flatten()  # [f·h'·w'] float32
        return x, tokens.unsqueeze(0).expand(batch, -1)

    def _network(self, x: torch.Tensor, timestep: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # x: [B', C, f, h, w] float32 (the loop's sample); cond: "text" [B', L, D], optional
        # "image_embeds" [B', 257·k, D'], "condition" [B', C', f, h, w] and "mask" [B', 1, f, h, w].
        model = self._expert(timestep)
        hidden, timesteps = self._denoiser_input(x, timestep, cond)
        # The transformer casts its inputs to its compute dtype (the text and image states are
        # already in it: cast once when the conditioning was built).
        output = model(hidden, timesteps, cond["text"], encoder_hidden_states_image=cond.get("image_embeds"))
        # In the transformer's dtype, as diffusers hands it to guidance and the scheduler (the flow
        # steppers keep the float32 sample where diffusers' UniPC does).
        return output

    # ------------------------------------------------------------------ steps of __call__
    def _frame_count(self, num_frames: Any) -> int:
        """``num_frames`` as the VAE can make it: 4k + 1 (a warning when rounded down, as in diffusers)."""
        arguments.check_counts(num_frames=num_frames)
        step = self.vae_scale_factor_temporal
        if num_frames % step != 1:
            rounded = num_frames // step * step + 1
            logger.warning(
                "`num_frames` - 1 must be a multiple of %d (the VAE compresses %d frames into one latent frame); "
                "rounding %d down to %d", step, step, num_frames, rounded,
            )
            num_frames = rounded
        return num_frames

    def _check_size(self, height: Any, width: Any) -> None:
        """``height``/``width`` must be multiples of the VAE factor × the transformer's patch (16 for Wan
        2.1, 32 for Wan 2.2 TI2V); the error names the nearest valid sizes (diffusers rounds silently)."""
        _, patch_h, patch_w = self._main_transformer.config.patch_size
        for name, value, patch in (("height", height, patch_h), ("width", width, patch_w)):
            multiple = self.vae_scale_factor_spatial * patch
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % multiple:
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    below, above = value // multiple * multiple, math.ceil(value / multiple) * multiple
                    nearest = f"{above}" if below == 0 else f"{below} or {above}"
                    raise ValueError(
                        f"`{name}` must be a multiple of {multiple} (the VAE's {self.vae_scale_factor_spatial} × the "
                        f"transformer's patch {patch}); got {value}, nearest valid: {nearest}"
                    )
                raise ValueError(f"`{name}` must be a positive multiple of {multiple}, got {value!r}")

    def _check_call(
        self, height, width, num_inference_steps, guidance_scale, guidance_scale_2, num_videos_per_prompt,
        output_type, tensor_inputs, max_sequence_length, attention_kwargs,
    ) -> None:
        """Validate the arguments both Wan pipelines share, before any work; errors name the argument."""
        if attention_kwargs:
            raise ValueError(
                f"`attention_kwargs` {sorted(attention_kwargs)} is not supported by vidiff's Wan pipelines "
                "(no LoRA scale or attention processor to pass it to); leave it None"
            )
        if self.free_init_enabled:
            raise ValueError(
                "FreeInit re-noises with a VE/VP schedule and is not available for Wan's flow matching; "
                "call pipe.disable_free_init() first"
            )
        self._check_size(height, width)
        arguments.check_counts(num_inference_steps=num_inference_steps, num_videos_per_prompt=num_videos_per_prompt)
        arguments.check_number("guidance_scale", guidance_scale, minimum=0)
        if guidance_scale_2 is not None:
            if self.config.boundary_ratio is None:
                raise ValueError(
                    "`guidance_scale_2` is the low-noise expert's scale and needs a two-expert pipeline "
                    "(boundary_ratio set, transformer_2 loaded: Wan 2.2 A14B); leave it None here"
                )
            arguments.check_number("guidance_scale_2", guidance_scale_2, minimum=0)
        frames_io.check_output_type(output_type)
        arguments.check_callback_inputs(tensor_inputs, CALLBACK_TENSOR_INPUTS)
        wan_prompts.check_max_sequence_length(max_sequence_length)

    def _text_conditioning(
        self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided: bool,
        max_sequence_length: int, device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt (and, with guidance, negative-prompt) states [N, L, D], one row per prompt, in the
        transformer's dtype."""
        prompt_io.check_prompt_arguments(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        if prompt_embeds is None:
            prompt_embeds = wan_prompts.encode_wan_prompts(
                self.tokenizer, self.text_encoder, prompt_io.as_prompt_list(prompt), max_sequence_length, device
            )
        prompt_embeds = prompt_embeds.to(device=device, dtype=self.dtype)  # the transformer's, once for every step
        if not guided:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            negatives = prompt_io.negative_prompt_list(negative_prompt, prompt_embeds.shape[0], prompt)
            negative_prompt_embeds = wan_prompts.encode_wan_prompts(
                self.tokenizer, self.text_encoder, negatives, max_sequence_length, device, argument="negative_prompt"
            )
        elif negative_prompt_embeds.shape[0] != prompt_embeds.shape[0]:
            raise ValueError(
                f"`negative_prompt_embeds` has {negative_prompt_embeds.shape[0]} rows but there are "
                f"{prompt_embeds.shape[0]} prompts; give one row per prompt"
            )
        return prompt_embeds, negative_prompt_embeds.to(device=device, dtype=self.dtype)

    def _plan(self, num_inference_steps: int, device: torch.device) -> SamplingPlan:
        """The scheduler's plan; it must sample in flow space (Wan predicts flow velocities)."""
        plan = self.scheduler.plan(num_inference_steps, device=device)
        if plan.parameterization.space != "flow":
            raise ValueError(
                f"`scheduler`: Wan's transformer predicts flow-matching velocities, but this "
                f"{type(self.scheduler).__name__} samples in {plan.parameterization.space!r} space; use "
                "UniPCMultistepScheduler with use_flow_sigmas=True and prediction_type='flow_prediction' "
                "(the repositories' own) or FlowMatchEulerDiscreteScheduler"
            )
        return plan

    def _latent_shape(self, batch_size: int, num_channels: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """[B, C, (F − 1)/4 + 1, H/s, W/s]: the shape of the initial noise."""
        factor = self.vae_scale_factor_spatial
        frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        return (batch_size, num_channels, frames, height // factor, width // factor)

    @staticmethod
    def _check_noise_inputs(shape: Sequence[int], latents: torch.Tensor | None, generator: GeneratorInput) -> None:
        """Before any work: given ``latents`` must have ``shape``; a generator list one entry per video."""
        if latents is not None:
            arguments.given_latents(latents, shape, torch.device("cpu"), torch.float32)
        else:
            check_generator(generator, shape[0])

    @staticmethod
    def _initial_latents(
        shape: Sequence[int], latents: torch.Tensor | None, generator: GeneratorInput, device: torch.device
    ) -> torch.Tensor:
        """The caller's ``latents`` or fresh float32 noise ``shape`` (the run's only random draw)."""
        if latents is not None:
            return arguments.given_latents(latents, shape, device, torch.float32)
        return randn(shape, generator, device=device, dtype=torch.float32)

    @staticmethod
    def _num_prompts(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds) -> int:
        """How many prompts the call has (checking the text arguments first)."""
        prompt_io.check_prompt_arguments(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        return len(prompt_io.as_prompt_list(prompt)) if prompt is not None else prompt_embeds.shape[0]

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and the reciprocal of its std, [1, C, 1, 1, 1] like ``like``."""
        config = self.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inverse_std

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents → the transformer's space: (z − mean) / std, per channel."""
        mean, inverse_std = self._latent_statistics(latents)
        return (latents - mean) * inverse_std

    def _decode(self, latents: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        """Final latents [B, C, f, h, w] → float32 frames [B, 3, F, H, W] in [-1, 1]."""
        latents = latents.to(device=self.vae.device, dtype=self.vae.dtype)
        mean, inverse_std = self._latent_statistics(latents)
        frames = self.vae.decode_video(
            latents / inverse_std + mean, chunk_size,
            progress=lambda starts: self.progress_bar(starts, total=len(starts), desc="decoding"),
        )
        return frames.float().clamp(-1, 1)



def per_video(rows: torch.Tensor, num_videos_per_prompt: int) -> torch.Tensor:
    """One row per prompt → one row per video, each prompt's videos next to each other."""
    return rows.repeat_interleave(num_videos_per_prompt, dim=0)
