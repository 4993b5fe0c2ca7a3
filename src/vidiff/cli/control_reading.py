"""The inputs of a video / control run (:mod:`.control_inputs`): its videos and key-frame images read
before any model loads, the control model(s) checked from their configs and then loaded, and what
the sidecar records about them.

Frame count: ``--num-frames N`` keeps the first N frames of every video read (after
``--video-stride``), and a video with fewer is refused; without it the count is ``--video``'s, else
the first ``--control-video``'s, and every other video must have at least that many (its first ones
are used).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from .. import loading
from ..control_frames import canny_frames
from ..image_loading import load_image
from ..models.controlnet import ControlNetModel
from ..models.controlnet_sparsectrl import SparseControlNetModel
from ..pipelines.animatediff import AnimateDiffPipeline
from ..pipelines.animatediff_controlnet import (
    AnimateDiffControlNetPipeline,
    AnimateDiffVideoToVideoControlNetPipeline,
)
from ..pipelines.animatediff_sparsectrl import AnimateDiffSparseControlNetPipeline
from ..pipelines.animatediff_video2video import AnimateDiffVideoToVideoPipeline
from ..video_loading import load_video
from .commands import MAX_FRAMES
from .control_inputs import PATH_SETTINGS, ControlFlags
from .errors import RunError, UsageError

PIPELINES = {cls.__name__: cls for cls in (
    AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline, AnimateDiffControlNetPipeline,
    AnimateDiffVideoToVideoControlNetPipeline, AnimateDiffSparseControlNetPipeline,
)}
# What a ControlNet's residuals must match in the UNet's config (diffusers' defaults where a file omits a key).
FIT_KEYS = {"in_channels": 4, "cross_attention_dim": 1280, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2}


@dataclasses.dataclass(frozen=True)
class ControlRun:
    """A run's video and control inputs, read: the pipeline to load, its extra call arguments, the
    frame count the videos set (None: ``--num-frames`` or the pipeline's default) and the record."""

    flags: ControlFlags
    num_frames: int | None = None
    given_frames: int | None = None  # --num-frames as typed or replayed (None: the videos decide)
    call: dict[str, Any] = dataclasses.field(default_factory=dict)
    record: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def pipeline(self) -> type:
        return PIPELINES[self.flags.pipeline_name]

    def call_arguments(self, call: dict[str, Any]) -> dict[str, Any]:
        """The pipeline call: ``call`` (the generation flags) plus these inputs; a video-to-video
        pipeline takes its frame count from the video, not ``num_frames``."""
        call = {**call, **self.call}
        if self.flags.video:
            call.pop("num_frames", None)
        return call


def read_inputs(flags: ControlFlags, settings: dict[str, Any]) -> ControlRun:
    """Read every video and key-frame image the flags name (a :class:`UsageError` naming the flag for
    a missing or unreadable one; a failed download is a :class:`RunError`)."""
    if not (flags.video or flags.controlnets or flags.sparsectrl):
        return ControlRun(flags, record={"pipeline": flags.pipeline_name})
    given = settings.get("num_frames")
    read: dict[str, list] = {}
    sources = ([("--video", flags.video)] if flags.video else []) + [("--control-video", v) for v in flags.control_videos]
    for flag, location in sources:
        if location not in read:
            read[location] = _read_video(flag, location, flags.stride, given)
    num_frames = given or (len(read[sources[0][1]]) if sources else None)
    for flag, location in sources:
        if len(read[location]) < num_frames:
            what = f"--num-frames {given}" if given else f"the {num_frames} frames of {sources[0][0]} {sources[0][1]!r}"
            raise UsageError(f"{flag} {location!r} has {len(read[location])} frames{_after(flags)}, fewer than {what}")
    call: dict[str, Any] = {"guess_mode": flags.guess_mode} if flags.controlnets or flags.sparsectrl else {}
    record: dict[str, Any] = {"pipeline": flags.pipeline_name}
    if flags.video:
        call.update(video=read[flags.video][:num_frames], strength=flags.strength, enforce_inference_steps=flags.enforce_steps)
        record["video"] = dict(frames=num_frames, stride=flags.stride, sha256=_sha256(flags.video), strength=flags.strength,
                               enforce_inference_steps=flags.enforce_steps)
    if flags.controlnets:
        videos = [_preprocess(flags, index, read[location][:num_frames]) for index, location in enumerate(flags.control_videos)]
        one = len(videos) == 1
        call.update(conditioning_frames=videos[0] if one else videos, controlnet_conditioning_scale=_one_or_list(flags.scales),
                    control_guidance_start=_one_or_list(flags.starts), control_guidance_end=_one_or_list(flags.ends))
        record["controlnets"] = [dict(model=net, control_video=video, sha256=_sha256(video), preprocess=pre, scale=s, start=a, end=b)
                                 for net, video, pre, s, a, b in zip(flags.controlnets, flags.control_videos, flags.preprocess,
                                                                     flags.scales, flags.starts, flags.ends)]
    if flags.sparsectrl:
        images = [_read_image(frame, path) for frame, path in flags.key_frames]
        if flags.preprocess[0] == "canny":
            images = canny_frames(images, *flags.canny)
        call.update(conditioning_frames=images, controlnet_frame_indices=[frame for frame, _ in flags.key_frames],
                    controlnet_conditioning_scale=flags.scales[0])
        record["sparsectrl"] = dict(model=flags.sparsectrl, preprocess=flags.preprocess[0], scale=flags.scales[0], key_frames=[
            dict(frame=frame, image=path, sha256=_sha256(path)) for frame, path in flags.key_frames])
    if "canny" in flags.preprocess:
        record["canny"] = dict(low_threshold=flags.canny[0], high_threshold=flags.canny[1])
    record.update(num_frames=num_frames, guess_mode=flags.guess_mode)
    return ControlRun(flags, num_frames if sources else None, given, call, record)


def _after(flags: ControlFlags) -> str:
    return f" (every {flags.stride}th, --video-stride)" if flags.stride > 1 else ""


def _one_or_list(values: tuple[float, ...]) -> float | list[float]:
    return values[0] if len(values) == 1 else list(values)


def _read_video(flag: str, location: str, stride: int, num_frames: int | None) -> list:
    """The frames of ``location`` (the first ``num_frames`` when given), as RGB PIL images."""
    try:
        frames = load_video(location, stride=stride, max_frames=num_frames or MAX_FRAMES + 1)
    except FileNotFoundError:
        raise UsageError(f"{flag} {location!r} does not exist") from None
    except (ValueError, TypeError) as error:
        raise UsageError(f"{flag} {location!r} cannot be read as a video: {error}") from None
    except OSError as error:  # a URL that could not be fetched
        raise RunError(f"{flag} {location!r} could not be fetched: {error}") from None
    if len(frames) > MAX_FRAMES:
        raise UsageError(f"{flag} {location!r} has more than {MAX_FRAMES} frames; keep fewer with --num-frames N or --video-stride N")
    return frames


def _read_image(frame: int, location: str):
    flag = f"--control-image {frame}:{location}"
    try:
        return load_image(location)
    except FileNotFoundError:
        raise UsageError(f"{flag}: {location!r} does not exist") from None
    except (ValueError, TypeError) as error:
        raise UsageError(f"{flag}: {location!r} cannot be read as an image: {error}") from None
    except OSError as error:
        raise RunError(f"{flag}: {location!r} could not be fetched: {error}") from None


def _preprocess(flags: ControlFlags, index: int, frames: list) -> list:
    return canny_frames(frames, *flags.canny) if flags.preprocess[index] == "canny" else frames


def _sha256(location: str) -> str | None:
    """The SHA-256 of a local file (None for URLs and folders of frames)."""
    path = Path(location).expanduser()
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


# ------------------------------------------------------------------------------ the control models
def _models(flags: ControlFlags) -> list[tuple[str, str, type]]:
    if flags.sparsectrl:
        return [("--sparsectrl", flags.sparsectrl, SparseControlNetModel)]
    return [("--controlnet", net, ControlNetModel) for net in flags.controlnets]


def check_models(flags: ControlFlags, settings: dict[str, Any], unet_config: dict[str, Any] | None) -> None:
    """Open each control model's config.json before any weights load: an unreadable one is a
    :class:`RunError`, one whose residuals cannot fit the UNet (``unet_config``) a :class:`UsageError`."""
    for flag, source, model_class in _models(flags):
        try:
            checkpoint = loading.Checkpoint.open(source, local_files_only=settings.get("offline") or None)
            config = checkpoint.read_json("config.json")
            model_class.config_class.from_diffusers(config)
        except (OSError, ValueError, TypeError) as error:
            raise RunError(f"cannot load {flag} {source!r}: {error}") from None
        if unet_config is None:
            continue
        theirs = {key: unet_config.get(key, default) for key, default in FIT_KEYS.items()}
        ours = {key: config.get(key, default) for key, default in FIT_KEYS.items()}
        if ours != theirs:
            raise UsageError(f"{flag} {source!r} does not fit --model's UNet: it has {ours}, the UNet {theirs}; "
                             "use a control model trained for this base model (Stable Diffusion 1.5)")


def load_models(flags: ControlFlags, settings: dict[str, Any], dtype: torch.dtype, variant: str | None,
                device: torch.device | None) -> dict[str, Any]:
    """The ``controlnet`` component for ``from_pretrained`` (one model, or a list of ControlNets), or {}."""
    loaded = []
    for flag, source, model_class in _models(flags):
        try:
            loaded.append(model_class.from_pretrained(source, dtype=dtype, variant=variant, device=device,
                                                      local_files_only=settings.get("offline") or None))
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise RunError(f"cannot load {flag} {source!r}: {error}") from error
    if not loaded:
        return {}
    return {"controlnet": loaded[0] if len(loaded) == 1 else loaded}


def record_arguments(arguments: dict[str, Any], control: ControlRun) -> None:
    """The sidecar's ``arguments``: local paths made absolute (a run replays from any folder), and
    ``num_frames`` as given where the videos set the frame count (so a replay with another
    ``--video`` takes that video's frames; the count that ran is in ``resolved.control``)."""
    if control.num_frames is not None:
        arguments["num_frames"] = control.given_frames

    def absolute(text: Any) -> Any:
        path = Path(text).expanduser() if isinstance(text, str) and text else None
        return str(path.resolve()) if path is not None and path.exists() else text

    for key in PATH_SETTINGS:
        if key not in arguments:
            continue
        value = arguments[key]
        arguments[key] = [absolute(v) for v in value] if isinstance(value, list) else absolute(value)
    if isinstance(arguments.get("control_image"), list):
        arguments["control_image"] = [f"{frame}:{absolute(path)}" for frame, _, path in
                                      (item.partition(":") for item in arguments["control_image"])]
