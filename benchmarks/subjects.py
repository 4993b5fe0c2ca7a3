"""The benchmarked pipelines by CLI name, and the run sizes ``--sizes`` accepts.

The pipeline modules (``svd_pipeline`` …) import ``harness`` as a top-level module (they also run
as scripts), so this module puts ``benchmarks/`` on ``sys.path`` before importing them.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

MODULES = {"svd": "svd_pipeline", "animatediff": "animatediff_pipeline", "i2vgen-xl": "i2vgen_xl_pipeline",
           "wan": "wan_pipeline"}
# The CUDA dtype per pipeline where it is not fp16: Wan is released and run in bf16.
CUDA_DTYPES = {"wan": "bf16"}


def subject_module(pipeline: str):
    """The benchmark module of ``pipeline`` (one of MODULES), imported on first use."""
    if pipeline not in MODULES:
        raise ValueError(f"pipeline must be one of {sorted(MODULES)}, got {pipeline!r}")
    return importlib.import_module(MODULES[pipeline])


@dataclass(frozen=True)
class RunSize:
    """One call size: frames × height × width pixels, denoising steps."""

    frames: int
    height: int
    width: int
    steps: int

    def label(self) -> str:
        return f"{self.frames}×{self.height}×{self.width}, {self.steps} steps"


# CPU: the "m15" random checkpoints (≈15 M-parameter UNets, released 4-level topologies) at two sizes.
CPU_SIZES = {"s": RunSize(6, 64, 96, 3), "m": RunSize(8, 96, 128, 3)}
# CUDA: the released sizes (frames, height, width, steps).
RELEASED = {"svd": RunSize(25, 576, 1024, 25), "animatediff": RunSize(16, 512, 512, 25),
            "i2vgen-xl": RunSize(16, 704, 1280, 50), "wan": RunSize(81, 480, 832, 50)}  # Wan 2.1 T2V-1.3B
_CUSTOM = re.compile(r"^(\d+)x(\d+)x(\d+)(?:@(\d+))?$")


def parse_size(text: str, pipeline: str, device: str) -> tuple[str, RunSize]:
    """``text`` → (name, size). Names: ``s``/``m`` (CPU sizes), ``released`` (the pipeline's released
    size); or ``FRAMESxHEIGHTxWIDTH[@STEPS]`` (steps default: the released ones on CUDA, 5 on CPU)."""
    if text in CPU_SIZES:
        return text, CPU_SIZES[text]
    if text == "released":
        return text, RELEASED[pipeline]
    match = _CUSTOM.match(text)
    if match is None:
        raise ValueError(f"--sizes: each size must be one of {sorted(CPU_SIZES)}, 'released' or "
                         f"FRAMESxHEIGHTxWIDTH[@STEPS] (e.g. 8x128x128@5), got {text!r}")
    frames, height, width = (int(g) for g in match.groups()[:3])
    if height % 8 or width % 8 or min(frames, height, width) < 1:
        raise ValueError(f"--sizes: height and width must be positive multiples of 8, got {text!r}")
    default_steps = RELEASED[pipeline].steps if device.startswith("cuda") else 5
    steps = int(match.group(4)) if match.group(4) else default_steps
    if steps < 1:
        raise ValueError(f"--sizes: steps must be at least 1, got {text!r}")
    return text, RunSize(frames, height, width, steps)
