"""Loaded pipelines kept between runs (the server's and batch workers'), least recently used first out.

A run looks its pipeline up by :func:`pipeline_key`: every setting that decides what is loaded and
how the pipeline object is configured (model, adapters, levers, long-video wrappers, scheduler…),
never the per-call arguments (prompt, image, sizes, steps, seed, outputs). Two runs with equal keys
get the same pipeline object, so a worker that serves many jobs of one model loads it once.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..pipelines import memory
from .commands import Command

logger = logging.getLogger("vidiff.cli")

# Settings that only shape one call or its outputs; everything else is part of the key.
CALL_ONLY = frozenset({
    "image", "prompt", "last_image", "seed", "torch_seed", "output", "overwrite", "from_json", "quiet",
    "progress", "debug", "command", "export_fps", "video", "control_video", "control_image",
    "ip_adapter_image", "prompt_at", "memory",
})


def pipeline_key(
    command: Command, settings: dict[str, Any], dtype: torch.dtype, variant: str | None, device: torch.device,
    levers: Iterable[str],
) -> str:
    """The cache key of a run: its command, resolved dtype/variant/device/levers, and every setting
    that is not a per-call argument of ``command`` (see the module docstring)."""
    call_arguments = {flag.param for flag in command.flags}
    loading = {k: v for k, v in sorted(settings.items()) if k not in CALL_ONLY and k not in call_arguments}
    key = {
        "command": command.name, "pipeline": command.pipeline.__name__, "dtype": str(dtype), "variant": variant,
        "device": str(device), "levers": sorted(levers), "settings": loading,
    }
    return json.dumps(key, sort_keys=True, default=str)


class PipelineCache:
    """At most ``capacity`` loaded pipelines, least recently used evicted first.

    ``get(key, build, needed_bytes=…, device=…)`` returns the cached value for ``key`` or calls
    ``build()`` (its result is cached). Before a build, least recently used pipelines are evicted
    while the device's free memory (``free_memory(device)``, default
    :func:`vidiff.pipelines.memory.free_memory`) is below the run's estimated ``needed_bytes``; and
    when ``build`` still runs out of memory, every other pipeline is evicted and it is tried once
    more. Thread-safe: one build at a time.
    """

    def __init__(self, capacity: int = 2, free_memory: Callable[[torch.device], int] | None = None) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"`capacity` must be an integer ≥ 1 (pipelines kept loaded), got {capacity!r}")
        self.capacity = capacity
        self._free_memory = free_memory or memory.free_memory
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many times build() ran (tests and logs read it)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        """The cached keys, least recently used first."""
        return list(self._entries)

    def get(
        self, key: str, build: Callable[[], Any], needed_bytes: int | None = None, device: torch.device | str = "cpu"
    ) -> Any:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            while len(self._entries) >= self.capacity:
                self._evict_oldest()
            while self._entries and needed_bytes is not None and self._free_memory(torch.device(device)) < needed_bytes:
                self._evict_oldest()  # memory runs short: make room before loading
            try:
                value = build()
            except torch.OutOfMemoryError:
                logger.warning("out of memory while loading; evicting %d cached pipeline(s) and retrying", len(self._entries))
                self.clear()
                value = build()
            self.loads += 1
            self._entries[key] = value
            return value

    def _evict_oldest(self) -> None:
        self._entries.popitem(last=False)
        logger.info("evicting a cached pipeline to make room")
        _free_accelerator_memory()

    def clear(self) -> None:
        """Drop every cached pipeline."""
        with self._lock:
            self._entries.clear()
            _free_accelerator_memory()


def _free_accelerator_memory() -> None:
    gc.collect()  # the evicted pipeline's tensors go now, not at the next collection
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
