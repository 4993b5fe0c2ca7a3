"""``benchmarks/RESULTS.md``: the machine, versions, command, and per pipeline and size the medians
of both libraries with each ratio vidiff/diffusers; profiles and levers when measured."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# (label, summary key, format); memory in MiB: peak RSS on CPU, max_memory_allocated on CUDA.
ROWS = [("call, median (s)", "call_s", "{:.3f}"), ("per denoising step (s)", "step_s", "{:.3f}"),
        ("VAE decode (s)", "decode_s", "{:.3f}"), ("peak memory during call (MiB)", "call_peak_mib", "{:.0f}"),
        ("peak memory while loading (MiB)", "load_peak_mib", "{:.0f}"), ("from_pretrained (s)", "load_s", "{:.3f}")]


def machine(device: str) -> str:
    """CPU model, cores, RAM (and the GPU on CUDA), in one line."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    ram_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    text = f"{cpu}, {os.cpu_count()} cores, {ram_kib / 2**20:.1f} GiB RAM"
    if device.startswith("cuda"):
        import torch
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def versions() -> str:
    """torch, diffusers, transformers and the vidiff commit (with "+ uncommitted changes" if dirty)."""
    found = [f"{name} {metadata.version(name)}" for name in ("torch", "diffusers", "transformers")]
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return ", ".join(found) + f", vidiff {git('rev-parse', '--short', 'HEAD')}{dirty}"


class Report:
    """Collects sections as the run goes and writes the whole file each time."""

    def __init__(self, args) -> None:
        self.args, self.sections, self.ratios = args, [], []
        self.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        self.load_start = os.getloadavg()[0]

    def add_size(self, pipeline: str, name: str, size, summary: dict, max_abs_diff: float) -> None:
        ref, ours = summary["diffusers"], summary["vidiff"]
        lines = [f"### {pipeline}, size {name}: {size.label()}", "",
                 "| | diffusers | vidiff | vidiff/diffusers |", "|---|---:|---:|---:|"]
        for label, key, fmt in ROWS:
            ratio = ours[key] / ref[key] if ref[key] > 0 else float("nan")
            lines.append(f"| {label} | {fmt.format(ref[key])} | {fmt.format(ours[key])} | {ratio:.3f} |")
        if self.args.cuda:
            from benchmarks import released
            flops = released.video_flops(pipeline, size)
            tflops = {lib: flops / summary[lib]["call_s"] / 1e12 for lib in summary}
            lines.append(f"| achieved TFLOP/s ({flops / 1e12:.1f} TFLOP per video) | {tflops['diffusers']:.1f} | "
                         f"{tflops['vidiff']:.1f} | {tflops['vidiff'] / tflops['diffusers']:.3f} |")
        runs = "; ".join(f"{lib} " + ", ".join(f"{s:.2f}" for s in summary[lib]["call_runs_s"]) for lib in summary)
        lines += ["", f"Calls per round (s): {runs}. Denoiser calls per video: {ours['unet_calls']} (vidiff), "
                  f"{ref['unet_calls']} (diffusers). max |diffusers − vidiff| over the frames: {max_abs_diff:.2e}.", ""]
        self.sections.append("\n".join(lines))
        self.ratios.append((pipeline, name, ours["call_s"] / ref["call_s"], ours["call_peak_mib"] / ref["call_peak_mib"]))

    def add_profile(self, pipeline: str, table: str) -> None:
        self.sections.append(f"### Profile: one vidiff {pipeline} call (first size, after a warm-up)\n\n```\n{table}\n```\n")

    def add_text(self, text: str) -> None:
        self.sections.append(text)

    def append_sections(self, path: Path) -> None:
        """Append the collected sections (``--levers-only``) under a heading naming this command."""
        text = path.read_text() if path.exists() else "# Benchmark results\n"
        head = (f"\n## Levers: `{self.args.command}`\n\nStarted {self.started}; load average at start "
                f"{self.load_start:.1f}, at the end {os.getloadavg()[0]:.1f}.\n\n")
        path.write_text(text + head + "\n".join(self.sections) + "\n")

    def write(self, path: Path) -> None:
        args = self.args
        memory = "max_memory_allocated" if args.cuda else "peak RSS (VmHWM, reset just before the window)"
        head = ["# Benchmark results", "",
                f"- Command: `{args.command}`", f"- Started: {self.started}; load average at start "
                f"{self.load_start:.1f}, at the last write {os.getloadavg()[0]:.1f}",
                f"- Machine: {machine(args.device)}", f"- Versions: {versions()}",
                f"- Device {args.device}, {args.dtype}; each library in its own fresh process per round "
                f"(load, one warm-up call, one timed call), {args.repeats} alternating rounds; medians.",
                f"- Memory: {memory}. Per denoising step: the denoiser's total time / steps. VAE decode: "
                "the decode calls' time (diffusers `vae.decode`, vidiff `vae.decode_video`).", "",
                "## Ratios vidiff/diffusers", "", "| pipeline | size | call time | peak memory |", "|---|---|---:|---:|"]
        head += [f"| {p} | {n} | {t:.3f} | {m:.3f} |" for p, n, t, m in self.ratios]
        path.write_text("\n".join(head + ["", "## Details", ""] + self.sections) + "\n")
