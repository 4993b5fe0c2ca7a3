"""Shared test utilities: perturbing random models so loader bugs cannot hide, published configs,
state-dict schema comparison and save/load round trips against diffusers."""

from __future__ import annotations

import json
from pathlib import Path

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


CONFIGS = Path(__file__).parent / "configs"


def published_config(name: str) -> dict:
    """``tests/configs/<name>``: a released ``config.json`` without the notes we added (``_source``, ``_note``)."""
    raw = json.loads((CONFIGS / name).read_text())
    return {k: v for k, v in raw.items() if k not in ("_source", "_note")}


def state_dict_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def assert_same_state_dict_schema(reference: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Same state-dict keys and shapes (models built on ``meta``); names what is missing, extra or mis-shaped."""
    expected, got = state_dict_shapes(reference), state_dict_shapes(ours)
    assert sorted(set(expected) - set(got)) == [], "missing keys"
    assert sorted(set(got) - set(expected)) == [], "unexpected keys"
    assert {k: s for k, s in got.items() if expected[k] != s} == {}, "shapes differ"


def perturbed_pair(oracle_class: type, ours_class: type, config: dict, seed: int = 0) -> tuple:
    """A perturbed random diffusers model built from ``config`` and ours holding the same weights (strict load)."""
    torch.manual_seed(seed)
    oracle = perturb_(oracle_class(**config), seed=seed + 1).eval()
    ours = ours_class.from_config(config).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle, ours


def diffusers_round_trip(oracle: torch.nn.Module, ours_class: type, folder: Path) -> tuple:
    """Save ``oracle`` with diffusers, load that with vidiff, save ours and load it back with diffusers.

    Returns ``(ours, reloaded_oracle)``; the folders are ``folder/diffusers`` and ``folder/vidiff``.
    """
    oracle.save_pretrained(folder / "diffusers")
    ours = ours_class.from_pretrained(folder / "diffusers")
    ours.save_pretrained(folder / "vidiff")
    return ours, type(oracle).from_pretrained(folder / "vidiff").eval()
