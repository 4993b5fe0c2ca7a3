"""The memory and speed levers of a run: ``--vae-tiling``, ``--forward-chunking``, ``--offload``,
``--compile``, and ``--memory auto``, which turns on the fewest levers whose estimate fits.

``--memory auto`` estimates the run's peak (:func:`vidiff.pipelines.memory.estimate_memory`, from the
configs and the run's sizes, before any weight loads), compares it with the device's free memory and,
if it does not fit, tries sets of levers, fewest first and cheapest first (cost order: VAE tiling,
forward chunking, model offload, sequential offload; offload only on CUDA, where it frees GPU memory),
keeping the levers given on the command line. It says what it chose, and why, in one info line.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..pipelines import memory
from .commands import Command
from .errors import RunError, UsageError
from .limits import gb, run_size, what_fits

logger = logging.getLogger("vidiff.cli")

# Each lever's cost rank (cheapest first): tiling and chunking cost a little time; offload moves
# weights over the bus every call (model) or every layer (sequential: several times slower).
COST = {"vae_tiling": 1, "forward_chunking": 2, "model": 3, "sequential": 4}


def given_levers(settings: Mapping[str, Any]) -> memory.Levers:
    """The levers the flags (or a sidecar) turn on."""
    return memory.Levers(
        vae_tiling=bool(settings.get("vae_tiling")),
        forward_chunking=bool(settings.get("forward_chunking")),
        offload=settings.get("offload"),
    )


def candidates(device: torch.device, given: memory.Levers) -> list[memory.Levers]:
    """Every set of levers that keeps ``given``: cheapest most expensive lever first, then fewest levers."""
    offloads = memory.OFFLOADS if device.type == "cuda" else (None,)
    sets = []
    for tiling, chunking, offload in itertools.product((False, True), (False, True), offloads):
        levers = memory.Levers(tiling or given.vae_tiling, chunking or given.forward_chunking, offload or given.offload)
        if levers not in sets:
            sets.append(levers)
    # The most expensive lever decides first (tiling and chunking before any offload), then the count.
    return sorted(sets, key=lambda levers: (max(_costs(levers), default=0), len(levers.names()), sorted(_costs(levers), reverse=True)))


def _costs(levers: memory.Levers) -> list[int]:
    on = [name for name in ("vae_tiling", "forward_chunking") if getattr(levers, name)]
    return [COST[name] for name in on + ([levers.offload] if levers.offload else [])]


def choose(
    configs: Mapping[str, Mapping[str, Any]], weights: memory.WeightSizes, size: memory.RunSize,
    device: torch.device, free: int, given: memory.Levers,
) -> tuple[memory.Levers, str]:
    """The fewest levers (beyond ``given``) whose estimate fits in ``free`` bytes on ``device``, and
    the one line that says so; a :class:`UsageError` when even every lever does not fit."""
    plain = memory.estimate_memory(configs, weights, size, given).total(device)
    where = f"{gb(free)} free on {device.type}"
    options = candidates(device, given)
    for levers in options:
        needed = memory.estimate_memory(configs, weights, size, levers).total(device)
        if needed <= free:
            if levers == given:
                return levers, f"memory auto: estimated {gb(plain)} ≤ {where}; no memory levers needed"
            added = [name for name in levers.names() if name not in given.names()]
            return levers, f"memory auto: estimated {gb(plain)} > {where}; enabling {', '.join(added)} (estimated {gb(needed)})"
    every = options[-1] if options else given
    everything = memory.estimate_memory(configs, weights, size, every).total(device)
    fits = what_fits(lambda s: memory.estimate_memory(configs, weights, s, every).total(device) <= free, size)
    raise UsageError(
        f"--memory auto: this run needs about {gb(everything)} even with {', '.join(every.names()) or 'no levers'} "
        f"(without them {gb(plain)}), and {where}; {fits}"
    )


def plan(
    command: Command, settings: dict[str, Any], networks: Mapping[str, tuple[type, Mapping[str, Any]]],
    device: torch.device, dtype: torch.dtype,
) -> memory.Levers:
    """The levers of the run: those given, plus under ``--memory auto`` the fewest that make the
    estimate fit the device's free memory (one info line says which and why)."""
    given = given_levers(settings)
    if settings.get("memory") != "auto":
        return given
    try:
        configs, weights = memory.weight_sizes(networks)
        size = run_size(command, settings, configs, dtype)
    except (OSError, ValueError, KeyError, TypeError) as error:  # left to the loader to report
        logger.info("memory auto: no estimate (%s); using the levers given", error)
        return given
    levers, line = choose(configs, weights, size, device, memory.free_memory(device), given)
    logger.info("%s", line)
    return levers


def apply(pipe: Any, levers: memory.Levers, compile_blocks: bool, device: torch.device) -> None:
    """Turn the levers on in ``pipe`` (loaded on the CPU when offloading, else on ``device``)."""
    calls = []
    if levers.vae_tiling:
        calls.append(("--vae-tiling", "enable_vae_tiling", {}))
    if levers.forward_chunking:
        calls.append(("--forward-chunking", "enable_forward_chunking", {}))
    if levers.offload:
        calls.append((f"--offload {levers.offload}", f"enable_{levers.offload}_cpu_offload", {"device": device}))
    if compile_blocks:
        calls.append(("--compile", "compile", {}))
    for flag, method, kwargs in calls:
        if not callable(getattr(pipe, method, None)):
            raise RunError(f"{flag}: {type(pipe).__name__} has no {method}() in this vidiff")
        getattr(pipe, method)(**kwargs)


def usable(levers: memory.Levers, device: torch.device) -> memory.Levers:
    """``levers`` without offload where there is no accelerator to offload from (with a warning):
    on the CPU every weight already sits in RAM, so a recorded CUDA run still replays there."""
    if levers.offload and device.type != "cuda":
        logger.warning("--offload %s is ignored on %s: offload moves weights off a CUDA GPU", levers.offload, device.type)
        return dataclasses.replace(levers, offload=None)
    return levers
