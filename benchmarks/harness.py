"""The machinery shared by the pipeline benchmarks: timing loop, RSS and CUDA memory, report, CLI.

A pipeline module describes its pipeline as a ``Subject`` (how to build a random diffusers
checkpoint at a size, how each library loads it, what one call passes) and hands it to ``main``.
Both libraries load the same folder and run on the same inputs and seed; timed runs alternate
between them so machine noise spreads over both. Nothing is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # Run as `python benchmarks/x.py`, only benchmarks/ is importable; the checkpoint builders reuse
    # the test fixtures (tests.helpers, tests.animatediff_checkpoint), which live at the root.
    sys.path.insert(0, str(REPO_ROOT))

LIBRARIES = ("diffusers", "vidiff")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Subject:
    """One pipeline to benchmark.

    runs: size name → default (frames, height, width, steps) of a call at that size.
    build: (size, folder, seed) → None; saves a random diffusers checkpoint of that size (float32).
    load: (library, folder, dtype) → that library's pipeline, on the CPU.
    inputs: (args) → (positional, keyword) arguments of one call, without output_type and generator.
    script: the module's file; the RSS probe re-runs it in a fresh process.
    """

    runs: Mapping[str, tuple[int, int, int, int]]
    build: Callable[[str, Path, int], None]
    load: Callable[[str, Path, torch.dtype], Any]
    inputs: Callable[[argparse.Namespace], tuple[tuple, dict]]
    script: str


def load(subject: Subject, library: str, folder: Path, device: str, dtype: torch.dtype):
    """Load the pipeline of ``library`` from ``folder``, on ``device`` in ``dtype``, progress bars off."""
    pipe = subject.load(library, folder, dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(subject: Subject, pipe, args, output_type: str):
    """One pipeline call on the benchmark's inputs; returns (seconds, output, CUDA (peak, before) bytes or None)."""
    positional, kwargs = subject.inputs(args)
    kwargs = dict(kwargs, output_type=output_type, generator=torch.Generator("cpu").manual_seed(args.seed))
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    frames = pipe(*positional, **kwargs).frames
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(), before) if cuda else None
    return seconds, frames, peak


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_probe(subject: Subject, args) -> dict:
    """Run in a fresh subprocess: load one library, warm up, then measure one full call's RSS peak.

    Peaks come from /proc/self/status (VmHWM), not getrusage: ru_maxrss survives fork+exec, so a
    child spawned by this (large) parent would report the parent's RSS. Writing 5 to
    /proc/self/clear_refs resets VmHWM to the current RSS, so the peak after the call is the call's.
    """
    pipe = load(subject, args.probe, Path(args.checkpoint), args.device, DTYPES[args.dtype])
    call(subject, pipe, args, "np")  # warm-up: lazy allocations, kernel selection
    setup_peak = _status_kib("VmHWM")  # imports + load + warm-up call
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    call(subject, pipe, args, "np")
    return dict(setup_peak_rss_mib=setup_peak / 1024, rss_before_call_mib=before / 1024,
                call_peak_rss_mib=_status_kib("VmHWM") / 1024)


def cpu_memory(subject: Subject, args, folder: Path) -> dict[str, dict]:
    """RSS peaks of each library, each measured in its own fresh Python process."""
    results = {}
    for library in LIBRARIES:
        command = [sys.executable, subject.script, "--probe", library, "--checkpoint", str(folder), *args.forwarded]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory probe for {library} failed:\n{done.stderr[-3000:]}")
        results[library] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def benchmark(subject: Subject, args, folder: Path) -> dict:
    """Load times, warm-up, then alternating timed runs (full call and latent-only) for both libraries."""
    dtype = DTYPES[args.dtype]
    cuda = args.device.startswith("cuda")
    loads, weights, pipes = {lib: [] for lib in LIBRARIES}, {}, {}
    for _ in range(2):  # the first load of each warms the file cache and imports; keep the second
        for lib in LIBRARIES:
            allocated = torch.cuda.memory_allocated() if cuda else 0
            start = time.perf_counter()
            pipe = load(subject, lib, folder, args.device, dtype)
            loads[lib].append(time.perf_counter() - start)
            weights[lib] = torch.cuda.memory_allocated() - allocated if cuda else 0  # this copy's weights
            pipes[lib] = pipe
    for lib in LIBRARIES:
        call(subject, pipes[lib], args, "np")
        call(subject, pipes[lib], args, "latent")
    full, latent, peaks, outputs = ({lib: [] for lib in LIBRARIES} for _ in range(4))
    for index in range(args.repeats):
        order = LIBRARIES if index % 2 == 0 else LIBRARIES[::-1]
        for lib in order:
            seconds, frames, peak = call(subject, pipes[lib], args, "np")
            full[lib].append(seconds)
            peaks[lib].append(peak)
            outputs[lib] = np.asarray(frames, dtype=np.float64)
        for lib in order:
            latent[lib].append(call(subject, pipes[lib], args, "latent")[0])
    results = {}
    for lib in LIBRARIES:
        results[lib] = dict(load_s=loads[lib][-1], call_s=statistics.median(full[lib]), call_runs_s=full[lib],
                            latent_s=statistics.median(latent[lib]), latent_runs_s=latent[lib])
        results[lib]["decode_s"] = results[lib]["call_s"] - results[lib]["latent_s"]
        if cuda:  # both pipelines sit on the GPU: count this library's weights plus its call's peak
            results[lib]["cuda_weights_mib"] = weights[lib] / 2**20
            results[lib]["cuda_call_peak_mib"] = max(p - b for p, b in peaks[lib]) / 2**20
            results[lib]["cuda_total_mib"] = results[lib]["cuda_weights_mib"] + results[lib]["cuda_call_peak_mib"]
    diff = float(np.abs(outputs["diffusers"] - outputs["vidiff"]).max())
    return dict(results=results, max_abs_diff=diff, output_shape=list(outputs["vidiff"].shape))


def report(env: dict, bench: dict, memory: dict | None) -> dict:
    """Print the side-by-side table and return the ratios vidiff/diffusers."""
    res = bench["results"]
    rows = [("from_pretrained (s)", "load_s"), ("full call, median (s)", "call_s"),
            ("  encode+denoise: output_type='latent' (s)", "latent_s"), ("  decode+postprocess: difference (s)", "decode_s")]
    if "cuda_total_mib" in res["vidiff"]:
        rows += [("CUDA weights: allocated by from_pretrained (MiB)", "cuda_weights_mib"),
                 ("CUDA call: max_memory_allocated - allocated before (MiB)", "cuda_call_peak_mib"),
                 ("CUDA weights + call peak (MiB)", "cuda_total_mib")]
    table = [(label, res["diffusers"][key], res["vidiff"][key]) for label, key in rows]
    if memory is not None:
        for label, key in (("RSS before call (MiB)", "rss_before_call_mib"), ("peak RSS during call (MiB)", "call_peak_rss_mib"),
                           ("peak RSS of import+load+warm-up (MiB)", "setup_peak_rss_mib")):
            table.append((label, memory["diffusers"][key], memory["vidiff"][key]))
        table.append(("peak RSS during call - RSS before (MiB)",
                      *(memory[lib]["call_peak_rss_mib"] - memory[lib]["rss_before_call_mib"] for lib in LIBRARIES)))
    print("  ".join(f"{k}={v}" for k, v in env.items()))
    width = max(len(row[0]) for row in table)
    print(f"\n{'':<{width}}  {'diffusers':>10}  {'vidiff':>10}  {'vidiff/diffusers':>16}")
    ratios = {}
    for label, ref, ours in table:
        ratio = ours / ref if ref > 0 else float("nan")
        ratios[label.strip()] = ratio
        print(f"{label:<{width}}  {ref:>10.3f}  {ours:>10.3f}  {ratio:>16.3f}")
    for lib in LIBRARIES:
        spread = lambda runs: f"{min(runs):.3f}-{max(runs):.3f}"  # noqa: E731
        print(f"{lib} timed runs, min-max (s): full call {spread(res[lib]['call_runs_s'])}, "
              f"latent {spread(res[lib]['latent_runs_s'])}")
    print(f"\nmax |diffusers - vidiff| over the frames {bench['output_shape']} (values in [0, 1]): {bench['max_abs_diff']:.2e}")
    return ratios


def parse_args(subject: Subject, description: str, argv=None) -> argparse.Namespace:
    """The shared options; size defaults (frames, height, width, steps) come from ``subject.runs``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", choices=sorted(subject.runs), default="small")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--steps", type=int, help="denoising steps (default: per size)")
    parser.add_argument("--frames", type=int, help="frames per video (default: per size)")
    parser.add_argument("--height", type=int, help="pixels, multiple of 8 (default: per size)")
    parser.add_argument("--width", type=int, help="pixels, multiple of 8 (default: per size)")
    parser.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per library (default 3)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--probe", choices=LIBRARIES, help=argparse.SUPPRESS)  # internal: RSS subprocess
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.forwarded = list(sys.argv[1:] if argv is None else argv)
    frames, height, width, steps = subject.runs[args.size]
    args.frames, args.height, args.width = args.frames or frames, args.height or height, args.width or width
    args.steps = args.steps or steps
    args.decode_chunk_size = args.decode_chunk_size or args.frames  # "all" spelled out: diffusers' AnimateDiff wants an int
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.height % 8 or args.width % 8:
        parser.error(f"--height and --width must be multiples of 8, got {args.height} x {args.width}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    return args


def _quiet_diffusers() -> None:
    # Loading progress bars and info logs would be timed as part of from_pretrained and clutter the table.
    import diffusers.utils.logging
    import transformers.utils.logging
    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def main(subject: Subject, description: str, argv=None) -> None:
    """Parse the options, then either run one RSS probe (internal) or the whole benchmark and report."""
    args = parse_args(subject, description, argv)
    if args.probe != "vidiff":  # the vidiff probe imports neither diffusers nor transformers' models
        _quiet_diffusers()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(rss_probe(subject, args)))
        return
    env = dict(torch=torch.__version__, device=args.device, dtype=args.dtype, threads=torch.get_num_threads(),
               size=args.size, frames=args.frames, height=args.height, width=args.width, steps=args.steps,
               repeats=args.repeats, python=platform.python_version())
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(args.device)
    with tempfile.TemporaryDirectory(prefix="vidiff-bench-") as tmp:
        folder = Path(tmp)
        subject.build(args.size, folder, args.seed)
        bench = benchmark(subject, args, folder)
        memory = cpu_memory(subject, args, folder) if args.device == "cpu" else None
    ratios = report(env, bench, memory)
    if args.json:
        args.json.write_text(json.dumps(dict(env=env, **bench, cpu_memory=memory, ratios=ratios), indent=2))
        print(f"wrote {args.json}")
