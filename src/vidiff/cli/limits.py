"""Checks of a run's limits before any weight loads: text the model can read, writable output
folders, GIF frame rates, sizes the model works at, and memory (estimated from the configs).

Each failure is a :class:`UsageError` (exit 2) that names the flag and says what would work.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..pipelines import memory
from .commands import Command
from .errors import UsageError
from .outputs import Target

logger = logging.getLogger("vidiff.cli")

GIF_MAX_FPS = 100  # GIF delays are whole centiseconds (media.export_to_gif)
# Refuse only what clearly cannot fit: the estimate is within about 2× of the real peak, so a run is
# refused when its estimate exceeds twice what the device has. Suggestions aim at the estimate itself.
REFUSE_ABOVE = 2.0
TEXT_SETTINGS = (("prompt", "PROMPT"), ("negative_prompt", "--negative-prompt"))


def check_text(settings: dict[str, Any]) -> None:
    """Prompts must be valid Unicode: on Linux, argv bytes that are not UTF-8 arrive as lone
    surrogates (and JSON may hold them as escapes); the tokenizer cannot encode them."""
    for key, name in TEXT_SETTINGS:
        text = settings.get(key)
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise UsageError(
                f"{name} is not valid UTF-8 text (byte {error.object[error.start].encode('utf-8', 'surrogateescape')!r} "
                f"at position {error.start}); pass it as UTF-8"
            ) from None


def check_writable(targets: list[Target]) -> None:
    """Every output's folder must let us create files (the write goes through a temporary file there)."""
    for target in targets:
        parent = target.path.absolute().parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"--output {str(target.path)!r}: the folder {str(parent)!r} is not writable; choose another --output")


def check_gif_rate(command: Command, targets: list[Target], fps: float) -> None:
    """A GIF's frame delays are whole centiseconds, so it holds at most 100 frames per second."""
    if fps > GIF_MAX_FPS and any(target.kind == "gif" for target in targets):
        flag = "--fps" if command.fps_param in (None, "fps") else "--" + command.fps_param.replace("_", "-")
        raise UsageError(
            f"{flag} {fps:g}: a .gif holds at most {GIF_MAX_FPS} frames per second (delays are whole "
            f"centiseconds); lower {flag} or write an .mp4"
        )


# ------------------------------------------------------------------------------ size and memory
def check_fits(
    command: Command, settings: dict[str, Any], networks: Mapping[str, tuple[type, Mapping[str, Any]]],
    device: torch.device, dtype: torch.dtype, levers: memory.Levers = memory.Levers(),
) -> int | None:
    """Refuse sizes below the model's minimum, and runs whose estimated memory (with ``levers`` on)
    clearly exceeds the device's. ``networks``: what will load (:func:`memory.network_configs`, plus
    any motion adapter). Networks that cannot be built are left to the loader to report.

    Returns the estimated peak bytes on ``device`` (None when there is no estimate)."""
    try:
        configs, parameters = memory.weight_sizes(networks)
        size = run_size(command, settings, configs, dtype)
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.debug("no memory estimate: %s", error)
        return None
    reason = memory.too_small(configs, size.height, size.width)
    if reason:
        raise UsageError(f"--height {size.height} --width {size.width}: {reason}")
    available = memory.available_memory(device)
    estimate = memory.estimate_memory(configs, parameters, size, levers)
    needed = estimate.total(device)
    logger.debug("memory estimate on %s: %s; %s in all, %s available", device, estimate.as_dict(), needed, available)
    if needed > REFUSE_ABOVE * available:
        fits = _what_fits(lambda s: memory.estimate_memory(configs, parameters, s, levers).total(device) <= available, size)
        raise UsageError(
            f"this run needs about {_gb(needed)} of memory ({_breakdown(estimate)}), and "
            f"{'the GPU' if device.type == 'cuda' else 'this machine'} has {_gb(available)}; {fits}"
        )
    return needed


def run_size(command: Command, settings: dict[str, Any], configs: dict[str, dict[str, Any]], dtype: torch.dtype) -> memory.RunSize:
    """The sizes of the call the run will make: its settings, else the pipeline's defaults, else the
    model's (SVD's frames from its UNet, AnimateDiff's size from the UNet's sample size)."""
    unet, factor = configs.get("unet", {}), memory.vae_factor(configs["vae"])  # Wan: no unet, sizes from the call

    params = {flag.param for flag in command.flags}

    def value(param: str, fallback: Any = None) -> Any:
        given = settings.get(param)
        given = command.default(param) if given is None and param in params else given
        return fallback if given is None else given

    frames = value("num_frames", unet.get("num_frames", 16))
    scale = max(value("guidance_scale", 0.0), value("max_guidance_scale", 0.0), value("min_guidance_scale", 0.0))
    chunk = value("decode_chunk_size")
    if chunk is None and command.name == "svd":
        chunk = frames  # SVD decodes one temporal window of num_frames frames at a time
    return memory.RunSize(
        videos=value("num_videos_per_prompt", 1),
        num_frames=frames,
        height=value("height", unet.get("sample_size", 64) * factor),
        width=value("width", unet.get("sample_size", 64) * factor),
        dtype=dtype,
        guidance=scale > 1,  # every pipeline here skips the unconditional branch at scale ≤ 1
        decode_chunk_size=chunk,
        # context windows (--context-length without --free-noise): the denoiser sees a window at a time
        window_frames=None if settings.get("free_noise") else settings.get("context_length"),
    )


def _what_fits(fits: Callable[[memory.RunSize], bool], size: memory.RunSize) -> str:
    """Suggestions that bring the estimate within the device: fewer frames, a smaller decode chunk,
    fewer videos, or a smaller picture (each alone, the rest unchanged)."""
    options = []
    frames = _largest(lambda n: fits(dataclasses.replace(size, num_frames=n, decode_chunk_size=_chunk(size, n))), size.num_frames)
    if frames:
        options.append(f"--num-frames ≤ {frames} at this size")
    for chunk in (8, 4, 2, 1):
        if chunk < (size.decode_chunk_size or size.videos * size.num_frames) and fits(dataclasses.replace(size, decode_chunk_size=chunk)):
            options.append(f"--decode-chunk-size {chunk}")
            break
    videos = _largest(lambda n: fits(dataclasses.replace(size, videos=n)), size.videos)
    if 0 < videos < size.videos:
        options.append(f"--num-videos ≤ {videos}")
    scale = _largest(lambda n: fits(_scaled(size, n / 64)), 63)
    if scale:
        smaller = _scaled(size, scale / 64)
        options.append(f"--height {smaller.height} --width {smaller.width}")
    if not options:  # no single lever is enough: a short clip at a smaller size
        short = dataclasses.replace(size, num_frames=min(size.num_frames, 16), decode_chunk_size=_chunk(size, min(size.num_frames, 16)))
        scale = _largest(lambda n: fits(_scaled(short, n / 64)), 65)
        if scale:
            smaller = _scaled(short, scale / 64)
            options.append(f"--num-frames {short.num_frames} --height {smaller.height} --width {smaller.width}")
    if not options:
        return "even one small frame does not fit: use --dtype fp16 or bf16 on a GPU, or a machine with more memory"
    return "what fits: " + ", or ".join(options)


def _chunk(size: memory.RunSize, frames: int) -> int | None:
    return None if size.decode_chunk_size is None else min(size.decode_chunk_size, frames)


def _scaled(size: memory.RunSize, factor: float) -> memory.RunSize:
    def side(pixels: int) -> int:
        return max(8, int(pixels * factor) // 8 * 8)

    return dataclasses.replace(size, height=side(size.height), width=side(size.width))


def _largest(fits: Callable[[int], bool], upper: int) -> int:
    """The largest n in [1, upper) (upper excluded: that one does not fit) with fits(n), or 0;
    ``fits`` must be monotone (fewer frames never need more memory)."""
    low, high = 0, upper  # fits(low) holds (or low = 0), fits(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _gb(count: int) -> str:
    value = count / memory.GB
    if value < 0.1:
        return f"{count / 1e6:.0f} MB"
    return f"{value:.1f} GB" if value < 10 else f"{value:,.0f} GB"


def _breakdown(estimate: memory.MemoryEstimate) -> str:
    parts = {
        "weights": estimate.weights,
        "denoising": estimate.latents + estimate.denoiser_activations,
        "decoding": estimate.latents + estimate.vae_decode,
        "frames": estimate.output_frames,
    }
    return ", ".join(f"{name} {_gb(count)}" for name, count in parts.items())


# The names other modules of the command line use (``--memory auto`` words its messages the same way).
gb = _gb
what_fits = _what_fits
