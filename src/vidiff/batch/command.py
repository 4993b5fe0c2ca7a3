"""``vidiff batch JOBS --out FOLDER``: check every job, skip the finished ones, run the rest, summarise.

Exit statuses: 0 every job done or skipped; 1 at least one job failed (the others ran); 2 the jobs
file or an option is unusable (nothing ran).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from ..cli.errors import UsageError
from ..cli.settings import WORKER_DEVICES
from .jobs_file import read_jobs
from .local import run_local
from .plan import split_finished
from .worker import Outcome


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """Every job's outcome, in the order of the jobs file."""

    outcomes: list[Outcome]

    def with_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def exit_status(self) -> int:
        return 1 if self.with_status("failed") else 0

    def summary(self) -> str:
        """``N done, N skipped, N failed`` and one line per failure with its reason."""
        counts = ", ".join(f"{len(self.with_status(s))} {s}" for s in ("done", "skipped", "failed"))
        lines = [f"vidiff batch: {counts}"]
        lines += [f"  failed: {o.name} (line {o.line}): {o.reason}" for o in self.with_status("failed")]
        return "\n".join(lines)


def run_batch(
    jobs_path: str | os.PathLike, out: str | os.PathLike, *, ray: str | None = None, retries: int = 2,
    device: str = "auto", pipelines_kept: int = 2, progress: bool = True,
) -> BatchResult:
    """Run every job of the JSONL file ``jobs_path`` into the folder ``out`` (created if missing).

    ``ray``: None runs on this machine's devices; ``"auto"`` or a cluster address runs on Ray actors.
    Jobs whose outputs are all in ``out`` are skipped. Raises :class:`UsageError` (a
    :class:`~vidiff.batch.jobs_file.JobsFileError` for the file) before anything runs.
    """
    _check_options(retries, device, pipelines_kept)
    jobs = read_jobs(jobs_path)
    if ray is not None:
        from .ray_runner import import_ray

        import_ray()  # a missing Ray is a usage error before any folder is made
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    pending, skipped = split_finished(jobs, out)
    bar = _progress_bar(len(jobs), progress)
    bar.update(len(skipped))

    def report(outcome: Outcome) -> None:
        bar.update(1)
        if outcome.status == "failed":
            bar.write(f"vidiff batch: {outcome.name} (line {outcome.line}) failed: {outcome.reason}", file=sys.stderr)

    try:
        if not pending:
            ran = []
        elif ray is None:
            ran = run_local(pending, out, device, pipelines_kept, report)
        else:
            from .ray_runner import run_on_ray

            ran = run_on_ray(pending, out, ray, device, pipelines_kept, retries, report)
    finally:
        bar.close()
    by_name = {o.name: o for o in [*skipped, *ran]}
    # A job with no outcome was never run (its worker stopped unexpectedly): it must not vanish.
    lost = Outcome("", 0, "failed", "not run: its worker stopped before reaching it")
    return BatchResult([by_name.get(job.name) or dataclasses.replace(lost, name=job.name, line=job.line) for job in jobs])


def _check_options(retries: int, device: str, pipelines_kept: int) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UsageError(f"--retries must be an integer ≥ 0, got {retries!r}")
    if device not in WORKER_DEVICES:
        raise UsageError(f"--device must be one of {list(WORKER_DEVICES)}, got {device!r}")
    if isinstance(pipelines_kept, bool) or not isinstance(pipelines_kept, int) or pipelines_kept < 1:
        raise UsageError(f"--pipelines-kept must be an integer ≥ 1, got {pipelines_kept!r}")


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="jobs", unit="job", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def main_batch(explicit: dict, show_progress: bool, stdout: TextIO | None = None) -> int:
    """``vidiff batch`` from its parsed flags: run, print the summary, return the exit status."""
    # Each run's "loading…/generating…" lines would bury the progress bar (failures are reported
    # anyway); --debug keeps them. Restored afterwards: the logger is process-wide.
    cli_logger = logging.getLogger("vidiff.cli")
    level = cli_logger.level
    if not explicit.get("debug"):
        cli_logger.setLevel(logging.WARNING)
    try:
        result = run_batch(
            explicit["jobs"], explicit["out"], ray=explicit.get("ray"), retries=explicit.get("retries", 2),
            device=explicit.get("device", "auto"), pipelines_kept=explicit.get("pipelines_kept", 2),
            progress=show_progress,
        )
    finally:
        cli_logger.setLevel(level)
    print(result.summary(), file=stdout or sys.stdout, flush=True)
    return result.exit_status
