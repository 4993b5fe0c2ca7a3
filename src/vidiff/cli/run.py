"""One pipeline run from the command line: check → load → generate → write videos and sidecars."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import logging
import platform
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from .. import __version__, loading
from ..models.base import PretrainedModel
from ..models.motion_adapter import MotionAdapter, MotionAdapterConfig
from ..pipelines import memory
from . import adapters, control_inputs, control_reading, limits, long_video, memory_levers, outputs, single_files, wan
from . import settings as run_settings
from .commands import ANIMATEDIFF_EXPORT_FPS, Command, scheduler_choices
from .errors import RunError, UsageError
from .pipeline_cache import PipelineCache, pipeline_key

logger = logging.getLogger("vidiff.cli")


@dataclasses.dataclass
class RunHooks:
    """What a long-lived caller (the server, a batch worker) adds to a run.

    ``pipelines``: loaded pipelines kept between runs (a run whose loading settings equal an earlier
    one's reuses its pipeline). ``on_step(done, total)``: called after every denoising step; it may
    raise (e.g. :class:`Cancelled`) to stop the run before anything is written.
    """

    pipelines: PipelineCache | None = None
    on_step: Callable[[int, int], None] | None = None


class Cancelled(Exception):
    """Raised from ``on_step`` to stop a run: nothing is written."""


def run(command: Command, explicit: dict[str, Any], show_progress: bool, hooks: RunHooks | None = None) -> list[Path]:
    """Make the videos ``explicit`` (the typed flags) asks for; return the written paths."""
    hooks = hooks or RunHooks()
    settings, recorded = run_settings.merge(command, explicit)
    command, wan_images = wan.prepare(command, settings)  # `vidiff wan --image`: the image-to-video pipeline
    wan.warn_if_images_changed(settings, recorded)
    control_flags = control_inputs.check_flags(command, settings)  # --video, --controlnet, --sparsectrl…
    single_files.check_flags(command, settings)  # a single-file --model: --model-config, no --revision/--variant
    adapter_plan = adapters.check_flags(command, settings)  # --lora, --ip-adapter (its image read now)
    image = run_settings.read_image(command, settings) if command.takes_image else None
    if recorded is not None and command.takes_image:
        _warn_if_image_changed(settings["image"], recorded)
    prompt = run_settings.read_prompt(command, settings) if command.takes_prompt else None
    control = control_reading.read_inputs(control_flags, settings)  # the videos and key-frame images, read now
    if control.num_frames is not None:  # the videos set the frame count (recorded, so a replay keeps it)
        settings = {**settings, "num_frames": control.num_frames}
    long = long_video.plan(command, settings)  # --prompt-at, --free-noise, --context-*, --free-init
    limits.check_text(settings)
    overrides = run_settings.scheduler_overrides(command, settings)
    seed = run_settings.pick_seed(settings)
    videos = settings.get("num_videos_per_prompt") or command.default("num_videos_per_prompt")
    targets = outputs.plan_outputs(
        settings.get("output") or [f"{command.name}-{seed.value}.mp4"], videos, settings.get("overwrite", False)
    )
    limits.check_writable(targets)
    limits.check_gif_rate(command, targets, _export_fps(command, settings))
    device = run_settings.pick_device(settings["device"])
    networks, needs_adapter = _check_model(command, settings)
    wan.check_networks(command, settings, networks)  # an I2V checkpoint without --image, --guidance-scale-2
    long_video.check_with_configs(long, command, settings, networks)  # SVD's length, the motion modules' limit
    control_reading.check_models(control.flags, settings, (networks.get("unet") or (None, None))[1])
    dtype = run_settings.pick_dtype(wan.dtype_name(command, settings["dtype"], device), device)
    variant = run_settings.pick_variant(wan.variant_name(command, settings["variant"]), dtype)
    settings = {**settings, "offload": memory_levers.usable(memory_levers.given_levers(settings), device).offload}
    levers = memory_levers.plan(command, settings, networks, device, dtype)
    needed = limits.check_fits(command, settings, networks, device, dtype, levers)
    logger.info("device %s, dtype %s%s", device, str(dtype).removeprefix("torch."), f", {variant} weights" if variant else "")

    def build() -> tuple[Any, Any, Any]:
        # Offloaded networks load on the CPU (the offload hooks move them); the others straight onto the device.
        pipe = _load(command, settings, dtype, variant, None if levers.offload else device, needs_adapter, control)
        adapter_record = adapters.apply(pipe, adapter_plan, settings.get("offline") or None)  # before offload hooks and compile
        memory_levers.apply(pipe, levers, bool(settings.get("compile")), device)
        long_video_calls = long_video.apply(pipe, long)
        if settings.get("scheduler") or overrides:
            cls = scheduler_choices(command)[settings["scheduler"]] if settings.get("scheduler") else type(pipe.scheduler)
            try:
                carried = wan.scheduler_options(cls, pipe.scheduler.config, overrides)  # flow_shift → shift
                pipe.scheduler = cls.from_config(pipe.scheduler.config, **carried, **overrides)
            except (TypeError, ValueError) as error:
                raise UsageError(f"--scheduler {cls.__name__}: {error}") from None
        return pipe, adapter_record, long_video_calls

    if hooks.pipelines is None:
        pipe, adapter_record, long_video_calls = build()
    else:
        key = pipeline_key(command, settings, dtype, variant, device, levers.names())
        pipe, adapter_record, long_video_calls = hooks.pipelines.get(key, build, needed_bytes=needed, device=device)
    pipe.set_progress_bar_config(disable=not show_progress)

    call = {flag.param: settings[flag.param] for flag in command.flags if settings.get(flag.param) is not None}
    if image is not None:
        call["image"] = image
    if prompt is not None:
        call["prompt"] = long.prompt(prompt)
    call = adapter_plan.call_arguments(control.call_arguments({**call, **wan_images}))
    if hooks.on_step is not None:
        call["callback_on_step_end"] = _step_callback(hooks.on_step, settings.get("num_inference_steps") or command.default("num_inference_steps"))
    logger.info("generating %d video(s) with %s, seed %d (%s)", videos, type(pipe.scheduler).__name__, seed.value, seed.kind)
    try:
        frames = pipe(**call, generator=seed.generator(), output_type="np").frames  # [B, F, H, W, 3]
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    fps = _export_fps(command, settings)
    record = _record(command, settings, overrides, seed, device, dtype, variant, pipe, fps)
    record["resolved"]["levers"] = levers.names() + (["compile"] if settings.get("compile") else [])
    record["resolved"]["long_video"] = long_video_calls  # each enable_*() call, its defaults filled in
    record["resolved"]["pipeline"] = type(pipe).__name__
    wan.record_images(record["arguments"], record["resolved"])
    if control.flags.video or control.flags.controlnets or control.flags.sparsectrl:
        record["resolved"]["control"] = control.record  # frame count, per-net values, input files' SHA-256
    control_reading.record_arguments(record["arguments"], control)
    adapters.record_arguments(record["arguments"])
    if adapter_record:
        record["resolved"]["adapters"] = adapter_record  # adapter names, weights, sources; the image's SHA-256
    stamps = single_files.stamp(settings)
    if stamps:
        record["resolved"]["single_files"] = stamps  # path, size, mtime (not hashed: see single_files.stamp)
    sidecars = [{**record, "output": {
        "path": str(target.path.absolute()), "format": target.kind, "video_index": target.video_index,
        "videos": videos, "fps": fps,
    }} for target in targets]
    outputs.write_outputs(targets, frames, fps, sidecars, settings.get("overwrite", False))
    for target in targets:
        logger.info("wrote %s", target.path)
    return [target.path for target in targets]


def _step_callback(on_step: Callable[[int, int], None], total: int) -> Callable[..., dict]:
    """diffusers' ``callback_on_step_end`` reporting (step, total) after each denoising step."""

    def callback(pipe: Any, index: int, timestep: Any, tensors: dict) -> dict:
        on_step(min(index + 1, total), total)
        return {}

    return callback


def _warn_if_image_changed(image: str, recorded: dict[str, Any]) -> None:
    expected = recorded.get("resolved", {}).get("image_sha256")
    path = Path(image).expanduser()
    if expected and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        logger.warning("IMAGE %s is not the file the recorded run used (its SHA-256 differs): the video will differ", image)


def _check_model(command: Command, settings: dict[str, Any]) -> tuple[dict[str, tuple[type, dict[str, Any]]], bool]:
    """Open the checkpoint (a folder, the cache or the Hub), read its model_index.json and check each
    network's config before any weights load, so a wrong ``--model`` (or ``--motion-adapter``) fails
    fast. Returns the networks to load (:func:`memory.network_configs`, the motion adapter included
    when one is needed), and whether a motion adapter must be loaded: a Stable Diffusion checkpoint
    needs one, a saved AnimateDiff pipeline already holds its modules."""
    model = settings["model"]
    if single_files.is_single_file(model):
        networks, needs_adapter = single_files.check_model(command, settings)
        if needs_adapter:
            config = _check_adapter(command, settings)
            if config is not None:  # None: a pickled adapter file, checked while it loads
                networks["motion_adapter"] = (MotionAdapter, config)
        return networks, needs_adapter
    try:
        checkpoint = loading.Checkpoint.open(model, revision=settings.get("revision"), local_files_only=settings.get("offline") or None)
        index = checkpoint.read_json("model_index.json")
    except loading.CheckpointNotCachedError as error:
        what = f"the default model {model!r} (no --model given)" if model == command.default_model else f"--model {model!r}"
        raise RunError(_not_cached(what, "--model", error)) from None
    except FileNotFoundError as error:
        raise RunError(f"--model {model!r} is not a usable checkpoint: {error}") from None
    except (OSError, ValueError) as error:
        raise RunError(f"--model {model!r} cannot be read: {error}") from None
    try:
        networks = memory.network_configs(command.pipeline, checkpoint, index)
        _check_configs(networks)
    except (OSError, ValueError) as error:
        raise RunError(f"cannot load --model {model!r}: {error}") from None
    needs_adapter = bool(command.default_motion_adapter) and (index.get("unet") or [None, None])[1] != "UNetMotionModel"
    if needs_adapter:
        config = _check_adapter(command, settings)
        if config is not None:  # None: a pickled adapter file, checked while it loads
            networks["motion_adapter"] = (MotionAdapter, config)
    return networks, needs_adapter


def _check_configs(networks: dict[str, tuple[type, dict[str, Any]]]) -> None:
    """Build each network's typed config from its config.json (no weights), so a wrong value fails
    now, naming the file and key, not deep inside loading or as a usage error after it."""
    for model_class, config in networks.values():
        if issubclass(model_class, PretrainedModel):
            model_class.config_class.from_diffusers(config)


def _check_adapter(command: Command, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Open --motion-adapter and check its config.json before anything loads, like --model; returns it
    (a single file: the config its tensors convert to; None for a pickle, which is checked as it loads)."""
    adapter = settings["motion_adapter"]
    if single_files.is_single_file(adapter):
        return single_files.check_adapter(adapter)
    try:
        checkpoint = loading.Checkpoint.open(adapter, local_files_only=settings.get("offline") or None)
        config = checkpoint.read_json("config.json")
        MotionAdapterConfig.from_diffusers(config)
        return config
    except loading.CheckpointNotCachedError as error:
        default = adapter == command.default_motion_adapter
        what = f"the default motion adapter {adapter!r} (no --motion-adapter given)" if default else f"--motion-adapter {adapter!r}"
        raise RunError(_not_cached(what, "--motion-adapter", error)) from None
    except (OSError, ValueError) as error:
        raise RunError(f"cannot load --motion-adapter {adapter!r}: {error}") from None


def _not_cached(what: str, flag: str, error: loading.CheckpointNotCachedError) -> str:
    """Why a Hub checkpoint cannot be opened, and what to do, in the command line's terms."""
    if error.offline_reason.startswith("local_files_only"):
        why, fix = "--offline forbids downloads", "run once without --offline to download it"
    elif error.offline_reason.startswith("HF_HUB_OFFLINE"):
        why, fix = "HF_HUB_OFFLINE is set, which forbids downloads", "unset HF_HUB_OFFLINE and run once to download it"
    else:
        why, fix = error.offline_reason, "run once with network access to download it"
    return (
        f"{what} is not in the local Hugging Face cache ({error.cache}) and {why}: {fix} "
        f"(or `hf download {error.repo_id}`), set HF_HOME to a folder whose cache holds it, or pass "
        f"{flag} FOLDER with a local checkpoint"
    )


def _load(command: Command, settings: dict[str, Any], dtype: torch.dtype, variant: str | None, device: torch.device | None,
          needs_adapter: bool, control: control_reading.ControlRun):
    """The pipeline (``control``'s: AnimateDiff's with --video / --controlnet / --sparsectrl), its
    weights read straight into ``dtype`` on ``device`` (None: the CPU)."""
    model, offline = settings["model"], settings.get("offline") or None
    source = dict(revision=settings.get("revision"), local_files_only=offline)
    pipeline = control.pipeline if command.name == "animatediff" else command.pipeline
    extra = control_reading.load_models(control.flags, settings, dtype, variant, device)
    if needs_adapter:
        adapter = settings["motion_adapter"]
        logger.info("loading the motion adapter from %s", adapter)
        try:
            if single_files.is_single_file(adapter):
                extra["motion_adapter"] = MotionAdapter.from_single_file(adapter, dtype=dtype, device=device)
            else:
                extra["motion_adapter"] = MotionAdapter.from_pretrained(
                    adapter, dtype=dtype, variant=variant, local_files_only=offline, device=device
                )
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise RunError(f"cannot load --motion-adapter {adapter!r}: {error}") from error
    if single_files.is_single_file(model):
        logger.info("loading %s from the single file %s", pipeline.__name__, model)
        pipe = single_files.load_pipeline(pipeline, settings, dtype, device, extra)
        return pipe if device is None else pipe.to(device)
    try:
        logger.info("loading %s from %s", pipeline.__name__, model)
        pipe = pipeline.from_pretrained(model, dtype=dtype, variant=variant, device=device, **source, **extra)
        return pipe if device is None else pipe.to(device)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise RunError(f"cannot load --model {model!r}: {error}") from error


def _export_fps(command: Command, settings: dict[str, Any]) -> float:
    if command.fps_param is None:
        return settings.get("export_fps") or command.export_fps or ANIMATEDIFF_EXPORT_FPS
    return settings.get(command.fps_param) or command.default(command.fps_param)


def _record(command, settings, overrides, seed, device, dtype, variant, pipe, fps) -> dict[str, Any]:
    """What the sidecar says: every setting (pipeline defaults filled in), the seed, where the model
    came from, and the versions that made the video."""
    arguments = {k: v for k, v in settings.items() if k not in run_settings.NOT_RECORDED + ("seed", "torch_seed")}
    for flag in command.flags:
        arguments.setdefault(flag.param, command.default(flag.param))
    arguments["scheduler_config"] = overrides
    for key in ("model", "motion_adapter", "image", "model_config"):
        value = arguments.get(key)
        if isinstance(value, str) and Path(value).expanduser().exists():
            arguments[key] = str(Path(value).expanduser().resolve())  # reproducible from any folder
    if command.fps_param is None:
        arguments["export_fps"] = fps
    record = {
        "command": command.name,
        "arguments": arguments,
        "seed": {"kind": seed.kind, "value": seed.value},
        "resolved": {
            "device": str(device), "dtype": str(dtype).removeprefix("torch."), "variant": variant,
            "scheduler": type(pipe.scheduler).__name__, "model_commit": _hub_commit(settings),
        },
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if command.takes_image and Path(str(arguments["image"])).is_file():
        record["resolved"]["image_sha256"] = hashlib.sha256(Path(arguments["image"]).read_bytes()).hexdigest()
    return record


def _hub_commit(settings: dict[str, Any]) -> str | None:
    """The Hub commit the model files came from (None for local folders)."""
    model = settings["model"]
    if Path(model).expanduser().exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "model_index.json", revision=settings.get("revision"))
    except Exception:  # noqa: BLE001 - provenance is best effort, never a reason to fail a finished run
        return None
    parts = Path(cached).parts if isinstance(cached, str) else ()
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def _versions() -> dict[str, str]:
    versions = {"vidiff": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for package in ("numpy", "transformers", "huggingface_hub", "av", "Pillow"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    versions["platform"] = f"{platform.system()} {platform.machine()} ({sys.platform})"
    return versions
