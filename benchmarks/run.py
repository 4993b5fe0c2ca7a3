"""One benchmark command: vidiff next to diffusers, each library in its own fresh process per round.

    python -m benchmarks.run --device cpu                       # m15 checkpoints at sizes s and m
    python -m benchmarks.run --device cuda                      # released configs, fp16, released sizes
    python -m benchmarks.run --device cpu --pipelines svd --sizes 8x128x128@5 --repeats 5 --profile

Per pipeline, one random checkpoint is built with diffusers (perturbed weights) and saved once; per
size and round, a fresh worker process per library (``benchmarks.worker``) loads it, warms up and
times one call on the same inputs and seed; the order of the libraries flips every round. Medians
and ratios vidiff/diffusers go to ``benchmarks/RESULTS.md`` (see ``benchmarks.results_md``).
Nothing is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import results_md
from benchmarks.subjects import CPU_SIZES, CUDA_DTYPES, MODULES, parse_size

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("diffusers", "vidiff")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--pipelines", default=",".join(MODULES), help=f"comma-separated, of {', '.join(MODULES)}")
    parser.add_argument("--sizes", help="comma-separated: s, m, released, or FRAMESxHEIGHTxWIDTH[@STEPS] "
                                        "(default: s,m on CPU; released on CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per size and library (default 3)")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="also profile one vidiff call per pipeline")
    parser.add_argument("--levers", action="store_true",
                        help="also measure vidiff's memory levers (CPU) and SVD's tiled decode")
    parser.add_argument("--levers-only", action="store_true",
                        help="only the lever sections, appended to --output (after a run without --levers)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args(argv)
    args.command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    args.cuda = args.device.startswith("cuda")
    args.levers = args.levers or args.levers_only
    args.dtype = "fp16" if args.cuda else "fp32"
    args.pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    unknown = [p for p in args.pipelines if p not in MODULES]
    if unknown or not args.pipelines:
        parser.error(f"--pipelines: each must be one of {', '.join(MODULES)}, got {unknown or 'none'}")
    texts = (args.sizes or ("released" if args.cuda else ",".join(CPU_SIZES))).split(",")
    try:
        args.sizes = {p: [parse_size(t.strip(), p, args.device) for t in texts] for p in args.pipelines}
    except ValueError as error:
        parser.error(str(error))
    if args.levers and args.cuda:
        parser.error("--levers measures on the CPU (its offload rows need a host/device split the CUDA workers lack)")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def dtype(args, pipeline: str) -> str:
    """The run's dtype for ``pipeline``: fp32 on CPU; on CUDA fp16, or the pipeline's own (Wan: bf16)."""
    return CUDA_DTYPES.get(pipeline, args.dtype) if args.cuda else args.dtype


def worker(args, pipeline: str, library: str, folder: Path, size, extra=()) -> dict:
    """Run one fresh worker process; its last stdout line is the JSON result."""
    spec = f"{size.frames}x{size.height}x{size.width}@{size.steps}"
    command = [sys.executable, "-m", "benchmarks.worker", "--pipeline", pipeline, "--library", library,
               "--checkpoint", str(folder), "--size", spec, "--device", args.device, "--dtype", dtype(args, pipeline), *extra]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # once more after a pause: a shared checkout may be mid-edit
        print(f"  worker {pipeline}/{library}/{spec} failed; retrying in 60 s:\n{done.stderr[-1500:]}", flush=True)
        time.sleep(60)
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {pipeline}/{library}/{spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build(args, pipeline: str, folder: Path) -> None:
    """The random diffusers checkpoint: m15 on CPU; the released configs (fp16, on the GPU) on CUDA."""
    if args.cuda:
        from benchmarks import released
        released.build_checkpoint(pipeline, folder, args.device)
    else:
        from benchmarks.subjects import subject_module
        subject_module(pipeline).SUBJECT.build("m15", folder, 0)


def rounds(args, pipeline: str, folder: Path, size, tmp: Path) -> dict:
    """``--repeats`` alternating rounds; per library the per-round results and the frames' max diff."""
    runs = {lib: [] for lib in LIBRARIES}
    for index in range(args.repeats):
        for lib in LIBRARIES if index % 2 == 0 else LIBRARIES[::-1]:
            frames = tmp / f"{lib}.npy"
            runs[lib].append(worker(args, pipeline, lib, folder, size, ["--frames-out", str(frames)]))
            print(f"  {pipeline} {size.label()} round {index + 1} {lib}: {runs[lib][-1]['call_s']:.2f} s", flush=True)
    diff = float(np.abs(np.load(tmp / "vidiff.npy").astype(np.float64) - np.load(tmp / "diffusers.npy")).max())
    return dict(runs=runs, max_abs_diff=diff)


def summarize(runs: list[dict], steps: int) -> dict:
    """Medians over the rounds of one library."""
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    return dict(call_s=med("call_s"), step_s=med("unet_s") / steps, decode_s=med("decode_s"),
                call_peak_mib=med("call_peak_mib"), load_peak_mib=med("load_peak_mib"),
                decode_peak_mib=med("decode_peak_mib"), load_s=med("load_s"),
                call_runs_s=[r["call_s"] for r in runs], unet_calls=runs[0]["unet_calls"])


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report = results_md.Report(args)
    with tempfile.TemporaryDirectory(prefix="vidiff-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for pipeline in args.pipelines:
            folder = tmp / pipeline
            build(args, pipeline, folder)
            for name, size in [] if args.levers_only else args.sizes[pipeline]:
                done = rounds(args, pipeline, folder, size, tmp)
                summary = {lib: summarize(done["runs"][lib], size.steps) for lib in LIBRARIES}
                report.add_size(pipeline, name, size, summary, done["max_abs_diff"])
            if args.profile and not args.levers_only:
                table = tmp / "profile.txt"
                worker(args, pipeline, "vidiff", folder, args.sizes[pipeline][0][1], ["--profile", str(table)])
                report.add_profile(pipeline, table.read_text())
            if args.levers:
                from benchmarks import levers
                levers.measure(args, pipeline, folder, report, worker)
            if not args.levers_only:
                report.write(args.output)  # after each pipeline, so a long run leaves partial results
    if args.levers_only:
        report.append_sections(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
