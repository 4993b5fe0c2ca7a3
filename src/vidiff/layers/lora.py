"""Low-rank adapters (LoRA) on linear and 2-D convolution layers.

A LoRA adds ``Δ = scale · up @ down`` to a layer's weight, ``down`` ``[rank, in]`` (``[rank, in, kh,
kw]`` for a convolution) and ``up`` ``[out, rank]`` (``[out, rank, 1, 1]``), ``scale = alpha / rank``.
:class:`LoraLinear` and :class:`LoraConv2d` are ``nn.Linear`` / ``nn.Conv2d`` that *share* the
parameters of the layer they replace (same ``weight`` / ``bias`` objects, same state-dict keys) and
hold any number of named adapters:

- unfused, each active adapter runs as an extra low-rank product beside the base layer
  (``base(x) + Σ weight · scale · up(down(x))``), so adapters and their weights switch without
  touching the base weights;
- fused, the active adapters are added into ``weight``; the unfused weight is kept (one copy of
  each fused layer's weight), so unfusing restores it bit for bit (subtracting the delta again, as
  peft does, would leave rounding behind).

Adapter tensors are non-persistent buffers of the layer: they follow ``.to(device, dtype)`` and CPU
offload but never enter the model's ``state_dict``, so saving or strictly loading a model works the
same with LoRAs loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F


def lora_delta(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``up @ down`` in the weight's shape: ``[out, in]`` or ``[out, in, kh, kw]``."""
    return (up.flatten(1) @ down.flatten(1)).view(up.shape[0], *down.shape[1:])  # [out, rank] @ [rank, in·kh·kw]


class _LoraLayer:
    """The adapter bookkeeping shared by :class:`LoraLinear` and :class:`LoraConv2d`.

    Each adapter's factors are buffers of the layer itself (``lora_<slot>_down`` / ``_up``; adapter
    names may hold characters a buffer name cannot), so anything that moves a module's own tensors
    (``.to()``, sequential CPU offload) moves them with the weight.
    """

    weight: nn.Parameter

    def _init_lora(self) -> None:
        self.adapter_slots: dict[str, int] = {}  # adapter name → its buffers' slot number
        self.adapter_scales: dict[str, float] = {}  # adapter name → alpha / rank
        self.adapter_weights: dict[str, float] = {}  # adapter → its last set_adapters weight (1.0)
        self.active: tuple[str, ...] = ()  # the adapters that run, in activation order
        self.enabled = True  # disable_lora() turns every unfused adapter off, keeping `active`
        self.runtime_scale = 1.0  # the call-time `cross_attention_kwargs={"scale": …}` factor
        # While fused: the exact pre-fusion weight (a buffer, so it follows .to(); never saved).
        self.register_buffer("unfused_weight", None, persistent=False)
        self.fused_adapters: tuple[str, ...] = ()

    @property
    def adapters(self) -> list[str]:
        """The adapter names this layer holds, in load order."""
        return list(self.adapter_slots)

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter ``name``'s ``(down, up)``."""
        slot = self.adapter_slots[name]
        return getattr(self, f"lora_{slot}_down"), getattr(self, f"lora_{slot}_up")

    def add_adapter(self, name: str, down: torch.Tensor, up: torch.Tensor, scale: float) -> None:
        """Add adapter ``name`` (weight 1.0, inactive until :meth:`set_active`) on this layer's device and dtype."""
        to = {"device": self.weight.device, "dtype": self.weight.dtype}
        slot = max(self.adapter_slots.values(), default=-1) + 1
        self.register_buffer(f"lora_{slot}_down", down.to(**to), persistent=False)
        self.register_buffer(f"lora_{slot}_up", up.to(**to), persistent=False)
        self.adapter_slots[name] = slot
        self.adapter_scales[name] = float(scale)
        self.adapter_weights[name] = 1.0

    def set_active(self, weights: Mapping[str, float]) -> None:
        """Activate exactly the adapters in ``weights`` (those this layer has), each with its weight;
        the others keep their last weight (used if they are fused by name)."""
        chosen = {name: float(weight) for name, weight in weights.items() if name in self.adapter_slots}
        self.adapter_weights.update(chosen)
        self.active = tuple(chosen)

    def delete_adapter(self, name: str) -> None:
        if name in self.fused_adapters:
            raise ValueError(f"adapter {name!r} is fused into the weights; call unfuse_lora() before deleting it")
        slot = self.adapter_slots.pop(name, None)
        if slot is not None:
            delattr(self, f"lora_{slot}_down")
            delattr(self, f"lora_{slot}_up")
        self.adapter_scales.pop(name, None)
        self.adapter_weights.pop(name, None)
        self.active = tuple(active for active in self.active if active != name)

    def fuse(self, scale: float = 1.0, names: Sequence[str] | None = None) -> None:
        """Add ``scale · weight · alpha/rank · up @ down`` of the active adapters (or ``names``) into ``weight``."""
        if self.unfused_weight is not None:
            raise ValueError("this layer's LoRAs are already fused; call unfuse_lora() first")
        chosen = [name for name in (names if names is not None else self.active) if name in self.adapter_slots]
        if not chosen:
            return
        self.unfused_weight = self.weight.detach().clone()
        with torch.no_grad():
            for name in chosen:
                factor = self.adapter_weights.get(name, 1.0) * self.adapter_scales[name] * scale
                self.weight.add_(lora_delta(*self.factors(name)).to(self.weight.dtype) * factor)
        self.fused_adapters = tuple(chosen)

    def unfuse(self) -> None:
        """Put back the exact weight that was there before :meth:`fuse`."""
        if self.unfused_weight is None:
            return
        with torch.no_grad():
            self.weight.copy_(self.unfused_weight)
        self.unfused_weight, self.fused_adapters = None, ()

    def _add_low_rank(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return out
        for name in self.active:
            if name in self.fused_adapters:
                continue  # already inside `weight`
            factor = self.adapter_scales[name] * self.adapter_weights[name] * self.runtime_scale
            out = out + self._low_rank(*self.factors(name), x) * factor
        return out

    def _low_rank(self, down: torch.Tensor, up: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LoraLinear(_LoraLayer, nn.Linear):
    """An ``nn.Linear`` with LoRA adapters; :meth:`wrap` builds one on an existing layer's parameters."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_lora()

    @classmethod
    def wrap(cls, layer: nn.Linear) -> LoraLinear:
        """A LoraLinear that shares ``layer``'s weight and bias Parameters (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = layer.in_features, layer.out_features
        new.weight, new.bias = layer.weight, layer.bias
        new._init_lora()
        return new.train(layer.training)

    def unwrap(self) -> nn.Linear:
        """A plain ``nn.Linear`` on this layer's weight and bias Parameters (adapters dropped)."""
        plain = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(plain)
        plain.in_features, plain.out_features = self.in_features, self.out_features
        plain.weight, plain.bias = self.weight, self.bias
        return plain.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._add_low_rank(F.linear(x, self.weight, self.bias), x)

    def _low_rank(self, down: torch.Tensor, up: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # x [..., in] → [..., rank] → [..., out]
        return F.linear(F.linear(x.to(down.dtype), down), up).to(x.dtype)


class LoraConv2d(_LoraLayer, nn.Conv2d):
    """An ``nn.Conv2d`` with LoRA adapters: ``down`` is a convolution with the layer's kernel,
    stride and padding to ``rank`` channels, ``up`` a 1×1 convolution back; :meth:`wrap` builds one on an
    existing layer's parameters."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_lora()

    @classmethod
    def wrap(cls, layer: nn.Conv2d) -> LoraConv2d:
        """A LoraConv2d that shares ``layer``'s weight and bias Parameters (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        _copy_conv_settings(layer, new)
        new.weight, new.bias = layer.weight, layer.bias
        new._init_lora()
        return new.train(layer.training)

    def unwrap(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` on this layer's weight and bias Parameters (adapters dropped)."""
        plain = nn.Conv2d.__new__(nn.Conv2d)
        nn.Module.__init__(plain)
        _copy_conv_settings(self, plain)
        plain.weight, plain.bias = self.weight, self.bias
        return plain.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._add_low_rank(self._conv_forward(x, self.weight, self.bias), x)

    def _low_rank(self, down: torch.Tensor, up: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # x [N, in, H, W] → [N, rank, H', W'] (the layer's kernel/stride/padding) → [N, out, H', W']
        hidden = F.conv2d(x.to(down.dtype), down, None, self.stride, self.padding, self.dilation)
        return F.conv2d(hidden, up).to(x.dtype)


# What nn.Conv2d.__init__ would have set, besides the parameters.
_CONV_SETTINGS = (
    "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
    "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice",
)


def _copy_conv_settings(source: nn.Conv2d, target: nn.Conv2d) -> None:
    for attribute in _CONV_SETTINGS:
        setattr(target, attribute, getattr(source, attribute))


def wrap_layer(layer: nn.Module) -> LoraLinear | LoraConv2d:
    """The LoRA form of ``layer`` (an ``nn.Linear`` or ungrouped ``nn.Conv2d``); TypeError otherwise."""
    if isinstance(layer, (LoraLinear, LoraConv2d)):
        return layer
    if type(layer) is nn.Linear:
        return LoraLinear.wrap(layer)
    if type(layer) is nn.Conv2d and layer.groups == 1 and layer.padding_mode == "zeros":
        return LoraConv2d.wrap(layer)
    raise TypeError(f"LoRA adapts nn.Linear and ungrouped zero-padded nn.Conv2d layers, not {type(layer).__name__}")
