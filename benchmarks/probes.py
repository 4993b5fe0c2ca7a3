"""Measurements taken inside one worker process: RSS peaks, CUDA peaks, and timers around the
denoiser and the VAE decode of a loaded pipeline (either library)."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: the high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_rss_peak() -> None:
    """Reset VmHWM to the current RSS (writing 5 to clear_refs), so the next peak is a window's own.

    Not getrusage's ru_maxrss: it cannot be reset, and it survives fork+exec (a child would report
    its large parent's peak)."""
    Path("/proc/self/clear_refs").write_text("5")


class Peaks:
    """The peak memory of a window that may be cut by inner resets (the decode's own window).

    CPU: RSS in MiB (VmHWM); CUDA: ``max_memory_allocated`` in MiB."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.best = 0.0

    def now_peak(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else status_kib("VmHWM") / 1024

    def now(self) -> float:
        return torch.cuda.memory_allocated() / 2**20 if self.cuda else status_kib("VmRSS") / 1024

    def start(self) -> float:
        """Fold the peak so far in, reset, and return the memory in use at the reset."""
        self.best = max(self.best, self.now_peak())
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_rss_peak()
        return self.now()

    def stop(self) -> float:
        """Fold the window's peak in and return it."""
        peak = self.now_peak()
        self.best = max(self.best, peak)
        return peak


class Timers:
    """Wall time of every denoiser call and VAE decode during a pipeline call, and the decode's peak.

    The denoiser (``pipe.unet``) is timed with forward hooks; the decode by wrapping the VAE method
    each library's pipeline calls (diffusers: ``vae.decode``, once per chunk; vidiff:
    ``vae.decode_video``, once). On CUDA each boundary synchronizes, so GPU work is counted where
    it runs.
    """

    def __init__(self, pipe, library: str, cuda: bool) -> None:
        inner = getattr(pipe, "pipe", pipe)  # I2VGen-XL's diffusers pipeline sits in SameDraws
        self.cuda, self.peaks = cuda, Peaks(cuda)
        self.reset()
        self._time_denoiser(getattr(inner, "unet", None) or inner.transformer)  # Wan: the transformer
        name = "decode" if library == "diffusers" else "decode_video"
        original = getattr(inner.vae, name)

        def timed_decode(*args, **kwargs):
            self._sync()
            before = self.peaks.start()
            start = time.perf_counter()
            out = original(*args, **kwargs)
            self._sync()
            self.decode_s += time.perf_counter() - start
            self.decode_peak = max(self.decode_peak, self.peaks.stop())
            self.decode_before = min(self.decode_before, before)
            return out

        setattr(inner.vae, name, timed_decode)

    def _time_denoiser(self, unet) -> None:
        """Hooks on ``unet``'s forward; vidiff's I2VGen-XL UNet is stepped through ``unet.denoise``
        instead (its context and image features are encoded once per video), so that is wrapped."""
        if not callable(getattr(unet, "denoise", None)):
            unet.register_forward_pre_hook(lambda *_: self._unet_start())
            unet.register_forward_hook(lambda *_: self._unet_stop())
            return
        original = unet.denoise

        def timed_denoise(*args, **kwargs):
            self._unet_start()
            out = original(*args, **kwargs)
            self._unet_stop()
            return out

        unet.denoise = timed_denoise

    def reset(self) -> None:
        self.unet_s, self.unet_calls, self.decode_s = 0.0, 0, 0.0
        self.decode_peak, self.decode_before, self._t0 = 0.0, float("inf"), 0.0
        self.peaks.best = 0.0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _unet_start(self) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _unet_stop(self) -> None:
        self._sync()
        self.unet_s += time.perf_counter() - self._t0
        self.unet_calls += 1
