"""The long-video flags of a run: prompt travel (``--prompt-at``), FreeNoise (``--free-noise``),
context windows (``--context-length`` without ``--free-noise``) and FreeInit (``--free-init N``).

Like the memory levers they call ``pipe.enable_*()`` before the pipeline call. Every combination
that cannot work is refused here, from the flags alone (before any model loads), naming the flag:
one :class:`UsageError`, exit status 2.

``--context-length`` means FreeNoise's window with ``--free-noise`` (AnimateDiff only; the motion
modules attend within windows) and turns on context windows without it (every pipeline: the whole
network runs on overlapping windows of frames).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any

from .commands import MAX_FRAMES, Command
from .errors import RunError, UsageError

# FreeNoise's defaults are diffusers' (AnimateDiffFreeNoiseMixin.enable_free_noise).
FREE_NOISE_LENGTH = 16  # frames per window; the v1.5 motion modules were trained on 16
FREE_NOISE_STRIDE = 4  # frames between window starts
FREE_NOISE_WEIGHTINGS = ("flat", "pyramid", "delayed_reverse_sawtooth")
WINDOW_FUSES = ("flat", "pyramid")  # how context windows blend where they overlap
NOISE_TYPES = ("shuffle_context", "repeat_context", "random")
SCHEDULES = ("uniform", "static")
FREE_INIT_METHODS = ("butterworth", "ideal", "gaussian")
MAX_FREE_INIT = 100  # FreeInit iterations; each one is a whole denoising run (the paper uses 3–5)

# Flags that only AnimateDiff understands: FreeNoise reshapes its motion modules' attention, and
# prompt travel blends per-frame text states, which only a text-to-video UNet takes.
ANIMATEDIFF_ONLY = {"prompt_at": "--prompt-at", "free_noise": "--free-noise", "context_stride": "--context-stride", "noise_type": "--noise-type"}


# ------------------------------------------------------------------------------ value parsers
def prompt_at_item(text: str) -> str:
    """``--prompt-at FRAME:TEXT``: a frame index ≥ 0, a colon, a non-blank text; returned as
    ``"FRAME:TEXT"`` with the frame written plainly (``007:x`` → ``7:x``), as the sidecar records it."""
    frame, sep, prompt = text.partition(":")
    if not sep or not frame.strip().isdigit() or not prompt.strip():
        raise argparse.ArgumentTypeError(f"expected FRAME:TEXT (a frame index ≥ 0, a colon, a text), e.g. 40:'a cocoon'; got {text!r}")
    try:  # argv bytes that are not UTF-8 arrive as lone surrogates, which no tokenizer encodes
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"TEXT of {frame}:… is not valid UTF-8 text; pass it as UTF-8") from None
    return f"{int(frame)}:{prompt}"


def _count(text: str, minimum: int, maximum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"expected {what}, at most {maximum}; got {value}")
    return value


def window_frames(text: str) -> int:
    return _count(text, 1, MAX_FRAMES, "an integer ≥ 1 (frames)")


def overlap_frames(text: str) -> int:
    return _count(text, 0, MAX_FRAMES, "an integer ≥ 0 (frames)")


def free_init_iterations(text: str) -> int:
    return _count(text, 1, MAX_FREE_INIT, "an integer ≥ 1 (FreeInit iterations)")


# ------------------------------------------------------------------------------ flags
def add_long_video_flags(sub: argparse.ArgumentParser, command: Command) -> None:
    """The "long videos" group. AnimateDiff-only flags are accepted (hidden) by the other commands
    too, so that using one there is a clear error rather than "unrecognized arguments"."""
    group = sub.add_argument_group("long videos (prompt travel, FreeNoise, context windows, FreeInit)")
    animatediff = command.name == "animatediff"

    def only_animatediff(text: str) -> str:
        return text if animatediff else argparse.SUPPRESS

    group.add_argument(
        "--prompt-at", action="append", dest="prompt_at", type=prompt_at_item, metavar="FRAME:TEXT",
        help=only_animatediff("prompt travel: from frame FRAME on the video blends towards TEXT (PROMPT is frame 0's); repeatable"),
    )
    group.add_argument("--free-noise", action="store_true", help=only_animatediff(
        "FreeNoise: motion modules attend within windows of --context-length frames, with noise "
        "rescheduled to match; for videos longer than the adapter's training length"))
    windows = "turns on context windows: the network runs on overlapping windows of N frames"
    group.add_argument("--context-length", type=window_frames, metavar="N", help=(
        f"frames per window; with --free-noise FreeNoise's (default: {FREE_NOISE_LENGTH}), otherwise {windows}"
        if animatediff else windows))
    group.add_argument("--context-stride", type=window_frames, metavar="N",
                       help=only_animatediff(f"frames between FreeNoise windows (needs --free-noise; default: {FREE_NOISE_STRIDE})"))
    group.add_argument("--context-overlap", type=overlap_frames, metavar="N",
                       help="frames shared by neighbouring context windows (default: a quarter of --context-length"
                       + ("; not with --free-noise)" if animatediff else ")"))
    group.add_argument("--context-schedule", choices=SCHEDULES, metavar="NAME",
                       help="context windows: uniform (the windows shift from step to step, so their seams move) or static (the same windows every step) (default: uniform)")
    group.add_argument("--closed-loop", action="store_true", help="context windows also wrap from the last frames to the first (looping videos)")
    group.add_argument("--weighting", choices=FREE_NOISE_WEIGHTINGS, metavar="NAME", help=(
        "how overlapping windows blend: flat or pyramid (default: pyramid)"
        + ("; with --free-noise also delayed_reverse_sawtooth" if animatediff else "")))
    group.add_argument("--noise-type", choices=NOISE_TYPES, metavar="NAME",
                       help=only_animatediff("FreeNoise's initial noise: shuffle_context, repeat_context or random (needs --free-noise; default: shuffle_context)"))
    group.add_argument("--free-init", type=free_init_iterations, metavar="N",
                       help="FreeInit: denoise N times, each time re-initialising the noise's low frequencies from the last result")
    group.add_argument("--free-init-method", choices=FREE_INIT_METHODS, metavar="NAME",
                       help="FreeInit's low-pass filter: butterworth, ideal or gaussian (needs --free-init; default: butterworth)")
    group.add_argument("--free-init-fast", action="store_true",
                       help="FreeInit's fast sampling: fewer steps in the early iterations (needs --free-init)")


def defaults(command: Command) -> dict[str, Any]:
    """The long-video settings of a run that gives none of the flags (recorded in sidecars, so a
    sidecar says explicitly that a feature was off)."""
    values = {
        "prompt_at": [], "free_noise": False, "context_length": None, "context_stride": None,
        "context_overlap": None, "context_schedule": None, "closed_loop": False, "weighting": None,
        "noise_type": None, "free_init": None, "free_init_method": None, "free_init_fast": False,
    }
    if command.name != "animatediff":
        values = {key: value for key, value in values.items() if key not in ANIMATEDIFF_ONLY}
    return values


# ------------------------------------------------------------------------------ the plan
@dataclasses.dataclass(frozen=True)
class LongVideo:
    """What a run turns on: each feature as the keyword arguments of its ``pipe.enable_*`` method,
    or None when off; ``prompt_at`` holds the prompt-travel key frames after frame 0."""

    prompt_at: dict[int, str] = dataclasses.field(default_factory=dict)
    free_noise: dict[str, Any] | None = None
    context_windows: dict[str, Any] | None = None
    free_init: dict[str, Any] | None = None

    def prompt(self, prompt: str) -> str | dict[int, str]:
        """The pipeline's ``prompt``: PROMPT alone, or with ``--prompt-at`` the ``{frame: text}`` dict
        whose frame 0 is PROMPT."""
        return {0: prompt, **dict(sorted(self.prompt_at.items()))} if self.prompt_at else prompt

    def calls(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(flag, pipeline method, keyword arguments) of every feature turned on, in calling order."""
        named = (("--free-noise", "enable_free_noise", self.free_noise),
                 ("--context-length", "enable_context_windows", self.context_windows),
                 ("--free-init", "enable_free_init", self.free_init))
        return [(flag, method, kwargs) for flag, method, kwargs in named if kwargs is not None]


def plan(command: Command, settings: dict[str, Any]) -> LongVideo:
    """The long-video features ``settings`` ask for, every combination checked (a :class:`UsageError`
    naming the flag). What needs the model's configs (SVD's default length, the motion modules'
    frame limit) is checked later, by :func:`check_with_configs`."""
    _refuse_elsewhere(command, settings)
    num_frames = settings.get("num_frames") or command.default("num_frames")
    free_noise = settings.get("free_noise", False)
    windows = not free_noise and settings.get("context_length") is not None
    _refuse_orphans(settings, free_noise, windows)
    long_video = LongVideo(
        prompt_at=_key_frames(settings.get("prompt_at") or [], num_frames),
        free_noise=_free_noise(settings) if free_noise else None,
        context_windows=_context_windows(settings) if windows else None,
        free_init=_free_init(settings) if settings.get("free_init") is not None else None,
    )
    if num_frames is not None:
        check_frames(long_video, num_frames, given=settings.get("num_frames") is not None)
    return long_video


def _refuse_elsewhere(command: Command, settings: dict[str, Any]) -> None:
    if command.name == "animatediff":
        return
    for key, flag in ANIMATEDIFF_ONLY.items():
        if settings.get(key):
            why = {
                "--prompt-at": "prompt travel blends text states per frame, which only `vidiff animatediff` takes",
                "--free-noise": "FreeNoise works inside motion modules, which only `vidiff animatediff` has; "
                                "for a long video use context windows: --context-length N --context-overlap N",
                "--context-stride": "it is FreeNoise's (`vidiff animatediff --free-noise`); context windows take --context-overlap",
            }.get(flag, "it is FreeNoise's (`vidiff animatediff --free-noise`)")
            raise UsageError(f"{flag} does not apply to `vidiff {command.name}`: {why}")


def _refuse_orphans(settings: dict[str, Any], free_noise: bool, windows: bool) -> None:
    """Flags that mean nothing without the feature they tune."""
    needs = []
    if not free_noise:
        needs += [("context_stride", "--context-stride", "--free-noise (it is FreeNoise's stride; context windows take --context-overlap)"),
                  ("noise_type", "--noise-type", "--free-noise")]
    if free_noise:
        for key, flag in (("context_overlap", "--context-overlap"), ("context_schedule", "--context-schedule"), ("closed_loop", "--closed-loop")):
            if settings.get(key) not in (None, False):
                raise UsageError(f"{flag} is for context windows, not --free-noise (FreeNoise's windows are spaced by --context-stride)")
    elif not windows:
        needs += [(key, flag, "--context-length N (context windows) or --free-noise") for key, flag in (
            ("context_overlap", "--context-overlap"), ("context_schedule", "--context-schedule"),
            ("closed_loop", "--closed-loop"), ("weighting", "--weighting"))]
    if settings.get("free_init") is None:
        needs += [("free_init_method", "--free-init-method", "--free-init N"), ("free_init_fast", "--free-init-fast", "--free-init N")]
    for key, flag, what in needs:
        if settings.get(key) not in (None, False):
            raise UsageError(f"{flag} needs {what}")
    if windows and settings.get("weighting") == "delayed_reverse_sawtooth":
        raise UsageError("--weighting delayed_reverse_sawtooth is FreeNoise's only (add --free-noise); context windows blend flat or pyramid")


def _key_frames(items: list[str], num_frames: int | None) -> dict[int, str]:
    """``--prompt-at`` items → ``{frame: text}``; frame 0 is PROMPT's, each frame once, inside the video."""
    frames: dict[int, str] = {}
    for item in items:
        frame_text, _, text = prompt_at_item(item).partition(":")
        frame = int(frame_text)
        if frame == 0:
            raise UsageError(f"--prompt-at {item!r}: frame 0's prompt is PROMPT; give that text as PROMPT instead")
        if num_frames is not None and frame >= num_frames:
            raise UsageError(f"--prompt-at {item!r}: frame {frame} is outside the video (frames 0 … {num_frames - 1} with --num-frames {num_frames})")
        if frame in frames:
            raise UsageError(f"--prompt-at {item!r}: frame {frame} already has a prompt ({frame}:{frames[frame]!r}); give each frame once")
        frames[frame] = text
    return frames


def _free_noise(settings: dict[str, Any]) -> dict[str, Any]:
    length = settings.get("context_length") or FREE_NOISE_LENGTH
    stride = settings.get("context_stride") or FREE_NOISE_STRIDE
    if stride > length:
        raise UsageError(f"--context-stride {stride} is longer than --context-length {length}: the frames between windows would never be denoised")
    if settings.get("weighting") == "delayed_reverse_sawtooth" and length % 2:
        raise UsageError(f"--weighting delayed_reverse_sawtooth needs an even --context-length (its two halves), got {length}")
    return dict(context_length=length, context_stride=stride, weighting_scheme=settings.get("weighting") or "pyramid",
                noise_type=settings.get("noise_type") or "shuffle_context")


def _context_windows(settings: dict[str, Any]) -> dict[str, Any]:
    length = settings["context_length"]
    overlap = settings.get("context_overlap")
    overlap = length // 4 if overlap is None else overlap  # ComfyUI's usual 16/4 proportion
    if overlap >= length:
        raise UsageError(f"--context-overlap {overlap} must be less than --context-length {length} (neighbouring windows would not advance)")
    if settings.get("closed_loop") and overlap == 0:
        raise UsageError(f"--closed-loop needs --context-overlap ≥ 1 (it is {overlap}): without overlap no window spans the seam from the last frame to the first")
    return dict(context_length=length, context_overlap=overlap, schedule=settings.get("context_schedule") or "uniform",
                closed_loop=bool(settings.get("closed_loop")), fuse=settings.get("weighting") or "pyramid")


def _free_init(settings: dict[str, Any]) -> dict[str, Any]:
    return dict(num_iters=settings["free_init"], use_fast_sampling=bool(settings.get("free_init_fast")),
                method=settings.get("free_init_method") or "butterworth")


def check_frames(long_video: LongVideo, num_frames: int, given: bool = True) -> None:
    """Refuse windows (FreeNoise's or context windows) longer than the video of ``num_frames``
    frames; ``given``: the length came from ``--num-frames`` (else from the model's config)."""
    where = f"--num-frames {num_frames}" if given else f"{num_frames} frames by default; set --num-frames"
    for kwargs, flag in ((long_video.free_noise, "--free-noise"), (long_video.context_windows, "--context-length")):
        if kwargs is not None and kwargs["context_length"] > num_frames:
            length = kwargs["context_length"]
            what = f"--context-length {length}" if flag == "--context-length" else f"--free-noise: its --context-length {length} (default {FREE_NOISE_LENGTH})"
            raise UsageError(f"{what} is longer than the video ({where}); give --context-length {num_frames} or less, or more frames")


def check_with_configs(long_video: LongVideo, command: Command, settings: dict[str, Any], networks: dict[str, tuple[type, dict[str, Any]]]) -> None:
    """The checks that need the model's ``config.json`` files (read before any weights load): the
    video length SVD takes from its UNet, and the frame limit of AnimateDiff's motion modules."""
    num_frames = settings.get("num_frames") or command.default("num_frames")
    if num_frames is None:  # SVD: the UNet's trained length
        num_frames = _config_value(networks, "unet", "num_frames") or 25
        check_frames(long_video, num_frames, given=False)
    for name in ("unet", "motion_adapter"):
        limit = _config_value(networks, name, "motion_max_seq_length")
        if limit is not None:
            break
    if limit is None:
        return
    windows = long_video.free_noise or long_video.context_windows
    if windows is not None and windows["context_length"] > limit:
        flag = "--context-length" if settings.get("context_length") is not None else "--free-noise's default --context-length"
        raise UsageError(f"{flag} {windows['context_length']} is more frames than the motion modules take "
                         f"(motion_max_seq_length {limit} in the {name}'s config); give --context-length {limit} or less")
    if windows is None and num_frames > limit:
        raise UsageError(f"--num-frames {num_frames} is more frames than the motion modules take at once (motion_max_seq_length "
                         f"{limit} in the {name}'s config); for a longer video add --free-noise or --context-length N")


def _config_value(networks: dict[str, tuple[type, dict[str, Any]]], name: str, key: str) -> Any:
    """``key`` of network ``name``'s typed config (its default when the file omits it), or None."""
    if name not in networks:
        return None
    model_class, config = networks[name]
    config_class = getattr(model_class, "config_class", None)
    return getattr(config_class.from_diffusers(config), key, None) if config_class is not None else None


def apply(pipe: Any, long_video: LongVideo) -> dict[str, dict[str, Any]]:
    """Turn the features on in ``pipe``; returns what each ``enable_*`` method was given, its own
    defaults filled in (for the sidecar's ``resolved`` record)."""
    resolved = {}
    for flag, method, kwargs in long_video.calls():
        enable = getattr(pipe, method, None)
        if not callable(enable):
            raise RunError(f"{flag}: {type(pipe).__name__} has no {method}() in this vidiff")
        try:
            enable(**kwargs)
        except (ValueError, TypeError) as error:
            raise UsageError(f"{flag}: {error}") from None
        bound = inspect.signature(enable).bind_partial(**kwargs)
        bound.apply_defaults()
        # Only plain values: a callback default (FreeNoise's prompt interpolation) is no setting.
        resolved[method] = {k: v for k, v in bound.arguments.items() if v is None or isinstance(v, (bool, int, float, str))}
    return resolved
