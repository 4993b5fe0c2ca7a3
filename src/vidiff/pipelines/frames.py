"""Pipeline inputs and outputs: user images → float tensors, decoded videos → PIL / numpy / torch.

Conventions: images enter as ``[N, 3, H, W]`` float32 in [0, 1]; decoded videos leave the VAE as
``[B, 3, F, H, W]`` in [-1, 1] (vidiff's one layout) and are returned as diffusers returns them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import PIL.Image
import torch

from ..image_loading import check_unit_range, image_as_rgb

ImageInput = Union[PIL.Image.Image, list, np.ndarray, torch.Tensor]
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# The smallest side and the most elongated shape an input image may have: anything smaller or
# thinner holds no picture worth animating, and scaling it to cover the output costs gigabytes.
MIN_IMAGE_SIDE = 8
MAX_ASPECT_RATIO = 64
# SVD's CLIP input is blurred and resized from the image's own size, in float32 (~200 bytes a pixel
# at peak). Larger images are first box-shrunk by a whole factor to at most this many pixels;
# 4096² keeps diffusers' numbers for every camera photo.
CLIP_SOURCE_MAX_PIXELS = 4096 * 4096
# cover_and_center_crop scales the whole image and then crops when that intermediate stays within
# this many times the crop (every usual aspect ratio; diffusers' exact pixels); else it resizes only
# the cropped region (a sub-pixel different, but never larger than the crop).
COVER_INTERMEDIATE_MAX_RATIO = 4


@dataclass
class VideoPipelineOutput:
    """What a video pipeline returns.

    ``frames`` holds the batch of videos: ``"np"`` → float32 array ``[B, F, H, W, 3]`` in [0, 1];
    ``"pt"`` → tensor ``[B, F, 3, H, W]`` in [0, 1] (diffusers' layout); ``"pil"`` → a list of B
    lists of PIL images; ``"latent"`` → the final latents ``[B, C, F, H/8, W/8]``.
    ``output[0]`` is ``output.frames``, as in diffusers.
    """

    frames: Any

    def __getitem__(self, index: int) -> Any:
        return (self.frames,)[index]

    def __iter__(self):
        return iter((self.frames,))

    def __len__(self) -> int:
        return 1


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")


def check_image_size(width: int, height: int, argument: str = "image") -> None:
    """Refuse images with a side under MIN_IMAGE_SIDE pixels or an aspect ratio beyond MAX_ASPECT_RATIO."""
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"`{argument}` is {width}x{height} pixels (WxH); each side must be at least {MIN_IMAGE_SIDE} pixels"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"`{argument}` is {width}x{height} pixels (WxH), an aspect ratio of 1:{ratio:.0f}; at most "
            f"1:{MAX_ASPECT_RATIO} is accepted (crop it closer to the output's shape first)"
        )


def _pil_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    # [H, W, 3] uint8 → [3, H, W] float32 in [0, 1]; the same arithmetic diffusers uses (x / 255).
    array = np.asarray(image_as_rgb(image, "image"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    # numpy images are channel-last: [H, W, 3] or [N, H, W, 3]; uint8 or float in [0, 1].
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"`image` as a numpy array must be [H, W, 3] or [N, H, W, 3] (RGB, channel last), got shape {array.shape}"
        )
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0  # 16-bit images: 65535 is white
    elif np.issubdtype(array.dtype, np.floating):
        check_unit_range(array, "image")
        array = array.astype(np.float32)
    else:
        raise TypeError(f"`image` numpy array must be uint8, uint16 or float in [0, 1], got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


def _shrink_factor(height: int, width: int, max_pixels: int | None) -> int:
    """The smallest whole factor that brings ``height × width`` (rounded up) within ``max_pixels``."""
    if max_pixels is None or height * width <= max_pixels:
        return 1
    factor = max(2, math.ceil(math.sqrt(height * width / max_pixels)))
    while math.ceil(height / factor) * math.ceil(width / factor) > max_pixels:
        factor += 1
    return factor


def images_to_tensor(image: ImageInput, max_pixels: int | None = None) -> tuple[torch.Tensor, list[PIL.Image.Image] | None]:
    """Turn the user's ``image`` argument into ``[N, 3, H, W]`` float32 in [0, 1] (at its own size).

    Accepts a PIL image, a list of PIL images (one per video), a numpy array ``[H, W, 3]`` /
    ``[N, H, W, 3]`` (uint8, uint16 — 65535 is white — or float in [0, 1]) or a tensor ``[3, H, W]`` /
    ``[N, 3, H, W]`` in [0, 1]. Float values must be finite and within [0, 1] (a small resampling
    overshoot is kept as is); 16-bit and float PIL modes are scaled, not clipped. Sides under
    MIN_IMAGE_SIDE and aspect ratios beyond MAX_ASPECT_RATIO are refused. Images over ``max_pixels``
    are box-shrunk by a whole factor first (PIL's ``reduce``, or average pooling). Also returns the
    PIL images (full size, RGB) when the input was PIL, since resizing those goes through PIL.
    """
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, (list, tuple)):
        pils = _rgb_pils(image)
        factor = _shrink_factor(pils[0].height, pils[0].width, max_pixels)
        shrunk = [p.reduce(factor) if factor > 1 else p for p in pils]
        return pils_to_tensor(shrunk), pils
    if isinstance(image, np.ndarray):
        tensor = _array_to_tensor(image)
    elif isinstance(image, torch.Tensor):
        tensor = image[None] if image.ndim == 3 else image
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"`image` as a tensor must be [3, H, W] or [N, 3, H, W] in [0, 1], got shape {tuple(image.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"`image` tensor must be floating point in [0, 1], got dtype {tensor.dtype}")
        tensor = tensor.detach().float().cpu()
        check_unit_range(tensor, "image")
    else:
        raise TypeError(
            "`image` must be a PIL image, a list of PIL images, a numpy array or a torch tensor; "
            f"got {type(image).__name__}"
        )
    check_image_size(tensor.shape[-1], tensor.shape[-2])
    factor = _shrink_factor(tensor.shape[-2], tensor.shape[-1], max_pixels)
    if factor > 1:  # [N, 3, ⌈H/f⌉, ⌈W/f⌉], edge blocks averaged over the pixels they hold
        tensor = torch.nn.functional.avg_pool2d(tensor, factor, ceil_mode=True)
    return tensor, None


def _rgb_pils(images: list | tuple) -> list[PIL.Image.Image]:
    """A list of same-size PIL images as checked RGB copies (16-bit and float modes scaled)."""
    if not images:
        raise ValueError("`image` is an empty list; pass at least one image")
    if not all(isinstance(i, PIL.Image.Image) for i in images):
        raise TypeError(f"`image` as a list must hold PIL images, got {sorted({type(i).__name__ for i in images})}")
    if len({i.size for i in images}) > 1:
        raise ValueError(f"`image` list holds images of different sizes {[i.size for i in images]}; resize them first")
    check_image_size(*images[0].size)
    return [image_as_rgb(i, "image") for i in images]


def resize_images(images: torch.Tensor, pils: list[PIL.Image.Image] | None, height: int, width: int) -> torch.Tensor:
    """Resize ``[N, 3, H, W]`` in [0, 1] to ``height × width`` as diffusers' image processor does.

    PIL inputs are resized by PIL with Lanczos filtering; arrays and tensors by nearest-neighbour
    interpolation (``F.interpolate``'s default), which is diffusers' behaviour for those inputs.
    """
    if pils is not None:
        return pils_to_tensor([p.resize((width, height), resample=PIL.Image.Resampling.LANCZOS) for p in pils])
    if images.shape[-2:] == (height, width):
        return images
    return torch.nn.functional.interpolate(images, size=(height, width))


def images_to_pils(image: ImageInput) -> list[PIL.Image.Image]:
    """The user's ``image`` argument (any form :func:`images_to_tensor` takes) as RGB PIL images.

    Float arrays and tensors in [0, 1] are rounded to 8 bits (``round(x · 255)``, values outside
    [0, 1] clipped), as diffusers does before its PIL-based crops.
    """
    if isinstance(image, PIL.Image.Image) or (
        isinstance(image, (list, tuple)) and image and all(isinstance(i, PIL.Image.Image) for i in image)
    ):
        # PIL images of any sizes (the pipelines crop them); no round trip through floats.
        images = [image] if isinstance(image, PIL.Image.Image) else image
        for one in images:
            check_image_size(*one.size)
        return [image_as_rgb(one, "image") for one in images]
    pixels, _ = images_to_tensor(image)
    uint8 = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
    return [PIL.Image.fromarray(one) for one in uint8]


def cover_and_center_crop(images: list[PIL.Image.Image], width: int, height: int) -> list[PIL.Image.Image]:
    """Scale each image (box filter) until it covers ``width × height``, then cut out the centre.

    I2VGen-XL's preprocessing: the scale is the smaller of the two side ratios, each new side is
    ``round(side // scale)`` (floor, as the reference does), and the crop's top-left corner is
    ``((W' − width) // 2, (H' − height) // 2)``. Aspect ratio is kept; what sticks out is dropped.
    """
    return [_cover_and_center_crop(image, width, height) for image in images]


def _cover_and_center_crop(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    scale = min(image.width / width, image.height / height)
    scaled_width, scaled_height = round(image.width // scale), round(image.height // scale)
    left, top = (scaled_width - width) // 2, (scaled_height - height) // 2
    if scaled_width * scaled_height <= COVER_INTERMEDIATE_MAX_RATIO * width * height:
        scaled = image.resize((scaled_width, scaled_height), resample=PIL.Image.Resampling.BOX)
        return scaled.crop((left, top, left + width, top + height))
    # An elongated image would scale to a huge intermediate (a 16x1024 one to 1280x81920 for a
    # 1280x704 crop): resize only the source region the crop keeps, straight to the crop's size.
    step_x, step_y = image.width / scaled_width, image.height / scaled_height  # source pixels per scaled pixel
    box = (
        max(left * step_x, 0.0), max(top * step_y, 0.0),
        min((left + width) * step_x, image.width), min((top + height) * step_y, image.height),
    )
    return image.resize((width, height), resample=PIL.Image.Resampling.BOX, box=box)


def pils_to_tensor(images: list[PIL.Image.Image]) -> torch.Tensor:
    """Same-size PIL images → ``[N, 3, H, W]`` float32 in [0, 1]."""
    return torch.stack([_pil_to_tensor(image) for image in images])


def videos_to_output(videos: torch.Tensor, output_type: str) -> Any:
    """Decoded videos ``[B, 3, F, H, W]`` in [-1, 1] → the requested output type (see VideoPipelineOutput)."""
    unit = (videos.float() * 0.5 + 0.5).clamp(0, 1)
    unit = unit.permute(0, 2, 1, 3, 4)  # [B, F, 3, H, W]
    if output_type == "pt":
        return unit
    array = unit.permute(0, 1, 3, 4, 2).cpu().numpy()  # [B, F, H, W, 3]
    if output_type == "np":
        return array
    uint8 = (array * 255).round().astype(np.uint8)
    return [[PIL.Image.fromarray(frame) for frame in video] for video in uint8]


def pair_prompts_and_images(num_prompts: int, num_images: int) -> int:
    """How many distinct videos (before ``num_videos_per_prompt``): prompts and images pair up one to
    one, or a single one of either serves all of the other."""
    if num_prompts != num_images and 1 not in (num_prompts, num_images):
        raise ValueError(
            f"got {num_prompts} prompts and {num_images} images; give one image per prompt, "
            "one image for all prompts, or one prompt for all images"
        )
    return max(num_prompts, num_images)
