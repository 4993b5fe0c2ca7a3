"""vidiff's memory estimate (``--memory auto``) next to the measured CPU peak of the same call.

For each pipeline, the random diffusers checkpoint of a benchmark size (default: medium, ≈15 M-parameter
UNets with the released topologies) is built once, then a fresh Python process loads it with vidiff and
makes one call (``output_type="np"``) while its peak RSS is recorded (VmHWM of /proc/self/status, reset
just before the call). The estimate is :func:`vidiff.pipelines.memory.estimate_memory` for the same
configs and run size, read from the checkpoint's JSON only. The peak of a call does not depend on the
number of denoising steps, so the measured call uses ``--steps`` (default 2) to stay short.

    python benchmarks/memory_estimate_check.py                         # all four, medium, CPU, fp32
    python benchmarks/memory_estimate_check.py --pipelines svd --threads 2 --keep /tmp/ckpts
    python benchmarks/memory_estimate_check.py --load-only --load-dtype fp16   # peak RSS of loading

The probe also reports the peak RSS of loading (``from_pretrained``); ``--eager-load`` reads each
weights file whole before the strict load (the loading path before issue 12), for comparison.
Nothing is asserted; the script prints a table and exits non-zero when an estimate is off by more
than ``--tolerance`` (default 25 %).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import harness  # first: it makes the repository root importable

MODULES = {"svd": "svd_pipeline", "animatediff": "animatediff_pipeline", "i2vgen-xl": "i2vgen_xl_pipeline",
           "wan": "wan_pipeline"}
MIB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _bench_args(subject: harness.Subject, options: argparse.Namespace) -> argparse.Namespace:
    argv = ["--size", options.size, "--steps", str(options.steps)]
    return harness.parse_args(subject, "", argv)


def _vidiff_class(name: str) -> type:
    import vidiff
    from vidiff.pipelines.wan import WanPipeline

    return {"wan": WanPipeline, "svd": vidiff.StableVideoDiffusionPipeline, "animatediff": vidiff.AnimateDiffPipeline,
            "i2vgen-xl": vidiff.I2VGenXLPipeline}[name]


def probe(name: str, folder: Path, options: argparse.Namespace) -> dict:
    """In a fresh process: load with vidiff (peak RSS of loading), then one call (its peak RSS)."""
    from vidiff import loading

    if options.eager_load:  # the loading path before issue 12: every weights file read whole first
        lazy = loading.Checkpoint.open_state_dict

        def read_whole(self, *args, **kwargs):
            return {k: v.load() if hasattr(v, "load") else v for k, v in lazy(self, *args, **kwargs).items()}

        loading.Checkpoint.open_state_dict = read_whole
    subject = importlib.import_module(MODULES[name]).SUBJECT
    args = _bench_args(subject, options)
    dtype = harness.DTYPES[options.load_dtype]
    before_load = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    pipe = subject.load("vidiff", folder, dtype)
    result = dict(rss_before_load_mib=before_load / 1024, load_peak_rss_mib=_status_kib("VmHWM") / 1024,
                  rss_after_load_mib=_status_kib("VmRSS") / 1024)
    if options.load_only:
        return result
    pipe.set_progress_bar_config(disable=True)
    Path("/proc/self/clear_refs").write_text("5")
    result["rss_before_call_mib"] = _status_kib("VmRSS") / 1024
    harness.call(subject, pipe, args, "np")
    result["call_peak_rss_mib"] = _status_kib("VmHWM") / 1024
    return result


def estimate(name: str, folder: Path, options: argparse.Namespace) -> dict:
    """vidiff's estimate for the probe's call, from the checkpoint's JSON and the call's arguments."""
    from vidiff import loading
    from vidiff.pipelines import memory

    pipeline = _vidiff_class(name)
    subject = importlib.import_module(MODULES[name]).SUBJECT
    _, kwargs = subject.inputs(_bench_args(subject, options))
    defaults = {k: p.default for k, p in inspect.signature(pipeline.__call__).parameters.items()}
    scales = [kwargs.get(k, defaults.get(k)) for k in ("guidance_scale", "max_guidance_scale", "min_guidance_scale")]
    size = memory.RunSize(
        videos=1, num_frames=kwargs["num_frames"], height=kwargs["height"], width=kwargs["width"],
        dtype=harness.DTYPES[options.load_dtype], guidance=max(s or 0 for s in scales) > 1,
        decode_chunk_size=kwargs.get("decode_chunk_size"),
    )
    if name == "animatediff":  # a Stable Diffusion folder and a motion adapter, as the CLI loads them
        from vidiff import MotionAdapter

        networks = memory.network_configs(pipeline, loading.Checkpoint.open(folder / "sd15"))
        networks["motion_adapter"] = (MotionAdapter, loading.Checkpoint.open(folder / "motion_adapter").read_json("config.json"))
    else:
        networks = memory.network_configs(pipeline, loading.Checkpoint.open(folder))
    configs, weights = memory.weight_sizes(networks)
    found = memory.estimate_memory(configs, weights, size)
    parts = {k: v / MIB for k, v in found.as_dict().items() if v is not None}
    return dict(estimate_mib=found.total("cpu") / MIB, parts_mib=parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", nargs="+", choices=sorted(MODULES), default=sorted(MODULES))
    parser.add_argument("--size", default="medium", choices=("tiny", "small", "medium"))
    parser.add_argument("--steps", type=int, default=2, help="denoising steps of the measured call (default 2)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in the probes")
    parser.add_argument("--tolerance", type=float, default=0.25, help="allowed |estimate/measured - 1| (default 0.25)")
    parser.add_argument("--keep", type=Path, help="build checkpoints here and reuse them on later runs")
    parser.add_argument("--load-dtype", choices=sorted(harness.DTYPES), default="fp32", help="dtype to load in (default fp32)")
    parser.add_argument("--load-only", action="store_true", help="measure loading only (no call, no estimate)")
    parser.add_argument("--eager-load", action="store_true", help="read weight files whole first (the old path)")
    parser.add_argument("--remeasure", action="store_true", help="with --keep: measure again, even if measured before")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--probe", choices=sorted(MODULES), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.probe:
        print(json.dumps(probe(options.probe, options.checkpoint, options)))
        return 0
    with tempfile.TemporaryDirectory(prefix="vidiff-memcheck-") as tmp:
        root = options.keep or Path(tmp)
        results = {name: _check(name, root / f"{name}-{options.size}", options, argv) for name in options.pipelines}
    return _report(results, options)


def _check(name: str, folder: Path, options: argparse.Namespace, argv: list[str] | None) -> dict:
    if not (folder / ".built").is_file():
        importlib.import_module(MODULES[name]).SUBJECT.build(options.size, folder, 0)
        (folder / ".built").touch()
    # A measurement is kept beside the checkpoint (per setting), so --keep reruns only re-estimate.
    kind = f"{options.steps}-{options.load_dtype}{'-eager' if options.eager_load else ''}{'-load' if options.load_only else ''}"
    saved = folder / f"measured-{kind}.json"
    if options.keep and saved.is_file() and not options.remeasure:
        measured = json.loads(saved.read_text())
    else:
        forwarded = [a for a in (sys.argv[1:] if argv is None else argv)]
        command = [sys.executable, __file__, *forwarded, "--probe", name, "--checkpoint", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"probe for {name} failed:\n{done.stderr[-3000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        saved.write_text(json.dumps(measured))
    return measured if options.load_only else {**measured, **estimate(name, folder, options)}


def _report(results: dict[str, dict], options: argparse.Namespace) -> int:
    print(f"size {options.size}, {options.load_dtype}, torch {torch.__version__}"
          f"{', eager load' if options.eager_load else ''}")
    bad = 0
    for name, r in results.items():
        line = f"{name:12s} load peak {r['load_peak_rss_mib']:7.0f} MiB (RSS {r['rss_before_load_mib']:.0f} → {r['rss_after_load_mib']:.0f})"
        if not options.load_only:
            ratio = r["estimate_mib"] / r["call_peak_rss_mib"]
            bad += abs(ratio - 1) > options.tolerance
            line += (f" | call peak {r['call_peak_rss_mib']:7.0f} MiB, estimate {r['estimate_mib']:7.0f} MiB, "
                     f"estimate/measured {ratio:.3f}")
        print(line)
        if not options.load_only:
            print("             estimate parts (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in r["parts_mib"].items()))
    if options.json:
        options.json.write_text(json.dumps(dict(options={k: str(v) for k, v in vars(options).items()}, results=results), indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
