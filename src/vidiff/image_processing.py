"""CLIP image preprocessing: images in, normalized ``pixel_values`` for the CLIP vision tower out.

:class:`CLIPImageProcessor` reads a ``preprocessor_config.json`` (the ``feature_extractor`` folder of
a pipeline) and reproduces transformers' ``CLIPImageProcessor``: shortest-edge resize with PIL,
center crop, rescale to [0, 1], per-channel normalization. Families that prepare CLIP's input their
own way keep that with the family (SVD: :mod:`vidiff.pipelines.svd_preprocessing`) and use only
:meth:`CLIPImageProcessor.normalize` and the config's crop size.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from . import loading
from .config import Config
from .image_loading import image_as_rgb

# The mean/std of OpenAI's CLIP training images, per RGB channel.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor, Sequence[Union[PIL.Image.Image, np.ndarray, torch.Tensor]]]


def _square_or_dict(value: Any, name: str, default_key: str) -> dict[str, int]:
    # Old configs write sizes as a bare int: a shortest edge for `size`, a square for `crop_size`.
    if isinstance(value, int):
        return {"shortest_edge": value} if default_key == "shortest_edge" else {"height": value, "width": value}
    if isinstance(value, Mapping):
        return {str(k): int(v) for k, v in value.items()}
    raise TypeError(f"{name} must be an int or a dict, got {value!r}")


@dataclasses.dataclass(frozen=True)
class CLIPImageProcessorConfig(Config):
    """Options of a transformers ``preprocessor_config.json``; defaults are OpenAI CLIP's (SVD's)."""

    do_resize: bool = True
    size: int | dict = dataclasses.field(  # an int: old configs' shortest edge
        default_factory=lambda: {"shortest_edge": 224})
    resample: int = 3  # PIL.Image.Resampling: 3 = BICUBIC
    do_center_crop: bool = True
    crop_size: int | dict = dataclasses.field(  # an int: a square
        default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: float | tuple[float, ...] = OPENAI_CLIP_MEAN  # one number: every channel
    image_std: float | tuple[float, ...] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True

    def __post_init__(self) -> None:
        size = _square_or_dict(self.size, "size", "shortest_edge")
        crop = _square_or_dict(self.crop_size, "crop_size", "height")
        if set(size) not in ({"shortest_edge"}, {"height", "width"}):
            raise ValueError(f"size must be {{'shortest_edge': n}} or {{'height': h, 'width': w}}, got {size}")
        if set(crop) != {"height", "width"}:
            raise ValueError(f"crop_size must be {{'height': h, 'width': w}}, got {crop}")
        if self.resample not in {int(r) for r in PIL.Image.Resampling}:
            raise ValueError(f"resample={self.resample!r} is not a PIL resampling filter (0..5)")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "crop_size", crop)
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            values = (value,) * 3 if isinstance(value, (int, float)) else tuple(float(v) for v in value)
            object.__setattr__(self, name, values)


def _to_chw_tensor(image: PIL.Image.Image | np.ndarray | torch.Tensor, convert_rgb: bool) -> torch.Tensor:
    """One image as a [C, H, W] tensor; PIL and numpy images are channels-last, tensors channels-first."""
    if isinstance(image, PIL.Image.Image):
        if convert_rgb and image.mode != "RGB":
            image = image_as_rgb(image, "images")  # 16-bit and float modes scaled, not clipped
        image = np.array(image)  # a writable copy, [H, W, C] or [H, W]
    if isinstance(image, np.ndarray):
        array = image[:, :, None] if image.ndim == 2 else image
        if array.ndim != 3:
            raise ValueError(f"a numpy image must be [H, W, C] (or [N, H, W, C]), got shape {image.shape}")
        return torch.from_numpy(array.copy()).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(f"a tensor image must be [C, H, W] (or [N, C, H, W]), got shape {list(image.shape)}")
        return image.detach().cpu()
    raise TypeError(f"images must be PIL images, numpy arrays or torch tensors, got {type(image).__name__}")


def _image_list(images: ImageInput) -> list[PIL.Image.Image | np.ndarray | torch.Tensor]:
    # A 4-D array or tensor is a batch; a list may mix kinds.
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is an empty list")
        return list(images)
    return [images]


def _shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    # The short side becomes `shortest_edge`; the long side keeps the aspect ratio, rounded down.
    if width <= height:
        return int(shortest_edge * height / width), shortest_edge
    return shortest_edge, int(shortest_edge * width / height)


def _resize_with_pil(image: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """Resize a uint8 [C, H, W] image to ``size`` (height, width) with PIL, as transformers does."""
    if image.dtype != torch.uint8:
        raise ValueError(
            "resizing works on 8-bit images (PIL images or uint8 arrays/tensors), got a "
            f"{image.dtype} tensor; resize it yourself and pass do_resize=False"
        )
    pixels = image.permute(1, 2, 0).numpy()  # [H, W, C]
    pil = PIL.Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    resized = np.array(pil.resize((size[1], size[0]), resample=PIL.Image.Resampling(resample)))
    resized = resized[:, :, None] if resized.ndim == 2 else resized
    return torch.from_numpy(resized).permute(2, 0, 1)


def _center_crop(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop [C, H, W] around its center; a side shorter than the crop is zero-padded (more before)."""
    _, in_h, in_w = image.shape
    pad_h, pad_w = max(height - in_h, 0), max(width - in_w, 0)
    if pad_h or pad_w:
        # F.pad order: (left, right, top, bottom); the larger half goes first, as in transformers.
        image = F.pad(image, (pad_w - pad_w // 2, pad_w // 2, pad_h - pad_h // 2, pad_h // 2))
        in_h, in_w = image.shape[1:]
    top, left = (in_h - height) // 2, (in_w - width) // 2
    return image[:, top : top + height, left : left + width]


def normalize(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(pixel_values - mean) / std`` per channel of [N, C, H, W] or [C, H, W].

    Integer input is promoted to float32 (as transformers does); float input keeps its dtype.
    """
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim not in (3, 4):
        raise ValueError(f"pixel_values must be a [N, C, H, W] or [C, H, W] tensor, got {_describe(pixel_values)}")
    channels = pixel_values.shape[-3]
    if not channels == len(mean) == len(std):
        raise ValueError(
            f"pixel_values has {channels} channels but mean/std have {len(mean)}/{len(std)} values"
        )
    values = pixel_values if pixel_values.is_floating_point() else pixel_values.float()
    mean_t = torch.tensor(mean, dtype=values.dtype, device=values.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=values.dtype, device=values.device).view(-1, 1, 1)
    return (values - mean_t) / std_t


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__


class CLIPImageProcessor:
    """transformers' ``CLIPImageProcessor`` rebuilt on PIL and torch, configured by a
    ``preprocessor_config.json``.

    ``processor(images)`` returns ``pixel_values`` [N, 3, crop_height, crop_width] (float32) ready for
    :class:`vidiff.models.clip.CLIPVisionModelWithProjection`.
    """

    # model_index.json names this component ["transformers", "CLIPImageProcessor"].
    library = "transformers"

    def __init__(self, config: CLIPImageProcessorConfig | None = None) -> None:
        self.config = config if config is not None else CLIPImageProcessorConfig()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Config, **overrides: Any) -> CLIPImageProcessor:
        """Build from a ``preprocessor_config.json`` dict (or a config); ``overrides`` replace options."""
        return cls(CLIPImageProcessorConfig.from_diffusers(config, **overrides))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        subfolder: str | None = "feature_extractor",
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        **overrides: Any,
    ) -> CLIPImageProcessor:
        """Read ``<subfolder>/preprocessor_config.json`` of a local folder or Hub id."""
        checkpoint = loading.Checkpoint.open(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls.from_checkpoint(checkpoint, subfolder, **overrides)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: loading.Checkpoint, subfolder: str | None, **overrides: Any
    ) -> CLIPImageProcessor:
        """Read from an opened :class:`~vidiff.loading.Checkpoint` (used by pipelines)."""
        raw = checkpoint.read_json(loading.join(subfolder, "preprocessor_config.json"))
        return cls.from_config(raw, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``preprocessor_config.json`` (readable by transformers) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        content = {**self.config.to_diffusers(), "image_processor_type": "CLIPImageProcessor"}
        loading.write_json(directory / "preprocessor_config.json", content)

    def _target_size(self, height: int, width: int) -> tuple[int, int]:
        size = self.config.size
        if "shortest_edge" in size:
            return _shortest_edge_size(height, width, size["shortest_edge"])
        return size["height"], size["width"]

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(pixel_values - image_mean) / image_std`` per channel, on [N, C, H, W] or [C, H, W].

        Integer input is promoted to float32; float input keeps its dtype. This is the only step
        SVD and I2VGen-XL ask of their feature extractor (on images already in [0, 1]).
        """
        return normalize(pixel_values, self.config.image_mean, self.config.image_std)

    def _process_one(self, image: PIL.Image.Image | np.ndarray | torch.Tensor, config: CLIPImageProcessorConfig) -> torch.Tensor:
        pixels = _to_chw_tensor(image, config.do_convert_rgb)  # [C, H, W]
        if config.do_resize:
            pixels = _resize_with_pil(pixels, self._target_size(*pixels.shape[1:]), config.resample)
        if config.do_center_crop:
            pixels = _center_crop(pixels, config.crop_size["height"], config.crop_size["width"])
        if config.do_rescale:
            # transformers multiplies in float64 and stores float32.
            pixels = (pixels.double() * config.rescale_factor).float()
        if config.do_normalize:
            pixels = normalize(pixels, config.image_mean, config.image_std)
        return pixels.float()

    def __call__(self, images: ImageInput, **overrides: Any) -> torch.Tensor:
        """Preprocess one image or a batch into ``pixel_values`` [N, C, crop_h, crop_w] float32.

        ``images``: a PIL image, a numpy array [H, W, C] / [N, H, W, C], a tensor [C, H, W] /
        [N, C, H, W], or a list of those. 8-bit input (PIL, uint8) is in 0..255 and matches transformers'
        processor; float input is used as given (resizing it is refused: PIL resizes 8-bit images).
        ``overrides`` change options for this call only (e.g. ``do_center_crop=False``).
        """
        config = self.config.replace(**overrides) if overrides else self.config
        processed = [self._process_one(image, config) for image in _image_list(images)]
        shapes = {tuple(p.shape) for p in processed}
        if len(shapes) != 1:
            raise ValueError(f"images ended with different shapes {sorted(shapes)}; enable do_center_crop")
        return torch.stack(processed)
