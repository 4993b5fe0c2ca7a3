"""Pipeline inputs and outputs: user images → float tensors, decoded videos → PIL / numpy / torch.

Conventions: images enter as ``[N, 3, H, W]`` float32 in [0, 1]; decoded videos leave the VAE as
``[B, 3, F, H, W]`` in [-1, 1] (vidiff's one layout) and are returned as diffusers returns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import PIL.Image
import torch

ImageInput = Union[PIL.Image.Image, list, np.ndarray, torch.Tensor]
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


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


def _pil_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    # [H, W, 3] uint8 → [3, H, W] float32 in [0, 1]; the same arithmetic diffusers uses (x / 255).
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
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
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    else:
        raise TypeError(f"`image` numpy array must be uint8 or float in [0, 1], got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


def images_to_tensor(image: ImageInput) -> tuple[torch.Tensor, list[PIL.Image.Image] | None]:
    """Turn the user's ``image`` argument into ``[N, 3, H, W]`` float32 in [0, 1] (at its own size).

    Accepts a PIL image, a list of PIL images (one per video), a numpy array ``[H, W, 3]`` /
    ``[N, H, W, 3]`` (uint8, or float in [0, 1]) or a tensor ``[3, H, W]`` / ``[N, 3, H, W]`` in [0, 1].
    Also returns the PIL images when the input was PIL, since resizing those goes through PIL.
    """
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("`image` is an empty list; pass at least one image")
        if not all(isinstance(i, PIL.Image.Image) for i in image):
            raise TypeError(
                "`image` as a list must hold PIL images, got "
                f"{sorted({type(i).__name__ for i in image})}"
            )
        pils = [i.convert("RGB") for i in image]
        if len({p.size for p in pils}) > 1:
            raise ValueError(f"`image` list holds images of different sizes {[p.size for p in pils]}; resize them first")
        return pils_to_tensor(pils), pils
    if isinstance(image, np.ndarray):
        return _array_to_tensor(image), None
    if isinstance(image, torch.Tensor):
        tensor = image[None] if image.ndim == 3 else image
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"`image` as a tensor must be [3, H, W] or [N, 3, H, W] in [0, 1], got shape {tuple(image.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"`image` tensor must be floating point in [0, 1], got dtype {tensor.dtype}")
        return tensor.detach().float().cpu(), None
    raise TypeError(
        "`image` must be a PIL image, a list of PIL images, a numpy array or a torch tensor; "
        f"got {type(image).__name__}"
    )


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
        return [i.convert("RGB") for i in ([image] if isinstance(image, PIL.Image.Image) else image)]
    pixels, _ = images_to_tensor(image)
    uint8 = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
    return [PIL.Image.fromarray(one) for one in uint8]


def cover_and_center_crop(images: list[PIL.Image.Image], width: int, height: int) -> list[PIL.Image.Image]:
    """Scale each image (box filter) until it covers ``width × height``, then cut out the centre.

    I2VGen-XL's preprocessing: the scale is the smaller of the two side ratios, each new side is
    ``round(side // scale)`` (floor, as the reference does), and the crop's top-left corner is
    ``((W' − width) // 2, (H' − height) // 2)``. Aspect ratio is kept; what sticks out is dropped.
    """
    out = []
    for image in images:
        scale = min(image.width / width, image.height / height)
        scaled = image.resize((round(image.width // scale), round(image.height // scale)), resample=PIL.Image.Resampling.BOX)
        left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
        out.append(scaled.crop((left, top, left + width, top + height)))
    return out


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
