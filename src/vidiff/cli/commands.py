"""What each ``vidiff`` subcommand is: its pipeline, default checkpoint, inputs and flags.

Flags map one-to-one onto pipeline arguments (the argparse ``dest`` is the argument's name); their
defaults are read from the pipeline's ``__call__`` signature, so they live in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

from .. import schedulers
from ..pipelines.animatediff import AnimateDiffPipeline
from ..pipelines.base import Pipeline
from ..pipelines.i2vgen_xl import I2VGenXLPipeline
from ..pipelines.svd import StableVideoDiffusionPipeline
from ..pipelines.wan import WanPipeline


# ------------------------------------------------------------------------------ value parsers
# Upper bounds that no real run comes near; they turn a typo (an extra zero, a pasted number) into a
# usage error instead of minutes of work before running out of memory. Memory itself is estimated
# from the model before loading (vidiff.pipelines.memory); these only catch nonsense.
MAX_PIXELS = 16384  # per side; 16K video, twice what any released video model trains at
MAX_FRAMES = 4096  # per video; minutes of video even at 30 fps
MAX_STEPS = 10000  # denoising steps; schedulers are trained on 1000 timesteps
MAX_VIDEOS = 1000  # videos per run (each is a separate output file)
MAX_FPS = 1000  # frames per second, conditioning or export
MAX_CONDITION = 1_000_000  # integer conditionings (SVD's motion bucket is trained on 0–255)
MAX_NUMPY_SEED = 2**128 - 1  # PCG64's state is 128 bits; larger seeds only alias
MAX_TORCH_SEED = 2**64 - 1  # torch.Generator.manual_seed takes a uint64
MAX_TEXT_TOKENS = 4096  # UMT5 tokens per prompt (Wan is trained on 512)


def _integer(text: str, minimum: int, what: str, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"expected {what}, at most {maximum}; got {value}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, "an integer ≥ 1")


def non_negative_int(text: str) -> int:
    return _integer(text, 0, "an integer ≥ 0")


def frame_count(text: str) -> int:
    return _integer(text, 1, "an integer ≥ 1 (frames)", MAX_FRAMES)


def step_count(text: str) -> int:
    return _integer(text, 1, "an integer ≥ 1 (steps)", MAX_STEPS)


def video_count(text: str) -> int:
    return _integer(text, 1, "an integer ≥ 1 (videos)", MAX_VIDEOS)


def frame_rate(text: str) -> int:
    return _integer(text, 1, "an integer ≥ 1 (frames per second)", MAX_FPS)


def condition_int(text: str) -> int:
    return _integer(text, 0, "an integer ≥ 0", MAX_CONDITION)


def numpy_seed(text: str) -> int:
    """``--seed``: PCG64 seeds are non-negative (numpy refuses negative ones)."""
    return _integer(text, 0, "an integer ≥ 0 (a numpy PCG64 seed)", MAX_NUMPY_SEED)


def torch_seed(text: str) -> int:
    """``--torch-seed``: 0 … 2⁶⁴ − 1. torch also takes −2⁶³ … −1 as aliases of the top half; vidiff
    refuses them so that each seed has one name (the one the sidecar records)."""
    return _integer(text, 0, "an integer in [0, 2**64 - 1] (a torch.Generator seed)", MAX_TORCH_SEED)


def pixels(text: str) -> int:
    value = _integer(text, 8, "a positive multiple of 8 (pixels)", MAX_PIXELS)
    if value % 8:
        lower, upper = value - value % 8, value - value % 8 + 8
        raise argparse.ArgumentTypeError(f"expected a positive multiple of 8 (pixels), got {value}; try {lower} or {upper}")
    return value


def wan_pixels(text: str) -> int:
    """Wan's ``--height``/``--width``: multiples of 16 (the VAE's 8 × the patch's 2; Wan 2.2 TI2V needs
    32, which the pipeline checks once the model is known)."""
    value = _integer(text, 16, "a positive multiple of 16 (pixels)", MAX_PIXELS)
    if value % 16:
        lower, upper = value - value % 16, value - value % 16 + 16
        raise argparse.ArgumentTypeError(f"expected a positive multiple of 16 (pixels), got {value}; try {lower} or {upper}")
    return value


def text_tokens(text: str) -> int:
    """``--max-sequence-length``: UMT5 tokens per prompt (its relative positions have no hard limit;
    MAX_TEXT_TOKENS only catches typos)."""
    return _integer(text, 1, "an integer ≥ 1 (tokens)", MAX_TEXT_TOKENS)


def _number(text: str, low: float, high: float | None, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    # `inf >= low` holds and `nan` compares false both ways: finiteness is checked on its own.
    if not math.isfinite(value) or not (value >= low and (high is None or value <= high)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def non_negative_float(text: str) -> float:
    return _number(text, 0.0, None, "a finite number ≥ 0")


def unit_interval(text: str) -> float:
    return _number(text, 0.0, 1.0, "a number in [0, 1]")


def positive_float(text: str) -> float:
    value = _number(text, 0.0, None, "a finite positive number")
    if value == 0:
        raise argparse.ArgumentTypeError("expected a finite positive number, got 0")
    return value


def export_rate(text: str) -> float:
    """``--fps`` of AnimateDiff: the written video's frame rate (a positive number ≤ MAX_FPS)."""
    value = positive_float(text)
    if value > MAX_FPS:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, at most {MAX_FPS}; got {text}")
    return value


# ------------------------------------------------------------------------------ specs
@dataclasses.dataclass(frozen=True)
class Flag:
    """``--option`` → the pipeline argument ``param`` (parsed by ``parse``)."""

    option: str
    param: str
    parse: Callable[[str], Any]
    help: str


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    pipeline: type[Pipeline]
    default_model: str
    summary: str
    takes_image: bool
    takes_prompt: bool
    flags: tuple[Flag, ...]
    # The pipeline argument the video is exported at (frames per second), or None: the ``--fps``
    # flag of a pipeline without an fps conditioning only sets the export rate.
    fps_param: str | None
    default_motion_adapter: str | None = None
    # The written video's frame rate when ``fps_param`` is None and no ``--fps`` is given.
    export_fps: float | None = None

    def default(self, param: str) -> Any:
        """The pipeline's own default for ``param`` (``None`` = decided from the model)."""
        value = inspect.signature(self.pipeline.__call__).parameters[param].default
        return None if value is inspect.Parameter.empty else value

    @property
    def scheduler_classes(self) -> dict[str, type]:
        return self.pipeline.components["scheduler"]


def _flags(*specs: tuple[str, str, Callable[[str], Any], str]) -> tuple[Flag, ...]:
    return tuple(Flag(*spec) for spec in specs)


SIZE = (
    ("--height", "height", pixels, "video height in pixels (multiple of 8)"),
    ("--width", "width", pixels, "video width in pixels (multiple of 8)"),
)
COUNTS = (
    ("--num-frames", "num_frames", frame_count, "frames per video"),
    ("--steps", "num_inference_steps", step_count, "denoising steps"),
    ("--num-videos", "num_videos_per_prompt", video_count, "videos to make (numbered outputs when > 1)"),
    ("--decode-chunk-size", "decode_chunk_size", frame_count, "frames per VAE decoder call; lower saves memory"),
)
TEXT = (
    ("--negative-prompt", "negative_prompt", str, "what to steer away from"),
    ("--guidance-scale", "guidance_scale", non_negative_float, "classifier-free guidance weight; ≤ 1 turns it off"),
    ("--clip-skip", "clip_skip", non_negative_int, "use the text encoder's state this many layers before the last (0 = last)"),
)

# Every pipeline takes η; only the schedulers that draw DDIM-style noise honour it (else an error).
ETA = (("--eta", "eta", unit_interval, "DDIM's η: 0 deterministic, 1 fully stochastic (DDIM only)"),)

SVD = Command(
    name="svd",
    pipeline=StableVideoDiffusionPipeline,
    default_model="stabilityai/stable-video-diffusion-img2vid-xt",
    summary="image → video with Stable Video Diffusion (SVD / SVD-XT)",
    takes_image=True,
    takes_prompt=False,
    flags=_flags(
        *SIZE, *COUNTS, *ETA,
        ("--min-guidance-scale", "min_guidance_scale", non_negative_float, "guidance on the first frame"),
        ("--max-guidance-scale", "max_guidance_scale", non_negative_float, "guidance on the last frame (ramps linearly)"),
        ("--fps", "fps", frame_rate, "frame rate the model is conditioned on; also the export rate"),
        ("--motion-bucket-id", "motion_bucket_id", condition_int, "amount of motion"),
        ("--noise-aug-strength", "noise_aug_strength", non_negative_float, "noise added to the image: more motion, less likeness"),
    ),
    fps_param="fps",
)
I2VGEN_XL = Command(
    name="i2vgen-xl",
    pipeline=I2VGenXLPipeline,
    default_model="ali-vilab/i2vgen-xl",
    summary="image + prompt → video with I2VGen-XL",
    takes_image=True,
    takes_prompt=True,
    flags=_flags(
        *SIZE, *COUNTS, *TEXT, *ETA,
        ("--target-fps", "target_fps", frame_rate, "frame rate the model is conditioned on; also the export rate"),
    ),
    fps_param="target_fps",
)
ANIMATEDIFF = Command(
    name="animatediff",
    pipeline=AnimateDiffPipeline,
    default_model="emilianJR/epiCRealism",
    summary="prompt → video with AnimateDiff (a Stable Diffusion 1.5 checkpoint + a motion adapter)",
    takes_image=False,
    takes_prompt=True,
    flags=_flags(*SIZE, *COUNTS, *TEXT, *ETA),
    fps_param=None,
    default_motion_adapter="guoyww/animatediff-motion-adapter-v1-5-2",
)
WAN_EXPORT_FPS = 16  # Wan is trained on 16 fps video and has no fps conditioning; its guide exports at 16
# `vidiff wan`: text → video; with --image the run switches to WanImageToVideoPipeline (cli/wan.py).
# Both pipelines share these arguments and their defaults.
WAN = Command(
    name="wan",
    pipeline=WanPipeline,
    default_model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    summary="prompt (and optionally --image) → video with Wan 2.1 / 2.2",
    takes_image=False,
    takes_prompt=True,
    flags=_flags(
        ("--height", "height", wan_pixels, "video height in pixels (multiple of 16; 32 for Wan 2.2 TI2V)"),
        ("--width", "width", wan_pixels, "video width in pixels (multiple of 16; 32 for Wan 2.2 TI2V)"),
        ("--num-frames", "num_frames", frame_count, "frames per video (4k + 1; others are rounded down)"),
        *COUNTS[1:3],
        *TEXT[:2],
        ("--guidance-scale-2", "guidance_scale_2", non_negative_float,
         "the low-noise expert's guidance weight (two-expert Wan 2.2 A14B only)"),
        ("--max-sequence-length", "max_sequence_length", text_tokens,
         "UMT5 tokens per prompt; shorter prompts are zero-padded to it, so it changes the video"),
    ),
    fps_param=None,
    export_fps=WAN_EXPORT_FPS,
)
COMMANDS = {command.name: command for command in (SVD, I2VGEN_XL, ANIMATEDIFF, WAN)}
ANIMATEDIFF_EXPORT_FPS = 8  # AnimateDiff has no fps conditioning; its guide exports at 8

# Short scheduler names for --scheduler, besides the class names.
SCHEDULER_ALIASES = {
    "ddim": schedulers.DDIMScheduler,
    "euler": schedulers.EulerDiscreteScheduler,
    "euler-ancestral": schedulers.EulerAncestralDiscreteScheduler,
    "dpm++": schedulers.DPMSolverMultistepScheduler,
    "lcm": schedulers.LCMScheduler,
    "pndm": schedulers.PNDMScheduler,
    "unipc": schedulers.UniPCMultistepScheduler,
    "flow-euler": schedulers.FlowMatchEulerDiscreteScheduler,
}


def scheduler_choices(command: Command) -> dict[str, type]:
    """Every name ``--scheduler`` accepts for ``command``: class names and short aliases."""
    classes = command.scheduler_classes
    allowed = set(classes.values())
    return {**classes, **{alias: cls for alias, cls in SCHEDULER_ALIASES.items() if cls in allowed}}
