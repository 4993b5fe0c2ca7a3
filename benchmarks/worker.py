"""One library, one fresh process: load a saved checkpoint, warm up, measure one call; print JSON.

    python -m benchmarks.worker --pipeline svd --library vidiff --checkpoint DIR --size 8x128x128@5

``benchmarks.run`` starts one of these per library and round, so neither library's allocations,
caches or imports colour the other's numbers. The vidiff worker imports neither diffusers nor
transformers. The last stdout line is the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import probes
from benchmarks.subjects import parse_size, subject_module

import harness  # noqa: E402  (importable once benchmarks.subjects has put benchmarks/ on sys.path)

# Lever name → (vidiff pipeline method, args → its keyword arguments). Called after loading, if it
# exists. Offload runs on --device (on the CPU: the hooks' cost only, nothing moves).
LEVERS = {
    "vae_tiling": ("enable_vae_tiling", lambda a: {"tile_sample_min_size": a.tile}),
    "model_offload": ("enable_model_cpu_offload", lambda a: {"device": a.device}),
    "sequential_offload": ("enable_sequential_cpu_offload", lambda a: {"device": a.device}),
    "forward_chunking": ("enable_forward_chunking", lambda a: {"chunk_size": 1}),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--library", choices=harness.LIBRARIES, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--size", required=True, help="FRAMESxHEIGHTxWIDTH@STEPS")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(harness.DTYPES), default="fp32")
    parser.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--lever", choices=sorted(LEVERS), help="a vidiff memory/speed lever to switch on")
    parser.add_argument("--tile", type=int, help="with --lever vae_tiling: tile side in pixels (default: the VAE's)")
    parser.add_argument("--profile", type=Path, help="write a torch.profiler table of one call here")
    parser.add_argument("--frames-out", type=Path, help="save the timed call's frames (.npy) here")
    return parser.parse_args(argv)


def call_namespace(args, size) -> argparse.Namespace:
    """What the pipeline modules' ``inputs`` and ``harness.call`` read."""
    return argparse.Namespace(frames=size.frames, height=size.height, width=size.width, steps=size.steps,
                              decode_chunk_size=args.decode_chunk_size or size.frames, seed=args.seed,
                              device=args.device)


def switch_on(pipe, args) -> bool:
    """Switch ``args.lever`` on; False when this pipeline does not offer it (yet)."""
    method, kwargs = LEVERS[args.lever]
    if not hasattr(pipe, method):
        return False
    getattr(pipe, method)(**kwargs(args))
    return True


def profile_call(subject, pipe, ns, path: Path, cuda: bool) -> None:
    """One call under torch.profiler; the top rows by self time go to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        harness.call(subject, pipe, ns, "np")
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=48))


def measure(args) -> dict:
    """Load (timed, peak RSS), warm up, then one timed call with the denoiser/decode timers."""
    _, size = parse_size(args.size, args.pipeline, args.device)
    subject, cuda = subject_module(args.pipeline).SUBJECT, args.device.startswith("cuda")
    ns, memory = call_namespace(args, size), probes.Peaks(cuda)
    memory.start()
    start = time.perf_counter()
    pipe = harness.load(subject, args.library, args.checkpoint, args.device, harness.DTYPES[args.dtype])
    result = dict(load_s=time.perf_counter() - start, load_peak_mib=memory.stop())
    if args.lever and not switch_on(pipe, args):
        return dict(result, missing=LEVERS[args.lever][0])
    timers = probes.Timers(pipe, args.library, cuda)
    harness.call(subject, pipe, ns, "np")  # warm-up: lazy allocations, kernel and algorithm choices
    if args.profile:
        profile_call(subject, pipe, ns, args.profile, cuda)
        return result
    timers.reset()
    before = timers.peaks.start()
    timers.peaks.best = 0.0  # the window starts here: not the warm-up's peak
    seconds, frames, _ = harness.call(subject, pipe, ns, "np")
    timers.peaks.stop()
    if args.frames_out:
        np.save(args.frames_out, np.asarray(frames, dtype=np.float32))
    return dict(result, call_s=seconds, unet_s=timers.unet_s, unet_calls=timers.unet_calls,
                decode_s=timers.decode_s, before_call_mib=before, call_peak_mib=timers.peaks.best,
                decode_peak_mib=timers.decode_peak, before_decode_mib=timers.decode_before,
                threads=torch.get_num_threads(), diffusers_imported="diffusers" in sys.modules)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.library == "diffusers":
        harness._quiet_diffusers()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
