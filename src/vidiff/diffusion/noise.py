"""The one seeded noise source: initial latents, per-step noise and the public ``step(generator=...)``.

Noise is asked for by *logical* shape with the batch first. How it is drawn depends on the
generator:

- ``torch.Generator`` (or ``None`` → torch's global RNG): ``torch.randn`` with exactly the shape,
  dtype and device rule of the reference (a CPU generator draws on the CPU, then the tensor moves),
  so a run seeded like a reference run gets the same numbers.
- ``numpy.random.Generator``: ``standard_normal`` in float32 on the host, then cast and moved. The
  same seed gives the same bits on CPU, CUDA or MPS.
- a list of either, one per batch item: item i is drawn by generator i, one ``(1, *shape[1:])``
  draw each, in batch order (a list of one is that one generator).

Draw order: some reference pipelines draw video noise frame-major (``[B, F, C, h, w]``: SVD's
initial latents, I2VGen-XL's per-step noise) and then permute it to the public ``[B, C, F, h, w]``;
``frames_first=True`` reproduces that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Union

import numpy as np
import torch
from torch import Tensor

Generator = Union[torch.Generator, np.random.Generator]
GeneratorInput = Union[Generator, Sequence[Generator], None]
# (shape, dtype=None) -> fresh unit Gaussian noise; ``dtype`` None means the source's own dtype.
# Stochastic steppers draw from it; the caller owns the RNG.
NoiseSource = Callable[..., Tensor]


def _is_generator(obj: object) -> bool:
    return isinstance(obj, (torch.Generator, np.random.Generator))


def check_generator(generator: GeneratorInput, batch_size: int) -> None:
    """Validate ``generator`` for a batch of ``batch_size`` videos; TypeError/ValueError naming it."""
    if generator is None or _is_generator(generator):
        return
    if isinstance(generator, (list, tuple)):
        if not generator or not all(_is_generator(g) for g in generator):
            raise TypeError(
                "`generator` list must hold torch.Generator or numpy.random.Generator objects, "
                f"got {[type(g).__name__ for g in generator]}"
            )
        if len({type(g) for g in generator}) > 1:
            raise TypeError("`generator` list mixes torch and numpy generators; use one kind")
        if len(generator) not in (1, batch_size):
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but the pipeline makes {batch_size} "
                f"video(s) (images × num_videos_per_prompt); pass one generator or a list of {batch_size}"
            )
        return
    raise TypeError(
        "`generator` must be a torch.Generator, a numpy.random.Generator, a list of either, or None; "
        f"got {type(generator).__name__}"
    )


def _draw_one(shape: tuple[int, ...], generator: Generator | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    if isinstance(generator, np.random.Generator):
        host = generator.standard_normal(size=shape, dtype=np.float32)
        return torch.from_numpy(host).to(device=device, dtype=dtype)
    # A CPU generator cannot draw on another device: draw on the CPU and move (the reference's rule).
    draw_device = device
    if generator is not None and generator.device.type != device.type:
        if generator.device.type != "cpu":
            raise ValueError(
                f"`generator` lives on {generator.device} but the noise is needed on {device}; "
                "use a CPU generator or one on that device"
            )
        draw_device = torch.device("cpu")
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def randn(
    shape: Sequence[int],
    generator: GeneratorInput,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    frames_first: bool = False,
) -> Tensor:
    """Unit Gaussian noise of ``shape`` (batch first), drawn as this module's docstring says.

    ``frames_first``: ``shape`` is ``[B, C, F, h, w]`` but the draw is made as ``[B, F, C, h, w]``
    and permuted (the reference's order for SVD latents and I2VGen-XL's step noise).
    """
    shape = tuple(int(s) for s in shape)
    if frames_first:
        if len(shape) != 5:
            raise ValueError(f"frames_first noise needs a [B, C, F, h, w] shape, got {list(shape)}")
        b, c, f, h, w = shape
        return randn((b, f, c, h, w), generator, device=device, dtype=dtype).permute(0, 2, 1, 3, 4)
    device = torch.device(device)
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, (list, tuple)):
        if len(generator) < shape[0]:
            raise ValueError(f"`generator` lists {len(generator)} generators for a batch of {shape[0]}")
        # Item i of the batch comes from generator i; a batch smaller than the list uses its head
        # (the reference draws the conditioning image's noise this way).
        one = (1, *shape[1:])
        return torch.cat([_draw_one(one, generator[i], device, dtype) for i in range(shape[0])])
    return _draw_one(shape, generator, device, dtype)


def seeded_noise(
    generator: GeneratorInput, device: torch.device | str, dtype: torch.dtype, *, frames_first: bool = False
) -> NoiseSource:
    """A :data:`NoiseSource` drawing with :func:`randn` from ``generator`` on ``device``.

    Its ``dtype`` argument, when given, overrides ``dtype`` for one draw (DPM-Solver's SDE variants
    draw float32 noise for float16 latents, as the reference does).
    """
    default_dtype = dtype

    def noise(shape: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
        return randn(shape, generator, device=device, dtype=dtype or default_dtype, frames_first=frames_first)

    return noise


def given_noise(variance_noise: Tensor) -> NoiseSource:
    """A noise source that hands out the caller's own draw (the reference's ``variance_noise``)."""

    def noise(shape: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
        if tuple(variance_noise.shape) != tuple(shape):
            raise ValueError(f"variance_noise must have the sample's shape {list(shape)}, got {list(variance_noise.shape)}")
        return variance_noise if dtype is None else variance_noise.to(dtype)

    return noise
