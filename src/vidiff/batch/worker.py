"""One batch worker: runs jobs one after another on one device, keeping its loaded pipelines.

The same class serves the local runner (one per CUDA GPU, or one on the CPU) and the Ray runner (as
an actor). A job's failure is its own: it comes back as an :class:`Outcome` with the reason, and
the worker goes on. Outputs are written by :func:`vidiff.cli.run.run`, which stages them under
hidden temporary names and moves them in together, so a worker that dies mid-job leaves no file
under a final name; the temporaries it leaves are removed before the job runs again
(:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from ..cli.errors import RunError, UsageError, one_line
from ..cli.pipeline_cache import PipelineCache
from ..cli.run import RunHooks, run
from .jobs_file import BatchJob

# Test-only: names a marker file holding a job name; the worker that starts that job while the
# file exists deletes it and dies on the spot (os._exit), as a crashed worker would.
CRASH_ONCE_ENV = "VIDIFF_BATCH_CRASH_ONCE"
REASON_LIMIT = 300  # characters of a failure's reason in the summary


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one job: ``status`` is "done", "skipped" or "failed" (``reason`` says why)."""

    name: str
    line: int
    status: str
    reason: str = ""
    pid: int | None = None  # the worker process that ran it (None: skipped by the driver)


def remove_stale_temporaries(paths: list[Path]) -> None:
    """Delete what a killed run left beside ``paths``: the hidden ``.<name>.tmp-<hex><suffix>``
    files and folders :mod:`vidiff.cli.commit` stages outputs under, and the ``.old-`` copies of
    replaced outputs (the job runs again from scratch, so neither is needed)."""
    for path in paths:
        pattern = re.compile(rf"\.{re.escape(path.name)}\.(tmp|old)-[0-9a-f]{{8}}{re.escape(path.suffix)}")
        if not path.parent.is_dir():
            continue
        for entry in path.parent.iterdir():
            if pattern.fullmatch(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    for child in entry.iterdir():
                        child.unlink()
                    entry.rmdir()
                else:
                    entry.unlink()


class BatchWorker:
    """Runs jobs on one device (``"cpu"``, ``"cuda"`` — the current CUDA device — or ``"auto"``),
    keeping up to ``pipelines_kept`` loaded pipelines between jobs."""

    def __init__(self, device: str, pipelines_kept: int, cwd: str | None = None, crash_marker: str | None = None) -> None:
        if cwd is not None and os.path.isdir(cwd):
            os.chdir(cwd)  # a Ray actor: relative paths in jobs mean what they meant to the driver
        self.device = device
        self.pipelines = PipelineCache(pipelines_kept)
        self.crash_marker = crash_marker

    def pid(self) -> int:
        return os.getpid()

    def run_job(self, batch_job: BatchJob, out: str) -> Outcome:
        """Run ``batch_job`` writing into the folder ``out``; never raises for the job's own failure."""
        folder = Path(out)
        try:
            command, explicit, _ = batch_job.parsed()
            remove_stale_temporaries(batch_job.expected_paths(folder))
            explicit.setdefault("device", self.device)
            explicit["output"] = batch_job.output_arguments(folder)
            explicit["overwrite"] = True  # an incomplete earlier attempt may have left some of the files
            hooks = RunHooks(pipelines=self.pipelines, on_step=self._crash_hook(batch_job.name))
            run(command, explicit, show_progress=False, hooks=hooks)
        except (UsageError, RunError) as error:
            return self._failed(batch_job, str(error))
        except Exception as error:  # noqa: BLE001 - one job's failure must not stop the worker
            return self._failed(batch_job, f"{type(error).__name__}: {error}")
        return Outcome(batch_job.name, batch_job.line, "done", pid=os.getpid())

    def _failed(self, batch_job: BatchJob, message: str) -> Outcome:
        reason = one_line(message, REASON_LIMIT, empty="failed")
        return Outcome(batch_job.name, batch_job.line, "failed", reason, pid=os.getpid())

    def _crash_hook(self, name: str):
        """The test-only crash (see :data:`CRASH_ONCE_ENV`), at the job's first denoising step."""
        marker = self.crash_marker
        if not marker:
            return None

        def on_step(done: int, total: int) -> None:
            try:
                if Path(marker).read_text().strip() != name:
                    return
                os.unlink(marker)  # only the first attempt dies
            except FileNotFoundError:
                return
            os._exit(3)

        return on_step
