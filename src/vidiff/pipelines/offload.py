"""CPU offload: the networks live in CPU memory; only what is running sits on the accelerator.

Two granularities, as diffusers names them (written here with plain torch forward hooks, no
accelerate):

- **model** (``enable_model_cpu_offload``): a whole component (text/image encoder, UNet, VAE) is
  moved to the execution device when one of its modules is about to run, and the component that ran
  before it goes back. Peak memory: the largest component plus activations; cost: one host→device
  copy of each component per call (the UNet stays put across all denoising steps).
- **sequential** (``enable_sequential_cpu_offload``): each module's own weights (and those of its
  direct leaf children, which some forwards read whole: an embedding table added without a lookup,
  ``conv_in.weight.device``) are copied in just for its forward and dropped after. Peak memory: one
  block's weights plus activations; cost: every weight crosses the bus at every step.

How the tensors move: at enable time each module's own parameters and buffers are recorded as their
*home* tensors (on the CPU). Loading puts a copy on the execution device into the module's slot;
parking puts the home tensor back (no device→host copy: weights are never changed by inference, so
the home copy is still right; an in-place edit of weights while offloaded is lost). Tests may park
on ``"meta"`` instead, so that any computation that touches a tensor the bookkeeping says is not
loaded fails loudly even when the execution device is the CPU itself.

Hooks are registered on every module of the offloaded components. A module that was not there at
enable time but carries our hooks (a deep copy, e.g. the float32 copy of a float16 VAE made for
``force_upcast``) has its own tensors moved to the execution device for good when it first runs:
such copies are short-lived.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

logger = logging.getLogger(__name__)

OffloadMode = Literal["model", "sequential"]
MODES = ("model", "sequential")


def execution_device(device: torch.device | str | int | None, lever: str) -> torch.device:
    """The device offloaded networks run on: ``device`` as given (a bare ``"cuda"`` gets the current
    index), else CUDA when available, else MPS; ``lever`` names the method in the error."""
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            raise ValueError(
                f"{lever}() found no accelerator (torch.cuda.is_available() is False); pass `device=` "
                "explicitly (e.g. device='cuda:0'), or leave offload off to run on the CPU"
            )
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{lever}(): `device` must be a torch.device, a string like 'cuda:0' or an index, got {device!r}") from err
    if resolved.type == "meta":
        raise ValueError(f"{lever}(): `device` cannot be 'meta' (nothing would be computed); use e.g. 'cuda'")
    if resolved.type == "cuda" and resolved.index is None and torch.cuda.is_available():
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


class _Slots:
    """One module's own (non-recursive) parameters and buffers, with their home (CPU) tensors."""

    def __init__(self, module: nn.Module) -> None:
        self.entries: list[tuple[dict, str, torch.Tensor]] = [
            (table, key, tensor)
            for table in (module._parameters, module._buffers)
            for key, tensor in table.items()
            if tensor is not None
        ]

    def load(self, device: torch.device) -> None:
        for table, key, home in self.entries:
            table[key] = _moved(home, device)

    def park(self, park_device: torch.device | None) -> None:
        for table, key, home in self.entries:
            table[key] = home if park_device is None else _moved(torch.empty_like(home, device=park_device), None, home)


def _moved(home: torch.Tensor, device: torch.device | None, like: torch.Tensor | None = None) -> torch.Tensor:
    """``home`` on ``device`` (itself when already there), a Parameter again if ``like``/``home`` was one."""
    like = home if like is None else like
    moved = home if device is None else home.to(device)
    if isinstance(like, nn.Parameter) and not isinstance(moved, nn.Parameter):
        return nn.Parameter(moved, requires_grad=like.requires_grad)
    return moved


class _Hook:
    """A forward (pre-)hook calling back into the offloader; deep copies of a hooked module share it
    (copying the hook would copy the offloader and, through it, the whole pipeline)."""

    def __init__(self, offloader: Offloader, before: bool) -> None:
        self.offloader, self.before = offloader, before

    def __call__(self, module: nn.Module, *_: Any) -> None:
        if self.before:
            self.offloader._before(module)
        else:
            self.offloader._after(module)

    def __deepcopy__(self, memo: dict) -> _Hook:
        return self


class Offloader:
    """Keeps a pipeline's networks on the CPU and moves them in as they run (see the module docstring).

    ``components``: name → network, in the order they run in a call. ``device``: the execution
    device. ``park_device``: None to park on the home tensors (CPU), ``"meta"`` for tests.
    Bookkeeping read by tests and logs: :attr:`resident` (model mode: the component now loaded),
    :attr:`moves` (model mode: ``("load" | "unload", name)`` in order), :meth:`loaded_modules`
    (sequential mode) and :attr:`transfers` (loads performed).
    """

    def __init__(
        self,
        mode: OffloadMode,
        components: Mapping[str, nn.Module],
        device: torch.device,
        park_device: torch.device | str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"offload mode must be one of {MODES}, got {mode!r}")
        self.mode, self.device = mode, torch.device(device)
        self.park_device = None if park_device is None else torch.device(park_device)
        self.components = dict(components)
        self.resident: str | None = None
        self.moves: list[tuple[str, str]] = []
        self.transfers = 0
        self._owner: dict[int, str] = {}  # id(module) → component name
        self._slots: dict[int, _Slots] = {}  # id(module) → its own tensors
        self._groups: dict[int, list[nn.Module]] = {}  # sequential: what a module's forward needs
        self._counts: dict[int, int] = {}  # sequential: how many running forwards need a module
        self._handles: list[RemovableHandle] = []
        self._register()
        for slots in self._slots.values():
            slots.park(self.park_device)

    # ------------------------------------------------------------------ setup and teardown
    def _register(self) -> None:
        before, after = _Hook(self, True), _Hook(self, False)
        for name, component in self.components.items():
            for module in component.modules():
                if id(module) in self._owner:
                    continue  # shared between components: the first owner keeps it
                self._owner[id(module)] = name
                self._slots[id(module)] = _Slots(module)
                self._handles.append(module.register_forward_pre_hook(before))
                if self.mode == "sequential":
                    self._groups[id(module)] = [module, *_leaf_children(module)]
                    self._handles.append(module.register_forward_hook(after, always_call=True))

    def remove(self) -> None:
        """Take the hooks off and put every home tensor back (everything on the CPU again)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for slots in self._slots.values():
            slots.park(None)
        self.resident = None
        self._counts.clear()

    def release(self) -> None:
        """Park whatever is loaded (the end of a pipeline call): nothing stays on the accelerator."""
        if self.resident is not None:
            self._unload_component(self.resident)
        for key in [key for key, count in self._counts.items() if count > 0]:
            self._slots[key].park(self.park_device)
        self._counts.clear()

    # ------------------------------------------------------------------ hooks
    def _before(self, module: nn.Module) -> None:
        name = self._owner.get(id(module))
        if name is None:
            self._adopt_stray(module)
        elif self.mode == "model":
            self.activate(name)
        else:
            for member in self._groups[id(module)]:
                self._acquire(member)

    def _after(self, module: nn.Module) -> None:
        if id(module) in self._groups:
            for member in self._groups[id(module)]:
                self._drop(member)

    def activate(self, name: str) -> None:
        """Model mode: make ``name`` the one component on the execution device."""
        if self.resident == name:
            return
        if self.resident is not None:
            self._unload_component(self.resident)
        for module in self.components[name].modules():
            if self._owner.get(id(module)) == name:
                self._slots[id(module)].load(self.device)
        self.resident = name
        self.moves.append(("load", name))
        logger.debug("model offload: %s moved to %s", name, self.device)
        self.transfers += 1

    def _unload_component(self, name: str) -> None:
        for module in self.components[name].modules():
            if self._owner.get(id(module)) == name:
                self._slots[id(module)].park(self.park_device)
        self.resident = None
        self.moves.append(("unload", name))

    def _acquire(self, module: nn.Module) -> None:
        key = id(module)
        slots = self._slots.get(key)
        if slots is None or not slots.entries:
            return
        if self._counts.get(key, 0) == 0:
            slots.load(self.device)
            self.transfers += 1
        self._counts[key] = self._counts.get(key, 0) + 1

    def _drop(self, module: nn.Module) -> None:
        key = id(module)
        if self._counts.get(key, 0) == 0:
            return
        self._counts[key] -= 1
        if self._counts[key] == 0:
            self._slots[key].park(self.park_device)

    def _adopt_stray(self, module: nn.Module) -> None:
        # A copy of a hooked module (e.g. a float32 VAE copy): its own tensors go to the execution
        # device once; the copy is temporary, so nothing parks them again.
        slots = _Slots(module)
        if any(home.device != self.device for _, _, home in slots.entries):
            slots.load(self.device)

    # ------------------------------------------------------------------ bookkeeping
    def loaded_modules(self) -> list[nn.Module]:
        """The modules whose own tensors are on the execution device now (sequential mode), or every
        module of the resident component (model mode)."""
        if self.mode == "model":
            if self.resident is None:
                return []
            return [m for m in self.components[self.resident].modules() if self._owner.get(id(m)) == self.resident]
        return [m for m in self._modules() if self._counts.get(id(m), 0) > 0]

    def _modules(self) -> Iterator[nn.Module]:
        for name, component in self.components.items():
            yield from (m for m in component.modules() if self._owner.get(id(m)) == name)


def _leaf_children(module: nn.Module) -> list[nn.Module]:
    """Direct children without children of their own: a forward may read their weights directly."""
    return [child for child in module.children() if next(child.children(), None) is None]
