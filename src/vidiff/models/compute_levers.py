"""Levers on how a pipeline's denoiser computes: regional ``torch.compile`` and forward chunking.

Both change neither weights nor state-dict keys, and both act on the denoiser only (``unet``): it
runs once per step and branch, so it is where compile time pays back and where activations peak.

- :func:`compile_repeated_blocks` compiles each *repeated block* (transformer block, resnet) on its
  own instead of the whole UNet: a block class is traced once per input shape and reused by every
  stage of that shape, so warm-up stays short and a graph break costs one block, not the network.
- :func:`set_forward_chunking` makes every feed-forward and attention layer run in slices
  (:mod:`vidiff.layers.chunking`); :func:`clear_forward_chunking` undoes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from ..layers.attention import Attention, FeedForward
from ..layers.chunking import Chunking
from ..layers.resnet import ResBlock2D
from ..layers.temporal import SpatioTemporalResBlock, TemporalBasicTransformerBlock, TemporalResnetBlock
from ..layers.transformer import BasicTransformerBlock
from .unet_i2vgen_xl_blocks import TemporalConvStack
from .wan_transformer_blocks import WanAttention, WanTransformerBlock

# The blocks a UNet repeats in every stage; compiled as units. An outer one (SpatioTemporalResBlock)
# is compiled whole and its inner blocks are not visited again.
REPEATED_BLOCKS: tuple[type[nn.Module], ...] = (
    BasicTransformerBlock,
    TemporalBasicTransformerBlock,
    SpatioTemporalResBlock,
    ResBlock2D,
    TemporalResnetBlock,
    TemporalConvStack,
    WanTransformerBlock,
)


def denoisers_of(pipeline: Any) -> list[nn.Module]:
    """The pipeline's denoising networks (``unet``, or Wan's ``transformer`` and ``transformer_2``),
    or a TypeError saying it has none."""
    networks = [getattr(pipeline, name, None) for name in ("unet", "transformer", "transformer_2")]
    networks = [network for network in networks if isinstance(network, nn.Module)]
    if not networks:
        raise TypeError(f"{type(pipeline).__name__} has no `unet` or `transformer` network to apply a compute lever to")
    return networks


def repeated_blocks(network: nn.Module) -> Iterator[nn.Module]:
    """The outermost :data:`REPEATED_BLOCKS` inside ``network``, in module order."""
    for child in network.children():
        if isinstance(child, REPEATED_BLOCKS):
            yield child
        else:
            yield from repeated_blocks(child)


def compile_repeated_blocks(network: nn.Module, **torch_compile_options: Any) -> int:
    """``torch.compile`` each repeated block of ``network`` in place; returns how many were compiled.

    ``torch_compile_options`` go to :func:`torch.compile` unchanged (``mode``, ``dynamic``,
    ``fullgraph``, ``backend`` …). Parameters stay where they are, so ``state_dict()``, ``.to()``
    and loading are unaffected; compilation itself happens at the first call of each block.
    """
    unknown = set(torch_compile_options) - {"fullgraph", "dynamic", "backend", "mode", "options", "disable"}
    if unknown:
        raise TypeError(
            f"compile() got unknown option(s) {sorted(unknown)}; torch.compile takes "
            "fullgraph, dynamic, backend, mode, options and disable"
        )
    count = 0
    for block in repeated_blocks(network):
        block.compile(**torch_compile_options)
        count += 1
    if count == 0:
        raise ValueError(f"{type(network).__name__} holds none of the repeated blocks compile() knows")
    return count


def set_forward_chunking(network: nn.Module, chunk_size: int | None = None, dim: int = 0) -> int:
    """Make every feed-forward and attention layer of ``network`` run in slices; returns how many layers.

    ``chunk_size`` rows per slice (None: 1, the smallest footprint) along ``dim`` (0: the batch of
    sequences, 1: tokens / attention queries). :func:`clear_forward_chunking` undoes it.
    """
    chunking = Chunking(size=1 if chunk_size is None else chunk_size, dim=dim)
    return _set_chunking(network, chunking)


def clear_forward_chunking(network: nn.Module) -> int:
    """Run every feed-forward and attention layer of ``network`` unchunked again; returns how many layers."""
    return _set_chunking(network, None)


def _set_chunking(network: nn.Module, chunking: Chunking | None) -> int:
    count = 0
    for module in network.modules():
        if isinstance(module, (Attention, WanAttention, FeedForward)):
            module.chunking = chunking
            count += 1
    return count
