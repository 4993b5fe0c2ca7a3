"""Long videos' memory: peak CPU RSS of a call at the trained length vs 4× longer with context windows.

    python -m benchmarks.long_video_memory --threads 1 --plain-long   # all three, m15, T = 8 at 192×256, 1 step
    python -m benchmarks.long_video_memory --pipelines svd --frames 8 --size 96x128 --steps 2

Per pipeline one random m15 checkpoint (``benchmarks/subjects.py``, the CPU benchmark's medium
networks) is built with diffusers and saved; then each run is its own fresh Python process that
loads vidiff's pipeline, warms up with one step at the run's size, resets the RSS high-water mark
(VmHWM) and measures one call (with a fixed glibc mmap threshold, so freed tensors leave the RSS).
*Activation memory* = the call's peak RSS − the RSS just before it (the weights are already
resident in both), for the whole call and for the same call with
``output_type="latent"`` (*denoise*: encoders and denoising, no decode). Runs:

- ``trained``: ``T`` frames (``--frames``), no windows;
- ``4x windows``: ``4T`` frames, ``enable_context_windows(context_length=T, context_overlap=T // 4)``;
- ``4x plain`` (``--plain-long``): ``4T`` frames without windows, for comparison.

Both decode in chunks of ``--decode-chunk-size`` frames (default ``T // 2``). The bound the issue
sets: 4x windows ≤ 1.5 × trained. Nothing is asserted; the table and ``--json`` hold the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import probes
from benchmarks.subjects import MODULES, subject_module

import harness  # noqa: E402  (on sys.path once benchmarks.subjects is imported)

REPO_ROOT = Path(__file__).resolve().parent.parent
BOUND = 1.5


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", default="svd,animatediff,i2vgen-xl", help="comma-separated, of " + ", ".join(MODULES))
    parser.add_argument("--frames", type=int, default=8, help="the trained length T (the long run has 4T)")
    parser.add_argument("--size", default="192x256", help="HEIGHTxWIDTH pixels (multiples of 8)")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps (memory does not depend on them)")
    parser.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode (default T // 2)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in each run")
    parser.add_argument("--plain-long", action="store_true", help="also run 4T frames without windows")
    parser.add_argument("--json", type=Path, help="write the results here")
    # internal: one measured run in this process
    parser.add_argument("--child", choices=sorted(MODULES), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--context-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.height, args.width = (int(v) for v in args.size.lower().split("x"))
    args.decode_chunk_size = args.decode_chunk_size or max(1, args.frames // 2)
    return args


def child(args) -> dict:
    """One run in this fresh process: load, warm up (1 step), then the measured call's RSS window."""
    subject = subject_module(args.child).SUBJECT
    pipe = harness.load(subject, "vidiff", args.checkpoint, "cpu", torch.float32)
    if args.context_length:
        pipe.enable_context_windows(context_length=args.context_length, context_overlap=args.context_length // 4)
    frames_seen: list[int] = []
    network = pipe._network  # record the frames of every denoiser call (the windows' own, with them on)

    def recorded(x, timestep, inputs):
        frames_seen.append(int(x.shape[2]))
        return network(x, timestep, inputs)

    pipe._network = recorded
    ns = argparse.Namespace(frames=args.run_frames, height=args.height, width=args.width, steps=1,
                            decode_chunk_size=args.decode_chunk_size, seed=0, device="cpu")
    harness.call(subject, pipe, ns, "np")  # warm-up: lazy allocations at this size
    ns.steps = args.steps
    denoise = _measured_call(subject, pipe, ns, "latent")  # encode + denoise only
    full = _measured_call(subject, pipe, ns, "np")  # … + decode in chunks
    return dict(frames_out=int(full.pop("frames").shape[1]), before_mib=full["before_mib"], peak_mib=full["peak_mib"],
                activation_mib=full["activation_mib"], call_s=full["call_s"],
                denoise_activation_mib=denoise["activation_mib"], max_frames_per_unet_call=max(frames_seen),
                threads=torch.get_num_threads())


def _measured_call(subject, pipe, ns, output_type: str) -> dict:
    """One call's RSS window: RSS before, its peak (VmHWM reset at the start), and the difference."""
    peaks = probes.Peaks(cuda=False)
    before = peaks.start()
    peaks.best = 0.0
    start = time.perf_counter()
    _, frames, _ = harness.call(subject, pipe, ns, output_type)
    seconds = time.perf_counter() - start
    peak = peaks.stop()
    return dict(frames=frames, before_mib=before, peak_mib=peak, activation_mib=peak - before, call_s=seconds)


def run_child(args, pipeline: str, folder: Path, frames: int, context_length: int | None) -> dict:
    command = [sys.executable, "-m", "benchmarks.long_video_memory", "--child", pipeline, "--checkpoint", str(folder),
               "--run-frames", str(frames), "--frames", str(args.frames), "--size", f"{args.height}x{args.width}",
               "--steps", str(args.steps), "--decode-chunk-size", str(args.decode_chunk_size)]
    if context_length:
        command += ["--context-length", str(context_length)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False, env=_child_env())
    if done.returncode != 0:
        raise RuntimeError(f"{pipeline} run of {frames} frames failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_env() -> dict[str, str]:
    """A fixed glibc mmap threshold: blocks ≥ 128 KiB (every sizeable tensor) are mmapped and given
    back to the OS when freed. glibc's default raises the threshold after frees, so the warm-up's
    freed activations would stay resident and hide the measured call's own peak from VmHWM."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def measure(args, pipeline: str, tmp: Path) -> dict:
    folder = tmp / pipeline
    subject_module(pipeline).SUBJECT.build("m15", folder, 0)
    runs = {"trained": run_child(args, pipeline, folder, args.frames, None),
            "4x windows": run_child(args, pipeline, folder, 4 * args.frames, args.frames)}
    if args.plain_long:
        runs["4x plain"] = run_child(args, pipeline, folder, 4 * args.frames, None)
    ratios = {}
    for key in ("activation_mib", "denoise_activation_mib"):
        trained = runs["trained"][key]
        ratios[key] = runs["4x windows"][key] / trained if trained > 0 else None  # None: below RSS resolution
    ratio = ratios["activation_mib"]
    return dict(runs=runs, ratio=ratio, denoise_ratio=ratios["denoise_activation_mib"],
                within_bound=ratio is not None and ratio <= BOUND)


def report(results: dict, args) -> None:
    print(f"\nT = {args.frames} frames at {args.height}×{args.width}, {args.steps} step(s), decode chunks of "
          f"{args.decode_chunk_size}; activation = peak RSS − RSS before the call (MiB); "
          "denoise = the same for output_type='latent' (no decode)")
    print(f"{'pipeline':<12} {'run':<11} {'frames':>6} {'max F/call':>10} {'activation':>10} {'denoise':>8} {'peak':>7} {'call s':>7}")
    for pipeline, result in results.items():
        for name, run in result["runs"].items():
            print(f"{pipeline:<12} {name:<11} {run['frames_out']:>6} {run['max_frames_per_unet_call']:>10} "
                  f"{run['activation_mib']:>10.0f} {run['denoise_activation_mib']:>8.0f} {run['peak_mib']:>7.0f} {run['call_s']:>7.1f}")
        ratios = [("n/a" if r is None else f"{r:.2f}") for r in (result["ratio"], result["denoise_ratio"])]
        print(f"{pipeline:<12} 4x windows / trained: activation {ratios[0]}, denoise {ratios[1]} "
              f"(bound {BOUND}: {'met' if result['within_bound'] else 'NOT met'})")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args)))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="vidiff-long-video-") as tmp:
        for pipeline in [p.strip() for p in args.pipelines.split(",") if p.strip()]:
            results[pipeline] = measure(args, pipeline, Path(tmp))
            print(f"{pipeline}: {json.dumps(results[pipeline])}", flush=True)
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(dict(settings=vars(args) | {"json": str(args.json)}, results=results), indent=2, default=str))


if __name__ == "__main__":
    main()
