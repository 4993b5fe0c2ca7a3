"""Shared test utilities: perturbing random models so loader bugs cannot hide."""

from __future__ import annotations

import torch


@torch.no_grad()
def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter and floating buffer, in place.

    Freshly initialised models have norm weights exactly 1 and biases exactly 0, so a loader that
    drops or swaps them still produces the same output; after this, every tensor matters.
    """
    gen = torch.Generator().manual_seed(seed)
    for tensor in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
        noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
        tensor.add_(noise.to(tensor.dtype) * scale)
    return module


def max_abs_diff(a, b) -> float:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a - b).abs().max().item()
