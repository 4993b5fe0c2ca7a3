"""Seeded noise for pipelines: torch generators reproduce diffusers' draws, numpy ones are device-independent.

A pipeline asks for noise by *logical* shape with the batch first. How it is drawn depends on the
generator the user passed:

- ``torch.Generator`` (or ``None`` → torch's global RNG): ``torch.randn`` with exactly the shape, dtype
  and device rule diffusers uses (a CPU generator draws on the CPU, then the tensor moves), so a run
  seeded like a diffusers run gets the same numbers.
- ``numpy.random.Generator``: ``standard_normal`` in float32 on the host, then cast and moved. The
  same seed gives the same bits on CPU, CUDA or MPS.
- a list of either, one per video: each item of the batch is drawn by its own generator, one
  ``(1, *shape[1:])`` draw each, in batch order (as diffusers does for lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

Generator = Union[torch.Generator, np.random.Generator]
GeneratorInput = Union[Generator, Sequence[Generator], None]


def _is_generator(obj: object) -> bool:
    return isinstance(obj, (torch.Generator, np.random.Generator))


def check_generator(generator: GeneratorInput, batch_size: int) -> None:
    """Validate ``generator`` for a batch of ``batch_size`` videos; raise TypeError/ValueError naming it."""
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


def _draw_one(shape: tuple[int, ...], generator: Generator | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(generator, np.random.Generator):
        host = generator.standard_normal(size=shape, dtype=np.float32)
        return torch.from_numpy(host).to(device=device, dtype=dtype)
    # A CPU generator cannot draw on another device: draw on the CPU and move (diffusers' rule).
    draw_device = device
    if generator is not None and generator.device.type != device.type:
        if generator.device.type != "cpu":
            raise ValueError(
                f"`generator` lives on {generator.device} but the pipeline runs on {device}; "
                "use a CPU generator or one on the pipeline's device"
            )
        draw_device = torch.device("cpu")
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def randn(
    shape: Sequence[int],
    generator: GeneratorInput,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Unit Gaussian noise of ``shape`` (batch first) drawn as described in this module's docstring."""
    shape = tuple(int(s) for s in shape)
    device = torch.device(device)
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, (list, tuple)):
        # Item i of the batch comes from generator i; a batch smaller than the list uses its head
        # (diffusers draws the conditioning image's noise this way).
        one = (1, *shape[1:])
        return torch.cat([_draw_one(one, generator[i], device, dtype) for i in range(shape[0])])
    return _draw_one(shape, generator, device, dtype)
