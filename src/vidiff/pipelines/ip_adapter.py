"""IP-Adapter on the AnimateDiff pipelines: load, weigh, unload, and turn images into per-video inputs.

diffusers' API: ``pipe.load_ip_adapter("h94/IP-Adapter", subfolder="models",
weight_name="ip-adapter_sd15.safetensors")``, ``pipe.set_ip_adapter_scale(0.6)``, then
``pipe(prompt, ip_adapter_image=face)`` (or precomputed ``ip_adapter_image_embeds``), and
``pipe.unload_ip_adapter()``. The CLIP image encoder and its preprocessing are vidiff's own
(:class:`~vidiff.models.clip_vision.CLIPVisionModelWithProjection`,
:class:`~vidiff.image_processing.CLIPImageProcessor`).

What the loop sees: per video ``ip_adapter_image_embeds_{k}`` (one per loaded adapter) in ``cond``
and ``uncond`` — ``[B, n, D]`` image embeds (``ip-adapter_sd15``) or ``[B, n, L, D]`` penultimate
hidden states (``-plus``) for ``n`` images; the unconditional branch gets zeros (base) or the
encoding of an all-zero image (plus), as diffusers does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import loading
from ..image_processing import CLIPImageProcessor
from ..models.clip_vision import CLIPVisionModelWithProjection
from ..models.ip_adapter import ImageProjection, ip_adapter_branches
from ..models.ip_adapter_loading import check_state_dict, install_ip_adapters, read_ip_adapter_file, remove_ip_adapters

IP_INPUT = "ip_adapter_image_embeds_"  # + adapter index: the loop's per-video input names


class IPAdapterMixin:
    """``load_ip_adapter`` / ``set_ip_adapter_scale`` / ``unload_ip_adapter`` for pipelines with a ``unet``."""

    image_encoder: CLIPVisionModelWithProjection | None = None
    # ``feature_extractor`` (a CLIPImageProcessor) exists from the first load_ip_adapter on (None after
    # unload_ip_adapter): a Stable Diffusion repository's own feature extractor is never read.

    def load_ip_adapter(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping],
        subfolder: str | Sequence[str] | None,
        weight_name: str | Sequence[str],
        image_encoder_folder: str | None = "image_encoder",
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
    ) -> None:
        """Load one or more IP-Adapters (each replaces what was loaded before) and, if none is set yet,
        the CLIP image encoder.

        Args:
            pretrained_model_name_or_path_or_dict: a Hub id (``"h94/IP-Adapter"``), a local folder, or an
                already-read ``{"image_proj": {...}, "ip_adapter": {...}}`` dict; a list for several adapters.
            subfolder: the file's folder in the repository (``"models"``); one per adapter or one for all.
            weight_name: ``"ip-adapter_sd15.safetensors"``, ``"ip-adapter-plus_sd15.safetensors"`` (or the
                ``.bin`` files, read as plain tensors only); one per adapter.
            image_encoder_folder: where the CLIP vision tower lies: a name is taken inside ``subfolder``
                (``models/image_encoder``), a path with ``/`` from the repository root; None skips the
                encoder (then pass ``ip_adapter_image_embeds`` when calling).
            revision, cache_dir, local_files_only: as for ``from_pretrained``.
        """
        names = [weight_name] if isinstance(weight_name, str) else list(weight_name)
        sources = _as_list(pretrained_model_name_or_path_or_dict, len(names), "pretrained_model_name_or_path_or_dict")
        folders = _as_list(subfolder, len(names), "subfolder")
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        state_dicts = []
        for source, folder, name in zip(sources, folders, names):
            if isinstance(source, Mapping):
                state_dicts.append(check_state_dict(source, "the given IP-Adapter state dict"))
                continue
            checkpoint = loading.Checkpoint.open(source, **hub)
            state_dicts.append(read_ip_adapter_file(checkpoint.local_path(loading.join(folder, name))))
            if self.image_encoder is None and image_encoder_folder is not None:
                encoder_folder = (
                    loading.join(folder, image_encoder_folder) if "/" not in image_encoder_folder else image_encoder_folder
                )
                self.image_encoder = CLIPVisionModelWithProjection.from_checkpoint(
                    checkpoint, encoder_folder, dtype=self.dtype, device=self.device
                ).eval()
        install_ip_adapters(self.unet, state_dicts)
        if getattr(self, "feature_extractor", None) is None:
            # diffusers builds a default CLIP processor at the encoder's resolution (224 without one).
            size = self.image_encoder.config.image_size if self.image_encoder is not None else 224
            self.feature_extractor = CLIPImageProcessor.from_config({"size": {"shortest_edge": size}, "crop_size": size})

    def set_ip_adapter_scale(self, scale: float | Sequence[float]) -> None:
        """Weigh the image prompt: one number for every adapter, or one per loaded adapter (0 turns an
        adapter off exactly; 1.0 is the trained strength; 0.5–0.7 leaves the text more say)."""
        branches = ip_adapter_branches(self.unet)
        if not branches:
            raise ValueError("no IP-Adapter is loaded; call load_ip_adapter(...) first")
        count = branches[0].num_adapters
        scales = [scale] * count if isinstance(scale, (int, float)) and not isinstance(scale, bool) else scale
        if not isinstance(scales, Sequence) or any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in scales):
            raise TypeError(
                f"`scale` must be a number or a list of {count} numbers (one per IP-Adapter); per-block dicts "
                f"(InstantStyle) are not supported, got {scale!r}"
            )
        for branch in branches:
            branch.set_scales(scales)

    def unload_ip_adapter(self) -> None:
        """Remove the adapters, the image encoder and the feature extractor: plain output again, bit for bit."""
        remove_ip_adapters(self.unet)
        self.image_encoder = None
        self.feature_extractor = None

    def _modules(self) -> list[torch.nn.Module]:
        # The image encoder is not a checkpoint component but moves and casts with the pipeline.
        modules = super()._modules()
        return modules + ([self.image_encoder] if self.image_encoder is not None else [])

    # ------------------------------------------------------------------ per-call inputs
    def _add_ip_adapter_inputs(
        self, cond: dict, uncond: dict | None, ip_adapter_image: Any, ip_adapter_image_embeds: Sequence[torch.Tensor] | None,
        num_videos_per_prompt: int, device: torch.device,
    ) -> None:
        """Put each adapter's per-video image inputs ``[B, n, …]`` into ``cond`` (and ``uncond``)."""
        projections = getattr(getattr(self.unet, "encoder_hid_proj", None), "image_projection_layers", None)
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            if projections is not None:
                raise ValueError(
                    "an IP-Adapter is loaded: pass `ip_adapter_image` or `ip_adapter_image_embeds`, or call "
                    "pipe.unload_ip_adapter()"
                )
            return
        if projections is None:
            raise ValueError(
                "`ip_adapter_image` / `ip_adapter_image_embeds` need an IP-Adapter: call pipe.load_ip_adapter(...) first"
            )
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise ValueError("pass `ip_adapter_image` or `ip_adapter_image_embeds`, not both")
        if ip_adapter_image is not None:
            pairs = self._encode_ip_images(ip_adapter_image, projections, device)
        else:
            pairs = _split_given_embeds(ip_adapter_image_embeds, len(projections), uncond is not None)
        batch = next(iter(cond.values())).shape[0]
        for index, (positive, negative) in enumerate(pairs):
            cond[f"{IP_INPUT}{index}"] = _per_video(positive.to(device), batch, num_videos_per_prompt)
            if uncond is not None:
                uncond[f"{IP_INPUT}{index}"] = _per_video(negative.to(device), batch, num_videos_per_prompt)

    def _encode_ip_images(self, images: Any, projections: Sequence[torch.nn.Module], device) -> list[tuple]:
        """Per adapter (positive ``[1, n, …]``, negative ``[1, n, …]``) from its image(s), as diffusers encodes."""
        if self.image_encoder is None or getattr(self, "feature_extractor", None) is None:
            raise ValueError(
                "`ip_adapter_image` needs the CLIP image encoder, which was not loaded (image_encoder_folder=None); "
                "pass `ip_adapter_image_embeds` instead"
            )
        images = images if isinstance(images, list) else [images]
        if len(images) != len(projections):
            raise ValueError(f"`ip_adapter_image` must hold one image (or list of images) per IP-Adapter: "
                             f"{len(projections)} loaded, got {len(images)}")
        encoder = self.image_encoder
        pairs = []
        for image, projection in zip(images, projections):
            # On the encoder's own device: under CPU offload it is not hooked and stays on the CPU.
            pixels = self.feature_extractor(image).to(device=encoder.device, dtype=encoder.dtype)  # [n, 3, S, S]
            if isinstance(projection, ImageProjection):  # base: the projected embedding; zeros unconditioned
                positive = encoder(pixels)  # [n, D]
                negative = torch.zeros_like(positive)
            else:  # plus: penultimate hidden states, of an all-zero image unconditioned
                positive = encoder.penultimate_hidden_states(pixels)  # [n, L, D]
                negative = encoder.penultimate_hidden_states(torch.zeros_like(pixels))
            pairs.append((positive[None].to(device), negative[None].to(device)))
        return pairs

    def _ip_adapter_embeds(self, cond: Mapping[str, torch.Tensor]) -> dict | None:
        """``added_cond_kwargs`` for the UNet from the loop's inputs (None without an adapter)."""
        names = sorted((name for name in cond if name.startswith(IP_INPUT)), key=lambda n: int(n[len(IP_INPUT):]))
        return {"image_embeds": [cond[name] for name in names]} if names else None


def _as_list(value: Any, count: int, argument: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise ValueError(f"`{argument}` must be one value or one per weight_name ({count}), got {len(values)}")
    return values


def _split_given_embeds(embeds: Any, count: int, guided: bool) -> list[tuple]:
    """diffusers' ``ip_adapter_image_embeds``: a list with one ``[m, n, …]`` tensor per adapter; with
    guidance each holds the negative rows then the positive rows (``torch.cat([negative, positive])``)."""
    if not isinstance(embeds, (list, tuple)) or len(embeds) != count or not all(
        isinstance(e, torch.Tensor) and e.ndim in (3, 4) for e in embeds
    ):
        got = (
            [list(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__ for e in embeds]
            if isinstance(embeds, (list, tuple)) else type(embeds).__name__
        )
        raise ValueError(
            f"`ip_adapter_image_embeds` must be a list of {count} tensor(s) [m, n, D] or [m, n, L, D], got {got}"
        )
    pairs = []
    for tensor in embeds:
        if guided:
            if tensor.shape[0] % 2:
                raise ValueError(
                    "with guidance each `ip_adapter_image_embeds` tensor stacks [negative, positive] rows; "
                    f"got {tensor.shape[0]} rows"
                )
            negative, positive = tensor.chunk(2)
            pairs.append((positive, negative))
        else:
            pairs.append((tensor, None))
    return pairs


def _per_video(embeds: torch.Tensor, batch: int, per_prompt: int) -> torch.Tensor:
    """``[m, n, …]`` → ``[B, n, …]``: one row for every video, or one per prompt (repeated per video)."""
    if embeds.shape[0] == 1:
        return embeds.expand(batch, *embeds.shape[1:])
    if embeds.shape[0] * per_prompt == batch:
        return embeds.repeat_interleave(per_prompt, dim=0)
    raise ValueError(
        f"IP-Adapter image embeddings have {embeds.shape[0]} row(s); expected 1 (shared) or one per prompt "
        f"({batch // per_prompt})"
    )
