"""Running a batch on this machine: one worker per CUDA GPU (a thread each), else one on the CPU.

Workers take whole groups of jobs (same pipeline and model) from a shared queue, so each model is
loaded once per worker that needs it; each worker keeps its own :class:`PipelineCache`.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import torch

from ..cli.settings import worker_devices
from .jobs_file import BatchJob
from .plan import Report, group_by_model
from .worker import BatchWorker, Outcome

def local_devices(device: str) -> list[int | None]:
    """The workers to start (:func:`~vidiff.cli.settings.worker_devices`): CUDA device indices, or
    ``[None]`` for one CPU worker."""
    return [None if name == "cpu" else torch.device(name).index for name in worker_devices(device)]


def run_local(jobs: list[BatchJob], out: Path, device: str, pipelines_kept: int, report: Report) -> list[Outcome]:
    """Run ``jobs`` (none finished yet) on the local devices; ``report`` is called after each job."""
    devices = local_devices(device)
    groups: queue.SimpleQueue[list[BatchJob]] = queue.SimpleQueue()
    for group in group_by_model(jobs):
        groups.put(group)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def work(index: int | None) -> None:
        if index is not None:
            torch.cuda.set_device(index)  # per thread: "cuda" below means this GPU
        # No CUDA worker: "auto" still lets a run pick Apple's MPS where there is one.
        worker = BatchWorker(("cpu" if device == "cpu" else "auto") if index is None else "cuda", pipelines_kept)
        while True:
            try:
                group = groups.get_nowait()
            except queue.Empty:
                return
            for job in group:
                outcome = worker.run_job(job, str(out))
                with lock:
                    outcomes.append(outcome)
                    report(outcome)

    if len(devices) == 1:
        work(devices[0])  # no thread: Ctrl-C reaches the run directly
        return outcomes
    # Daemon threads joined with a timeout: Ctrl-C reaches the main thread and ends the process (a
    # worker killed mid-write leaves only hidden temporaries, removed when its job runs again).
    threads = [threading.Thread(target=work, args=(index,), name=f"vidiff-batch-cuda{index}", daemon=True) for index in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)
    return outcomes
