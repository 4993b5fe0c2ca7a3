"""Normalisation layers whose arithmetic precision is part of the model's contract."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input's and weights' dtype; returns the input's dtype.

    Diffusion transformers trained in mixed precision (Wan, PixArt) normalise in float32: the
    statistics of half-precision activations lose too many bits. Parameter names (``weight``,
    ``bias``) are those of ``nn.LayerNorm``.
    """

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        normed = F.layer_norm(states.float(), self.normalized_shape, weight, bias, self.eps)
        return normed.to(states.dtype)
