"""The video-input and control flags of ``vidiff animatediff``: video-to-video (``--video``,
``--strength``), ControlNet (``--controlnet``, ``--control-video``, ``--control-preprocess``…) and
SparseCtrl (``--sparsectrl``, ``--control-image FRAME:PATH``).

Like the long-video flags, every combination that cannot work is refused here from the flags alone,
before any video is read or model loaded, naming the flag (one :class:`UsageError`, exit status 2).
Which pipeline runs follows from the flags:

==========================  ==========================================
flags                        pipeline
==========================  ==========================================
(none)                       AnimateDiffPipeline
``--video``                  AnimateDiffVideoToVideoPipeline
``--controlnet``             AnimateDiffControlNetPipeline
``--video --controlnet``     AnimateDiffVideoToVideoControlNetPipeline
``--sparsectrl``             AnimateDiffSparseControlNetPipeline
==========================  ==========================================

The frame count of a run with videos (see :mod:`.control_reading`): ``--num-frames N`` keeps the
first N frames of every video read (each must have that many); without it, ``--video``'s frames
(after ``--video-stride``) or else the first ``--control-video``'s set the count.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from typing import Any

from ..control_frames import canny_frames
from .commands import MAX_FRAMES, Command, scheduler_choices
from .errors import UsageError

PREPROCESSORS = ("none", "canny")
# canny_frames' own thresholds are the defaults of --canny-low / --canny-high.
CANNY_LOW = inspect.signature(canny_frames).parameters["low_threshold"].default
CANNY_HIGH = inspect.signature(canny_frames).parameters["high_threshold"].default

# setting → flag, for every setting of this group (all AnimateDiff-only).
FLAGS = {
    "video": "--video", "strength": "--strength", "enforce_steps": "--enforce-steps", "video_stride": "--video-stride",
    "controlnet": "--controlnet", "control_video": "--control-video", "control_preprocess": "--control-preprocess",
    "canny_low": "--canny-low", "canny_high": "--canny-high", "control_scale": "--control-scale",
    "control_start": "--control-start", "control_end": "--control-end", "guess_mode": "--guess-mode",
    "sparsectrl": "--sparsectrl", "control_image": "--control-image",
}
# Settings holding local paths (made absolute in sidecars, so a run replays from any folder).
PATH_SETTINGS = ("video", "control_video", "controlnet", "sparsectrl")


# ------------------------------------------------------------------------------ value parsers
def _number(text: str, what: str, low: float = -math.inf, high: float = math.inf, open_low: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < low or value > high or (open_low and value == low):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def strength(text: str) -> float:
    """``--strength``: in (0, 1], as the pipelines take it."""
    return _number(text, "a number in (0, 1] (how far the video is noised)", 0.0, 1.0, open_low=True)


def scale(text: str) -> float:
    return _number(text, "a finite number (the factor on the control residuals)")


def fraction(text: str) -> float:
    return _number(text, "a fraction of the steps in [0, 1]", 0.0, 1.0)


def threshold(text: str) -> float:
    return _number(text, "a finite number ≥ 0 (a gradient-magnitude threshold)", 0.0)


def stride(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1 (frames), got {text!r}") from None
    if not 1 <= value <= MAX_FRAMES:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {MAX_FRAMES}] (frames), got {value}")
    return value


def control_image_item(text: str) -> str:
    """``--control-image FRAME:PATH``: a frame index ≥ 0, a colon, a path or URL; returned as
    ``"FRAME:PATH"`` with the frame written plainly, as the sidecar records it."""
    frame, sep, path = text.partition(":")
    if not sep or not frame.strip().isdigit() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected FRAME:PATH (a frame index ≥ 0, a colon, an image), e.g. 15:last.png; got {text!r}")
    return f"{int(frame)}:{path}"


# ------------------------------------------------------------------------------ flags
def add_control_flags(sub: argparse.ArgumentParser, command: Command) -> None:
    """The "video input and control" group. Other commands accept the flags hidden, so that using
    one there is a clear error rather than "unrecognized arguments"."""
    group = sub.add_argument_group("video input and control (AnimateDiff: video-to-video, ControlNet, SparseCtrl)")
    shown = command.name == "animatediff"

    def add(*names: str, help: str, **kwargs: Any) -> None:
        group.add_argument(*names, help=help if shown else argparse.SUPPRESS, **kwargs)

    add("--video", metavar="PATH_OR_URL", help=(
        "video-to-video: restyle this clip (mp4, webm, mov, gif, a folder of frames or a URL); the video has its frame count "
        "(--num-frames N keeps its first N frames); without --height/--width it is resized to the model's size"))
    add("--strength", type=strength, metavar="X", help="with --video: how far the video is noised, in (0, 1]; 1 ignores its content (default: 0.8)")
    add("--enforce-steps", action="store_true", dest="enforce_steps",
        help="with --video: run exactly --steps steps, from the end of a longer schedule (diffusers' enforce_inference_steps)")
    add("--video-stride", type=stride, metavar="N", help="read every N-th frame of --video and --control-video (default: 1)")
    add("--controlnet", action="append", metavar="ID_OR_PATH",
        help="a Stable Diffusion 1.5 ControlNet (Hub id or folder); repeat for several, their residuals are summed")
    add("--control-video", action="append", metavar="PATH_OR_URL",
        help="the control frames of a --controlnet, one per --controlnet in order (default: --video)")
    add("--control-preprocess", action="append", choices=PREPROCESSORS, metavar="NAME",
        help="none (the frames are the control images) or canny (their Canny edges); one for all or one per --controlnet (default: none)")
    add("--canny-low", type=threshold, metavar="X", help=f"--control-preprocess canny's low threshold (default: {CANNY_LOW})")
    add("--canny-high", type=threshold, metavar="X", help=f"--control-preprocess canny's high threshold (default: {CANNY_HIGH})")
    add("--control-scale", action="append", type=scale, metavar="X",
        help="factor on the control residuals; one for all or one per --controlnet (default: 1.0)")
    add("--control-start", action="append", type=fraction, metavar="X",
        help="fraction of the steps at which a ControlNet starts acting; one for all or one per --controlnet (default: 0.0)")
    add("--control-end", action="append", type=fraction, metavar="X",
        help="fraction of the steps at which a ControlNet stops acting; one for all or one per --controlnet (default: 1.0)")
    add("--guess-mode", action="store_true", dest="guess_mode",
        help="the control model recognises the content without the prompt (residuals ramped; with guidance, conditional half only)")
    add("--sparsectrl", metavar="ID_OR_PATH", help="a SparseCtrl model (RGB or scribble; Hub id or folder): key frames steer the video")
    add("--control-image", action="append", type=control_image_item, metavar="FRAME:PATH",
        help="with --sparsectrl: the image that conditions frame FRAME (< the frame count); repeatable")


def defaults(command: Command) -> dict[str, Any]:
    """The settings of a run without these flags (recorded in sidecars); none for other commands."""
    if command.name != "animatediff":
        return {}
    return {
        "video": None, "strength": None, "enforce_steps": False, "video_stride": None, "controlnet": [],
        "control_video": [], "control_preprocess": [], "canny_low": None, "canny_high": None, "control_scale": [],
        "control_start": [], "control_end": [], "guess_mode": False, "sparsectrl": None, "control_image": [],
    }


def _given(value: Any) -> bool:
    return value not in (None, False, [])


# ------------------------------------------------------------------------------ the plan
@dataclasses.dataclass(frozen=True)
class ControlFlags:
    """What the flags ask for, checked and expanded: one entry per ControlNet in each per-net list."""

    video: str | None = None
    strength: float | None = None
    enforce_steps: bool = False
    stride: int = 1
    controlnets: tuple[str, ...] = ()
    control_videos: tuple[str, ...] = ()  # one per ControlNet (--video where none is given)
    preprocess: tuple[str, ...] = ()  # per ControlNet, or one for SparseCtrl's images
    canny: tuple[float, float] = (CANNY_LOW, CANNY_HIGH)
    scales: tuple[float, ...] = ()
    starts: tuple[float, ...] = ()
    ends: tuple[float, ...] = ()
    guess_mode: bool = False
    sparsectrl: str | None = None
    key_frames: tuple[tuple[int, str], ...] = ()  # (frame, image) in the order given

    @property
    def pipeline_name(self) -> str:
        if self.sparsectrl:
            return "AnimateDiffSparseControlNetPipeline"
        if self.controlnets:
            return "AnimateDiffVideoToVideoControlNetPipeline" if self.video else "AnimateDiffControlNetPipeline"
        return "AnimateDiffVideoToVideoPipeline" if self.video else "AnimateDiffPipeline"


def check_flags(command: Command, settings: dict[str, Any]) -> ControlFlags:
    """The group's settings, every combination checked from the flags alone (a :class:`UsageError`
    naming the flag); nothing is read or loaded."""
    if command.name != "animatediff":
        for key, flag in FLAGS.items():
            if _given(settings.get(key)):
                raise UsageError(f"{flag} does not apply to `vidiff {command.name}`: video input and control are "
                                 "AnimateDiff's (`vidiff animatediff`)")
        return ControlFlags()
    _refuse_orphans(settings)
    nets = tuple(settings.get("controlnet") or ())
    sparse = settings.get("sparsectrl")
    count = len(nets) if nets else 1
    flags = ControlFlags(
        video=settings.get("video"),
        strength=(settings.get("strength") or 0.8) if settings.get("video") else None,  # the pipelines' default
        enforce_steps=bool(settings.get("enforce_steps")),
        stride=settings.get("video_stride") or 1,
        controlnets=nets,
        control_videos=_control_videos(settings, nets),
        preprocess=_per_net(settings, "control_preprocess", count, "none") if nets or sparse else (),
        canny=(_or(settings.get("canny_low"), CANNY_LOW), _or(settings.get("canny_high"), CANNY_HIGH)),
        scales=_per_net(settings, "control_scale", count, 1.0) if nets or sparse else (),
        starts=_per_net(settings, "control_start", count, 0.0) if nets else (),
        ends=_per_net(settings, "control_end", count, 1.0) if nets else (),
        guess_mode=bool(settings.get("guess_mode")),
        sparsectrl=sparse,
        key_frames=_key_frames(settings, command) if sparse else (),
    )
    for index, (start, end) in enumerate(zip(flags.starts, flags.ends)):
        if start >= end:
            which = "" if len(nets) == 1 else f" (of --controlnet {nets[index]!r})"
            raise UsageError(f"--control-start {start:g} must be smaller than --control-end {end:g}{which}")
    name = settings.get("scheduler")
    if flags.video and name and "strength" not in scheduler_choices(command)[name].honours:
        raise UsageError(f"--scheduler {name} cannot start part-way through its schedule, so it cannot run with --video; "
                         "use ddim, euler, dpm++ or lcm")
    if flags.canny[0] > flags.canny[1]:
        raise UsageError(f"--canny-low {flags.canny[0]:g} must not exceed --canny-high {flags.canny[1]:g}")
    return flags


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _refuse_orphans(settings: dict[str, Any]) -> None:
    """Flags that cannot work together, or mean nothing without the flag they tune."""
    video, nets, sparse = settings.get("video"), settings.get("controlnet"), settings.get("sparsectrl")
    if sparse and video:
        raise UsageError("--sparsectrl cannot be combined with --video: SparseCtrl steers a text-to-video run from key "
                         "frames (--control-image); for video-to-video with control use --controlnet")
    if sparse and nets:
        raise UsageError("--sparsectrl cannot be combined with --controlnet: a run takes one kind of control model")
    needs = [("strength", "--video"), ("enforce_steps", "--video"), ("video_stride", "--video or --control-video"),
             ("control_video", "--controlnet"), ("control_start", "--controlnet (SparseCtrl has no guidance window)"),
             ("control_end", "--controlnet (SparseCtrl has no guidance window)"),
             ("control_image", "--sparsectrl (a ControlNet takes a whole --control-video)"),
             ("control_scale", "--controlnet or --sparsectrl"), ("guess_mode", "--controlnet or --sparsectrl"),
             ("control_preprocess", "--controlnet or --sparsectrl")]
    present = {"--video": video, "--controlnet": nets, "--sparsectrl": sparse,
               "--video or --control-video": video or settings.get("control_video"),
               "--controlnet or --sparsectrl": nets or sparse}
    for key, what in needs:
        if _given(settings.get(key)) and not present[what.split(" (")[0]]:
            raise UsageError(f"{FLAGS[key]} needs {what}")
    canny = "canny" in (settings.get("control_preprocess") or [])
    for key in ("canny_low", "canny_high"):
        if settings.get(key) is not None and not canny:
            raise UsageError(f"{FLAGS[key]} needs --control-preprocess canny")
    if sparse and not settings.get("control_image"):
        raise UsageError("--sparsectrl needs at least one --control-image FRAME:PATH (the key frames it conditions)")


def _control_videos(settings: dict[str, Any], nets: tuple[str, ...]) -> tuple[str, ...]:
    """One control video per ControlNet: the --control-video flags in order, else --video for all."""
    given = tuple(settings.get("control_video") or ())
    if not nets:
        return ()
    if not given:
        if not settings.get("video"):
            raise UsageError("--controlnet needs --control-video PATH (its control frames), or --video to take them from")
        return (settings["video"],) * len(nets)
    if len(given) != len(nets):
        raise UsageError(f"--control-video is given {len(given)} times for {len(nets)} --controlnet; give one per "
                         "--controlnet, in the same order")
    return given


def _per_net(settings: dict[str, Any], key: str, count: int, default: Any) -> tuple[Any, ...]:
    """A repeatable per-ControlNet flag: none (the default for all), one (for all) or one per net."""
    values = list(settings.get(key) or ())
    if not values:
        return (default,) * count
    if len(values) == 1:
        return tuple(values) * count
    if len(values) != count:
        what = "--sparsectrl takes one" if settings.get("sparsectrl") else f"give one for all or one per --controlnet ({count})"
        raise UsageError(f"{FLAGS[key]} is given {len(values)} times; {what}")
    return tuple(values)


def _key_frames(settings: dict[str, Any], command: Command) -> tuple[tuple[int, str], ...]:
    """``--control-image`` items → (frame, image), each frame once and inside the video."""
    num_frames = settings.get("num_frames") or command.default("num_frames")
    where = f"--num-frames {num_frames}" if settings.get("num_frames") else f"{num_frames} frames by default; set --num-frames"
    frames: dict[int, str] = {}
    for item in settings.get("control_image") or ():
        frame_text, _, path = control_image_item(item).partition(":")
        frame = int(frame_text)
        if frame >= num_frames:
            raise UsageError(f"--control-image {item!r}: frame {frame} is outside the video (frames 0 … {num_frames - 1}, {where})")
        if frame in frames:
            raise UsageError(f"--control-image {item!r}: frame {frame} already has an image ({frames[frame]!r}); give each frame once")
        frames[frame] = path
    return tuple(frames.items())
