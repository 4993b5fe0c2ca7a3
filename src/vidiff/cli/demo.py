"""``vidiff demo``: every pipeline end to end on tiny random checkpoints, no GPU and no download.

The checkpoints are built once in the diffusers layout (see :mod:`vidiff.demo.checkpoints`) and go
through exactly the path real ones take: the same subcommand code, ``from_pretrained``, the media
writers. The weights are random, so the videos are noise; the point is that everything runs.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..demo.checkpoints import DEMO_CALLS, ensure_demo_checkpoints
from .commands import ANIMATEDIFF, I2VGEN_XL, SVD, WAN
from .errors import UsageError
from .run import run

logger = logging.getLogger("vidiff.cli")
PROMPT = "a rocket flying into space"
REAL_COMMANDS = (
    "vidiff svd rocket.png -o rocket.mp4",
    'vidiff i2vgen-xl rocket.png "a rocket flying into space" -o rocket.gif',
    'vidiff animatediff "a rocket flying into space" -o rocket.mp4',
    'vidiff wan "a rocket flying into space" -o rocket.mp4',
)


def _demo_svd_command(image: Path, checkpoint: Path) -> str:
    """The demo's SVD run as a shell command with the real paths (``$VIDIFF_HOME`` resolved): drop
    ``--model`` and the small sizes and it runs the released SVD-XT."""
    call = DEMO_CALLS[SVD.name]
    return (
        f"vidiff svd {shlex.quote(str(image))} --model {shlex.quote(str(checkpoint))} --height {call['height']} "
        f"--width {call['width']} --num-frames {call['num_frames']} --steps {call['num_inference_steps']} -o my.mp4"
    )


def _demo_image(path: Path, overwrite: bool) -> Path:
    """A 256 × 256 picture with some structure (rings over a colour ramp) for the image pipelines."""
    if path.exists() and not overwrite:
        raise UsageError(f"{str(path)!r} already exists; pass --overwrite to replace the demo's files")
    y, x = np.mgrid[0:256, 0:256] / 255.0
    rings = 0.5 + 0.5 * np.sin(18.0 * np.hypot(x - 0.5, y - 0.4))
    rgb = np.stack([x, rings, 1.0 - y], axis=-1)
    temporary = path.with_name(f".{path.name}.tmp.png")
    PIL.Image.fromarray((rgb * 255).round().astype(np.uint8)).save(temporary)
    temporary.replace(path)
    return path


def run_demo(explicit: dict[str, Any], show_progress: bool) -> list[Path]:
    """Build (once) and load the demo checkpoints, write ``<name>.mp4`` and ``<name>.gif`` per pipeline."""
    folder = Path(explicit.get("output_dir", "vidiff-demo"))
    overwrite = explicit.get("overwrite", False)
    if not folder.absolute().parent.is_dir():
        raise UsageError(f"--output-dir {str(folder)!r}: the folder {str(folder.absolute().parent)!r} does not exist")
    logger.warning("demo: the weights are RANDOM, so the videos are noise; they show the whole path runs")
    checkpoints = ensure_demo_checkpoints()
    folder.mkdir(exist_ok=True)
    image = _demo_image(folder / "input.png", overwrite)
    runs = (
        (SVD, {"model": str(checkpoints.svd), "image": str(image)}),
        (I2VGEN_XL, {"model": str(checkpoints.i2vgen_xl), "image": str(image), "prompt": PROMPT}),
        (ANIMATEDIFF, {"model": str(checkpoints.sd15), "motion_adapter": str(checkpoints.motion_adapter), "prompt": PROMPT}),
        (WAN, {"model": str(checkpoints.wan), "prompt": PROMPT}),
    )
    written = [image]
    for command, inputs in runs:
        outputs = [str(folder / f"{command.name}.mp4"), str(folder / f"{command.name}.gif")]
        settings = {**DEMO_CALLS[command.name], **inputs, "seed": 0, "output": outputs, "overwrite": overwrite, "offline": True}
        written += run(command, settings, show_progress)
    videos = len(written) - 1
    logger.warning(
        "demo: wrote %d files to %s: %d videos, their %d .json sidecars and input.png. The same SVD run as a "
        "command:\n  %s\nDrop --model and the sizes for the real checkpoints (downloaded from the Hugging Face "
        "Hub on first use; a GPU is advised):\n  %s",
        1 + 2 * videos, folder, videos, videos, _demo_svd_command(image, checkpoints.svd), "\n  ".join(REAL_COMMANDS),
    )
    return written
