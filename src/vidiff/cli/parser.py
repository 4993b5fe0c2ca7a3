"""The argparse parser of ``vidiff``: one subcommand per pipeline, plus ``demo``.

Only flags the user typed end up in the parsed namespace (``argument_default=SUPPRESS``), so a
``--from-json`` sidecar can supply the rest; the defaults shown by ``--help`` are the pipelines'.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from .. import __version__
from .commands import (
    ANIMATEDIFF_EXPORT_FPS,
    COMMANDS,
    Command,
    export_rate,
    non_negative_float,
    non_negative_int,
    positive_int,
    numpy_seed,
    scheduler_choices,
    torch_seed,
    unit_interval,
)
from .errors import UsageError
from .adapters import add_adapter_flags
from .control_inputs import add_control_flags
from .long_video import add_long_video_flags
from .serve_flags import add_serve_parser
from .single_files import add_single_file_flags
from .wan import add_wan_flags

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
OFFLOADS = ("model", "sequential")
MEMORY_MODES = ("auto", "off")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises :class:`UsageError` (one line, exit 2) instead of printing
    the usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# What a pipeline's ``None`` default means, per argument.
NONE_MEANS = {
    "decode_chunk_size": "all frames at once", "clip_skip": "the last layer", "negative_prompt": "none",
    "guidance_scale_2": "--guidance-scale",
}


def _describe_default(command: Command, param: str) -> str:
    value = command.default(param)
    if value is None:
        return NONE_MEANS.get(param, "from the model")
    return repr(value) if isinstance(value, str) else str(value)


def _add_pipeline_flags(sub: argparse.ArgumentParser, command: Command) -> None:
    if command.takes_image:
        sub.add_argument("image", nargs="?", metavar="IMAGE", help="the picture the video starts from (file path or URL)")
    if command.takes_prompt:
        sub.add_argument("prompt", nargs="?", metavar="PROMPT", help="what the video shows (quote it)")
    group = sub.add_argument_group("generation (defaults are the pipeline's)")
    for flag in command.flags:
        metavar = "TEXT" if flag.parse is str else "X" if flag.parse in (non_negative_float, unit_interval) else "N"
        group.add_argument(
            flag.option, dest=flag.param, type=flag.parse, metavar=metavar,
            help=f"{flag.help} (default: {_describe_default(command, flag.param)})",
        )
    if command.fps_param is None:
        group.add_argument(
            "--fps", dest="export_fps", type=export_rate, metavar="X",
            help=f"frame rate of the written video (default: {command.export_fps or ANIMATEDIFF_EXPORT_FPS})",
        )


def _add_model_flags(sub: argparse.ArgumentParser, command: Command) -> None:
    group = sub.add_argument_group("model and hardware")
    single = " or single checkpoint file (.safetensors, .ckpt…)" if command.name in ("animatediff", "svd") else ""
    group.add_argument("--model", metavar="ID_OR_PATH", help=f"Hub id, local folder{single} (default: {command.default_model})")
    add_single_file_flags(group, command)  # --model-config
    if command.default_motion_adapter:
        group.add_argument(
            "--motion-adapter", metavar="ID_OR_PATH",
            help=f"MotionAdapter Hub id, folder or original motion-module file (mm_sd_v15_v2.ckpt…) (default: "
            f"{command.default_motion_adapter}; not needed when --model is a saved AnimateDiff pipeline)",
        )
    group.add_argument("--revision", metavar="REV", help="Hub branch, tag or commit (default: main)")
    group.add_argument("--variant", metavar="NAME", help="weight variant: auto (fp16 files with --dtype fp16/bf16), none, or a name like fp16 (default: auto)")
    group.add_argument("--offline", action="store_true", help="never download; use local folders and the Hugging Face cache only")
    names = sorted(scheduler_choices(command))
    group.add_argument("--scheduler", metavar="NAME", choices=names, help=f"sampler: {', '.join(names)} (default: the checkpoint's)")
    group.add_argument(
        "--scheduler-config", metavar="KEY=VALUE", action="append", dest="scheduler_config",
        help="scheduler option override, repeatable (e.g. timestep_spacing=trailing); VALUE is read as JSON when it parses",
    )
    group.add_argument("--device", choices=DEVICES, help="auto picks cuda, then mps, then cpu (default: auto)")
    group.add_argument("--dtype", choices=DTYPES, help="auto: fp16 on CUDA (bf16 for wan), fp32 elsewhere (default: auto)")


def _add_memory_flags(sub: argparse.ArgumentParser) -> None:
    """Memory and speed levers: they change how a run computes, not what (VAE tiling: within a tolerance)."""
    group = sub.add_argument_group("memory and speed")
    group.add_argument("--vae-tiling", action="store_true", help="decode the video in overlapping tiles (less memory; seams blended)")
    group.add_argument("--forward-chunking", action="store_true", help="run feed-forward and attention layers on slices of their tokens (less memory, same result)")
    group.add_argument("--offload", choices=OFFLOADS, help="model: only the network in use sits on the GPU; sequential: only the layer in use (least memory, slowest)")
    group.add_argument("--compile", action="store_true", help="torch.compile the repeated blocks (faster after a warm-up)")
    group.add_argument(
        "--memory", choices=MEMORY_MODES,
        help="auto: estimate the run's peak memory, and if it exceeds the device's free memory turn on the fewest levers "
        "that fit (vae tiling, forward chunking, model offload, sequential offload); off: only the levers given (default: off)",
    )


def _add_run_flags(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("seed and output")
    seeds = group.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=numpy_seed, metavar="N", help="numpy PCG64 seed ≥ 0: the same video on any device (default: random, recorded)")
    seeds.add_argument("--torch-seed", type=torch_seed, metavar="N", help="CPU torch.Generator seed in [0, 2**64 - 1]: diffusers-compatible draws")
    group.add_argument(
        "-o", "--output", action="append", metavar="PATH",
        help="a .mp4, a .gif, or a folder (no extension) for numbered PNG frames; repeat for several "
        "formats; several videos get numbered names (default: <command>-<seed>.mp4)",
    )
    group.add_argument("--overwrite", action="store_true", help="replace existing outputs (otherwise an existing output is an error)")
    group.add_argument("--from-json", metavar="FILE", help="repeat the run a sidecar .json describes; flags given here override it")


def add_common_flags(sub: argparse.ArgumentParser) -> None:
    """Flags of every subcommand: verbosity and error detail."""
    group = sub.add_argument_group("messages")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars, only warnings and errors")
    group.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    group.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vidiff",
        description="Text- and image-to-video diffusion: Stable Video Diffusion, I2VGen-XL, AnimateDiff, Wan.",
        epilog="Try `vidiff demo` (tiny random weights, no download), then e.g. `vidiff svd rocket.png -o rocket.mp4`.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"vidiff {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS.values():
        sub = subcommands.add_parser(
            command.name, help=command.summary, description=command.summary, argument_default=argparse.SUPPRESS,
        )
        _add_pipeline_flags(sub, command)
        add_wan_flags(sub, command)  # --image, --last-image (`vidiff wan` only)
        _add_model_flags(sub, command)
        _add_memory_flags(sub)
        add_long_video_flags(sub, command)
        add_control_flags(sub, command)
        add_adapter_flags(sub, command)
        _add_run_flags(sub)
        add_common_flags(sub)
    demo = subcommands.add_parser(
        "demo", help="make one video per pipeline with tiny random weights (no GPU, no download)",
        description="Build tiny random checkpoints (once, under $VIDIFF_HOME or ~/.cache/vidiff), load them "
        "like real ones and write an mp4 and a gif per pipeline. The weights are random: the videos are noise.",
        argument_default=argparse.SUPPRESS,
    )
    demo.add_argument("--output-dir", metavar="FOLDER", help="where the videos go (default: ./vidiff-demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace videos left by an earlier demo")
    add_common_flags(demo)
    add_serve_parser(subcommands, add_common_flags)  # `vidiff serve`
    _add_batch_parser(subcommands)
    return parser


def _add_batch_parser(subcommands) -> None:
    """``vidiff batch JOBS --out FOLDER``: a JSON Lines file of jobs (see :mod:`vidiff.batch`)."""
    batch = subcommands.add_parser(
        "batch", help="run a file of jobs (one JSON object per line) on the local GPUs, the CPU or a Ray cluster",
        description="Run every job of JOBS (JSON Lines: one job per line, in the schema of a vidiff sidecar: "
        '{"pipeline": "wan", "prompt": "a cat", "outputs": ["mp4"]}). Every line is checked first; jobs whose '
        "outputs are all in --out already are skipped, so a rerun resumes. Exit status: 0 all done, 1 some failed, "
        "2 a bad jobs file (nothing ran).",
        argument_default=argparse.SUPPRESS,
    )
    batch.add_argument("jobs", metavar="JOBS", help="the jobs file (.jsonl)")
    batch.add_argument("--out", required=True, metavar="FOLDER", help="where the videos go: <FOLDER>/<name>.<format> (created if missing)")
    batch.add_argument("--ray", metavar="ADDRESS", help="run on Ray actors, one per GPU: auto (a local or RAY_ADDRESS cluster) or a cluster address (needs pip install 'vidiff[ray]')")
    batch.add_argument("--retries", type=non_negative_int, metavar="N", help="with --ray: run a job again up to N times when its worker dies (default: 2)")
    batch.add_argument("--device", choices=DEVICES[:3], help="auto: one worker per CUDA GPU, else one on the CPU (default: auto)")
    batch.add_argument("--pipelines-kept", type=positive_int, metavar="N", help="loaded pipelines each worker keeps between jobs (default: 2)")
    add_common_flags(batch)


def subcommand_actions(name: str) -> dict[str, argparse.Action]:
    """The argparse actions of subcommand ``name`` by destination (to check ``--from-json`` values
    with the same value parsers and choices as the flags)."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action for action in subparsers.choices[name]._actions}
