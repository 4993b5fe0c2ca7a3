"""Context windows for every pipeline: the network runs on overlapping windows of frames (long videos).

``pipe.enable_context_windows(context_length=16, context_overlap=4)`` installs a
:class:`~vidiff.diffusion.windows.ContextWindows` as the pipeline's ``network_wrapper``: every
denoising step calls the network once per window of frames (with that window's slice of each
frame-indexed input the pipeline declares in ``frame_axes``) and fuses the overlapping outputs. The
guidance combine (SVD's per-frame ramp included) runs after the wrapper, on the whole video, so
each frame keeps its place in it. Memory then follows ``context_length``, not ``num_frames``.
"""

from __future__ import annotations

from typing import Any

from ..diffusion.windows import ContextWindows, NetworkWrapper


class ContextWindowsMixin:
    """Long videos by windows of frames around the network (see :mod:`vidiff.diffusion.windows`)."""

    network_wrapper: NetworkWrapper | None

    def enable_context_windows(
        self,
        context_length: int = 16,
        context_overlap: int = 4,
        schedule: str = "uniform",
        closed_loop: bool = False,
        fuse: str = "pyramid",
    ) -> None:
        """Denoise videos as overlapping windows of ``context_length`` frames.

        Args:
            context_length: frames per network call (16, as ComfyUI's default; AnimateDiff: at most
                the motion modules' ``motion_max_seq_length``). Must not exceed the call's
                ``num_frames``; equal to it, the result is the plain call's bit for bit.
            context_overlap: frames neighbouring windows share, in ``[0, context_length)`` (4).
            schedule: ``"uniform"`` (the windows shift from step to step so seams move; default)
                or ``"static"`` (the same windows at every step).
            closed_loop: let windows wrap from the last frame back to the first, for videos that
                loop (needs ``context_overlap`` ≥ 1).
            fuse: per-frame weights of overlapping windows: ``"pyramid"`` (favour window centres;
                default) or ``"flat"`` (plain average).

        Replaces any other ``network_wrapper``. Refused while FreeNoise is on (both re-window the
        network): call ``disable_free_noise()`` first.
        """
        if getattr(self, "free_noise_enabled", False):
            raise ValueError(
                "context windows and FreeNoise both run the network on windows of frames; FreeNoise is on, "
                "so call pipe.disable_free_noise() before enable_context_windows()"
            )
        windows = ContextWindows(
            context_length=context_length, context_overlap=context_overlap, schedule=schedule,
            closed_loop=closed_loop, fuse=fuse,
        )
        self._check_window_fits_network(windows.context_length)
        self.network_wrapper = windows

    def disable_context_windows(self) -> None:
        """Run the network on the whole video again (a no-op when context windows are off)."""
        if self.context_windows_enabled:
            self.network_wrapper = None

    @property
    def context_windows_enabled(self) -> bool:
        """Whether :meth:`enable_context_windows` is in force."""
        return isinstance(self.network_wrapper, ContextWindows)

    @property
    def context_windows(self) -> ContextWindows | None:
        """The context-window settings in force, or None."""
        return self.network_wrapper if isinstance(self.network_wrapper, ContextWindows) else None

    def _check_context_frames(self, num_frames: int) -> None:
        """At call time, before any work: with context windows on, ``context_length`` must not exceed
        the video's ``num_frames`` (frames of the families here map one to one onto latent frames)."""
        windows = self.context_windows
        if windows is not None:
            windows.check(num_frames)
            self._check_window_fits_network(windows.context_length)

    def _check_window_fits_network(self, context_length: int) -> None:
        """Networks with a hard frame limit (motion modules: ``motion_max_seq_length`` positions) must
        take a whole window; refused before anything runs, naming ``context_length``."""
        config: Any = getattr(getattr(self, "unet", None), "config", None)
        limit = getattr(config, "motion_max_seq_length", None)
        if isinstance(limit, int) and context_length > limit:
            raise ValueError(
                f"`context_length` ({context_length}) exceeds the motion modules' motion_max_seq_length ({limit}): "
                f"each window must fit them; use context_length ≤ {limit}"
            )
