"""The server's workers: one thread per device, each taking the oldest queued job and running it.

A worker runs a job exactly as ``vidiff <pipeline> …`` would (:func:`vidiff.cli.run.run`), with
its own :class:`PipelineCache` (a model loaded for one job is reused by the next job of the same
model), the device it owns, and output paths it chooses under ``<data>/videos/<id>/``. A job that
fails — a bad image, a missing model, an error deep in a network — fails alone, with its message;
the worker goes on with the next one.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..cli.errors import RunError, UsageError, one_line
from ..cli.jobs import parse_job
from ..cli.pipeline_cache import PipelineCache
from ..cli.run import Cancelled, RunHooks, run
from .store import JobStore

logger = logging.getLogger("vidiff.server")

_MESSAGE_LIMIT = 500  # characters of a job's error message, as the CLI cuts its own
_IDLE_POLL_SECONDS = 1.0  # how often an idle worker looks at the queue without being woken


class _Stopping(Exception):
    """Raised from a step when the server shuts down: the job goes back to the queue."""


class Worker:
    """One device's thread. ``wake`` is set when a job is submitted (so a worker need not poll)."""

    def __init__(self, device: str, store: JobStore, data: Path, wake: threading.Event, pipelines_kept: int) -> None:
        self.device = device
        self.store = store
        self.data = data
        self.wake = wake
        self.pipelines = PipelineCache(pipelines_kept)
        self.current: str | None = None  # the id of the job it is running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"vidiff-worker-{device}", daemon=True)

    @property
    def busy(self) -> bool:
        return self.current is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step; the job it was running goes back to the queue."""
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            record = self.store.claim_next()
            if record is None:
                self.wake.wait(_IDLE_POLL_SECONDS)
                self.wake.clear()
                continue
            self.current = record["id"]
            try:
                self._run_one(record)
            finally:
                self.current = None

    def _run_one(self, record: dict[str, Any]) -> None:
        job_id = record["id"]
        folder = self.data / "videos" / job_id
        logger.info("job %s: running on %s", job_id, self.device)
        try:
            files = self._execute(record, folder)
        except _Stopping:
            self.store.requeue(job_id)
            logger.info("job %s: back in the queue (the server is stopping)", job_id)
            return
        except Cancelled:
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("job %s: cancelled", job_id)
            return
        except (UsageError, RunError) as error:
            self._fail(job_id, str(error))
            return
        except Exception as error:  # noqa: BLE001 - a bad job fails alone; the worker goes on
            logger.exception("job %s failed", job_id)
            self._fail(job_id, f"{type(error).__name__}: {error}")
            return
        if not self.store.finish(job_id, "succeeded", files=files):  # cancelled after its last step
            shutil.rmtree(folder, ignore_errors=True)
        logger.info("job %s: done", job_id)

    def _fail(self, job_id: str, message: str) -> None:
        message = one_line(message, _MESSAGE_LIMIT, empty="the job failed")
        logger.warning("job %s failed: %s", job_id, message)
        self.store.finish(job_id, "failed", error=message)

    def _execute(self, record: dict[str, Any], folder: Path) -> dict[str, str]:
        """Run the job on this worker's device; returns {format: written path}."""
        command, explicit, formats = parse_job(record["run_job"])
        folder.mkdir(parents=True, exist_ok=True)
        targets = {fmt: folder / f"video.{fmt}" for fmt in formats}
        explicit["output"] = [str(path) for path in targets.values()]
        explicit["overwrite"] = True  # a re-queued job replaces what an interrupted run may have left
        explicit["device"] = "cuda" if self.device.startswith("cuda") else "cpu"
        hooks = RunHooks(pipelines=self.pipelines, on_step=self._step_reporter(record["id"]))
        device_scope = torch.cuda.device(self.device) if self.device.startswith("cuda") else contextlib.nullcontext()
        with device_scope:  # "cuda" means this worker's GPU inside the scope
            run(command, explicit, False, hooks)
        return {fmt: str(path) for fmt, path in targets.items()}

    def _step_reporter(self, job_id: str):
        """``on_step``: records step/total and the ETA; stops the run when the job was cancelled
        or the server is stopping."""
        started = time.monotonic()
        first_step: list[float] = []  # when step 1 ended: the time per step is measured from there

        def on_step(done: int, total: int) -> None:
            now = time.monotonic()
            if not first_step:
                first_step.append(now)
                per_step = (now - started) / max(done, 1)  # includes loading: a first, pessimistic guess
            else:
                per_step = (now - first_step[0]) / max(done - 1, 1)
            eta = max(total - done, 0) * per_step
            status = self.store.progress(job_id, done, total, round(eta, 2))
            if status == "cancelled":
                raise Cancelled(job_id)
            if self._stop.is_set():
                raise _Stopping(job_id)

        return on_step
