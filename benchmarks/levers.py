"""``benchmarks.run --levers``: what vidiff's memory/speed levers cost and save, each in a fresh process.

- Offload and forward chunking at the run's first size, against the plain vidiff call (on the CPU
  offload moves nothing: its row is the hooks' cost; its memory saving needs an accelerator).
- SVD's tiled decode at a size where the untiled decode is the call's peak: decode-window peak RSS
  untiled and tiled (diffusers' temporal decoder has no tiling: its tiled column is "n/a").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.subjects import RunSize

CALL_LEVERS = ("model_offload", "sequential_offload", "forward_chunking")
# 4 frames at 256 × 256 decoded in one chunk: the m15 decoder's activations dwarf the 1-step UNet's.
TILING_SIZE, TILE = RunSize(4, 256, 256, 1), 128


def _diff(a: Path, b: Path) -> float:
    return float(np.abs(np.load(a).astype(np.float64) - np.load(b)).max())


def call_levers(args, pipeline: str, folder: Path, worker) -> str:
    size = args.sizes[pipeline][0][1]
    plain_frames = folder.parent / "lever-plain.npy"
    plain = worker(args, pipeline, "vidiff", folder, size, ["--frames-out", str(plain_frames)])
    lines = [f"### Levers, vidiff {pipeline} at {size.label()} (one process each)", "",
             "| lever | call (s) | × plain | peak RSS during call (MiB) | × plain | max diff vs plain |",
             "|---|---:|---:|---:|---:|---:|",
             f"| none | {plain['call_s']:.3f} | 1 | {plain['call_peak_mib']:.0f} | 1 | 0 |"]
    for lever in CALL_LEVERS:
        frames = folder.parent / f"lever-{lever}.npy"
        got = worker(args, pipeline, "vidiff", folder, size, ["--lever", lever, "--frames-out", str(frames)])
        if "missing" in got:
            lines.append(f"| {lever} | not available (no `pipe.{got['missing']}` when run) | | | | |")
            continue
        lines.append(f"| {lever} | {got['call_s']:.3f} | {got['call_s'] / plain['call_s']:.2f} | "
                     f"{got['call_peak_mib']:.0f} | {got['call_peak_mib'] / plain['call_peak_mib']:.2f} | "
                     f"{_diff(frames, plain_frames):.1e} |")
    return "\n".join(lines) + "\n"


def svd_tiling(args, folder: Path, worker) -> str:
    out = {}
    for name, library, extra in (("diffusers", "diffusers", []), ("vidiff", "vidiff", []),
                                 ("vidiff tiled", "vidiff", ["--lever", "vae_tiling", "--tile", str(TILE)])):
        frames = folder.parent / f"tiling-{name.replace(' ', '-')}.npy"
        out[name] = worker(args, "svd", library, folder, TILING_SIZE, [*extra, "--frames-out", str(frames)])
        out[name]["frames"] = frames
    if "missing" in out["vidiff tiled"]:
        return "### SVD tiled decode\n\nNot measured: `pipe.enable_vae_tiling` did not exist when run.\n"
    own = {k: v["decode_peak_mib"] - v["before_decode_mib"] for k, v in out.items()}
    row = lambda k, key: f"{out[k][key]:.0f}" if k in out else "n/a"  # noqa: E731
    lines = [f"### SVD decode memory, untiled vs `pipe.enable_vae_tiling(tile_sample_min_size={TILE})`, "
             f"{TILING_SIZE.label()}, one decode chunk of all frames", "",
             "| | diffusers | diffusers tiled | vidiff | vidiff tiled | untiled/tiled (vidiff) |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, key in (("peak RSS of the decode window (MiB)", "decode_peak_mib"),
                       ("peak RSS during the call (MiB)", "call_peak_mib"), ("decode time (s)", "decode_s")):
        ratio = out["vidiff"][key] / out["vidiff tiled"][key]
        lines.append(f"| {label} | {row('diffusers', key)} | n/a | {row('vidiff', key)} | "
                     f"{row('vidiff tiled', key)} | {ratio:.2f} |")
    lines.append(f"| decode peak − RSS at decode start (MiB) | {own['diffusers']:.0f} | n/a | {own['vidiff']:.0f} | "
                 f"{own['vidiff tiled']:.0f} | {own['vidiff'] / own['vidiff tiled']:.2f} |")
    tiled = np.abs(np.load(out["vidiff tiled"]["frames"]).astype(np.float64) - np.load(out["vidiff"]["frames"]))
    lines += ["", f"|tiled − untiled| over the frames (values in [0, 1]): max {tiled.max():.2e}, mean "
              f"{tiled.mean():.2e}, 99th percentile {np.quantile(tiled, 0.99):.2e}; "
              f"max |diffusers − vidiff| untiled: {_diff(out['diffusers']['frames'], out['vidiff']['frames']):.2e}.", ""]
    return "\n".join(lines)


def measure(args, pipeline: str, folder: Path, report, worker) -> None:
    """Add the lever sections of ``pipeline`` to ``report`` (CPU only: on CUDA the same rows need
    an offload-aware peak, left to a GPU session)."""
    report.add_text(call_levers(args, pipeline, folder, worker))
    if pipeline == "svd":
        report.add_text(svd_tiling(args, folder, worker))
